"""The SPARSE export file: bit-exact round trip, size within 10 % of the entropy floor at 90, 98
and 99.5 % sparsity on ResNet-shaped layers, versioning, and the export CLI's ratio line."""
import io
import json
import math
import os
import re
import zipfile

import numpy as np
import pytest

from src.sparse_format import (DENSE_LIMIT, SparseFormatError, canonical_zeros, decode_positions,
                               encode_positions, ideal_size_bytes, read_sparse, write_sparse)
from tests.conftest import ROOT, resnet50_weight_shapes, run_script

RPG90 = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")


def resnet20_shapes():
    """Conv/FC weights of the CIFAR ResNet-20 (1 input channel, option-B downsample convs)."""
    shapes, cin = [(16, 1, 3, 3)], 16
    for width in (16, 32, 64):
        for block in range(3):
            shapes += [(width, cin, 3, 3), (width, width, 3, 3)]
            if cin != width and block == 0:
                shapes.append((width, cin, 1, 1))
            cin = width
    return shapes + [(10, 64)]


def resnet50_shapes():
    """Conv/FC weights of the ImageNet ResNet-50 (53 convs + FC, 25.5 M weights)."""
    return resnet50_weight_shapes()


def bn_params(shapes):
    """Dense BatchNorm tensors (gamma, beta, mean, variance) after every conv, as a net has."""
    rng = np.random.default_rng(1)
    out = {}
    for i, shape in enumerate(shapes[:-1]):
        for part in ("gamma", "beta", "moving_mean", "moving_variance"):
            out[f"bn{i}.{part}"] = rng.standard_normal(shape[0]).astype(np.float32)
    return out


