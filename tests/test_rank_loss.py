"""RPG rank loss: energy rule, value, gradient, graph mode, numerical rank, the Gram-path host
targets and their split across data-parallel workers."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from src.pruning.masks.rpg.rank_loss import (
    layer_low_rank_targets, layer_rank_losses, layer_rank_terms, rank_loss, rank_loss_from_targets)
from src.pruning.masks.rpg.rank_targets import (
    _target_cost, layers_for_worker, low_rank_target_gram, rank_targets_numpy, select_rank,
    split_layers)
from src.report import numerical_rank
from tests.conftest import ROOT, resnet50_weight_shapes
from tests.rank_reference import (low_rank_target_numpy, normalized_svd, rank_loss_numpy,
                                  svd_targets_numpy)

SHAPES = [(8, 4, 3, 3), (16, 8, 1, 1), (6, 3, 7, 7), (32, 16, 1, 1), (5, 40)]


def _weights(seed, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 0.1).astype(dtype) for s in shapes]


# --------------------------------------------------------------------------------- energy rule
def _ref_select_rank(s, p):
    """Independent: explicit tails sum_{i>=k} s_i^2 for k = 0..n-1 in a loop, ties -> larger k."""
    best_k, best_d = None, None
    for k in range(len(s)):
        tail = 0.0
        for i in range(k, len(s)):
            tail += s[i] ** 2
        d = abs(tail - p)
        if best_d is None or d <= best_d + 1e-15:
            best_k, best_d = k, d
    return best_k


def test_select_rank_hand_made_spectra():
    s = np.sqrt([0.5, 0.3, 0.15, 0.05])  # tails: 1, 0.5, 0.2, 0.05 for k = 0..3
    assert select_rank(s, 0.2) == 2
    assert select_rank(s, 0.6) == 1
    assert select_rank(s, 0.9) == 0
    assert select_rank(s, 1.0) == 0
    assert select_rank(s, 0.1) == 3
    assert select_rank(s, 0.0) == 3  # k = n is never a candidate (reference find_k)
    assert select_rank(list(s), 0.3) == 2  # |0.2-0.3| = 0.1 < |0.5-0.3| = 0.2
    assert select_rank([1.0], 0.3) == 0


def test_select_rank_tie_goes_to_larger_k():
    # tails 1, 0.5, 0.25, 0.125: 0.375 is exactly between tail(1) = 0.5 and tail(2) = 0.25
    # (all values exact in binary floating point)
    s = np.sqrt([0.5, 0.25, 0.125, 0.125])
    assert select_rank(s, 0.375) == 2
    # trailing zero singular values: tail(2) = tail(3) = 0, picks k = 3 (A_k unchanged anyway)
    assert select_rank(np.sqrt([0.75, 0.25, 0.0, 0.0]), 0.0) == 3


def test_select_rank_matches_loop_reference_on_random_spectra():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17, 64):
        for _ in range(20):
            s = np.sort(rng.random(n) ** 3)[::-1]
            s = s / np.sqrt(np.sum(s ** 2))
            p = float(rng.random())
            assert select_rank(s, p) == _ref_select_rank(s, p)


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), "x"])
def test_select_rank_rejects_bad_partial_k(bad):
    with pytest.raises(ValueError):
        select_rank([1.0], bad)


def test_select_rank_rejects_empty():
    with pytest.raises(ValueError):
        select_rank([], 0.2)


# ------------------------------------------------------------------------------ host reference
def test_low_rank_target_is_truncated_svd():
    w = _weights(1, [(12, 5, 3, 3)], np.float64)[0]
    a_k, k = low_rank_target_numpy(w, 0.2)
    wn = w.reshape(12, -1) / np.linalg.norm(w)
    s = np.linalg.svd(wn, compute_uv=False)
    assert k == select_rank(s, 0.2) and 0 < k < 12
    assert np.linalg.matrix_rank(a_k) == k
    # Eckart-Young: the squared error of the best rank-k approximation is tail(k)
    assert np.sum((wn - a_k) ** 2) == pytest.approx(np.sum(s[k:] ** 2), rel=1e-10)
    zeros, k0 = low_rank_target_numpy(np.zeros((3, 4)), 0.2)
    assert k0 == 0 and not zeros.any()


def test_rank_loss_numpy_skips_zero_layers():
    ws = _weights(2, [(8, 4, 3, 3)], np.float64)
    alone = rank_loss_numpy(ws, 0.2)
    assert rank_loss_numpy(ws + [np.zeros((4, 2, 1, 1))], 0.2) == alone
    assert rank_loss_numpy([np.zeros((4, 2))], 0.2) == 0.0
    assert -1.0 <= alone < 0.0


# --------------------------------------------------------------------------- MindSpore, value
@pytest.mark.parametrize("partial_k", [0.1, 0.2, 0.5])
def test_rank_loss_matches_numpy_pynative(pynative, partial_k):
    ws = _weights(3)
    losses, oks, ks = layer_rank_terms([Tensor(w) for w in ws], partial_k)
    for w, loss, ok, k in zip(ws, losses, oks, ks):
        assert bool(ok)
        assert int(k) == low_rank_target_numpy(w, partial_k)[1]
        assert float(loss) == pytest.approx(rank_loss_numpy([w], partial_k), rel=2e-4, abs=1e-6)
    total = rank_loss([Tensor(w) for w in ws], partial_k)
    assert total.shape == ()
    assert float(total) == pytest.approx(rank_loss_numpy(ws, partial_k), rel=2e-4)
    per_layer = layer_rank_losses([Tensor(w) for w in ws], partial_k)
    assert float(total) == pytest.approx(np.mean([float(x) for x in per_layer]), rel=1e-6)


def test_zero_layer_flagged_and_excluded(pynative):
    ws = _weights(4, [(8, 4, 3, 3)])
    zero = np.zeros((4, 2, 1, 1), np.float32)
    tensors = [Tensor(ws[0]), Tensor(zero)]
    losses, oks, _ = layer_rank_terms(tensors, 0.2)
    assert [bool(o) for o in oks] == [True, False]
    assert float(losses[1]) == 0.0
    assert float(rank_loss(tensors, 0.2)) == pytest.approx(float(losses[0]), rel=1e-6)

    def fn(a, b):
        return rank_loss([a, b], 0.2)
    grads = ops.grad(fn, grad_position=(0, 1))(*tensors)
    assert np.isfinite(grads[0].asnumpy()).all()
    assert not grads[1].asnumpy().any()  # exactly 0, no NaN from sqrt'(0)


def test_non_finite_layer_contributes_zero(pynative):
    bad = np.ones((4, 6), np.float32)
    bad[0, 0] = np.nan
    good = _weights(5, [(5, 7)])[0]
    losses, oks, _ = layer_rank_terms([Tensor(bad), Tensor(good)], 0.2)
    assert [bool(o) for o in oks] == [False, True]
    assert float(losses[0]) == 0.0
    assert float(rank_loss([Tensor(bad), Tensor(good)], 0.2)) == pytest.approx(
        rank_loss_numpy([good], 0.2), rel=2e-4)


def test_rank_loss_rejects_bad_args(pynative):
    with pytest.raises(ValueError):
        rank_loss([], 0.2)
    with pytest.raises(ValueError):
        rank_loss([Tensor(np.ones((2, 2), np.float32))], 1.5)


# ------------------------------------------------------------------------ MindSpore, gradient
def _loss_fixed_targets(arrays, targets):
    """rank loss with constant targets (A_k frozen at the base point), float64."""
    vals = []
    for w, a in zip(arrays, targets):
        w2 = w.reshape(w.shape[0], -1)
        vals.append(-np.sum((w2 / np.linalg.norm(w2) - a) ** 2))
    return float(np.mean(vals))


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-6), (np.float32, 2e-3)])
def test_rank_loss_gradient_matches_finite_differences(pynative, dtype, rtol):
    """Gradient (PyNative, through Wn and 1/||W||_F) vs central differences in float64.

    Two references: (a) A_k frozen at the base point - exactly what the graph differentiates;
    (b) A_k recomputed by rank_loss_numpy at every perturbed point. (b) has the same first
    derivative by the envelope theorem (A_k minimises ||Wn - B||^2 over rank-k B, so its own
    variation contributes nothing to first order while s_k > s_{k+1}), provided k itself does not
    change: eps = 1e-6 is far below any gap in the tails, and the test asserts k is unchanged.
    """
    shapes = [(6, 3, 3, 3), (12, 6, 1, 1), (4, 10)]
    ws64 = _weights(6, shapes, np.float64)
    ws = [w.astype(dtype) for w in ws64]
    base = [w.astype(np.float64) for w in ws]  # FD around exactly the values MindSpore sees
    p = 0.2

    def fn(a, b, c):
        return rank_loss([a, b, c], p)
    grads = ops.grad(fn, grad_position=(0, 1, 2))(*[Tensor(w) for w in ws])

    targets = [low_rank_target_numpy(w, p)[0] for w in base]
    ks = [low_rank_target_numpy(w, p)[1] for w in base]
    rng = np.random.default_rng(7)
    eps = 1e-6
    for layer, (w, g) in enumerate(zip(base, grads)):
        g = g.asnumpy().astype(np.float64)
        scale = np.abs(g).max()
        for idx in rng.choice(w.size, 4, replace=False):
            fd = {}
            for sign in (1, -1):
                pert = [x.copy() for x in base]
                pert[layer].reshape(-1)[idx] += sign * eps
                assert low_rank_target_numpy(pert[layer], p)[1] == ks[layer]
                fd[sign] = (_loss_fixed_targets(pert, targets), rank_loss_numpy(pert, p))
            fixed = (fd[1][0] - fd[-1][0]) / (2 * eps)
            recomputed = (fd[1][1] - fd[-1][1]) / (2 * eps)
            got = g.reshape(-1)[idx]
            assert got == pytest.approx(fixed, rel=rtol, abs=rtol * scale)
            assert recomputed == pytest.approx(fixed, rel=1e-4, abs=1e-6 * scale)


# -------------------------------------------------------------------------------- graph mode
class RankLossCell(nn.Cell):
    """Defined in this file: GRAPH_MODE compiles construct from source."""

    def __init__(self, arrays, partial_k):
        super().__init__()
        self.weights = ParameterTuple(
            [Parameter(Tensor(a), name=f"w{i}") for i, a in enumerate(arrays)])
        self.partial_k = partial_k

    def construct(self):
        return rank_loss(self.weights, self.partial_k)


class RankTermsCell(RankLossCell):
    def construct(self):
        return layer_rank_terms(self.weights, self.partial_k)


class TargetsCell(RankLossCell):
    def construct(self):
        return layer_low_rank_targets(self.weights, self.partial_k)


@ms.jit
def _jit_rank_loss(a, b):
    return rank_loss([a, b], 0.2)


def test_rank_loss_in_graph_mode(graph_mode):
    ws = _weights(8, SHAPES[:3])
    cell = RankLossCell(ws, 0.2)
    expected = rank_loss_numpy(ws, 0.2)
    assert float(cell()) == pytest.approx(expected, rel=2e-4)
    value, grads = ms.value_and_grad(cell, grad_position=None, weights=cell.weights)()
    assert float(value) == pytest.approx(expected, rel=2e-4)
    assert [g.shape for g in grads] == [w.shape for w in ws]
    assert all(np.isfinite(g.asnumpy()).all() and np.abs(g.asnumpy()).max() > 0 for g in grads)

    losses, oks, ks = RankTermsCell(ws, 0.2)()
    assert [int(k) for k in ks] == [low_rank_target_numpy(w, 0.2)[1] for w in ws]
    assert all(bool(o) for o in oks) and len(losses) == 3

    targets, oks, ks = TargetsCell(ws, 0.2)()
    host_targets, host_ks, _ = rank_targets_numpy(ws, 0.2)
    assert [int(k) for k in ks] == host_ks
    for got, ref in zip(targets, host_targets):
        np.testing.assert_allclose(got.asnumpy(), ref, atol=2e-5)

    assert float(_jit_rank_loss(Tensor(ws[0]), Tensor(ws[1]))) == pytest.approx(
        rank_loss_numpy(ws[:2], 0.2), rel=2e-4)


def test_rank_loss_pynative_and_graph_gradients_agree(pynative):
    ws = _weights(9, SHAPES[:2])

    def fn(a, b):
        return rank_loss([a, b], 0.2)
    py_grads = ops.grad(fn, grad_position=(0, 1))(*[Tensor(w) for w in ws])
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = RankLossCell(ws, 0.2)
    graph_grads = ms.grad(cell, grad_position=None, weights=cell.weights)()
    for a, b in zip(py_grads, graph_grads):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ host-SVD path (targets in)
def test_rank_loss_from_host_targets_matches(pynative):
    ws = _weights(10) + [np.zeros((4, 2, 1, 1), np.float32)]
    targets, ranks, ok = rank_targets_numpy(ws, 0.2)
    assert ok == [True] * (len(ws) - 1) + [False]
    value = rank_loss_from_targets([Tensor(w) for w in ws], [Tensor(t) for t in targets],
                                   Tensor(np.array(ok, np.float32)))
    assert float(value) == pytest.approx(rank_loss_numpy(ws, 0.2), rel=2e-4)
    direct = rank_loss([Tensor(w) for w in ws], 0.2)
    assert float(value) == pytest.approx(float(direct), rel=1e-4)
    assert ranks == [int(k) for k in layer_rank_terms([Tensor(w) for w in ws], 0.2)[2]]

    def fn(a, b):
        return rank_loss_from_targets([a, b], [Tensor(t) for t in targets[:2]],
                                      Tensor(np.ones(2, np.float32)))

    def fn_direct(a, b):
        return rank_loss([a, b], 0.2)
    g1 = ops.grad(fn, grad_position=(0, 1))(Tensor(ws[0]), Tensor(ws[1]))
    g2 = ops.grad(fn_direct, grad_position=(0, 1))(Tensor(ws[0]), Tensor(ws[1]))
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------- numerical rank
def test_numerical_rank():
    rng = np.random.default_rng(11)
    low = rng.standard_normal((16, 3)) @ rng.standard_normal((3, 36))
    assert numerical_rank(low) == np.linalg.matrix_rank(low) == 3
    conv = low.reshape(16, 4, 3, 3)
    assert numerical_rank(conv) == 3
    assert numerical_rank(np.zeros((4, 5))) == 0
    # sparse weight whose non-zeros sit in 2 rows: rank 2
    sparse = np.zeros((8, 4, 3, 3), np.float32)
    sparse[1] = rng.standard_normal((4, 3, 3))
    sparse[5] = rng.standard_normal((4, 3, 3))
    assert numerical_rank(sparse) == 2
    m = np.diag([1.0, 1e-3, 1e-9])
    assert numerical_rank(m) == 3 and numerical_rank(m, rtol=1e-6) == 2
    assert numerical_rank(m) == np.linalg.matrix_rank(m)


# ------------------------------------------------- Gram path (default host targets) and split
REALISTIC_SHAPES = [(16, 1, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (64, 64, 3, 3), (64, 32, 1, 1),
                    (64, 256, 1, 1), (256, 64, 1, 1), (128, 128, 3, 3), (512, 128, 1, 1)]


def resnet50_conv_shapes():
    """The 53 conv weights of the ImageNet ResNet-50."""
    return resnet50_weight_shapes()[:-1]


def realistic_weights(seed=0):
    """Conv weights as training leaves them: He-scaled noise plus a decaying low-rank part
    (trained layers have a few dominant directions), magnitude-pruned to 0, 90 and 98 %, and
    one with whole output channels pruned (the zero rows of rank collapse)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in REALISTIC_SHAPES:
        m, n = shape[0], int(np.prod(shape[1:]))
        r = min(m, n)
        low = (rng.standard_normal((m, r)) * np.exp(-np.arange(r) / (0.2 * r))) @ rng.standard_normal((r, n))
        w = (low / np.sqrt(n) + rng.standard_normal((m, n)) * np.sqrt(2.0 / n)).astype(np.float32)
        for sparsity in (0.0, 0.9, 0.98):
            cut = np.quantile(np.abs(w), sparsity) if sparsity else -1.0
            out.append(np.where(np.abs(w) > cut, w, 0.0).astype(np.float32).reshape(shape))
    collapsed = out[-1].copy()
    collapsed[::3] = 0.0
    return out + [collapsed]


