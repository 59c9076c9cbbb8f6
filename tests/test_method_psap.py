"""PSAP as a method, on the trainer's real TrainContext (not a stand-in): planted filter norms
so that exactly the expected filters are zeroed for each score (scores recomputed here from their
definitions), their weights become +0.0 and their momentum 0 while every other filter is left
bit for bit; a planted gradient-energy pattern protects exactly the planted filter."""
import logging

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from src.config import build_config
from src.models import build_network
from src.pruning.filters.energy import ENERGY_PREFIX
from src.pruning.filters.pruner import PSAPPruner
from src.training_graph import build_training_graph

RATIO = 0.3


def l2_scores(weight):
    return np.array([np.sqrt(np.sum(f.astype(np.float64) ** 2)) for f in weight])


def fpgm_scores(weight):
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    return np.array([sum(np.linalg.norm(a - b) for b in flat) for a in flat])


SCORES = {"l2": l2_scores, "fpgm": fpgm_scores}


def _build(tmp_path, **overrides):
    ms.set_context(mode=ms.GRAPH_MODE)   # training runs in graph mode (an earlier test may leave PyNative)
    values = {"net": "resnet20", "in_channels": 1, "num_classes": 10, "image_size": 28,
              "dataset": "fashion_mnist", "epoch_size": 4, "prune_method": "psap",
              "psap_target": "filters", "psap_ratio": RATIO, "psap_end_epoch": 1,
              "psap_adaptive": False, "output_dir": str(tmp_path)}
    values.update(overrides)
    cfg = build_config(values, {})
    ms.set_seed(0)
    net = build_network(cfg)
    session = build_training_graph(cfg, net, 10, logging.getLogger("t.psap"), (1, 1, 28, 28))
    pruner, ctx = session.pruner, session.ctx
    return pruner, ctx


def _moments(ctx):
    return {p.name: m for p, m in zip(ctx.optimizer.parameters, ctx.optimizer.moments)}


def _plant(ctx, names, seed):
    """Filters with distinct, shuffled norms (and mixed signs); momentum 1 everywhere."""
    rng = np.random.default_rng(seed)
    for name in names:
        param = ctx._params[name]
        shape = param.shape
        directions = rng.standard_normal(shape)
        directions /= np.sqrt((directions.reshape(shape[0], -1) ** 2).sum(1)).reshape(-1, 1, 1, 1)
        norms = rng.permutation(np.linspace(0.5, 2.0, shape[0]))
        param.set_data(Tensor((directions * norms.reshape(-1, 1, 1, 1)).astype(np.float32)))
        _moments(ctx)[name].set_data(Tensor(np.ones(shape, np.float32)))


def _state(ctx, names):
    return ({n: ctx._params[n].asnumpy().copy() for n in names},
            {n: _moments(ctx)[n].asnumpy().copy() for n in names})


def _zeroed_filters(weights):
    return np.flatnonzero(~weights.reshape(weights.shape[0], -1).any(axis=1))


@pytest.mark.parametrize("score", sorted(SCORES))
def test_exactly_the_lowest_scoring_filters_are_zeroed(tmp_path, score):
    pruner, ctx = _build(tmp_path, filter_score=score)
    names = pruner.layout.conv_names
    _plant(ctx, names, seed=1)
    before_w, before_m = _state(ctx, names)
    pruner.on_epoch_end(0, ctx)
    after_w, after_m = _state(ctx, names)
    counts = pruner.last_counts
    total = sum(w.shape[0] for w in before_w.values())
    assert counts.sum() == round(RATIO * total)
    for i, name in enumerate(names):
        expected = np.sort(np.argsort(SCORES[score](before_w[name]), kind="stable")[:counts[i]])
        zeroed = _zeroed_filters(after_w[name])
        np.testing.assert_array_equal(zeroed, expected, err_msg=name)
        pruned = np.zeros(before_w[name].shape[0], bool)
        pruned[expected] = True
        assert np.all(after_w[name][pruned] == 0) and not np.signbit(after_w[name][pruned]).any()
        assert np.all(after_m[name][pruned] == 0), f"{name}: momentum of zeroed filters kept"
        assert np.array_equal(after_w[name][~pruned], before_w[name][~pruned]), name
        assert np.array_equal(after_m[name][~pruned], before_m[name][~pruned]), name
    assert np.array_equal(np.flatnonzero(pruner.zeroed),
                          np.concatenate([_zeroed_filters(after_w[n]) + pruner.layout.offsets[i]
                                          for i, n in enumerate(names)]))


def test_protection_keeps_the_planted_filter(tmp_path):
    pruner, ctx = _build(tmp_path, protect_energy="raw", protect_tau=2.0, protect_steps=2)
    names = pruner.layout.conv_names
    _plant(ctx, names, seed=2)
    pruner.on_epoch_end(0, ctx)
    first = {n: _zeroed_filters(ctx._params[n].asnumpy()) for n in names}
    # the next interval's gradient energies: kept filters 1, zeroed 0 except the planted one
    target, favourite = names[3], first[names[3]][1]
    for buffer in pruner.energy_piece.energy:
        name = buffer.name[len(ENERGY_PREFIX):]
        energy = np.ones(buffer.shape, np.float32)
        energy[first[name]] = 0.0
        if name == target:
            energy[favourite] = 5.0          # > tau x median(kept) = 2
        buffer.set_data(Tensor(energy))
    pruner.on_epoch_end(1, ctx)
    offset = pruner.layout.offsets[names.index(target)]
    assert pruner.protection.protect[offset + favourite] == 2
    assert np.count_nonzero(pruner.protection.protect) == 1
    second = {n: _zeroed_filters(ctx._params[n].asnumpy()) for n in names}
    assert not pruner.zeroed[offset + favourite]
    # its weights are still all zero (zeroed at the first step), but it is not a pruned filter
    # now: the layer zeroes as many filters as before, the others
    chosen = np.flatnonzero(pruner.zeroed[offset:offset + len(ctx._params[target].asnumpy())])
    assert favourite not in chosen and len(chosen) == len(first[target])
    for name in names:
        if name != target:
            np.testing.assert_array_equal(second[name], first[name], err_msg=name)


def test_the_loop_hands_psap_what_it_declares(tmp_path):
    """PSAP declares what it needs of the loop; SparseTraining hands it over: the input shape, and
    the training batches its final step re-estimates the BatchNorm statistics on (the loop's, as
    train.py gives them, or those given to end_epoch, as your own loop may)."""
    assert PSAPPruner.needs == ("input_shape",)
    rng = np.random.default_rng(3)
    data = [(Tensor(rng.normal(size=(4, 1, 28, 28)).astype(np.float32)), Tensor(np.zeros(4, np.int32)))
            for _ in range(5)]
    for from_loop, at_end in ((lambda: iter(data), None), (None, data)):
        ms.set_context(mode=ms.GRAPH_MODE)
        cfg = build_config({"net": "resnet20", "in_channels": 1, "dataset": "fashion_mnist",
                            "epoch_size": 1, "prune_method": "psap", "psap_target": "filters",
                            "psap_ratio": RATIO, "psap_bn_recalibration": 3,
                            "output_dir": str(tmp_path)}, {})
        session = build_training_graph(cfg, build_network(cfg), 1, logging.getLogger("t.psap"),
                                       (1, 1, 28, 28), from_loop)
        assert session.pruner.input_shape == (1, 1, 28, 28)
        events = []
        session.ctx.recorders.append(events.append)
        session.end_epoch(recalibration_batches=at_end)       # the last epoch: the final step
        assert [e["batches"] for e in events if e["event"] == "bn_recalibration"] == [3]
