"""Tests of scripts/convert_torchvision_resnet50.py and its readers (src/conversion/) on weights
made here (no download).

Without torch: our network's weights are written under torchvision's names (the key list is
generated below from torchvision's ResNet layout, independently of the converter's mapping),
converted back and compared tensor by tensor and logit by logit. With torch (skipped when torch is
absent): a torch state dict is converted and the logits are compared with torch's.
"""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402

from src import checkpoint  # noqa: E402
from src.conversion import torch_resnet, weight_files  # noqa: E402
from src.models.resnet import build_resnet  # noqa: E402
from tests.conftest import batchnorm_like, load_script  # noqa: E402

conv = load_script("convert_torchvision_resnet50.py")

LAYOUT = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# torchvision BatchNorm key -> MindSpore parameter (written here, not taken from the converter)
TV_BN_TO_MS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}


def torchvision_keys(arch):
    """The state-dict keys of torchvision's resnet18/50, in its order, from its module layout."""
    kind, stages = LAYOUT[arch]
    convs = 2 if kind == "basic" else 3
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in BN_KEYS]
    for stage, count in enumerate(stages, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for i in range(1, convs + 1):
                keys.append(f"{prefix}.conv{i}.weight")
                keys += [f"{prefix}.bn{i}.{k}" for k in BN_KEYS]
            if block == 0 and (stage > 1 or kind == "bottleneck"):
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def tv_to_ms(key):
    module, _, leaf = key.rpartition(".")
    bn_module = module.split(".")[-1].startswith("bn") or module.endswith("downsample.1")
    return f"{module}.{TV_BN_TO_MS[leaf]}" if bn_module and leaf in TV_BN_TO_MS else key


def random_net(arch, num_classes=1000, seed=0):
    """Our network with every tensor distinct (BN statistics and affine terms are not 0/1)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = build_resnet(arch, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    for param in net.get_parameters():
        value = batchnorm_like(param.name.rsplit(".", 1)[1], param.shape, rng)
        if value is None:
            value = param.asnumpy() * rng.uniform(0.9, 1.1, param.shape)
        param.set_data(ms.Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net


def export_torchvision(net, arch):
    """Our weights under torchvision's names, num_batches_tracked included, as torch saves them."""
    own = {p.name: p.asnumpy() for p in net.get_parameters()}
    keys = torchvision_keys(arch)
    mapped = {tv_to_ms(k) for k in keys if not k.endswith("num_batches_tracked")}
    assert mapped == set(own), "our parameter names differ from torchvision's layout"
    return {k: (np.array(100, dtype=np.int64) if k.endswith("num_batches_tracked")
                else own[tv_to_ms(k)]) for k in keys}


def logits(net, shape=(1, 3, 64, 64), seed=1):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    return net(ms.Tensor(x)).asnumpy()


def reload(path, arch, num_classes=1000):
    params, meta, _ = checkpoint.load(path)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = build_resnet(arch, num_classes=num_classes)
    checkpoint.load_into(net, params, path, strict=True)
    net.set_train(False)
    return net, params, meta


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def r18():
    net = random_net("resnet18", num_classes=10)
    return net, export_torchvision(net, "resnet18")


@pytest.fixture(scope="module")
def r18_npz(r18, tmp_path_factory):
    path = tmp_path_factory.mktemp("r18") / "resnet18.npz"
    np.savez(path, **r18[1])
    return str(path)


def run_main(args, capsys):
    code = conv.main(args)
    out, err = capsys.readouterr()
    return code, out, err


# --- conversions without torch --------------------------------------------------------------

def test_resnet50_npz_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(conv, "torch_available", lambda: False)
    net = random_net("resnet50", num_classes=1000)
    tv = export_torchvision(net, "resnet50")
    src, out = tmp_path / "r50.npz", tmp_path / "r50.ckpt"
    np.savez(src, **tv)
    messages = []
    assert conv.convert(str(src), str(out), "resnet50", 1000, log=messages.append) is None
    assert any("logits check skipped" in m for m in messages)
    back, params, meta = reload(str(out), "resnet50")
    assert meta["net"] == "resnet50" and meta["num_classes"] == 1000
    assert len(params) == len(tv) - sum(k.endswith("num_batches_tracked") for k in tv)
    for key, value in tv.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(params[tv_to_ms(key)].asnumpy(), value, err_msg=key)
    np.testing.assert_allclose(logits(back), logits(net), rtol=1e-6, atol=1e-6)


def test_resnet18_safetensors_with_module_prefix(r18, tmp_path):
    from safetensors.numpy import save_file
    net, tv = r18
    src, out = tmp_path / "r18.safetensors", tmp_path / "r18.ckpt"
    save_file({f"module.{k}": np.ascontiguousarray(v) for k, v in tv.items()}, str(src))
    conv.convert(str(src), str(out), "resnet18", 10, check="off", log=quiet)
    back, params, _ = reload(str(out), "resnet18", 10)
    for key, value in tv.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(params[tv_to_ms(key)].asnumpy(), value, err_msg=key)
    np.testing.assert_allclose(logits(back), logits(net), rtol=1e-6, atol=1e-6)


def test_overwrite_replaces_an_earlier_output_only_when_asked(r18_npz, tmp_path, capsys):
    out = tmp_path / "r18.ckpt"
    out.write_bytes(b"earlier checkpoint")
    args = ["--input", r18_npz, "--output", str(out), "--arch", "resnet18", "--num_classes", "10",
            "--no_check"]
    code, _, err = run_main(args, capsys)
    assert code == 2 and "exists" in err and "--overwrite true" in err, err
    assert out.read_bytes() == b"earlier checkpoint"
    code, _, err = run_main([*args, "--overwrite"], capsys)   # bare --overwrite: true
    assert code == 0, err
    _, params, meta = reload(str(out), "resnet18", 10)
    assert meta["net"] == "resnet18" and "fc.weight" in params
    assert [p.name for p in tmp_path.iterdir()] == ["r18.ckpt"]
    code, _, err = run_main([*args, "--overwrite", "maybe"], capsys)
    assert code == 2 and "--overwrite" in err and len(err.splitlines()) == 1


def write_safetensors(path, tensors):
    """The format by hand: u64 header size, JSON header, raw data (dtype code, raw bytes, shape)."""
    header, blobs, offset = {"__metadata__": {"format": "test"}}, [], 0
    for name, (dtype, raw, shape) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_builtin_safetensors_reader(tmp_path):
    f32 = np.arange(6, dtype=np.float32).reshape(2, 3)
    f16 = np.array([0.5, -2.0], dtype=np.float16)
    bf16 = np.array([1.0, -3.5, 0.15625], dtype=np.float32)  # exact in bfloat16
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": ("F32", f32.tobytes(), f32.shape),
                             "h": ("F16", f16.tobytes(), f16.shape),
                             "b": ("BF16", (bf16.view(np.uint32) >> 16).astype("<u2").tobytes(),
                                   bf16.shape)})
    got = weight_files.read_safetensors_builtin(str(path))
    assert set(got) == {"a", "h", "b"}
    np.testing.assert_array_equal(got["a"], f32)
    np.testing.assert_array_equal(got["h"], f16)
    np.testing.assert_array_equal(got["b"], bf16)
    # the safetensors package (if any) cannot hold bfloat16 in numpy: read_safetensors falls back
    np.testing.assert_array_equal(weight_files.read_safetensors(str(path))["b"], bf16)
    from safetensors.numpy import load_file
    small = tmp_path / "s.safetensors"
    write_safetensors(small, {"a": ("F32", f32.tobytes(), f32.shape)})
    np.testing.assert_array_equal(load_file(str(small))["a"], f32)  # our writer is the real format


