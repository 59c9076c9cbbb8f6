"""export.py in-process: the MINDIR computes what the checkpoint network computes (checked here,
on an input of the test's own); a failed verification exits 1 and leaves an earlier file byte for
byte; the SPARSE file reads back bit for bit against the checkpoint."""
import importlib.util
import os
import sys

import numpy as np
import mindspore as ms
import pytest

from src import checkpoint, export_model
from src.cli import run
from src.config import build_config
from src.models import build_network
from src.sparse_format import read_sparse
from tests.conftest import ROOT, digest

DENSE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
_spec = importlib.util.spec_from_file_location("export_script", os.path.join(ROOT, "export.py"))
export = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A ResNet-20 checkpoint with non-trivial BN statistics and 90 % zero weights (signs mixed)."""
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10}, {})
    ms.set_seed(3)
    net = build_network(cfg)
    rng = np.random.default_rng(3)
    for param in net.get_parameters():
        value = param.asnumpy()
        if param.name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, value.shape)
        elif param.name.endswith(("moving_mean", "beta")):
            value = rng.normal(0, 0.1, value.shape)
        elif param.name.endswith("weight"):
            value = np.where(rng.random(value.shape) < 0.9, 0.0, value)
        param.set_data(ms.Tensor(value.astype(np.float32)))
    path = tmp_path_factory.mktemp("ckpt") / "net.ckpt"
    checkpoint.save_atomic(net, str(path), meta={"net": "resnet20"})
    return path


def _export(monkeypatch, ckpt, fmt, name, *extra):
    monkeypatch.setattr(sys, "argv", ["export.py", "--config_path", DENSE, "--ckpt", str(ckpt),
                                      "--file_format", fmt, "--file_name", str(name), *extra])
    run(export.main)


def _reference_net(ckpt):
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10}, {})
    net = build_network(cfg)
    ms.load_param_into_net(net, {k: v for k, v in ms.load_checkpoint(str(ckpt)).items()
                                 if not k.startswith("meta.")})
    net.set_train(False)
    return net


def test_mindir_matches_the_checkpoint_network(ckpt, tmp_path, monkeypatch):
    _export(monkeypatch, ckpt, "MINDIR", tmp_path / "net")
    assert sorted(os.listdir(tmp_path)) == ["net.mindir"]   # no temporary file left
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "net.mindir")))
    x = ms.Tensor(np.random.default_rng(11).standard_normal((1, 1, 28, 28)).astype(np.float32))
    expected = _reference_net(ckpt)(x).asnumpy()
    got = graph(x).asnumpy()
    assert np.abs(expected).max() > 1e-3          # a network that computes something
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_failed_verification_exits_1_and_keeps_the_earlier_file(ckpt, tmp_path, monkeypatch,
                                                                capsys):
    _export(monkeypatch, ckpt, "MINDIR", tmp_path / "net")
    before = digest(tmp_path / "net.mindir")
    # any difference now fails the check (a forced mismatch between MINDIR and network)
    monkeypatch.setattr(export_model, "TOLERANCE", -1.0)
    with pytest.raises(SystemExit) as stop:
        _export(monkeypatch, ckpt, "MINDIR", tmp_path / "net", "--overwrite", "true")
    assert stop.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "differs from the checkpoint network" in err[0]
    assert digest(tmp_path / "net.mindir") == before
    assert sorted(os.listdir(tmp_path)) == ["net.mindir"]


def test_sparse_export_reads_back_bit_for_bit(ckpt, tmp_path, monkeypatch):
    _export(monkeypatch, ckpt, "SPARSE", tmp_path / "s")
    restored, meta = read_sparse(str(tmp_path / "s.sparse.npz"))
    params = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(ckpt)).items()
              if not k.startswith("meta.")}
    assert set(restored) == set(params) and meta["net"] == "resnet20"
    for name, value in params.items():
        zeroed = np.where(value == 0, np.float32(0.0), value)   # -0.0 is stored as +0.0
        assert np.array_equal(restored[name].view(np.uint32), zeroed.view(np.uint32)), name
    assert os.path.getsize(tmp_path / "s.sparse.npz") < 0.3 * os.path.getsize(ckpt)


def test_a_file_name_with_the_formats_suffix_names_the_file(ckpt, tmp_path, monkeypatch):
    _export(monkeypatch, ckpt, "SPARSE", tmp_path / "s.sparse.npz")
    assert sorted(os.listdir(tmp_path)) == ["s.sparse.npz"]         # not s.sparse.npz.sparse.npz
    read_sparse(str(tmp_path / "s.sparse.npz"))
    assert export_model.base_name("net.mindir", "MINDIR") == "net"
    assert export_model.base_name("net.onnx", "MINDIR") == "net.onnx"  # another format's suffix
    assert export_model.base_name("out/.air", "AIR") == "out/.air"    # nothing would be left


def test_onnx_export_keeps_the_folders_permissions(ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    _export(monkeypatch, ckpt, "ONNX", folder / "net")
    assert (folder / "net.onnx").stat().st_size > 100_000
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)  # MindSpore narrows it to 0700


def test_folded_mindir_matches_the_unfolded_checkpoint_network(ckpt, tmp_path, monkeypatch, capsys):
    _export(monkeypatch, ckpt, "MINDIR", tmp_path / "plain")
    _export(monkeypatch, ckpt, "MINDIR", tmp_path / "folded", "--fold_bn", "true")
    assert "BatchNorm folded into the convs" in capsys.readouterr().out
    assert b"BatchNorm" in (tmp_path / "plain.mindir").read_bytes()
    assert b"BatchNorm" not in (tmp_path / "folded.mindir").read_bytes()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "folded.mindir")))
    x = ms.Tensor(np.random.default_rng(12).standard_normal((1, 1, 28, 28)).astype(np.float32))
    np.testing.assert_allclose(graph(x).asnumpy(), _reference_net(ckpt)(x).asnumpy(),
                               rtol=0, atol=1e-4)


def test_a_wrong_fold_fails_the_check(ckpt, tmp_path, monkeypatch, capsys):
    # the check compares the folded file with the unfolded network: a fold that drops the BN
    # shift is caught, and nothing is written
    from src.models import fold
    right = fold.fold_conv_bn

    def scale_only(conv, bn):
        folded = right(conv, bn)
        folded.bias.set_data(ms.Tensor(np.zeros(folded.bias.shape, np.float32)))
        return folded
    monkeypatch.setattr(fold, "fold_conv_bn", scale_only)
    with pytest.raises(SystemExit) as stop:
        _export(monkeypatch, ckpt, "MINDIR", tmp_path / "net", "--fold_bn", "true")
    assert stop.value.code == 1
    assert "differs from the checkpoint network" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------- any folder: spaces, non-ASCII, '+'
UNUSUAL = "My Prüfung ü"   # ms.export itself refuses any path outside [0-9a-zA-Z@_-.:/\\]


def _onnx_holds_the_network(path):
    """No onnx package here: the ModelProto starts with ir_version (field 1, varint), and the
    graph carries the network's convolutions and their weights by name."""
    data = path.read_bytes()
    assert data[:1] == b"\x08" and len(data) > 100_000
    assert b"Conv" in data and b"conv1.weight" in data


