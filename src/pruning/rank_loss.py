"""RPG rank loss: push each conv weight matrix away from its best low-rank approximation.

Per conv layer with weight W of shape (C_out, C_in, kh, kw):

    Wn  = W.reshape(C_out, -1) / ||W||_F                 (unit Frobenius norm)
    Wn  = U diag(s) V^T                                  (SVD, no gradient)
    k   = energy rule (:func:`select_rank`)
    A_k = U[:, :k] diag(s[:k]) V[:, :k]^T                (held constant)
    L   = -||Wn - A_k||_F^2

and the rank loss is the mean of L over the layers. The gradient flows through Wn, including
the 1/||W||_F normalisation, never through the SVD: the inner minimisation (best rank-k
approximation, Eckart-Young) is solved exactly and treated as a constant, the outer step
maximises the distance to it (adversarial, min-max).

Two implementations with identical semantics:

- MindSpore (``layer_rank_terms`` / ``layer_rank_losses`` / ``rank_loss``): graph-safe (static
  shapes only, no NumPy, no Python branching on tensor values), usable in PYNATIVE_MODE and inside
  a GRAPH_MODE ``Cell.construct`` or ``ms.jit``; differentiable w.r.t. the weights.
- NumPy float64 (``rank_loss_numpy`` / ``low_rank_target_numpy``): host reference for tests,
  benchmarks and a host-SVD trainer path.

Since A_k is a constant, the step can also be split in two: compute the targets first (host:
``rank_targets_numpy``; or a forward-only graph: ``layer_low_rank_targets``), then differentiate
only the cheap part ``rank_loss_from_targets`` inside the train step. That keeps the SVD out of
the differentiated graph and works on every backend.

The host targets (``rank_targets_numpy``) come by default from the Gram matrix of the smaller
side: for Wn of shape (m, n) with m <= n, eigh(Wn Wn^T) gives s^2 (the energies the k rule
sums) and U, and A_k = U_k (U_k^T Wn) = Wn - U_rest (U_rest^T Wn) (whichever basis is
narrower); for m > n the same on Wn^T Wn with V. Only the min(m, n)-square eigenproblem and two
thin products run, no full SVD; on the 53 ResNet-50 convs that is several times faster than
the float64 SVD (``benchmarks/rpg_cost.py``). The Gram matrix and eigh stay float64 because
the k rule needs it: the candidate tails differ by s_k^2 (~1e-4 for a 512-wide layer) and p
falls anywhere between them, so float32 energies (error ~1e-7 .. 1e-5) could flip k near a tie.
In float64 the Gram eigenvalues carry an absolute error of ~1e-16 (||Wn|| = 1), the order of
the SVD's own s^2 error, so k is the float64 SVD's. Only the projection runs in float32 (the
target is stored as float32 anyway). ``method="svd"`` keeps the float64 SVD path (the
reference :func:`low_rank_target_numpy`).

In data-parallel runs each worker decomposes its share of the layers (:func:`layers_for_worker`,
balanced by estimated cost), two float32 sums across workers gather every layer's k, flag and
basis (each entry is non-zero on one worker only, so the sums are exact; the bases are a
fraction of the targets' size), and every worker projects all layers itself, so all workers
hold exactly the single-worker targets.

Energy rule (both implementations, as in the reference ``find_k``): with s sorted descending and
tail(k) = sum_{i >= k} s_i^2 (0-based: the energy dropped when the first k values are kept),
k is the candidate in {0, ..., n-1} (n = len(s)) whose tail(k) is closest to partial_k; on a tie
the LARGER k wins. The reference computes cumsum over the reversed s^2 and takes the first argmin,
which gives exactly this candidate set and tie rule; k = n (tail 0, A_k = Wn, loss 0) is never a
candidate there, so it is not one here either. partial_k = 0.2 keeps about 80 % of the energy:
it is NOT a fraction of the rank.

Layers that cannot contribute - all-zero weights (||W||_F = 0; the reference skips them) or a
non-finite SVD output (the reference catches the SVD error and logs it) - give loss 0, are
flagged ``ok = False`` by :func:`layer_rank_terms` so the caller can log a warning, and are left
out of the mean's denominator (as the reference divides by its number of "activated" layers).
"""
import numpy as np

import mindspore as ms
from mindspore import ops


