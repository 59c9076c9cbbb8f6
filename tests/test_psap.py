"""PSAP: schedule, adaptive layer ratios, scores, protection, and the pruner on a fake trainer."""
import logging
import os

import numpy as np
import mindspore as ms
import pytest

from src import checkpoint
from src.config import build_config, load_yaml
from src.dataset import input_shape
from src.errors import ConfigError
from src.models import build_network
from src.models.flops import count_macs_params, layer_records
from src.models.resnet import build_resnet, default_inner_widths
from src.pruning.filters.allocation import (adaptive_layer_ratios, asfp_target, count_bounds,
                                            filter_costs, flops_layer_counts, removed_macs,
                                            weight_sparsity_ratio)
from src.pruning.filters.protection import OUTCOME_COLUMNS, bn_normalized_energy, protected_filters
from src.pruning.filters.pruner import PSAPPruner
from src.pruning.filters.scores import filter_scores, relu_gaussian_variance, taylor_bn_terms
from src.pruning.filters.surgery import prunable_layers
from src.pruning.filters.widths import round_pruned_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGGER = logging.getLogger("test_psap")


# --------------------------------------------------------------------------- pure functions

def test_asfp_target_curve():
    values = [asfp_target(t, 0.5, 10, 4.0) for t in range(0, 13)]
    assert values[0] == 0.0
    assert values[10] == values[12] == 0.5
    assert all(b > a for a, b in zip(values[:10], values[1:11]))            # rising to the target
    assert values[1] - values[0] > values[10] - values[9]                    # mild at the end
    assert asfp_target(5, 0.5, 10, 0.0) == pytest.approx(0.25)               # k = 0: linear
    assert asfp_target(1, 0.4, 1, 4.0) == 0.4                                # end 1: SFP, full at once


def test_weight_sparsity_ratio_matches_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4, 3, 3))
    expected = np.mean(np.abs(w) < 0.1 * np.abs(w).max())
    assert weight_sparsity_ratio(w, 0.1) == pytest.approx(expected)
    exclude = np.zeros(8, bool)
    exclude[:3] = True
    w[:3] = 0
    expected = np.mean(np.abs(w[3:]) < 0.1 * np.abs(w).max())
    assert weight_sparsity_ratio(w, 0.1, exclude) == pytest.approx(expected)
    assert weight_sparsity_ratio(np.zeros((2, 2, 1, 1)), 0.1) == 1.0


def test_adaptive_ratios_meet_filter_target_exactly_and_respect_cap():
    rng = np.random.default_rng(1)
    for _ in range(300):
        layers = int(rng.integers(1, 30))
        n = rng.choice([4, 16, 32, 64, 128, 512], size=layers)
        s = rng.uniform(0, 1, layers) * (rng.uniform(size=layers) > 0.2)
        cap = float(rng.uniform(0.3, 0.95))
        p = float(rng.uniform(0, 0.9)) * cap
        counts = adaptive_layer_ratios(s, n, p, cap)
        assert counts.sum() == round(p * n.sum())
        assert np.all(counts <= np.minimum(np.floor(cap * n + 1e-9), n - 1))
        assert np.all(counts >= 0)


def test_adaptive_ratios_follow_sparsity():
    n = np.array([64, 64, 64, 64])
    counts = adaptive_layer_ratios([0.1, 0.2, 0.3, 0.4], n, 0.3, 0.9)
    assert list(counts) == sorted(counts) and counts[3] > counts[0]
    # P_l = P * s_l / s_mean before rescaling: here no cap binds, so the ratios are exact
    assert np.allclose(counts / n, 0.3 * np.array([0.1, 0.2, 0.3, 0.4]) / 0.25, atol=1 / 64)
    # a cap that binds: the excess goes to the other layers, the total stays exact
    counts = adaptive_layer_ratios([0.05, 0.05, 0.05, 0.9], n, 0.3, 0.5)
    assert counts[3] == 32 and counts.sum() == round(0.3 * 256)
    # equal sparsities (SFP baseline): uniform ratios
    assert list(adaptive_layer_ratios([1, 1, 1], [16, 16, 16], 0.5, 0.8)) == [8, 8, 8]
    # no sparse layer at all: uniform as well
    assert list(adaptive_layer_ratios([0, 0], [10, 10], 0.4, 0.8)) == [4, 4]


def test_adaptive_ratios_with_minimum_counts():
    n = np.array([16, 16, 32, 64])
    counts = adaptive_layer_ratios([0.2, 0.2, 0.2, 0.2], n, 0.25, 0.5, minimum=[12, 0, 0, 0])
    assert counts[0] == 12 and counts.sum() == round(0.25 * n.sum())   # overrides the cap (8)
    assert counts[1] <= counts[2] / 2 + 1
    counts = adaptive_layer_ratios([0.2, 0.2, 0.2, 0.2], n, 0.05, 0.5, minimum=[12, 3, 0, 0])
    assert list(counts) == [12, 3, 0, 0]                                 # minimums exceed target
    counts = adaptive_layer_ratios([0.2, 0.2, 0.2, 0.2], n, 0.4, 0.8, minimum=[16, 0, 0, 0])
    assert counts[0] == 15                                               # one filter always stays


def test_adaptive_ratios_cost_target_within_one_percent():
    rng = np.random.default_rng(2)
    for _ in range(200):
        layers = int(rng.integers(3, 40))
        n = rng.choice([16, 32, 64, 256], size=layers)
        costs = rng.uniform(1e3, 1e5, layers)
        s = rng.uniform(0, 1, layers)
        total = float(np.dot(n, costs)) * 1.3          # the unprunable layers cost something too
        p = float(rng.uniform(0.05, 0.5))
        counts = adaptive_layer_ratios(s, n, p, 0.8, costs=costs, total_cost=total)
        miss = abs(float(np.dot(counts, costs)) - p * total)
        assert miss <= costs.max() / 2            # as close as whole filters allow
        if layers >= 20:
            assert miss <= 0.01 * p * total
        assert np.all(counts <= np.floor(0.8 * n + 1e-9))


