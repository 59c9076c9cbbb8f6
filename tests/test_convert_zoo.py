"""Tests of scripts/convert_zoo_resnet50.py on a synthetic model-zoo ResNet-50 checkpoint.

The zoo's layout (mindspore-ai/models, official/cv/ResNet/src/resnet.py: ``conv1``, ``bn1``,
``layerN.i.convK``, ``down_sample_layer.0/1``, ``end_point`` with 1001 classes) is written out
below by hand, independently of the converter, with random values and the optimizer entries a
zoo training run saves; the converted file is loaded through train.py's own pre_trained loader.
"""
import logging
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402

from src.models.resnet import build_resnet  # noqa: E402
from tests.conftest import batchnorm_like, load_script  # noqa: E402
from src.training_graph import load_pretrained  # noqa: E402

zoo = load_script("convert_zoo_resnet50.py")

BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")


def zoo_layout(classes=1001):
    """name -> shape of the zoo's ResNet-50, in its order."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    shapes.update({f"bn1.{leaf}": (64,) for leaf in BN_LEAVES})
    cin = 64
    for stage, (count, cout) in enumerate(zip([3, 4, 6, 3], [256, 512, 1024, 2048]), start=1):
        mid = cout // 4
        for i in range(count):
            p = f"layer{stage}.{i}"
            for k, (a, b, size) in enumerate([(cin, mid, 1), (mid, mid, 3), (mid, cout, 1)], 1):
                shapes[f"{p}.conv{k}.weight"] = (b, a, size, size)
                shapes.update({f"{p}.bn{k}.{leaf}": (b,) for leaf in BN_LEAVES})
            if i == 0:
                shapes[f"{p}.down_sample_layer.0.weight"] = (cout, cin, 1, 1)
                shapes.update({f"{p}.down_sample_layer.1.{leaf}": (cout,) for leaf in BN_LEAVES})
            cin = cout
    shapes["end_point.weight"] = (classes, 2048)
    shapes["end_point.bias"] = (classes,)
    return shapes


def synthetic_values(shapes, seed=0):
    """Random, distinct values; convs He-scaled and BN statistics plausible, so logits stay finite."""
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in shapes.items():
        value = batchnorm_like(name.rsplit(".", 1)[1], shape, rng)
        if value is None:
            value = rng.normal(0.0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)
        values[name] = value.astype(np.float32)
    return values


def write_zoo_checkpoint(path, values):
    """A checkpoint as a zoo training run leaves it: network, Momentum state, bookkeeping."""
    trainable = [n for n in values if not n.endswith(("moving_mean", "moving_variance"))]
    items = [{"name": n, "data": ms.Tensor(v)} for n, v in values.items()]
    items += [{"name": f"moments.{n}", "data": ms.Tensor(np.full(values[n].shape, 0.5, np.float32))}
              for n in trainable]
    items += [{"name": "learning_rate", "data": ms.Tensor(np.full(10, 0.1, np.float32))},
              {"name": "momentum", "data": ms.Tensor(np.float32(0.9))},
              {"name": "global_step", "data": ms.Tensor(np.array([5005], np.int32))},
              {"name": "epoch_num", "data": ms.Tensor(np.array([90], np.int32))},
              {"name": "step_num", "data": ms.Tensor(np.array([450450], np.int32))}]
    ms.save_checkpoint(items, path)


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory):
    values = synthetic_values(zoo_layout())
    path = str(tmp_path_factory.mktemp("zoo") / "resnet50_zoo.ckpt")
    write_zoo_checkpoint(path, values)
    return path, values


def test_check_network_has_the_zoo_layout():
    """The converter's zoo-layout network (used by its check) has exactly the zoo's names/shapes."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for pad_mode in ("same", "pad"):
        net = zoo.zoo_resnet50(1001, pad_mode)
        assert {p.name: tuple(p.shape) for p in net.get_parameters()} == zoo_layout()


def test_converted_zoo_checkpoint_loads_as_pre_trained(zoo_file, tmp_path):
    path, values = zoo_file
    out = str(tmp_path / "converted.ckpt")
    assert zoo.main(["--input", path, "--output", out, "--no_check"]) == 0
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = build_resnet("resnet50", num_classes=1000)
    load_pretrained(net, out, logging.getLogger("test"))  # what train.py --pre_trained runs
    got = {p.name: p.asnumpy() for p in net.get_parameters()}
    assert len(got) == len(values)
    for name, value in got.items():
        source = name.replace(".downsample.", ".down_sample_layer.")
        source = "end_point." + source[3:] if source.startswith("fc.") else source
        expected = values[source]
        if name.startswith("fc."):
            expected = expected[:1000]  # the zoo's extra class is the last row
        if name.endswith("moving_variance"):
            np.testing.assert_allclose(value, expected + 9e-5, rtol=0, atol=1e-6, err_msg=name)
            assert not np.array_equal(value, expected), name  # the eps fold happened
        else:
            np.testing.assert_array_equal(value, expected, err_msg=name)


def test_logits_check_passes_and_measures_the_padding(zoo_file, tmp_path):
    path, _ = zoo_file
    lines = []
    symmetric, same, scale = zoo.convert(path, str(tmp_path / "c.ckpt"), check="auto",
                                         log=lines.append, check_shape=(2, 3, 64, 64))
    assert symmetric <= 1e-3 * max(1.0, scale)
    assert same > 10 * symmetric  # 'same' padding really moves the outputs
    assert any("'same' padding" in line for line in lines)


def test_logits_check_catches_a_wrong_class_row(zoo_file, tmp_path, monkeypatch):
    """Dropping the first row instead of the last must fail the check, and write nothing."""
    path, _ = zoo_file

    def drop_first(arrays, num_classes, _path):
        out = dict(arrays)
        for key in ("end_point.weight", "end_point.bias"):
            out[key] = out[key][1:]
        return out, 0

    monkeypatch.setattr(zoo, "drop_background_row", drop_first)
    out = tmp_path / "bad.ckpt"
    with pytest.raises(zoo.ConversionError, match="do not act the same"):
        zoo.convert(path, str(out), check="auto", log=lambda _: None, check_shape=(2, 3, 64, 64))
    assert not out.exists()


def test_not_a_zoo_checkpoint_is_one_error_line(tmp_path, capsys):
    ours = str(tmp_path / "ours.ckpt")
    ms.save_checkpoint([{"name": "fc.weight", "data": ms.Tensor(np.ones((10, 4), np.float32))},
                        {"name": "conv1.weight", "data": ms.Tensor(np.ones((4, 3, 3, 3), np.float32))}],
                       ours)
    assert zoo.main(["--input", ours, "--output", str(tmp_path / "o.ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a model-zoo ResNet-50 checkpoint" in err
    assert "fc.weight" in err

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert zoo.main(["--input", str(garbage), "--output", str(tmp_path / "o.ckpt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read" in err
    assert not (tmp_path / "o.ckpt").exists()


def test_wrong_class_count_is_one_error_line(zoo_file, tmp_path, capsys):
    path, _ = zoo_file
    assert zoo.main(["--input", path, "--output", str(tmp_path / "o.ckpt"),
                     "--num_classes", "10", "--no_check"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "end_point has 1001 classes" in err
