"""RPG rank loss: push each conv weight matrix away from its best low-rank approximation.

Per conv layer with weight W of shape (C_out, C_in, kh, kw) (a Dense weight (C_out, C_in) is
its own matrix: ``rank_loss_layers: all`` puts those in too):

    Wn  = W.reshape(C_out, -1) / ||W||_F                 (unit Frobenius norm)
    Wn  = U diag(s) V^T                                  (SVD, no gradient)
    k   = energy rule (rank_targets.select_rank)
    A_k = U[:, :k] diag(s[:k]) V[:, :k]^T                (held constant)
    L   = -||Wn - A_k||_F^2                              (:func:`layer_loss_from_target`)

and the rank loss is the mean of L over the usable layers (:func:`mean_over_usable_layers`).
The gradient flows through Wn, including the 1/||W||_F normalisation, never through the SVD:
the inner minimisation (best rank-k approximation, Eckart-Young) is solved exactly and treated
as a constant, the outer step maximises the distance to it (adversarial, min-max).

This module is the MindSpore side: graph-safe (static shapes only, no NumPy, no Python branching
on tensor values), usable in PYNATIVE_MODE and inside a GRAPH_MODE ``Cell.construct`` or
``ms.jit``; differentiable w.r.t. the weights. Two ways to get A_k:

- in the graph (``rank_loss`` / ``layer_rank_terms``, targets alone: ``layer_low_rank_targets``):
  ``ops.svd`` of Wn, the energy rule mirrored from ``select_rank``, the truncation as a mask;
- before the step, since A_k is a constant: on the host (``rank_targets.rank_targets_numpy``,
  float64 Gram eigendecomposition, see that module) or in a forward-only graph
  (``layer_low_rank_targets``); then only the cheap part ``rank_loss_from_targets`` is
  differentiated inside the train step. That keeps the SVD out of the differentiated graph and
  works on every backend.

Both compose the same layer term and the same mean, so they agree up to the targets' rounding.

Layers that cannot contribute - all-zero weights (||W||_F = 0; the reference skips them) or a
non-finite SVD output (the reference catches the SVD error and logs it) - give loss 0, are
flagged ``ok = False`` by :func:`layer_rank_terms` so the caller can log a warning, and are left
out of the mean's denominator (as the reference divides by its number of "activated" layers).
"""
import mindspore as ms
from mindspore import ops


def _normalise(weight):
    """(Wn, has_norm): W reshaped to (C_out, -1) over its Frobenius norm, safe at W = 0."""
    w = weight.reshape(weight.shape[0], -1)
    if w.dtype not in (ms.float32, ms.float64):
        w = w.astype(ms.float32)  # e.g. float16 under AMP: ops.svd wants float32/float64
    sq = ops.reduce_sum(w * w)
    has_norm = sq > 0
    # all-zero layer: divide by 1 instead of 0 (Wn = 0, loss 0, gradient 0, flagged not ok).
    # The select sits BEFORE the sqrt: sqrt'(0) = inf would turn the zero gradient into NaN.
    return w / ops.sqrt(ops.select(has_norm, sq, ops.ones_like(sq))), has_norm


def _layer_target(weight, partial_k):
    """(Wn, A_k, ok, k) of one layer, A_k, ok and k constants; static shapes only (graph-safe)."""
    wn, has_norm = _normalise(weight)
    wn_const = ops.stop_gradient(wn)
    s, u, v = ops.svd(wn_const, full_matrices=False, compute_uv=True)  # wn = u diag(s) v^T
    s = ops.stop_gradient(s)
    u = ops.stop_gradient(u)
    v = ops.stop_gradient(v)
    n = s.shape[0]
    # energy rule, mirrored from select_rank: rev[j] = tail(n-1-j), first argmin over j
    rev = ops.cumsum(ops.flip(s * s, (0,)), 0)
    dist = ops.abs(rev - partial_k)
    j = ops.argmin(dist, 0)
    k = n - 1 - j
    keep = (ops.arange(n) < k).astype(s.dtype)  # rank-k truncation as a mask: static shape
    a_k = ops.matmul(u * (s * keep), v.transpose(1, 0))
    ok = ops.logical_and(has_norm, ops.isfinite(a_k).all())
    # failed SVD: target := Wn itself -> loss exactly 0 and gradient exactly 0 (no NaN leaks
    # into the backward pass, which a select on the loss alone would not guarantee)
    a_k = ops.stop_gradient(ops.select(ok, a_k, wn_const))
    k = ops.select(ok, k, ops.zeros_like(k))  # unusable layer: rank 0, as on the host
    return wn, a_k, ok, k


def layer_loss_from_target(wn, target):
    """-||Wn - A_k||_F^2 of one layer: ``wn`` the normalised weight matrix, ``target`` its A_k,
    held constant (no gradient flows into it)."""
    diff = wn - ops.stop_gradient(target.astype(wn.dtype))
    return -ops.reduce_sum(diff * diff)