def test_flops_target_on_bottlenecks_is_exact_within_one_percent():
    net = build_resnet("resnet50", num_classes=1000, in_channels=3)
    records = layer_records(net, (1, 3, 224, 224))
    layers = prunable_layers(net)
    n = np.array([r["c_out"] for r in records if r["name"] in {l["conv"] for l in layers}])
    s = np.random.default_rng(3).uniform(0.05, 0.6, len(layers))
    counts = flops_layer_counts(s, n, 0.45, 0.8, records, layers)
    dense = sum(r["macs"] for r in records)
    achieved = removed_macs(records, layers, counts) / dense
    assert abs(achieved - 0.45) <= 0.0045
    # the same count from a network actually built with those widths
    widths = default_inner_widths("resnet50")
    for layer, c in zip(layers, counts):
        widths[layer["block"]][layer["inner"]] -= int(c)
    small, _ = count_macs_params(build_resnet("resnet50", inner_widths=widths), (1, 3, 224, 224))
    assert dense - small == removed_macs(records, layers, counts)
    assert len(filter_costs(records, layers)) == len(layers)


def _independent_macs(arch, widths, shape):
    """MACs of a network built with ``widths`` (the analytic walk of src.models.flops, not
    removed_macs)."""
    return count_macs_params(build_resnet(arch, num_classes=10, in_channels=shape[1],
                                          inner_widths=widths), shape)[0]


@pytest.mark.parametrize("multiple", [4, 8])
def test_width_rounding_meets_the_flops_target(multiple):
    shape = (1, 3, 32, 32)
    net = build_resnet("resnet56", num_classes=10, in_channels=3)
    records = layer_records(net, shape)
    layers = prunable_layers(net)
    n = np.array([16] * 9 + [32] * 9 + [64] * 9)
    dense = sum(r["macs"] for r in records)
    rng = np.random.default_rng(24)
    for ratio in (0.2, 0.4, 0.6):
        counts = flops_layer_counts(rng.uniform(0.05, 0.6, len(n)), n, ratio, 0.8, records, layers)
        _, lower, caps = count_bounds(n, 0.8, None, None)
        rounded, unrounded = round_pruned_counts(
            counts, n, multiple, lower, caps, lambda c: removed_macs(records, layers, c),
            ratio * dense, tolerance=0.005 * dense)
        assert unrounded == []
        kept = n - rounded
        assert np.all((kept % multiple == 0) | (kept == n)), kept
        assert np.all(kept >= 1) and np.all(kept <= n)
        assert np.all(rounded <= np.floor(0.8 * n))
        widths = default_inner_widths("resnet56")
        for layer, k in zip(layers, kept):
            widths[layer["block"]][layer["inner"]] = int(k)
        achieved = 1 - _independent_macs("resnet56", widths, shape) / dense
        assert abs(achieved - ratio) <= 0.01, (ratio, achieved)
        # the layer ratios stay the allocation's: widths next to it (one step further where a
        # cap leaves a layer no multiple on one side)
        assert np.all(np.abs(rounded - counts) < 2 * multiple), rounded - counts


def test_width_rounding_bounds_and_filter_target():
    n = np.array([6, 16, 16, 32, 64])
    counts = np.array([2, 5, 9, 11, 30])
    lower = np.array([1, 3, 0, 0, 0])           # layers 0, 1 must lose 1, 3 (e.g. dead filters)
    caps = np.array([5, 12, 12, 25, 51])
    target = int(counts.sum())
    rounded, unrounded = round_pruned_counts(counts, n, 8, lower, caps, np.sum, target)
    kept = n - rounded
    assert unrounded == [0]             # 6 filters, one must go: no allowed width, left as is
    assert rounded[0] == counts[0]
    assert np.all(kept[1:] % 8 == 0)
    assert np.all(rounded >= lower) and np.all(rounded <= caps)
    # independent check: brute force over every allowed combination gives the best miss
    options = [[c for c in range(lower[i], caps[i] + 1) if (n[i] - c) % 8 == 0 or c == 0]
               for i in range(1, 5)]
    best = min(abs(counts[0] + sum(combo) - target)
               for combo in np.array(np.meshgrid(*options)).reshape(4, -1).T)
    assert abs(int(rounded.sum()) - target) == best
    assert list(round_pruned_counts(counts, n, 1, lower, caps, np.sum, target)[0]) == list(counts)


def test_infeasible_target_raises():
    with pytest.raises(ValueError):
        adaptive_layer_ratios([0.5, 0.5], [10, 10], 0.6, 0.5)
    with pytest.raises(ValueError):  # protected filters leave too few candidates
        adaptive_layer_ratios([0.5, 0.5], [10, 10], 0.4, 0.8, available=[2, 2])


def test_filter_scores():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(6, 3, 3, 3))
    flat = w.reshape(6, -1)
    assert np.allclose(filter_scores(w, "l2"), np.linalg.norm(flat, axis=1))
    brute = [sum(np.linalg.norm(flat[i] - flat[j]) for j in range(6)) for i in range(6)]
    assert np.allclose(filter_scores(w, "fpgm"), brute)
    # the filter at the centre of the others is the most replaceable one for FPGM
    w[2] = w[[0, 1, 3, 4, 5]].mean(axis=0)
    assert np.argmin(filter_scores(w, "fpgm")) == 2
    with pytest.raises(ValueError):
        filter_scores(w, "taylor")


def _bn(rng, n, eps=1e-5):
    return {"gamma": rng.normal(0, 1, n), "beta": rng.normal(0, 0.5, n),
            "moving_variance": rng.uniform(0.1, 4.0, n), "eps": eps}


def test_bn_l2_score_matches_numpy_and_ignores_the_filter_scale():
    rng = np.random.default_rng(21)
    w = rng.normal(size=(7, 4, 3, 3))
    bn = _bn(rng, 7)
    expected = [abs(bn["gamma"][j]) / np.sqrt(bn["moving_variance"][j] + bn["eps"])
                * np.sqrt(np.sum(w[j] ** 2)) for j in range(7)]
    assert np.allclose(filter_scores(w, "bn_l2", bn=bn), expected, rtol=1e-12)
    # BN divides the filter's scale out: x10 weights (and x100 variance) = same channel, same
    # score; plain l2 is fooled by the scale
    scaled_w, scaled_bn = w.copy(), dict(bn, moving_variance=bn["moving_variance"].copy())
    scaled_w[3] *= 10.0
    scaled_bn["moving_variance"][3] *= 100.0
    assert filter_scores(scaled_w, "bn_l2", bn=scaled_bn)[3] == pytest.approx(expected[3],
                                                                             rel=1e-4)
    assert filter_scores(scaled_w, "l2")[3] == pytest.approx(10 * np.linalg.norm(w[3]))