@pytest.mark.parametrize("where", ["absolute", "relative"])
@pytest.mark.parametrize("fmt", ["MINDIR", "ONNX"])
def test_export_into_a_folder_with_spaces_and_umlauts(ckpt, tmp_path, monkeypatch, fmt, where):
    import tempfile
    folder = tmp_path / UNUSUAL
    folder.mkdir()
    staging = tmp_path / "staging"   # TMPDIR: where MindSpore writes before the copy into place
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    name = "net v2+ü"
    if where == "relative":
        monkeypatch.chdir(folder)
    _export(monkeypatch, ckpt, fmt, name if where == "relative" else folder / name)
    written = folder / (name + export_model.FORMATS[fmt])
    assert sorted(os.listdir(folder)) == [written.name]      # no temporary left beside it
    assert os.listdir(staging) == []                          # nor in the temporary folder
    if fmt == "ONNX":
        _onnx_holds_the_network(written)
        return
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(written)))
    x = ms.Tensor(np.random.default_rng(13).standard_normal((1, 1, 28, 28)).astype(np.float32))
    np.testing.assert_allclose(graph(x).asnumpy(), _reference_net(ckpt)(x).asnumpy(),
                               rtol=0, atol=1e-4)


def test_an_export_error_names_the_users_file(ckpt, tmp_path, monkeypatch, capsys):
    """Whatever MindSpore says about the path it was given, the user reads their own file name."""
    folder = tmp_path / UNUSUAL
    folder.mkdir()

    def failing_export(net, *inputs, file_name, file_format):
        raise RuntimeError(f"Write file {file_name}.mindir failed: disk quota exceeded")
    monkeypatch.setattr(ms, "export", failing_export)
    with pytest.raises(SystemExit) as stop:
        _export(monkeypatch, ckpt, "MINDIR", folder / "net")
    assert stop.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{folder / 'net.mindir'} failed: disk quota exceeded" in err[0], err
    assert "rpg_" not in err[0] and ".tmp" not in err[0]
    assert os.listdir(folder) == []