def random_net(shapes, density, seed=0):
    """Random-mask weights at exactly ``density`` over all layers (global), plus dense BN."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i, shape in enumerate(shapes):
        w = rng.standard_normal(shape).astype(np.float32)
        keep = rng.random(shape) < density
        arrays[f"layer{i}.weight"] = np.where(keep, w, np.float32(0.0))
    arrays.update(bn_params(shapes))
    return arrays


def round_trip(arrays, path, **kwargs):
    write_sparse(arrays, path, **kwargs)
    back, meta = read_sparse(path)
    assert list(back) == list(arrays)
    return back, meta


def assert_bit_exact(back, arrays):
    for name, array in arrays.items():
        got, want = back[name], canonical_zeros(array)
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("density", [0.0, 1e-4, 0.005, 0.02, 0.1, 0.3, 0.5, 0.5001, 0.9, 1.0])
def test_round_trip_bit_exact_at_every_density(tmp_path, density):
    rng = np.random.default_rng(int(density * 1e4))
    arrays = {}
    for i, shape in enumerate([(64, 32, 3, 3), (7, 13), (3, 1, 1, 1), (1000, 20)]):
        w = rng.standard_normal(shape).astype(np.float32)
        arrays[f"w{i}"] = np.where(rng.random(shape) < density, w, np.float32(0.0))
    back, _ = round_trip(arrays, tmp_path / "f.sparse.npz")
    assert_bit_exact(back, arrays)


def test_round_trip_edge_cases(tmp_path):
    rng = np.random.default_rng(0)
    tricky = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    tricky[rng.random(tricky.shape) < 0.95] = 0.0
    tricky.ravel()[[0, -1]] = [np.float32(1e-45), np.float32(-3.4e38)]  # first/last weight, denormal
    tricky.ravel()[5] = np.nan
    arrays = {
        "all_zero": np.zeros((32, 16, 3, 3), np.float32),
        "all_dense": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "one_element_4d": np.full((1, 1, 1, 1), 2.5, np.float32),
        "one_zero_4d": np.zeros((1, 1, 1, 1), np.float32),
        "one_element_1d": np.full(1, -1.0, np.float32),
        "scalar": np.array(3.0, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "bias": rng.standard_normal(10).astype(np.float32),
        "only_last": np.where(np.arange(4096).reshape(64, 64) == 4095, 1.0, 0.0).astype(np.float32),
        "tricky": tricky,
        "float64_input": rng.standard_normal((4, 4)) * (rng.random((4, 4)) < 0.2),
    }
    back, meta = round_trip(arrays, tmp_path / "f.sparse.npz", meta={"net": "resnet20", "w": [1, 2]})
    assert_bit_exact(back, arrays)
    assert meta == {"net": "resnet20", "w": [1, 2]}


def test_negative_zero_reads_back_as_positive_zero(tmp_path):
    w = np.zeros((8, 8), np.float32)
    w[0, 0], w[1, 1], w[2, 2] = -0.0, 1.5, -0.0
    dense = np.array([[1.0, -0.0], [2.0, 3.0]], np.float32)  # density 0.75: stored dense
    back, _ = round_trip({"w": w, "d": dense, "v": np.array([-0.0, 2.0], np.float32)},
                         tmp_path / "z.sparse.npz")
    for name in ("w", "d", "v"):
        assert not np.signbit(back[name][back[name] == 0]).any(), name
    assert back["w"][1, 1] == 1.5 and np.count_nonzero(back["w"]) == 1


def test_positions_round_trip_and_cost_bound():
    """Elias-Fano: exact inverse, and at most n * (2 + log2(N / n)) bits (+ byte padding) for
    ANY pattern: a bitmask (N bits) would break this bound at every density below ~25 %."""
    rng = np.random.default_rng(3)
    universe = 200_003
    patterns = [np.flatnonzero(rng.random(universe) < d) for d in (0.001, 0.01, 0.1, 0.5)]
    patterns += [np.arange(1000), np.arange(universe - 1000, universe), np.array([0]),
                 np.array([universe - 1]), np.array([0, universe - 1]), np.zeros(0, np.int64)]
    for positions in patterns:
        low_bits, low, high = encode_positions(positions, universe)
        back = decode_positions(low_bits, low, high, positions.size)
        assert np.array_equal(back, positions)
        n = positions.size
        if n:
            bound = n * (2 + math.log2(universe / n)) + 16
            assert 8 * (low.size + high.size) <= bound, (n, low.size, high.size)


# ------------------------------------------------------------------------------------ size
def position_entropy_bits(arrays):
    total = 0.0
    for a in arrays.values():
        p = np.count_nonzero(a) / a.size
        if a.ndim >= 2 and 0 < p <= DENSE_LIMIT:
            total += a.size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    return total


@pytest.mark.parametrize("shapes", [resnet20_shapes(), resnet50_shapes()],
                         ids=["resnet20", "resnet50"])
@pytest.mark.parametrize("sparsity", [0.9, 0.98, 0.995])
def test_file_within_ten_percent_of_ideal(tmp_path, shapes, sparsity):
    arrays = random_net(shapes, 1 - sparsity)
    path = tmp_path / "n.sparse.npz"
    size = write_sparse(arrays, path)
    ideal = ideal_size_bytes(arrays)
    assert size <= 1.10 * ideal, f"{size / ideal:.3f}x the ideal"
    # the positions alone stay within the Elias-Fano bound of their entropy (values could hide
    # a bad position code, since deflate also squeezes the float32 exponents a little)
    with zipfile.ZipFile(path) as archive:
        positions = np.lib.format.read_array(archive.open("positions.npy"))
    nnz = sum(int(np.count_nonzero(a)) for n, a in arrays.items() if a.ndim >= 2)
    assert 8 * positions.size <= position_entropy_bits(arrays) + 0.6 * nnz + 16 * len(shapes)


def test_float16_values_halve_the_values(tmp_path):
    arrays = random_net(resnet20_shapes(), 0.1)
    full = write_sparse(arrays, tmp_path / "a.sparse.npz")
    half = write_sparse(arrays, tmp_path / "b.sparse.npz", value_dtype="float16")
    back, _ = read_sparse(tmp_path / "b.sparse.npz")
    for name, a in arrays.items():
        assert np.array_equal(back[name], a.astype(np.float16).astype(np.float32)), name
    assert half < 0.6 * full
    assert half <= 1.10 * ideal_size_bytes(arrays, value_bits=16)
    with pytest.raises(ValueError, match="value_dtype"):
        write_sparse(arrays, tmp_path / "c.sparse.npz", value_dtype="int8")


# ------------------------------------------------------------------------------------ versions
def rewrite_header(path, change):
    with np.load(path) as data:
        members = {k: data[k] for k in data.files}
    header = json.loads(members["__format__"].tobytes().decode())
    change(header)
    members["__format__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez_compressed(path, **members)


def test_unknown_version_is_refused_with_one_line(tmp_path):
    path = tmp_path / "v.sparse.npz"
    write_sparse({"w": np.eye(4, dtype=np.float32)}, path)
    rewrite_header(path, lambda h: h.update(version=3))
    with pytest.raises(SparseFormatError) as err:
        read_sparse(path)
    assert "version 3 is not supported" in str(err.value) and "\n" not in str(err.value)


def test_damaged_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "d.sparse.npz"
    write_sparse({"w": np.eye(40, dtype=np.float32)}, path)
    rewrite_header(path, lambda h: h["tensors"][0].update(nnz=41))
    with pytest.raises(SparseFormatError, match="expected 41"):
        read_sparse(path)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(SparseFormatError, match="not an rpg-sparse file"):
        read_sparse(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(SparseFormatError, match="cannot read"):
        read_sparse(tmp_path / "junk.npz")


def damaged_versions(good, tmp_path):
    """(label, bytes) of damaged copies of a good file: truncations at many offsets, flipped bits
    at many offsets (zip headers, compressed members, central directory), each member missing,
    header fields that do not match the streams."""
    for end in sorted(set(range(0, len(good), 7)) | {len(good) - 1, len(good) - 22}):
        yield f"truncated at {end}", good[:end]
    for at in range(0, len(good), 3):
        for bit in (0x01, 0x10, 0x80):
            flipped = bytearray(good)
            flipped[at] ^= bit
            yield f"bit {bit:#x} of byte {at}", bytes(flipped)
    with zipfile.ZipFile(io.BytesIO(good)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for left_out in members:
        yield f"no {left_out}", zip_of({k: v for k, v in members.items() if k != left_out})
    header = json.loads(np.lib.format.read_array(io.BytesIO(members["__format__.npy"])).tobytes())
    for field, value in (("shape", [10 ** 12, 10 ** 6]), ("shape", [-3, 4]), ("nnz", -1),
                         ("low_bits", 70), ("kind", "bogus"), ("high_bytes", 10 ** 9), ("shape", "x")):
        edited = json.loads(json.dumps(header))
        edited["tensors"][0][field] = value
        yield f"{field} {value!r}", zip_of(dict(members, **{"__format__.npy": npy_bytes(edited)}))
    yield "tensors missing", zip_of(dict(members, **{"__format__.npy": npy_bytes(
        {k: v for k, v in header.items() if k != "tensors"})}))


def npy_bytes(header):
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(json.dumps(header).encode(), np.uint8))
    return buffer.getvalue()


def zip_of(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_every_damaged_file_is_a_sparse_format_error(tmp_path):
    """Whatever the damage, read_sparse raises SparseFormatError with one line (never BadZipFile,
    zlib.error, KeyError, ...) or, where the damage falls on bytes no reader checks, returns the
    arrays unchanged."""
    rng = np.random.default_rng(0)
    weight = np.where(rng.random((16, 8, 3, 3)) < 0.1, rng.standard_normal((16, 8, 3, 3)), 0)
    arrays = {"conv.weight": weight.astype(np.float32),
              "bn.gamma": rng.standard_normal(16).astype(np.float32)}
    good_path = tmp_path / "good.sparse.npz"
    write_sparse(arrays, good_path, meta={"net": "toy"})
    damaged, refused = tmp_path / "damaged.sparse.npz", 0
    for label, data in damaged_versions(good_path.read_bytes(), tmp_path):
        damaged.write_bytes(data)
        try:
            back, _ = read_sparse(damaged)
        except SparseFormatError as err:
            assert "\n" not in str(err) and str(damaged) in str(err), (label, str(err))
            refused += 1
            continue
        assert back.keys() == arrays.keys(), label
        assert all(np.array_equal(back[k], canonical_zeros(v)) for k, v in arrays.items()), label
    assert refused > 1000


def test_format_1_files_still_read(tmp_path):
    """Files written by the earlier bitmask format (no version) keep loading."""
    rng = np.random.default_rng(0)
    w = np.where(rng.random((16, 8, 3, 3)) < 0.1, rng.standard_normal((16, 8, 3, 3)), 0)
    w = w.astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    np.savez_compressed(tmp_path / "old.npz", **{
        "w::shape": np.asarray(w.shape, np.int64), "w::mask": np.packbits((w != 0).ravel()),
        "w::values": w[w != 0], "b::shape": np.asarray(b.shape, np.int64), "b::dense": b,
        "__meta__::net": np.frombuffer(json.dumps("resnet20").encode(), np.uint8)})
    back, meta = read_sparse(tmp_path / "old.npz")
    assert np.array_equal(back["w"], w) and np.array_equal(back["b"], b)
    assert meta == {"net": "resnet20"}


# ------------------------------------------------------------------------------------ CLI
def pruned_checkpoint(path, sparsity):
    """A ResNet-20 checkpoint whose convs are globally magnitude-pruned to ``sparsity`` (the
    classifier kept: at 98 % one threshold empties it, and export.py refuses a network whose
    output no longer depends on its input). BatchNorm and bias tensors get random values as after
    training: at init they are constant and deflate to nothing, which would make the ratio look
    far better than on a trained network."""
    import mindspore as ms
    from src import checkpoint
    from src.config import build_config, load_yaml
    from src.models import build_network
    from src.pruning.core.base import prunable_weight_names
    cfg = build_config(load_yaml(RPG90), {})
    ms.set_seed(0)
    net = build_network(cfg)
    params = {p.name: p for p in net.get_parameters()}
    names = prunable_weight_names(net, exclude=["fc.weight"])
    magnitudes = np.concatenate([np.abs(params[n].asnumpy()).ravel() for n in names])
    threshold = np.sort(magnitudes)[int(sparsity * magnitudes.size)]
    rng = np.random.default_rng(0)
    for name, param in params.items():
        if name not in names:
            param.set_data(ms.Tensor(np.abs(rng.standard_normal(param.shape)).astype(np.float32)))
    for name in names:
        value = params[name].asnumpy()
        params[name].set_data(ms.Tensor(np.where(np.abs(value) >= threshold, value, 0.0)
                                        .astype(np.float32)))
    checkpoint.save_atomic(net, str(path), meta={"net": cfg.net})


@pytest.mark.parametrize("sparsity", [0.9, 0.98])
def test_export_cli_prints_ratio_within_ten_percent(tmp_path, sparsity):
    ckpt = tmp_path / "p.ckpt"
    pruned_checkpoint(ckpt, sparsity)
    proc = run_script("export.py", "--config_path", RPG90, "--ckpt", ckpt, "--file_format",
                      "SPARSE", "--file_name", tmp_path / "s")
    match = re.search(r"ideal ([\d,]+) bytes \(file is (\d+\.\d\d)x the ideal\)", proc.stdout)
    assert match and "read back bit-exact" in proc.stdout, proc.stdout
    size = (tmp_path / "s.sparse.npz").stat().st_size
    ideal = float(match.group(1).replace(",", ""))
    assert float(match.group(2)) == pytest.approx(size / ideal, abs=0.006)
    assert float(match.group(2)) <= 1.10