def test_bn_energy_score_matches_monte_carlo():
    """Variance of relu(BN output), BN output ~ N(beta, gamma^2 var / (var + eps)), against
    sampled channels."""
    rng = np.random.default_rng(22)
    w = rng.normal(size=(6, 2, 3, 3))
    bn = {"gamma": np.array([1.0, -2.0, 0.5, 1.0, 3.0, 1.0]),
          "beta": np.array([0.0, 1.0, -0.2, -4.0, 2.0, 0.5]),
          "moving_variance": np.array([1.0, 0.5, 2.0, 1.0, 1e-6, 1.0]), "eps": 1e-5}
    w[5] = 0.0                                  # a zero filter outputs a constant: nothing
    scores = filter_scores(w, "bn_energy", bn=bn)
    z = rng.normal(size=400_000)
    for j in range(5):
        spread = abs(bn["gamma"][j]) * np.sqrt(bn["moving_variance"][j]
                                               / (bn["moving_variance"][j] + bn["eps"]))
        sampled = np.var(np.maximum(bn["beta"][j] + spread * z, 0.0))
        assert scores[j] == pytest.approx(sampled, rel=0.02, abs=1e-6), j
    assert scores[3] < 1e-3 * scores[0]         # dead ReLU: beta 4 sigma below zero
    assert scores[5] == 0.0
    # the closed form at the textbook point: Var[relu(N(0, 1))] = 1/2 - 1/(2 pi)
    assert relu_gaussian_variance(0.0, 1.0) == pytest.approx(0.5 - 0.5 / np.pi, rel=1e-12)


def test_taylor_bn_terms_match_numpy():
    rng = np.random.default_rng(23)
    gamma, beta, g_gamma, g_beta = (rng.normal(size=5) for _ in range(4))
    expected = [(gamma[j] * g_gamma[j] + beta[j] * g_beta[j]) ** 2 for j in range(5)]
    assert np.allclose(taylor_bn_terms(gamma, beta, g_gamma, g_beta), expected, rtol=1e-12)
    taylor = rng.uniform(size=5)
    assert np.array_equal(filter_scores(np.ones((5, 1, 1, 1)), "taylor_bn", taylor=taylor), taylor)
    with pytest.raises(ValueError):
        filter_scores(np.ones((5, 1, 1, 1)), "taylor_bn")


def test_protected_filters():
    kept = np.array([1.0, 2.0, 3.0, 4.0, 100.0])     # median 3
    zeroed = np.array([0.0, 2.9, 3.1, 50.0])
    assert list(protected_filters(zeroed, kept, 1.0)) == [False, False, True, True]
    assert list(protected_filters(zeroed, kept, 10.0)) == [False, False, False, True]
    assert not protected_filters(zeroed, [], 1.0).any()


def test_bn_normalized_energy():
    energy = np.array([2.0, 1e5, 3.0, 0.0, 4.0])
    gamma = np.array([1.0, 1.0, 0.5, 0.0, 0.0])
    variance = np.array([3.0, 0.0, 1.0, 0.0, 1.0])
    eps = 1e-5
    got = bn_normalized_energy(energy, gamma, variance, eps)
    assert got[0] == pytest.approx(2.0 * (3.0 + eps))
    assert got[1] == pytest.approx(1.0)               # a zeroed filter: the 1/eps blow-up cancels
    assert got[2] == pytest.approx(3.0 * (1.0 + eps) / 0.25)
    assert got[3] == 0.0                              # gamma 0: no gradient, no energy, no 0/0
    assert np.isfinite(got).all()
    # the energy of a conv weight gradient through training-mode BN really carries
    # gamma^2 / (var_B + eps): a filter scaled by c has c^2 x the batch variance, 1/c^2 x the energy
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        rng = np.random.default_rng(20)
        x = ms.Tensor(rng.normal(size=(8, 2, 6, 6)).astype(np.float32))
        target = ms.Tensor(rng.normal(size=(8, 1, 6, 6)).astype(np.float32))  # same for both
        base = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
        conv = ms.nn.Conv2d(2, 2, 3, pad_mode="pad", padding=1, has_bias=False)
        conv.weight.set_data(ms.Tensor(np.concatenate([base, 10.0 * base])))
        net = ms.nn.SequentialCell([conv, ms.nn.BatchNorm2d(2, eps=eps), ms.nn.ReLU()])
        net.set_train(True)
        grad = ms.grad(lambda v: ((net(v) - target) ** 2).sum(), None, conv.weight)(x)
        raw = (grad.asnumpy().astype(np.float64) ** 2).sum(axis=(1, 2, 3))
        variance = conv(x).asnumpy().astype(np.float64).var(axis=(0, 2, 3))
        # the two filters compute the same function; their raw energies differ by the scale^2
        assert raw[1] == pytest.approx(raw[0] / 10.0 ** 2, rel=1e-3)
        normalized = bn_normalized_energy(raw, np.ones(2), variance, eps)
        assert normalized[1] == pytest.approx(normalized[0], rel=1e-3)
    finally:
        ms.set_context(mode=previous)


# --------------------------------------------------------------------------- the pruner

class FakeContext:
    """The part of the trainer's TrainContext the pruner uses, on the host."""

    def __init__(self, cfg, net, output_dir):
        self.cfg, self.net, self.output_dir = cfg, net, output_dir
        self.logger = LOGGER
        self.rank = 0
        self.params = {p.name: p for p in net.get_parameters()}
        self.energy = {}
        self.epoch = self.step = 0

    def get_weights(self, names):
        return {n: self.params[n].asnumpy() for n in names}

    def record(self, event):
        self.events = getattr(self, "events", []) + [event]

    def recalibrate_bn(self, batches, num_batches):
        """No training data here (the pruner has no ``training_batches``): nothing to do."""
        return 0

    def zero_outside(self, masks):
        for name, mask in masks.items():
            p = self.params[name]
            p.set_data(ms.Tensor((p.asnumpy() * np.asarray(mask, np.float32)).astype(np.float32)))

    def read(self, reset=True):
        """The pruner's gradient-energy piece (``GradientEnergy.read``), played by the context."""
        energy = {k: v.copy() for k, v in self.energy.items()}
        if reset:
            self.energy = {}
        return energy

    def train(self, rng, names, scale=0.02):
        """Stand-in for an epoch of SGD: every weight moves, zeroed filters regrow a little."""
        for name in names:
            p = self.params[name]
            value = p.asnumpy()
            p.set_data(ms.Tensor((value + rng.normal(0, scale, value.shape)).astype(np.float32)))
            self.energy[name] = rng.uniform(0.5, 1.5, value.shape[0]).astype(np.float32)


