"""Host (NumPy) side of RPG's rank loss: the energy rule and the constant low-rank targets.

For a conv weight W of shape (C_out, C_in, kh, kw) (or a Dense one, (C_out, C_in), with
``rank_loss_layers: all``), Wn = W.reshape(C_out, -1) / ||W||_F, and the
target is A_k, the best rank-k approximation of Wn (Eckart-Young: its truncated SVD), k from the
energy rule. rank_loss.py differentiates -||Wn - A_k||_F^2 with A_k held constant;
this module computes the A_k before the train step (``rank_targets_numpy``), so the SVD stays
out of the differentiated graph and works on every backend.

Energy rule (:func:`select_rank`, mirrored in the graph by rank_loss.py; as in the reference
``find_k``): with s sorted descending and tail(k) = sum_{i >= k} s_i^2 (0-based: the energy
dropped when the first k values are kept), k is the candidate in {0, ..., n-1} (n = len(s))
whose tail(k) is closest to partial_k; on a tie the LARGER k wins. The reference computes cumsum
over the reversed s^2 and takes the first argmin, which gives exactly this candidate set and tie
rule; k = n (tail 0, A_k = Wn, loss 0) is never a candidate there, so it is not one here either.
partial_k = 0.2 keeps about 80 % of the energy: it is NOT a fraction of the rank.

The targets come from the Gram matrix of the smaller side: for Wn of shape (m, n) with m <= n,
eigh(Wn Wn^T) gives s^2 (the energies the k rule sums) and U, and A_k = U_k (U_k^T Wn) =
Wn - U_rest (U_rest^T Wn) (whichever basis is narrower); for m > n the same on Wn^T Wn with V.
Only the min(m, n)-square eigenproblem and two thin products run, no full SVD; on the 53
ResNet-50 convs that is several times faster than the float64 SVD (``benchmarks/rpg_cost.py``).
The Gram matrix and eigh stay float64 because the k rule needs it: the candidate tails differ
by s_k^2 (~1e-4 for a 512-wide layer) and p falls anywhere between them, so float32 energies
(error ~1e-7 .. 1e-5) could flip k near a tie. In float64 the Gram eigenvalues carry an absolute
error of ~1e-16 (||Wn|| = 1), the order of the SVD's own s^2 error, so k is the float64 SVD's.
Only the projection runs in float32 (the target is stored as float32 anyway). The float64 SVD
reference the tests and the benchmark compare with lives in tests/rank_reference.py.

In data-parallel runs each worker decomposes its share of the layers (:func:`layers_for_worker`,
balanced by estimated cost), two float32 sums across workers gather every layer's k, flag and
basis (each entry is non-zero on one worker only, so the sums are exact; the bases are a
fraction of the targets' size), and every worker projects all layers itself, so all workers
hold exactly the single-worker targets.

Layers that cannot contribute - all-zero weights (the reference skips them) or a failed
decomposition (the reference catches the SVD error and logs it) - get a zero target and
``ok = False``, so the loss leaves them out of its mean.
"""
import numpy as np


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
    """(A_k, k) of one matrix (A_k as float32, the float64 SVD's up to rounding), from the
    eigendecomposition of the float64 Gram matrix of the smaller side (see the module notes).
    An all-zero matrix
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


def unit_matrices(weight_arrays):
    """Phase 0: each weight as the unit-norm float64 (C_out, C_in*kh*kw) matrix the targets are
    computed from (None for an all-zero weight, a LinAlgError instance for one that is not
    finite), for :func:`own_bases` and :func:`project_targets`."""
    matrices = []
    for w in weight_arrays:
        try:
            matrices.append(_unit(_as_2d(w)))
        except np.linalg.LinAlgError as err:
            matrices.append(err)
    return matrices


def project_targets(matrices, bases, ks, oks, shapes, dtype=np.float32):
    """Phase 3: A_k of every usable layer from its (gathered) basis, as ``dtype``; zeros of the
    layer's 2-D ``shapes`` for the others."""
    return [_project(wn, basis, k).astype(dtype) if good else np.zeros(shape, dtype)
            for wn, basis, k, good, shape in zip(matrices, bases, ks, oks, shapes)]


def rank_targets_numpy(weight_arrays, partial_k, dtype=np.float32, rank=0, group_size=1,
                       sum_across_workers=None):
    """Host targets of every layer, for the "SVD on the host, cheap part in the graph" path.

    Returns (targets, ranks, ok): targets[l] = A_k of Wn_l as a (C_out, C_in*kh*kw) array of
    ``dtype`` (zeros for an unusable layer), ranks[l] = k, ok[l] = False for an all-zero layer
    or a failed decomposition. Feed them to rank_loss.rank_loss_from_targets.

    k and A_k come from the float64 eigh of the smaller Gram matrix (see the module notes).
    Data-parallel: worker ``rank`` of ``group_size`` decomposes its share of the layers
    (:func:`layers_for_worker`), ``sum_across_workers`` (a collective float32 sum such as
    src.metrics.all_reduce, called twice by every worker) gathers the (k, basis) of all layers,
    and every worker projects all layers itself; the result equals the single-worker one.
    """
    p = _check_partial_k(partial_k)
    if group_size > 1 and sum_across_workers is None:
        raise ValueError("several workers need a sum_across_workers function")
    matrices = unit_matrices(weight_arrays)
    shapes = [_as_2d(w).shape for w in weight_arrays]
    ks, oks, bases = own_bases(matrices, p, layers_for_worker(shapes, rank, group_size))
    if group_size > 1:
        ks, oks, bases = _gather_bases(matrices, ks, oks, bases, sum_across_workers)
    return project_targets(matrices, bases, ks, oks, shapes, dtype), [int(k) for k in ks], oks