# --- errors ---------------------------------------------------------------------------------

def test_missing_key(r18, tmp_path, capsys):
    tv = dict(r18[1])
    del tv["layer2.1.bn2.running_var"]
    src, out = tmp_path / "m.npz", tmp_path / "m.ckpt"
    np.savez(src, **tv)
    code, _, err = run_main(["--input", str(src), "--output", str(out), "--arch", "resnet18",
                             "--num_classes", "10"], capsys)
    assert code == 1
    assert "missing layer2.1.bn2.running_var" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_shape_mismatch_keeps_existing_output(r18_npz, tmp_path, capsys):
    out = tmp_path / "keep.ckpt"
    out.write_bytes(b"earlier checkpoint")
    code, _, err = run_main(["--input", r18_npz, "--output", str(out), "--arch", "resnet18",
                             "--overwrite", "true"], capsys)  # the file: 10 classes, the net 1000
    assert code == 1
    assert "shape mismatch fc.weight (10, 512) in the file, (1000, 512) expected" in err
    assert "--num_classes" in err
    assert out.read_bytes() == b"earlier checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.ckpt"]  # no temporary file left


def test_unexpected_key_and_wrong_arch(r18, r18_npz, tmp_path, capsys):
    tv = dict(r18[1], **{"layer1.0.se.weight": np.zeros(3, np.float32)})
    src = tmp_path / "x.npz"
    np.savez(src, **tv)
    code, _, err = run_main(["--input", str(src), "--output", str(tmp_path / "x.ckpt"),
                             "--arch", "resnet18", "--num_classes", "10"], capsys)
    assert code == 1 and "unexpected layer1.0.se.weight" in err
    code, _, err = run_main(["--input", r18_npz, "--output", str(tmp_path / "y.ckpt"),
                             "--num_classes", "10"], capsys)  # default --arch resnet50
    assert code == 1 and "missing" in err and "--arch resnet18" in err