def _setup(tmp_path, **overrides):
    values = {"net": "resnet20", "in_channels": 1, "dataset": "fashion_mnist", "epoch_size": 4,
              "prune_method": "psap", "psap_target": "filters", "psap_ratio": 0.4,
              "output_dir": str(tmp_path)}
    values.update(overrides)
    cfg = build_config(values, {})
    ms.set_seed(0)
    net = build_network(cfg)
    pruner = PSAPPruner(cfg, net, steps_per_epoch=10, logger=LOGGER, input_shape=(1, 1, 28, 28))
    ctx = FakeContext(cfg, net, str(tmp_path))
    pruner.energy_piece = ctx
    return cfg, net, pruner, ctx


def finish(pruner, ctx):
    """on_train_end, and its outputs saved as train.py saves them; returns (compact, widths)."""
    outputs = pruner.on_train_end(ctx)
    for name, (cell, meta) in outputs.items():
        checkpoint.save_atomic(cell, os.path.join(ctx.output_dir, name), meta=meta)
    compact, meta = outputs["last_compact.ckpt"]
    return compact, meta["inner_widths"]


def finish_and_compare(pruner, ctx, net):
    """``finish``, then the compact network must compute what the masked one computes (to 1e-4,
    in PyNative mode: no graph compiles for a one-off comparison)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        compact, widths = finish(pruner, ctx)
        x = ms.Tensor(np.random.default_rng(6).normal(size=(2, 1, 28, 28)).astype(np.float32))
        net.set_train(False)
        compact.set_train(False)
        assert np.max(np.abs(net(x).asnumpy() - compact(x).asnumpy())) <= 1e-4
    finally:
        ms.set_context(mode=previous)
    return compact, widths


def _zeroed(ctx, names):
    return {n: np.flatnonzero(~np.any(ctx.params[n].asnumpy().reshape(
        ctx.params[n].shape[0], -1) != 0, axis=1)) for n in names}


def test_pruner_follows_schedule_and_ends_compact(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_curve_k=2.0)
    rng = np.random.default_rng(5)
    names = pruner.energy_names
    assert names == [f"layer{s}.{b}.conv1.weight" for s in (1, 2, 3) for b in range(3)]
    total = int(pruner.layout.counts.sum())
    for epoch in range(cfg.epoch_size):
        ctx.train(rng, names)
        pruner.on_epoch_end(epoch, ctx)
        zeroed = _zeroed(ctx, names)
        expected = round(asfp_target(epoch + 1, 0.4, cfg.epoch_size, 2.0) * total)
        assert sum(len(z) for z in zeroed.values()) == expected
    # the last step also silenced the BN of the pruned filters
    layer = prunable_layers(net)[0]
    pruned = _zeroed(ctx, [layer["conv"]])[layer["conv"]]
    assert len(pruned) and not np.any(ctx.params[layer["bn"]["gamma"]].asnumpy()[pruned])
    assert not np.any(ctx.params[layer["bn"]["beta"]].asnumpy()[pruned])

    compact, widths = finish_and_compare(pruner, ctx, net)

    params, meta, _ = checkpoint.load(os.path.join(str(tmp_path), "last_compact.ckpt"))
    assert meta["inner_widths"] == widths and meta["net"] == "resnet20"
    assert meta["prune_method"] == "psap"
    assert meta["compact_macs"] < meta["dense_macs"] and meta["compact_params"] < meta["dense_params"]
    removed = total - sum(w[0] for w in widths)
    assert removed == round(0.4 * total)
    rebuilt = build_network(cfg, meta["inner_widths"])
    checkpoint.load_into(rebuilt, params, "last_compact.ckpt")


def test_flops_target_met_at_the_end(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=2,
                                   filter_score="fpgm")
    rng = np.random.default_rng(7)
    for epoch in range(cfg.epoch_size):
        ctx.train(rng, pruner.energy_names)
        pruner.on_epoch_end(epoch, ctx)
    finish(pruner, ctx)
    _, meta, _ = checkpoint.load(os.path.join(str(tmp_path), "last_compact.ckpt"))
    achieved = 1 - meta["compact_macs"] / meta["dense_macs"]
    assert abs(achieved - 0.4) <= 0.004
    assert meta["dense_macs"] == count_macs_params(net, (1, 1, 28, 28))[0]


STEPS = 10   # steps per epoch of the fake trainer (_setup)
EPS = 1e-5   # the BN eps of the project's ResNets


def _epoch_end(pruner, ctx, epoch, energy=None):
    """What the trainer does around an epoch: the gradient energy of the epoch's first step is
    visible after that step (``after_step``); the pruning step follows at the end."""
    if energy is not None:
        ctx.energy = {k: np.asarray(v, np.float32) for k, v in energy.items()}
    pruner.after_step(epoch * STEPS, ctx)
    pruner.on_epoch_end(epoch, ctx)


def _zeroed_scale(ctx, layer):
    """Raw energy a zeroed filter of ``layer`` needs to reach a BN-normalised energy of 1: its
    batch variance is 0, so its gradient carries gamma / sqrt(eps)."""
    gamma = ctx.params[layer["bn"]["gamma"]].asnumpy().astype(np.float64)
    return gamma ** 2 / EPS


@pytest.mark.parametrize("mode", ["raw", "normalized"])
def test_protection_triggers_on_gradient_pattern(tmp_path, mode):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=10, psap_end_epoch=1, protect_tau=2.0,
                                   protect_steps=2, psap_adaptive=False, protect_energy=mode)
    rng = np.random.default_rng(8)
    names = pruner.energy_names
    layer = prunable_layers(net)[0]
    ctx.train(rng, names)
    _epoch_end(pruner, ctx, 0)
    first = _zeroed(ctx, names)
    target = names[0]
    favourite = first[target][0]

    # one epoch later: one zeroed filter of layer 0 is pulled back hard by its gradient.
    # Kept filters: moving variance 1, gamma 1 (BN's initial values), so normalised = raw.
    ctx.train(rng, names)
    energy = {n: np.ones(ctx.params[n].shape[0]) for n in names}
    scale = _zeroed_scale(ctx, layer) if mode == "normalized" else np.ones(len(energy[target]))
    energy[target][first[target]] = 1.5 * scale[first[target]]   # below tau x median: no
    energy[target][favourite] = 10.0 * scale[favourite]           # above 2 x median(kept) = 2
    _epoch_end(pruner, ctx, 1, energy)
    second = _zeroed(ctx, names)
    assert favourite not in second[target]
    assert pruner.protection.protect.sum() == 2 and np.count_nonzero(pruner.protection.protect) == 1
    assert sum(len(z) for z in second.values()) == sum(len(z) for z in first.values())

    # still protected at the next step even if its weights are the smallest of the layer
    ctx.train(rng, names)
    w = ctx.params[target].asnumpy()
    w[favourite] = 0
    ctx.params[target].set_data(ms.Tensor(w))
    _epoch_end(pruner, ctx, 2, {n: np.ones(ctx.params[n].shape[0]) for n in names})
    selected = pruner.zeroed[pruner.layout.part(0)]
    assert not selected[favourite] and selected.sum() == len(first[target])
    # protection served (2 steps): now it is a candidate again and, being all zero, is pruned
    _epoch_end(pruner, ctx, 3, {n: np.ones(ctx.params[n].shape[0]) for n in names})
    assert pruner.zeroed[pruner.layout.part(0)][favourite] and pruner.protection.protect.sum() == 0


def test_normalized_protection_ignores_the_bn_blow_up(tmp_path):
    """A zeroed filter whose raw energy towers over the kept ones only because BN divides its
    zero batch variance by sqrt(eps) is not protected; raw energies would protect it."""
    results = {}
    for mode in ("raw", "normalized"):
        cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=10, psap_end_epoch=1,
                                       protect_tau=1.0, psap_adaptive=False, protect_energy=mode)
        names = pruner.energy_names
        layers = prunable_layers(net)
        rng = np.random.default_rng(15)
        ctx.train(rng, names)
        _epoch_end(pruner, ctx, 0)
        zeroed = _zeroed(ctx, names)
        # BN state of layer 0: kept filters with moving variance 4 and gamma 2 (factor ~1)
        gamma, var = layers[0]["bn"]["gamma"], layers[0]["bn"]["moving_variance"]
        ctx.params[gamma].set_data(ms.Tensor(np.full(16, 2.0, np.float32)))
        ctx.params[var].set_data(ms.Tensor(np.full(16, 4.0, np.float32)))
        ctx.train(rng, names)
        energy = {n: np.ones(ctx.params[n].shape[0]) for n in names}
        z = zeroed[names[0]]
        energy[names[0]][z] = 0.0                  # dead ReLUs (BN shift <= 0): no gradient
        energy[names[0]][z[0]] = 1e4               # 1e4 x the kept median, raw ...
        energy[names[0]][z[1]] = 3e5               # ... 3e5 x
        # normalised: 1e4 * eps / gamma^2 = 0.025 and 3e5 * eps / 4 = 0.75 (< tau 1): both no.
        _epoch_end(pruner, ctx, 1, energy)
        results[mode] = set(np.flatnonzero(pruner.protection.protect[pruner.layout.part(0)]))
        if mode == "normalized":
            compared = pruner.protection.last_energy[names[0]]["energy"]
            assert compared[z[0]] == pytest.approx(1e4 * EPS / 4.0)
            assert compared[~pruner.protection.last_energy[names[0]]["zeroed"]] == pytest.approx(4.0 / 4.0,
                                                                                      rel=1e-4)
    assert results["raw"] == {z[0], z[1]}
    assert results["normalized"] == set()


def test_normalized_energy_is_taken_on_the_first_step_after_pruning(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=10, psap_end_epoch=1, psap_adaptive=False)
    names = pruner.energy_names
    rng = np.random.default_rng(16)
    ctx.train(rng, names)
    _epoch_end(pruner, ctx, 0)
    zeroed = _zeroed(ctx, names)[names[0]]
    scale = _zeroed_scale(ctx, prunable_layers(net)[0])
    energy = {n: np.ones(ctx.params[n].shape[0]) for n in names}
    energy[names[0]][zeroed[0]] = 5.0 * scale[zeroed[0]]
    ctx.energy = {k: v.astype(np.float32) for k, v in energy.items()}
    for step in range(STEPS + 1, 2 * STEPS):     # later steps of the epoch: not measured
        pruner.after_step(step, ctx)
    assert np.isnan(pruner.protection.measured).all()
    pruner.after_step(STEPS, ctx)                # the epoch's first step
    assert pruner.protection.measured[zeroed[0]] == pytest.approx(5.0, rel=1e-4)
    ctx.energy = {n: np.ones(ctx.params[n].shape[0], np.float32) for n in names}   # later
    pruner.on_epoch_end(1, ctx)
    assert pruner.protection.protect[zeroed[0]] > 0         # judged on the first step's energy
    assert np.isnan(pruner.protection.measured).all()       # used once

    # not measured (e.g. resumed from an older checkpoint): no new protection, a warning
    _, _, other, ctx2 = _setup(tmp_path, epoch_size=10, psap_end_epoch=1, psap_adaptive=False)
    ctx2.train(rng, names)
    _epoch_end(other, ctx2, 0)
    ctx2.energy = {n: np.full(ctx2.params[n].shape[0], 1e9, np.float32) for n in names}
    other.on_epoch_end(1, ctx2)
    assert other.protection.protect.sum() == 0


def test_no_protection_without_pattern_or_when_disabled(tmp_path):
    for protect, mode in ((True, "normalized"), (True, "raw"), (False, "raw")):
        cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=10, psap_end_epoch=1,
                                       psap_protect=protect, protect_energy=mode)
        rng = np.random.default_rng(9)
        names = pruner.energy_names
        layers = prunable_layers(net)
        for epoch in range(3):
            ctx.train(rng, names)
            zeroed = pruner.zeroed.copy()
            # flat energies: zeroed filters at 0.9 x the median of the kept ones (normalised)
            energy = {n: np.full(ctx.params[n].shape[0], 1.0) for n in names}
            for i, n in enumerate(names):
                part = zeroed[pruner.layout.part(i)]
                scale = _zeroed_scale(ctx, layers[i]) if mode == "normalized" else 1.0
                energy[n][part] = (0.9 * scale * np.ones(len(part)))[part]
            if not protect:
                energy[names[0]][:] = 50.0
            _epoch_end(pruner, ctx, epoch, energy)
            assert pruner.protection.protect.sum() == 0


def _set(ctx, name, index, value):
    array = ctx.params[name].asnumpy()
    array[index] = value
    ctx.params[name].set_data(ms.Tensor(array.astype(np.float32)))


@pytest.mark.parametrize("score", ["bn_l2", "l2"])
def test_protected_filter_wins_back_its_place_on_a_bn_aware_score(tmp_path, score, caplog):
    """Two zeroed filters are protected for one step and regrow; when protection ends they
    compete: f (small weights, large BN gamma: a strong channel) and g (huge weights, gamma ~0: a
    silent channel). bn_l2 keeps f and prunes g; l2 is fooled by g's norm and does the opposite."""
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=4, psap_end_epoch=1, protect_tau=2.0,
                                   protect_steps=1, psap_adaptive=False, protect_energy="raw",
                                   filter_score=score)
    names = pruner.energy_names
    layer = prunable_layers(net)[0]
    rng = np.random.default_rng(25)
    ctx.train(rng, names)
    _epoch_end(pruner, ctx, 0)
    f, g = _zeroed(ctx, names)[names[0]][:2]
    ctx.train(rng, names)
    energy = {n: np.ones(ctx.params[n].shape[0]) for n in names}
    energy[names[0]][[f, g]] = 10.0                  # > tau x median(kept): protected
    _epoch_end(pruner, ctx, 1, energy)
    assert pruner.protection.protect[f] == pruner.protection.protect[g] == 1 and not pruner.zeroed[[f, g]].any()

    ctx.train(rng, names)
    _set(ctx, names[0], g, 100.0 * ctx.params[names[0]].asnumpy()[g])
    _set(ctx, names[0], f, 0.01 * ctx.params[names[0]].asnumpy()[f])
    _set(ctx, layer["bn"]["gamma"], g, 1e-6)
    _set(ctx, layer["bn"]["gamma"], f, 1e3)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    _epoch_end(pruner, ctx, 2, {n: np.ones(ctx.params[n].shape[0]) for n in names})
    row = dict(zip(OUTCOME_COLUMNS, pruner.protection.outcome[2]))
    assert (row["protected_before"], row["kept"], row["still_protected"], row["competed"],
            row["won"]) == (2, 1, 0, 2, 1)
    assert "protected at the previous step 2: kept 1 (still protected 0, won on score 1 of 2)" \
        in caplog.text
    winner, loser = (f, g) if score == "bn_l2" else (g, f)
    assert not pruner.zeroed[winner] and pruner.zeroed[loser]

    ctx.train(rng, names)
    _epoch_end(pruner, ctx, 3, {n: np.ones(ctx.params[n].shape[0]) for n in names})
    assert pruner.protection.regrown[winner] and not pruner.zeroed[winner]
    summary = pruner.regrowth_summary()
    assert summary["survived"] == int(np.sum(pruner.protection.regrown & ~pruner.zeroed)) >= 1
    finish(pruner, ctx)
    _, meta, _ = checkpoint.load(os.path.join(str(tmp_path), "last_compact.ckpt"))
    assert meta["regrown_survived"] == summary["survived"]
    assert meta["regrown_filters"] == summary["regrown"]
    state = pruner.state_dict()
    assert np.array_equal(state["psap_outcome"], pruner.protection.outcome)
    assert np.array_equal(state["psap_regrown"].astype(bool), pruner.protection.regrown)


