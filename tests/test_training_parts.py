"""Pieces of train.py: learning-rate schedules, weight-decay groups, pre-trained loading."""
import logging

import numpy as np
import pytest

from src import checkpoint
from src.lr_schedule import learning_rates
from src.models.resnet import build_resnet
from src.training_graph import load_pretrained, weight_decay_groups


def test_warmup_then_cosine():
    rates = learning_rates("cosine", 0.4, total_steps=100, steps_per_epoch=10, warmup_epochs=2)
    assert rates[0] == pytest.approx(0.4 / 20) and rates[19] == pytest.approx(0.4)
    t = np.arange(80)
    np.testing.assert_allclose(rates[20:], 0.2 * (1 + np.cos(np.pi * t / 80)), rtol=1e-6)


def test_step_and_poly():
    rates = learning_rates("step", 0.1, 200, 1, decay_epochs=[60, 120, 160], decay_rate=0.2)
    assert rates[59] == pytest.approx(0.1) and rates[60] == pytest.approx(0.02)
    assert rates[160] == pytest.approx(0.1 * 0.2 ** 3)
    rates = learning_rates("poly", 1.0, 10, 1, poly_power=2.0)
    assert rates[5] == pytest.approx((1 - 5 / 10) ** 2)


def test_weight_decay_skips_batchnorm_and_bias():
    net = build_resnet("resnet20", 10, 1)
    decay, no_decay, order = weight_decay_groups(net, 1e-4)
    assert all(p.name.endswith("weight") and len(p.shape) > 1 for p in decay["params"])
    names = {p.name for p in no_decay["params"]}
    assert "fc.bias" in names and "bn1.gamma" in names and "bn1.beta" in names
    assert len(order["order_params"]) == len(decay["params"]) + len(no_decay["params"])


def test_pretrained_with_other_class_count(tmp_path, caplog):
    source = build_resnet("resnet20", 10, 1)
    path = str(tmp_path / "ten.ckpt")
    checkpoint.save_atomic(source, path, meta={"net": "resnet20"})
    target = build_resnet("resnet20", 5, 1)
    fresh_fc = target.fc.weight.asnumpy().copy()
    logger = logging.getLogger("test.pretrained")
    with caplog.at_level(logging.WARNING, logger="test.pretrained"):
        load_pretrained(target, path, logger)
    assert "classifier" in caplog.text
    np.testing.assert_array_equal(target.conv1.weight.asnumpy(), source.conv1.weight.asnumpy())
    np.testing.assert_array_equal(target.fc.weight.asnumpy(), fresh_fc)
    other = build_resnet("resnet32", 10, 1)
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        load_pretrained(other, path, logger)