PARTIAL_KS = [float(p) for p in np.linspace(0.02, 0.5, 17)] + [0.1, 0.2]


def test_gram_targets_match_the_float64_svd_reference():
    """Same k on every (matrix, partial_k), and targets equal to the SVD's A_k within 2e-6 of
    max|A_k|: the k rule runs in float64 on both paths; the projection runs in float32 and the
    target is stored as float32 (rounding alone 6e-8 relative per entry), and the float32
    products add rounding that grows with the inner dimension (measured up to ~7e-7 on pruned
    ResNet-50 convs, 3e-7 on trained ResNet-20 ones)."""
    weights = realistic_weights()
    factors = [normalized_svd(w) for w in weights]   # one SVD per matrix for the whole sweep
    for p in PARTIAL_KS:
        ref, ref_k, ref_ok = svd_targets_numpy(weights, p, factors=factors)
        got, got_k, got_ok = rank_targets_numpy(weights, p)
        assert got_k == ref_k and got_ok == ref_ok, p
        for a, b in zip(got, ref):
            assert np.abs(a - b).max() <= 2e-6 * max(np.abs(b).max(), 1e-30)
    assert len(set(ref_k)) > 5  # the set covers a range of ranks, not one degenerate case


def test_gram_k_is_exact_at_a_near_tie():
    """p within 1e-9 of the midpoint between two candidate tails: the decision is set by that
    margin, which float64 resolves (eigenvalue error ~1e-16) and float32 (~1e-7) would not."""
    rng = np.random.default_rng(5)
    m, n = 48, 432
    energies = np.sort(rng.uniform(0.5, 1.5, m))[::-1]
    energies /= energies.sum()
    u = np.linalg.qr(rng.standard_normal((m, m)))[0]
    v = np.linalg.qr(rng.standard_normal((n, m)))[0]
    w = (u * np.sqrt(energies)) @ v.T
    tails = np.cumsum(energies[::-1])[::-1]  # tails[k] = sum_{i >= k} energies_i
    k = 30
    mid = 0.5 * (tails[k] + tails[k + 1])
    for offset, want in ((1e-9, k), (-1e-9, k + 1)):
        for method in (rank_targets_numpy, svd_targets_numpy):
            _, got, _ = method([w], mid + offset)
            assert got == [want], (method.__name__, offset)