def test_bn_aware_layer_sparsity_uses_folded_weights(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=4, filter_score="bn_energy")
    layers = prunable_layers(net)
    rng = np.random.default_rng(26)
    ctx.train(rng, pruner.energy_names)
    for layer in layers:
        _set(ctx, layer["bn"]["gamma"], slice(None), rng.uniform(0.01, 3.0, 16 if
             layer["conv"].startswith("layer1") else 32 if layer["conv"].startswith("layer2")
             else 64))
    weights = ctx.get_weights(pruner.layout.conv_names)
    bn = pruner._bn_stats(ctx)
    got = pruner._sparsities(weights, bn)
    for i, layer in enumerate(layers):
        w = weights[layer["conv"]].astype(np.float64)
        gamma = ctx.params[layer["bn"]["gamma"]].asnumpy().astype(np.float64)
        var = ctx.params[layer["bn"]["moving_variance"]].asnumpy().astype(np.float64)
        folded = np.abs(w * (np.abs(gamma) / np.sqrt(var + EPS))[:, None, None, None])
        assert got[i] == pytest.approx(np.mean(folded < 0.05 * folded.max()), abs=1e-12)
        plain = np.mean(np.abs(w) < 0.05 * np.abs(w).max())
        assert got[i] != pytest.approx(plain, abs=1e-12)    # the gammas do change it