def test_duplicate_after_prefix_strip(r18, tmp_path, capsys):
    tv = dict(r18[1])
    tv["module.fc.bias"] = tv["fc.bias"]
    src = tmp_path / "d.npz"
    np.savez(src, **tv)
    code, _, err = run_main(["--input", str(src), "--output", str(tmp_path / "d.ckpt"),
                             "--arch", "resnet18", "--num_classes", "10"], capsys)
    assert code == 1 and "'fc.bias' twice" in err


@pytest.mark.parametrize("name", ["w.npz", "w.safetensors", "w.pth"])
def test_corrupt_input(name, tmp_path, capsys):
    src = tmp_path / name
    src.write_text("these are not weights\n")
    code, _, err = run_main(["--input", str(src), "--output", str(tmp_path / "o.ckpt")], capsys)
    assert code == 1 and err.startswith("error: cannot read") and len(err.splitlines()) == 1


def test_bad_arguments(r18_npz, tmp_path, capsys):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF")
    for args in (["--input", str(weights), "--output", str(tmp_path / "o.ckpt")],
                 ["--input", r18_npz, "--output", str(tmp_path / "o.bin")],
                 ["--output", str(tmp_path / "o.ckpt")],
                 ["--input", r18_npz, "--output", str(tmp_path / "o.ckpt"), "--arch", "vgg16"]):
        code, _, err = run_main(args, capsys)
        assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, args
    code, _, err = run_main(["--input", str(tmp_path / "none.npz"),
                             "--output", str(tmp_path / "o.ckpt")], capsys)
    assert code == 1 and "input not found" in err