def test_gram_edge_cases():
    zeros, k = low_rank_target_gram(np.zeros((4, 3, 1, 1)), 0.2)
    assert zeros.shape == (4, 3)
    assert k == 0 and not zeros.any()
    with pytest.raises(np.linalg.LinAlgError):
        low_rank_target_gram(np.full((4, 3), np.inf), 0.2)
    w = np.zeros((6, 2, 3, 3), np.float32)
    w[2, 0, 1, 1] = 3.0  # rank 1: every k >= 1 has tail 0 (closer to 0.2 than 1), A_k = Wn
    target, k = low_rank_target_gram(w, 0.2)
    assert k >= 1 and np.allclose(target, w.reshape(6, -1) / 3.0, atol=1e-7)
    nan = np.full((4, 4, 1, 1), np.nan, np.float32)
    targets, ranks, ok = rank_targets_numpy([nan, w], 0.2)
    assert ok == [False, True] and ranks[0] == 0 and not targets[0].any()


@pytest.mark.parametrize("group_size", [1, 2, 3, 4])
def test_split_gives_each_layer_one_worker_and_balances_cost(group_size):
    shapes = resnet50_conv_shapes()
    shares = [layers_for_worker(shapes, r, group_size) for r in range(group_size)]
    assert sorted(i for share in shares for i in share) == list(range(len(shapes)))
    costs = [sum(_target_cost(shapes[i]) for i in share) for share in shares]
    # within 10 % of an even share, unless one layer alone is more (the 2048x1024 downsample
    # conv is ~30 % of ResNet-50's cost, so 4 workers cannot go below it)
    biggest = max(_target_cost(s) for s in shapes)
    assert max(costs) <= max(1.10 * sum(costs) / group_size, biggest)
    assert split_layers(shapes, group_size) == split_layers(list(shapes), group_size)
    with pytest.raises(ValueError):
        layers_for_worker(shapes, group_size, group_size)