class _PlantedGradients:
    """Stand-in for ctx.dense_gradient_cell: planted gradients of the BN gammas and betas, and a
    forward that disturbs the BN moving statistics (as a training-mode forward does)."""

    def __init__(self, ctx, names, rng):
        self.ctx, self.names, self.rng, self.calls = ctx, names, rng, []

    def __call__(self, image, label):
        grads = [self.rng.normal(size=self.ctx.params[n].shape) for n in self.names]
        self.calls.append(grads)
        for name, p in self.ctx.params.items():
            if name.endswith("moving_variance"):
                p.set_data(ms.Tensor(p.asnumpy() + 7.0))
        return None, None, None, tuple(ms.Tensor(g.astype(np.float32)) for g in grads)


def test_taylor_bn_is_accumulated_before_the_pruning_step(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=2, filter_score="taylor_bn",
                                   psap_taylor_batches=3, psap_adaptive=False, psap_protect=False)
    rng = np.random.default_rng(27)
    layers = prunable_layers(net)
    cells = []

    def dense_gradient_cell(names):
        cells.append(_PlantedGradients(ctx, names, rng))
        return cells[-1]

    ctx.dense_gradient_cell = dense_gradient_cell
    ctx.set_weights = lambda arrays: [ctx.params[k].set_data(ms.Tensor(v)) for k, v in
                                      arrays.items()]
    ctx.train(rng, pruner.energy_names)
    for layer in layers:   # non-trivial gamma and beta
        size = ctx.params[layer["bn"]["gamma"]].shape[0]
        _set(ctx, layer["bn"]["gamma"], slice(None), rng.normal(1.0, 0.3, size))
        _set(ctx, layer["bn"]["beta"], slice(None), rng.normal(0.0, 0.3, size))
    variance = ctx.params[layers[0]["bn"]["moving_variance"]].asnumpy().copy()
    batch = (np.zeros((2, 1, 28, 28), np.float32), np.zeros(2, np.int32))
    for step in range(STEPS):
        assert pruner.before_step(step, batch, ctx) is None
    assert len(cells) == 1 and len(cells[0].calls) == 3 and pruner.taylor.batches == 3
    np.testing.assert_array_equal(ctx.params[layers[0]["bn"]["moving_variance"]].asnumpy(),
                                  variance)                       # put back after each forward
    gamma = ctx.params[layers[0]["bn"]["gamma"]].asnumpy().astype(np.float64)
    beta = ctx.params[layers[0]["bn"]["beta"]].asnumpy().astype(np.float64)
    expected = np.zeros(16)
    for grads in cells[0].calls:
        g_gamma = grads[0].astype(np.float32).astype(np.float64)
        g_beta = grads[1].astype(np.float32).astype(np.float64)
        expected += np.array([(gamma[j] * g_gamma[j] + beta[j] * g_beta[j]) ** 2
                              for j in range(16)])
    np.testing.assert_allclose(pruner.taylor.importance[:16], expected, rtol=1e-10)
    pruner.on_epoch_end(0, ctx)
    count = int(pruner.last_counts[0])
    assert set(np.flatnonzero(pruner.zeroed[:16])) == set(np.argsort(expected)[:count])
    assert pruner.taylor.batches == 0 and not pruner.taylor.importance.any()   # used once
    assert not pruner.taylor.wanted(STEPS)                           # first step of epoch 1