# ----------------------------------------------------------------------------- host (NumPy) side
def _check_partial_k(partial_k):
    try:
        p = float(partial_k)
    except (TypeError, ValueError):
        raise ValueError(f"partial_k must be a number in [0, 1], got {partial_k!r}") from None
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"partial_k must be in [0, 1] (fraction of energy to drop), got {p}")
    return p


def select_rank(singular_values, partial_k):
    """Energy rule: the k in {0, ..., n-1} whose tail(k) = sum_{i>=k} s_i^2 is closest to partial_k.

    ``singular_values``: 1-D, sorted descending, of a unit-Frobenius matrix (so sum s_i^2 = 1;
    not renormalised here). Ties go to the larger k (reference behaviour). Examples, with
    s^2 = [0.5, 0.3, 0.15, 0.05]: tails are [1, 0.5, 0.2, 0.05] for k = 0..3, so partial_k = 0.2
    gives k = 2, partial_k = 0.6 gives k = 1, partial_k = 0 gives k = 3.
    """
    p = _check_partial_k(partial_k)
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"singular_values must be a non-empty 1-D sequence, got shape {s.shape}")
    return _select_rank_from_energies(s * s, p)


def _select_rank_from_energies(energies, p):
    """The energy rule on s^2 (descending) directly: the Gram path has s^2, not s."""
    # tail computed as a cumsum from the smallest value upwards (same summation order as the
    # reference and as the graph version): rev[j] = tail(n - 1 - j)
    rev = np.cumsum(energies[::-1])
    dist = np.abs(rev - p)
    j = int(np.argmin(dist))  # first minimum over j  ==  largest k among ties
    return energies.size - 1 - j


def _as_2d(weight):
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim < 2:
        raise ValueError(
            f"weight must have at least 2 dimensions (C_out, ...), got shape {w.shape}")
    return w.reshape(w.shape[0], -1)


def low_rank_target_numpy(W2d, partial_k):
    """Host float64 reference of the constant target: returns (A_k, k).

    ``W2d``: a (C_out, C_in*kh*kw) matrix (a 4-D conv weight is reshaped to that). It is
    normalised to unit Frobenius norm first, so A_k is the rank-k truncated SVD of Wn, with k
    from :func:`select_rank`. An all-zero matrix gives (zeros, 0).
    Raises numpy.linalg.LinAlgError if the SVD does not converge.
    """
    p = _check_partial_k(partial_k)
    w = _as_2d(W2d)
    norm = np.linalg.norm(w)
    if norm == 0.0:
        return np.zeros_like(w), 0
    u, s, vt = np.linalg.svd(w / norm, full_matrices=False)
    k = select_rank(s, p)
    return (u[:, :k] * s[:k]) @ vt[:k], k


def rank_loss_numpy(weight_arrays, partial_k):
    """Host float64 rank loss: mean over usable layers of -||Wn - A_k||_F^2 (a Python float).

    Layers with zero norm or a failing SVD are skipped (not counted in the mean); if no layer is
    usable the loss is 0.0.
    """
    p = _check_partial_k(partial_k)
    losses = []
    for w in weight_arrays:
        w2 = _as_2d(w)
        norm = np.linalg.norm(w2)
        if norm == 0.0:
            continue
        try:
            a_k, _ = low_rank_target_numpy(w2, p)
        except np.linalg.LinAlgError:
            continue
        losses.append(-float(np.sum((w2 / norm - a_k) ** 2)))
    return float(np.mean(losses)) if losses else 0.0


def _unit(w2):
    """Wn = W / ||W||_F as float64, or None for an all-zero W; LinAlgError if not finite."""
    norm = np.linalg.norm(w2)
    if not np.isfinite(norm):
        raise np.linalg.LinAlgError("weight is not finite")
    return None if norm == 0.0 else w2 / norm


def _left(shape):
    """The Gram matrix is taken on the smaller side: rows (Wn Wn^T) when C_out <= C_in*kh*kw."""
    return shape[0] <= shape[1]


def _basis_width(k, size):
    """Columns of the basis that is gathered and projected with: the top k eigenvectors, or the
    size - k dropped ones when those are fewer (A_k = Wn - P_rest Wn)."""
    return min(k, size - k)