def test_command_line_error_is_one_line(r18, tmp_path):
    """The real entry point: exit code 1, one line on stderr, no traceback."""
    tv = {k: v for k, v in r18[1].items() if k != "fc.bias"}
    src = tmp_path / "cli.npz"
    np.savez(src, **tv)
    out = tmp_path / "cli.ckpt"
    proc = subprocess.run([sys.executable, conv.__file__, "--input", str(src), "--output", str(out),
                           "--arch", "resnet18", "--num_classes", "10"],
                          capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing fc.bias" in lines[0]
    assert not out.exists()


# --- with torch -----------------------------------------------------------------------------

def torch_model(torch, arch, num_classes, seed=0):
    """The converter's torch reference with every BatchNorm tensor non-trivial."""
    torch.manual_seed(seed)
    model = torch_resnet.torch_resnet(arch, num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(100)
    return model.eval()


def test_torch_pth_resnet50_logits_match(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(conv, "CHECK_SHAPE", (1, 3, 96, 96))  # the script's 2x3x224x224 is slower
    model = torch_model(torch, "resnet50", 1000)
    src, out = tmp_path / "r50.pth", tmp_path / "r50.ckpt"
    # as torchvision's reference scripts save: under "model", DataParallel prefix, extra entries
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()},
                "epoch": 3}, str(src))
    messages = []
    diff = conv.convert(str(src), str(out), "resnet50", 1000, log=messages.append)
    assert diff is not None and diff <= conv.LOGITS_TOLERANCE, messages
    assert any("max abs diff" in m for m in messages)
    net, params, _ = reload(str(out), "resnet50")
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(params[tv_to_ms(key)].asnumpy(), value.numpy(),
                                          err_msg=key)
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    got = net(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_builtin_torch_reader_matches_torch_load(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import argparse
    state = {"a": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous view
             "v": torch.arange(10.0)[2:7],  # storage offset
             "h": torch.randn(3, 2).half(), "b": torch.randn(5).bfloat16(),
             "n": torch.tensor(7), "p": torch.nn.Parameter(torch.ones(2))}
    path = tmp_path / "mix.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, str(path))
    expected = weight_files.find_state_dict(weight_files.read_torch(str(path)), "x")
    got = weight_files.find_state_dict(weight_files.read_torch_zip_builtin(str(path)), "x")
    assert set(got) == set(state)
    for key in state:
        assert got[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the whole conversion without torch: .pth read by the built-in reader, check skipped
    model = torch_model(torch, "resnet18", 10)
    src, out = tmp_path / "r18.pth", tmp_path / "r18.ckpt"
    torch.save(model.state_dict(), str(src))
    monkeypatch.setattr(conv, "torch_available", lambda: False)
    monkeypatch.setattr(weight_files, "torch_available", lambda: False)
    assert conv.convert(str(src), str(out), "resnet18", 10, log=quiet) is None
    _, params, _ = reload(str(out), "resnet18", 10)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(params[tv_to_ms(key)].asnumpy(), value.numpy())


def test_logits_check_failure_writes_nothing(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    model = torch_model(torch, "resnet18", 10)
    src, out = tmp_path / "r18.pth", tmp_path / "r18.ckpt"
    torch.save(model.state_dict(), str(src))
    monkeypatch.setattr(conv, "CHECK_SHAPE", (1, 3, 64, 64))
    real = conv.torch_logits
    monkeypatch.setattr(conv, "torch_logits", lambda *a, **k: real(*a, **k) + 0.01)
    with pytest.raises(conv.ConversionError, match="MindSpore is much further off"):
        conv.convert(str(src), str(out), "resnet18", 10, log=quiet)
    assert not out.exists()
    # the same offset under a larger --tolerance passes
    assert conv.convert(str(src), str(out), "resnet18", 10, tolerance=0.05, log=quiet) > 0.005
    assert out.exists()


# --- a .pth written once by torch (tests/data/make_torch_fixture.py), read here without it ----

FIXTURE = os.path.join(ROOT, "tests", "data", "torch_state.pth")


def test_committed_pth_read_without_torch(monkeypatch):
    monkeypatch.setattr(weight_files, "torch_available", lambda: False)
    with np.load(os.path.join(ROOT, "tests", "data", "torch_state_expected.npz")) as data:
        expected = {k: data[k] for k in data.files}
    tensors, fmt = weight_files.read_input(FIXTURE)   # under "model", with the DataParallel prefix
    assert fmt == "torch" and set(tensors) == set(expected)
    for key, value in expected.items():
        assert tensors[key].dtype == value.dtype, key
        assert tensors[key].shape == value.shape, key
        assert tensors[key].tobytes() == np.ascontiguousarray(value).tobytes(), key  # bit for bit
    raw = weight_files.read_torch_zip_builtin(FIXTURE)
    assert raw["epoch"] == 3 and raw["args"].lr == 0.1