class FakeWorkers:
    """In-process stand-in for src.metrics.all_reduce across ``count`` threads: each call waits
    until every worker has contributed, then returns the float32 sum to all of them."""

    def __init__(self, count):
        self.barrier = threading.Barrier(count)
        self.lock = threading.Lock()
        self.parts = []
        self.calls = 0

    def all_reduce(self, array):
        with self.lock:
            self.parts.append(np.asarray(array, np.float32).copy())
            self.calls += 1
        self.barrier.wait()
        total = np.sum(self.parts, axis=0, dtype=np.float32)
        if self.barrier.wait() == 0:  # everyone has read the sum: reset for the next call
            self.parts.clear()
        self.barrier.wait()
        return total


def run_workers(weights, group_size, partial_k=0.2):
    fake, results = FakeWorkers(group_size), [None] * group_size

    def worker(rank):
        results[rank] = rank_targets_numpy(weights, partial_k, rank=rank, group_size=group_size,
                                           sum_across_workers=fake.all_reduce)
    threads = [threading.Thread(target=worker, args=(r,)) for r in range(group_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results, fake


@pytest.mark.parametrize("group_size", [2, 3])
def test_gathered_targets_equal_the_single_worker_ones(group_size):
    """Every simulated worker decomposes only its share, and after the two sums holds exactly
    the single-worker targets, ranks and flags (incl. an all-zero and a non-finite layer)."""
    weights = realistic_weights(1)[:12]
    weights += [np.zeros((8, 4, 3, 3), np.float32), np.full((4, 2, 1, 1), np.inf, np.float32)]
    single = rank_targets_numpy(weights, 0.2)
    results, fake = run_workers(weights, group_size)
    assert fake.calls == 2 * group_size
    for targets, ranks, ok in results:
        assert ranks == single[1] and ok == single[2]
        for a, b in zip(targets, single[0]):
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_each_worker_decomposes_only_its_share(monkeypatch):
    import src.pruning.masks.rpg.rank_targets as rl
    weights = realistic_weights(2)[:9]
    calls, real = [], rl._gram_basis
    monkeypatch.setattr(rl, "_gram_basis", lambda wn, p: calls.append(wn.shape) or real(wn, p))
    run_workers(weights, 2)
    assert sorted(calls) == sorted(_as2d_shape(w) for w in weights)  # once per layer in total


def _as2d_shape(w):
    return (w.shape[0], int(np.prod(w.shape[1:])))


def test_several_workers_need_a_sum():
    with pytest.raises(ValueError, match="sum_across_workers"):
        rank_targets_numpy(realistic_weights()[:2], 0.2, rank=0, group_size=2)


WORKER_SCRIPT = '''
import json, os, sys
sys.path.insert(0, os.environ["PRUNE_ROOT"])
import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor
from mindspore.communication import get_group_size, get_rank, init
from src.metrics import all_reduce
from src.pruning.masks.rpg.pruner import RankLossTerm
from src.pruning.masks.rpg.rank_targets import rank_targets_numpy
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
init()
rank, size = get_rank(), get_group_size()
rng = np.random.default_rng(0)  # the same weights on every worker, as in data-parallel training
shapes = [(16, 1, 3, 3), (16, 16, 3, 3), (32, 16, 3, 3), (64, 32, 1, 1), (64, 64, 3, 3)]
weights = [(rng.standard_normal(s) * np.sqrt(2 / np.prod(s[1:]))).astype(np.float32) for s in shapes]
weights[1][:] = 0.0  # unusable layer: flagged on every worker
term = RankLossTerm([Parameter(Tensor(w), name=f"w{i}") for i, w in enumerate(weights)], 0.5, 0.2)
failed = term.set_host_targets(weights, rank, size, all_reduce)
single, _, ok = rank_targets_numpy(weights, 0.2)
same = all(np.array_equal(p.asnumpy(), t) for p, t in zip(term.targets, single))
same = same and np.array_equal(term.ok_flags.asnumpy(), np.asarray(ok, np.float32))
with open(os.path.join(os.environ["OUT"], f"rank{rank}.json"), "w") as handle:
    json.dump({"size": size, "same": bool(same), "failed": failed}, handle)
'''


@pytest.mark.skipif(shutil.which("msrun", path=os.path.dirname(sys.executable)) is None
                    and shutil.which("msrun") is None, reason="msrun not installed")
def test_two_worker_gather_end_to_end(tmp_path):
    """RankLossTerm.set_host_targets in 2 real msrun workers (all_reduce on loopback): both
    end with exactly the single-worker targets and flags."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, PATH=path, PRUNE_ROOT=ROOT, OUT=str(tmp_path), GLOG_v="3",
               PYTHONWARNINGS="ignore")
    proc = subprocess.run(["msrun", "--worker_num=2", "--local_worker_num=2",
                           "--master_addr=127.0.0.1", f"--master_port={port}",
                           f"--log_dir={tmp_path / 'log'}", "--join=True", "--cluster_time_out=120",
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result == {"size": 2, "same": True, "failed": ["w1"]}