def _gram_basis(wn, partial_k):
    """(k, basis): k from the float64 eigenvalues of the smaller Gram matrix, basis the float32
    eigenvectors :func:`_project` needs (size x _basis_width(k, size))."""
    gram = wn @ wn.T if _left(wn.shape) else wn.T @ wn
    energies, vectors = np.linalg.eigh(gram)  # ascending
    # s^2 descending; rounding can leave the zero eigenvalues of a rank-deficient (pruned)
    # matrix at -1e-17: clip, as s^2 >= 0
    k = _select_rank_from_energies(np.maximum(energies[::-1], 0.0), partial_k)
    size = vectors.shape[1]
    # column slices keep positive strides, so later products stay on BLAS (a reversed view
    # falls off it and is ~50x slower); the projector does not depend on the column order
    basis = vectors[:, :size - k] if size - k < k else vectors[:, size - k:]
    return k, basis.astype(np.float32)


def _project(wn, basis, k):
    """A_k = P_k Wn (Wn P_k when the Gram side is the columns) as float32, from the top-k basis
    or, when ``basis`` holds the dropped vectors instead (fewer), as Wn - P_rest Wn. The products
    run in float32: the target is stored as float32 anyway, and this adds up to ~7e-7 of max|A_k|
    (pruned ResNet-50 convs, benchmarks/results/rpg_cost.md; 3e-7 on trained ResNet-20 ones)."""
    w32 = wn.astype(np.float32)
    part = basis @ (basis.T @ w32) if _left(wn.shape) else (w32 @ basis) @ basis.T
    return w32 - part if basis.shape[1] < k else part  # narrower than k: the dropped vectors


def low_rank_target_gram(W2d, partial_k):
    """Same (A_k, k) as :func:`low_rank_target_numpy` (A_k as float32), from the eigendecomposition
    of the float64 Gram matrix of the smaller side (see the module notes). An all-zero matrix
    gives (zeros, 0). Raises numpy.linalg.LinAlgError if eigh does not converge or the weight
    is not finite.
    """
    p = _check_partial_k(partial_k)
    wn = _unit(_as_2d(W2d))
    if wn is None:
        return np.zeros(_as_2d(W2d).shape, np.float32), 0
    k, basis = _gram_basis(wn, p)
    return _project(wn, basis, k), k


def split_layers(shapes, group_size):
    """Owner worker of every layer: longest-cost-first onto the least-loaded worker (ties to the
    lower index), so each worker's share of the eigendecompositions costs about 1/group_size.
    Depends only on the shapes, so every worker computes the same split without communicating."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    costs = [_target_cost(s) for s in shapes]
    owner, load = [0] * len(shapes), [0] * group_size
    for index in sorted(range(len(shapes)), key=lambda i: (-costs[i], i)):
        worker = min(range(group_size), key=lambda r: (load[r], r))
        owner[index] = worker
        load[worker] += costs[index]
    return owner


def _target_cost(shape):
    """Estimated flops of one layer's eigen-work: the Gram product and eigh with vectors."""
    m = int(shape[0])
    n = int(np.prod(shape[1:]))
    small = min(m, n)
    return 2 * m * n * small + 10 * small ** 3


def layers_for_worker(shapes, rank, group_size):
    """The set of layer indices whose eigendecomposition worker ``rank`` of ``group_size`` runs."""
    if not 0 <= rank < group_size:
        raise ValueError(f"rank must be in [0, {group_size}), got {rank}")
    return {i for i, owner in enumerate(split_layers(shapes, group_size)) if owner == rank}


def own_bases(matrices, partial_k, layers):
    """Phase 1 of the host targets: (ks, oks, bases) for the layer indices in ``layers``; other
    layers get (0, False, None), the neutral element of the sum across workers. ``matrices``:
    the unit-norm float64 matrices (None for all-zero, see :func:`_unit`), or a LinAlgError
    instance for a weight that is not finite."""
    ks, oks, bases = [0] * len(matrices), [False] * len(matrices), [None] * len(matrices)
    for index in layers:
        wn = matrices[index]
        if wn is None or isinstance(wn, Exception):
            continue
        try:
            ks[index], bases[index] = _gram_basis(wn, partial_k)
            oks[index] = True
        except np.linalg.LinAlgError:
            ks[index] = 0
    return ks, oks, bases


