"""RPG rank loss: energy rule, value, gradient, graph mode, numerical rank."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from src.pruning.rank_loss import (
    layer_low_rank_targets, layer_rank_losses, layer_rank_terms, low_rank_target_numpy,
    numerical_rank, rank_loss, rank_loss_from_targets, rank_loss_numpy, rank_targets_numpy,
    select_rank)

SHAPES = [(8, 4, 3, 3), (16, 8, 1, 1), (6, 3, 7, 7), (32, 16, 1, 1), (5, 40)]


@pytest.fixture
def pynative():
    old = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=old)


@pytest.fixture
def graph_mode():
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=old)


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