def test_width_rounding_through_the_pruner_ends_compact(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=3,
                                   psap_width_multiple=4, filter_score="bn_l2")
    rng = np.random.default_rng(28)
    for epoch in range(cfg.epoch_size):
        ctx.train(rng, pruner.energy_names)
        pruner.on_epoch_end(epoch, ctx)
        kept = pruner.layout.counts - pruner.last_counts
        assert np.all(kept % 4 == 0), kept
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        compact, widths = finish(pruner, ctx)
        x = ms.Tensor(rng.normal(size=(2, 1, 28, 28)).astype(np.float32))
        net.set_train(False)
        compact.set_train(False)
        assert np.max(np.abs(net(x).asnumpy() - compact(x).asnumpy())) <= 1e-4
    finally:
        ms.set_context(mode=previous)
    assert all(w[0] % 4 == 0 for w in widths)
    achieved = 1 - _independent_macs("resnet20", widths, (1, 1, 28, 28)) / \
        count_macs_params(net, (1, 1, 28, 28))[0]
    assert abs(achieved - 0.4) <= 0.01


def test_width_rounding_lifts_protection_that_blocks_the_target(tmp_path, caplog):
    """Protected filters can leave no multiple-of-8 widths that meet the target although the
    unrounded allocation would: the target wins, as when protection leaves too few candidates."""
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=2,
                                   psap_end_epoch=1, psap_width_multiple=8, psap_adaptive=False)
    rng = np.random.default_rng(29)
    ctx.train(rng, pruner.energy_names)
    pruner.on_epoch_end(0, ctx)
    for i, n in enumerate(pruner.layout.counts):   # kept >= n/2 + 1: only wide widths allowed
        pruner.protection.protect[pruner.layout.offsets[i]:pruner.layout.offsets[i] + n // 2 + 1] = 2
    ctx.train(rng, pruner.energy_names)
    caplog.set_level(logging.INFO, logger=LOGGER.name)
    pruner.on_epoch_end(1, ctx)
    assert "protection lifted" in caplog.text
    kept = pruner.layout.counts - pruner.last_counts
    assert np.all(kept % 8 == 0)
    records = layer_records(net, (1, 1, 28, 28))
    achieved = removed_macs(records, pruner.layout.layers, pruner.last_counts) / \
        sum(r["macs"] for r in records)
    assert abs(achieved - 0.4) <= 0.01


def test_sfp_baseline_has_uniform_ratios(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=3, psap_end_epoch=1,
                                   psap_adaptive=False, psap_protect=False, psap_ratio=0.25)
    ctx.train(np.random.default_rng(10), pruner.energy_names, scale=0.2)
    pruner.on_epoch_end(0, ctx)
    counts = [len(z) for z in _zeroed(ctx, pruner.energy_names).values()]
    assert counts == [4, 4, 4, 8, 8, 8, 16, 16, 16]


def _after_two_steps(tmp_path, seed):
    """(net, pruner, ctx, rng, names) of a 6-epoch run after two pruning steps."""
    _, net, pruner, ctx = _setup(tmp_path, epoch_size=6, protect_tau=1.2)
    rng = np.random.default_rng(seed)
    names = pruner.energy_names
    for epoch in range(2):
        ctx.train(rng, names)
        pruner.on_epoch_end(epoch, ctx)
    return net, pruner, ctx, rng, names


def test_state_dict_round_trip(tmp_path):
    net, pruner, ctx, rng, names = _after_two_steps(tmp_path, 11)
    pruner.protection.protect[3] = 2
    path = os.path.join(str(tmp_path), "state.ckpt")
    checkpoint.save_atomic(net, path, pruner_state=pruner.state_dict())
    _, _, state = checkpoint.load(path)
    _, _, other, _ = _setup(tmp_path, epoch_size=6, protect_tau=1.2)
    other.load_state_dict(state)
    for key, value in pruner.state_dict().items():
        np.testing.assert_array_equal(np.asarray(other.state_dict()[key]), np.asarray(value), key)
    # resumed and uninterrupted pruners take the same next step
    ctx.train(rng, names)
    ctx.energy = {n: rng.uniform(0, 2, ctx.params[n].shape[0]) for n in names}
    saved_energy = {k: v.copy() for k, v in ctx.energy.items()}
    weights = {n: ctx.params[n].asnumpy().copy() for n in names}
    pruner.on_epoch_end(2, ctx)
    first = pruner.zeroed.copy()
    for n in names:
        ctx.params[n].set_data(ms.Tensor(weights[n]))
    ctx.energy = saved_energy
    other.on_epoch_end(2, ctx)
    assert np.array_equal(first, other.zeroed)
    with pytest.raises(ValueError):
        other.load_state_dict({**state, "psap_zeroed": np.zeros(5, np.int32)})


# What a PSAP checkpoint holds of the pruner (saved as pruner.<key>): renaming one would stop the
# checkpoints written so far from resuming
PSAP_STATE_KEYS = {"psap_steps_done", "psap_zeroed", "psap_protect", "psap_current_target",
                   "psap_final_done", "psap_measured_energy", "psap_protected_before", "psap_regrown",
                   "psap_outcome", "psap_taylor", "psap_taylor_batches"}
# the keys of the first versions; the others were added later and may be absent
FIRST_STATE_KEYS = ("psap_steps_done", "psap_zeroed", "psap_protect", "psap_current_target",
                    "psap_final_done")


def test_saved_state_keys_stay_and_an_older_checkpoint_resumes(tmp_path, caplog):
    _, pruner, ctx, rng, names = _after_two_steps(tmp_path, 12)
    state = pruner.state_dict()
    assert set(state) == PSAP_STATE_KEYS
    _, _, older, _ = _setup(tmp_path, epoch_size=6, protect_tau=1.2)
    older.load_state_dict({key: state[key] for key in FIRST_STATE_KEYS})
    assert older.steps_done == 2 and np.array_equal(older.zeroed, pruner.zeroed)
    assert np.array_equal(older.protection.protect, pruner.protection.protect)
    assert np.isnan(older.protection.measured).all() and older.taylor.batches == 0
    ctx.train(rng, names)
    with caplog.at_level(logging.WARNING):
        older.on_epoch_end(2, ctx)                    # its next step, without new protection
    assert older.steps_done == 3 and "no gradient energy was measured" in caplog.text


def test_dead_filters_count_toward_the_target(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=2, psap_end_epoch=1, psap_adaptive=False,
                                   psap_protect=False, filter_score="fpgm")
    rng = np.random.default_rng(14)
    names = pruner.energy_names
    ctx.train(rng, names)
    pruner.on_epoch_end(0, ctx)
    assert len(_zeroed(ctx, [names[0]])[names[0]]) == 6
    ctx.train(rng, names)
    dead = np.arange(3, 13)       # ten filters of layer 0 got no gradient and stayed exactly zero
    w = ctx.params[names[0]].asnumpy()
    w[dead] = 0
    ctx.params[names[0]].set_data(ms.Tensor(w))
    pruner.on_epoch_end(1, ctx)
    selected = pruner.zeroed[pruner.layout.part(0)]
    assert selected[dead].all() and selected.sum() == 10
    total = int(pruner.layout.counts.sum())
    assert pruner.zeroed.sum() == round(0.4 * total)
    _, widths = finish(pruner, ctx)
    assert total - sum(w[0] for w in widths) == round(0.4 * total)


def test_missed_target_is_an_error(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=1)
    ctx.train(np.random.default_rng(12), pruner.energy_names)
    pruner.on_epoch_end(0, ctx)
    ctx.train(np.random.default_rng(13), pruner.energy_names)   # the zeroed filters come back
    with pytest.raises(ValueError, match="misses the target"):
        finish(pruner, ctx)


@pytest.mark.parametrize("recipe", ["psap_resnet20_fashion_mnist.yaml",
                                    "psap_resnet56_cifar10.yaml", "psap_resnet50_imagenet.yaml"])
def test_recipes_are_valid_and_feasible(recipe):
    path = os.path.join(ROOT, "config", recipe)
    cfg = build_config(load_yaml(path), {}, path)
    assert cfg.prune_method == "psap"
    pruner = PSAPPruner(cfg, build_network(cfg), steps_per_epoch=1, logger=LOGGER,
                        input_shape=input_shape(cfg))
    assert pruner.end_epoch <= cfg.epoch_size


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="psap_ratio"):
        build_config({"psap_ratio": 1.0}, {})
    with pytest.raises(ConfigError, match="psap_ratio"):
        _setup(tmp_path, psap_ratio=0.9, max_layer_ratio=0.5)
    # psap_end_epoch past the last epoch is not an error: a shortened run (--epoch_size 2 on a
    # 6-epoch recipe) reaches the ratio at its end
    _, _, pruner, _ = _setup(tmp_path, psap_end_epoch=9, epoch_size=4)
    assert pruner.end_epoch == 4