def _gather_bases(matrices, ks, oks, bases, sum_across_workers):
    """Phase 2: two collective float32 sums give every worker all (k, ok), then all bases (their
    sizes follow from k). Each entry is non-zero on one worker only, so the sums are exact."""
    flags = np.asarray(sum_across_workers(np.asarray(oks + ks, np.float32)), np.float64)
    count = len(matrices)
    oks = [bool(v > 0.5) for v in flags[:count]]
    ks = [int(round(v)) if good else 0 for v, good in zip(flags[count:], oks)]
    shapes = [(min(m.shape), _basis_width(k, min(m.shape))) if good else (0, 0)
              for m, k, good in zip(matrices, ks, oks)]
    packed = np.concatenate([np.zeros(0, np.float32)] + [
        basis.reshape(-1) if basis is not None else np.zeros(rows * cols, np.float32)
        for basis, (rows, cols) in zip(bases, shapes)])
    total = np.asarray(sum_across_workers(packed), np.float32)
    if total.shape != packed.shape:
        raise ValueError(f"the sum across workers returned shape {total.shape}, expected {packed.shape}")
    gathered, at = [], 0
    for good, (rows, cols) in zip(oks, shapes):
        gathered.append(total[at:at + rows * cols].reshape(rows, cols) if good else None)
        at += rows * cols
    return ks, oks, gathered


HOST_METHODS = ("gram", "svd")


def rank_targets_numpy(weight_arrays, partial_k, dtype=np.float32, method="gram", rank=0,
                       group_size=1, sum_across_workers=None):
    """Host targets of every layer, for the "SVD on the host, cheap part in the graph" path.

    Returns (targets, ranks, ok): targets[l] = A_k of Wn_l as a (C_out, C_in*kh*kw) array of
    ``dtype`` (zeros for an unusable layer), ranks[l] = k, ok[l] = False for an all-zero layer
    or a failed decomposition. Feed them to :func:`rank_loss_from_targets`.

    ``method``: "gram" (default, float64 eigh of the smaller Gram matrix, see the module notes)
    or "svd" (the float64 SVD reference); both give the same k and A_k up to rounding.
    Data-parallel ("gram" only): worker ``rank`` of ``group_size`` decomposes its share of the
    layers (:func:`layers_for_worker`), ``sum_across_workers`` (a collective float32 sum such as
    src.metrics.all_reduce, called twice by every worker) gathers the (k, basis) of all layers,
    and every worker projects all layers itself; the result equals the single-worker one.
    """
    p = _check_partial_k(partial_k)
    if method not in HOST_METHODS:
        raise ValueError(f"method must be one of {', '.join(HOST_METHODS)}, got {method!r}")
    if group_size > 1 and (method != "gram" or sum_across_workers is None):
        raise ValueError("several workers need method 'gram' and a sum_across_workers function")
    if method == "svd":
        return _svd_targets(weight_arrays, p, dtype)
    matrices = []
    for w in weight_arrays:
        try:
            matrices.append(_unit(_as_2d(w)))
        except np.linalg.LinAlgError as err:
            matrices.append(err)
    shapes = [_as_2d(w).shape for w in weight_arrays]
    ks, oks, bases = own_bases(matrices, p, layers_for_worker(shapes, rank, group_size))
    if group_size > 1:
        ks, oks, bases = _gather_bases(matrices, ks, oks, bases, sum_across_workers)
    targets = [_project(wn, basis, k).astype(dtype) if good else np.zeros(shape, dtype)
               for wn, basis, k, good, shape in zip(matrices, bases, ks, oks, shapes)]
    return targets, [int(k) for k in ks], oks


def _svd_targets(weight_arrays, p, dtype):
    """The float64 SVD path (reference; the default before the Gram path)."""
    targets, ranks, ok = [], [], []
    for w in weight_arrays:
        w2 = _as_2d(w)
        good = bool(np.linalg.norm(w2) > 0.0)
        a_k, k = np.zeros_like(w2), 0
        if good:
            try:
                a_k, k = low_rank_target_numpy(w2, p)
            except np.linalg.LinAlgError:
                a_k, good = np.zeros_like(w2), False
        targets.append(a_k.astype(dtype))
        ranks.append(int(k))
        ok.append(good)
    return targets, ranks, ok