def mean_over_usable_layers(losses, ok):
    """Sum of the per-layer ``losses`` (Tensor (L,)) over the usable layers, divided by their
    number (``ok``: Tensor (L,), bool or 1.0/0.0); 0 if no layer is usable."""
    okf = ok.astype(losses.dtype)
    count = okf.sum()
    return (losses * okf).sum() / ops.maximum(count, ops.ones_like(count))


# The two checks below run inside compiled graphs too: no try/except, no f-strings there.
def _check_weights(weights):
    if not isinstance(weights, (list, tuple)) or not weights:
        raise ValueError("weights must be a non-empty list/tuple of conv weight Tensors")


def _graph_check_partial_k(partial_k):
    if not isinstance(partial_k, (int, float)) or partial_k < 0.0 or partial_k > 1.0:
        raise ValueError("partial_k must be a Python number in [0, 1] (fraction of the energy "
                         "to drop), e.g. 0.2")
    return partial_k * 1.0


def layer_rank_terms(weights, partial_k):
    """Per-layer (losses, ok_flags, ranks): three tuples of scalar Tensors, graph-safe.

    losses[l] = -||Wn_l - A_k||_F^2 (0 for a layer that cannot contribute), ok_flags[l] (bool)
    is False for an all-zero layer or a non-finite SVD (log a warning for those), ranks[l] is
    the k chosen by the energy rule (int32; 0 for an unusable layer).
    """
    _check_weights(weights)
    p = _graph_check_partial_k(partial_k)
    losses, oks, ks = (), (), ()
    for w in weights:
        wn, a_k, ok, k = _layer_target(w, p)
        loss = layer_loss_from_target(wn, a_k)
        losses += (ops.select(ok, loss, ops.zeros_like(loss)),)  # a NaN weight gives NaN - NaN
        oks += (ok,)
        ks += (k,)
    return losses, oks, ks


def layer_rank_losses(weights, partial_k):
    """Tuple of per-layer losses -||Wn_l - A_k||_F^2 (scalar Tensors, graph-safe)."""
    return layer_rank_terms(weights, partial_k)[0]


def rank_loss(weights, partial_k):
    """RPG rank loss: mean of the per-layer losses over the usable layers (scalar Tensor).

    Differentiable w.r.t. ``weights``; works in PYNATIVE_MODE and inside GRAPH_MODE
    (``Cell.construct`` / ``ms.jit``). 0 if no layer is usable.
    """
    losses, oks, _ = layer_rank_terms(weights, partial_k)
    return mean_over_usable_layers(ops.stack(losses), ops.stack(oks))


def layer_low_rank_targets(weights, partial_k):
    """Graph-side targets (targets, ok_flags, ranks), no gradient: the A_k of every layer.

    For a two-stage step: run this in its own (forward-only) graph, then feed the targets to
    :func:`rank_loss_from_targets` inside the differentiated train step. Same values as
    rank_targets.rank_targets_numpy up to float32 rounding.
    """
    _check_weights(weights)
    p = _graph_check_partial_k(partial_k)
    targets, oks, ks = (), (), ()
    for w in weights:
        _, a_k, ok, k = _layer_target(w, p)
        targets += (a_k,)
        oks += (ok,)
        ks += (k,)
    return targets, oks, ks


def layer_rank_losses_from_targets(weights, targets):
    """Per-layer -||Wn_l - T_l||_F^2 with constant targets T_l (e.g. from rank_targets_numpy).

    Only the cheap differentiable part runs in the graph; the SVD ran before (on the host with
    rank_targets.rank_targets_numpy, or in a forward-only graph with
    :func:`layer_low_rank_targets`). Graph-safe.
    """
    _check_weights(weights)
    if len(targets) != len(weights):
        raise ValueError("targets must have one entry per weight")
    losses = ()
    for w, t in zip(weights, targets):
        wn, _ = _normalise(w)
        losses += (layer_loss_from_target(wn, t),)
    return losses


def rank_loss_from_targets(weights, targets, ok):
    """Mean over the usable layers of -||Wn_l - T_l||_F^2 (same value as :func:`rank_loss` when
    T_l and ok come from rank_targets.rank_targets_numpy).

    ``ok``: Tensor of shape (L,), 1.0 for usable layers and 0.0 for the others (pass a Tensor
    rather than Python bools so that changing flags does not recompile a graph).

    Calling a compiled graph with freshly built target Tensors: pass them as
    ``ms.mutable(tuple(targets))``. A plain tuple of new Tensors re-specialises the graph on
    every call (measured: ~7-10 s per call for ResNet-50 vs ~1 s with ``ms.mutable``), or keep
    the targets in Parameters and ``set_data`` them.
    """
    return mean_over_usable_layers(ops.stack(layer_rank_losses_from_targets(weights, targets)), ok)