def test_bn_statistics_are_reestimated_after_the_final_step_only(tmp_path):
    """psap_bn_recalibration: the final step (gamma and beta of pruned channels zeroed) asks the
    context for that many batches of forward passes; earlier steps do not."""
    cfg, net, pruner, ctx = _setup(tmp_path, epoch_size=2, psap_bn_recalibration=7)
    calls = []
    ctx.recalibrate_bn = lambda batches, n: calls.append(n) or n
    for epoch in range(2):
        ctx.train(np.random.default_rng(epoch), pruner.energy_names)
        pruner.on_epoch_end(epoch, ctx)
        assert calls == ([] if epoch == 0 else [7])
    _, _, off, ctx_off = _setup(tmp_path, epoch_size=1, psap_bn_recalibration=0)
    ctx_off.recalibrate_bn = lambda batches, n: calls.append(n) or n
    off.on_epoch_end(0, ctx_off)
    assert calls == [7]


def test_train_context_recalibration_moves_bn_statistics_and_nothing_else(tmp_path):
    from src.pruning.core.context import TrainContext
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config({"net": "resnet20", "in_channels": 1, "dataset": "fashion_mnist"}, {})
    ms.set_seed(0)
    net = build_network(cfg)
    ctx = TrainContext(net, None, None, None)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    assert ctx.recalibrate_bn(None, 3) == 0                 # no data: nothing happens
    rng = np.random.default_rng(0)
    data = [(ms.Tensor(rng.normal(2.0, 1.0, (8, 1, 28, 28)).astype(np.float32)), None)
            for _ in range(5)]
    assert ctx.recalibrate_bn(iter(data), 3) == 3
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    moved = {n for n in before if not np.array_equal(before[n], after[n])}
    assert moved and all(n.endswith(("moving_mean", "moving_variance")) for n in moved)
    assert ctx.recalibrate_bn(iter(data), 50) == 5          # capped by the data