def numerical_rank(matrix, rtol=None):
    """Numerical rank (numpy.linalg.matrix_rank semantics) of a weight matrix, for reports.

    A conv weight (C_out, C_in, kh, kw) is reshaped to (C_out, C_in*kh*kw). Singular values
    above tol count; tol = S.max() * max(M, N) * eps(dtype) by default, or rtol * S.max().
    """
    m = np.asarray(matrix)
    if m.ndim < 2:
        raise ValueError(f"matrix must have at least 2 dimensions, got shape {m.shape}")
    m = m.reshape(m.shape[0], -1)
    if not np.issubdtype(m.dtype, np.inexact):
        m = m.astype(np.float64)
    if m.size == 0:
        return 0
    s = np.linalg.svd(m, compute_uv=False)
    smax = s.max()
    if rtol is None:
        tol = smax * max(m.shape) * np.finfo(s.dtype).eps
    else:
        if rtol < 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        tol = smax * rtol
    return int(np.count_nonzero(s > tol))


# ------------------------------------------------------------------------ MindSpore (graph) side
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


def _low_rank_target(wn, has_norm, partial_k):
    """(A_k, ok, k) for a normalised matrix, all constants; static shapes only (graph-safe)."""
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
    return a_k, ok, k


def _layer_term(weight, partial_k):
    """(loss, ok, k) of one layer."""
    wn, has_norm = _normalise(weight)
    a_k, ok, k = _low_rank_target(wn, has_norm, partial_k)
    diff = wn - a_k
    loss = -ops.reduce_sum(diff * diff)
    return ops.select(ok, loss, ops.zeros_like(loss)), ok, k


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
        loss, ok, k = _layer_term(w, p)
        losses += (loss,)
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
    total = ops.stack(losses).sum()
    count = ops.stack(oks).astype(total.dtype).sum()
    return total / ops.maximum(count, ops.ones_like(count))


def layer_low_rank_targets(weights, partial_k):
    """Graph-side targets (targets, ok_flags, ranks), no gradient: the A_k of every layer.

    For a two-stage step: run this in its own (forward-only) graph, then feed the targets to
    :func:`rank_loss_from_targets` inside the differentiated train step. Same values as
    :func:`rank_targets_numpy` up to float32 rounding.
    """
    _check_weights(weights)
    p = _graph_check_partial_k(partial_k)
    targets, oks, ks = (), (), ()
    for w in weights:
        wn, has_norm = _normalise(w)
        a_k, ok, k = _low_rank_target(wn, has_norm, p)
        targets += (a_k,)
        oks += (ok,)
        ks += (k,)
    return targets, oks, ks


def layer_rank_losses_from_targets(weights, targets):
    """Per-layer -||Wn_l - T_l||_F^2 with constant targets T_l (e.g. from rank_targets_numpy).

    Only the cheap differentiable part runs in the graph; the SVD ran before (on the host with
    :func:`rank_targets_numpy`, or in a forward-only graph with :func:`layer_low_rank_targets`).
    Graph-safe.
    """
    _check_weights(weights)
    if len(targets) != len(weights):
        raise ValueError("targets must have one entry per weight")
    losses = ()
    for w, t in zip(weights, targets):
        wn, _ = _normalise(w)
        diff = wn - ops.stop_gradient(t.astype(wn.dtype))
        losses += (-ops.reduce_sum(diff * diff),)
    return losses


def rank_loss_from_targets(weights, targets, ok):
    """Mean over the usable layers of -||Wn_l - T_l||_F^2 (same value as :func:`rank_loss` when
    T_l and ok come from :func:`rank_targets_numpy`).

    ``ok``: Tensor of shape (L,), 1.0 for usable layers and 0.0 for the others (pass a Tensor
    rather than Python bools so that changing flags does not recompile a graph).

    Calling a compiled graph with freshly built target Tensors: pass them as
    ``ms.mutable(tuple(targets))``. A plain tuple of new Tensors re-specialises the graph on
    every call (measured: ~7-10 s per call for ResNet-50 vs ~1 s with ``ms.mutable``), or keep
    the targets in Parameters and ``set_data`` them.
    """
    losses = ops.stack(layer_rank_losses_from_targets(weights, targets))
    okf = ok.astype(losses.dtype)
    count = okf.sum()
    return (losses * okf).sum() / ops.maximum(count, ops.ones_like(count))
