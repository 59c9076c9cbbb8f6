"""Float64 SVD references of RPG's rank loss, for the tests (and the "before" timing of
benchmarks/rpg_cost.py); training uses src/pruning/masks/rpg/rank_targets.py and rank_loss.py.

Per layer: Wn = W.reshape(C_out, -1) / ||W||_F = U diag(s) V^T (NumPy SVD, float64), k from the
energy rule (src.pruning.masks.rpg.rank_targets.select_rank), A_k = U[:, :k] diag(s[:k]) V[:, :k]^T and the
layer loss -||Wn - A_k||_F^2; the rank loss is its mean over the usable layers (an all-zero
weight or a failing SVD is skipped).
"""
import numpy as np

from src.pruning.masks.rpg.rank_targets import _as_2d, _check_partial_k, select_rank


def normalized_svd(W2d):
    """float64 SVD (u, s, vt) of the matrix scaled to unit Frobenius norm (None if all zero).
    Raises numpy.linalg.LinAlgError if the SVD does not converge."""
    w = _as_2d(W2d)
    norm = np.linalg.norm(w)
    return None if norm == 0.0 else np.linalg.svd(w / norm, full_matrices=False)


def low_rank_target_numpy(W2d, partial_k, factors=None):
    """Host float64 reference of the constant target: returns (A_k, k).

    ``W2d``: a (C_out, C_in*kh*kw) matrix (a 4-D conv weight is reshaped to that). It is
    normalised to unit Frobenius norm first, so A_k is the rank-k truncated SVD of Wn, with k
    from :func:`select_rank`. An all-zero matrix gives (zeros, 0). ``factors``: its
    :func:`normalized_svd`, when a test sweeps partial_k over the same matrix.
    Raises numpy.linalg.LinAlgError if the SVD does not converge.
    """
    p = _check_partial_k(partial_k)
    w = _as_2d(W2d)
    factors = normalized_svd(w) if factors is None else factors
    if factors is None:   # an all-zero matrix
        return np.zeros_like(w), 0
    u, s, vt = factors
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


def svd_targets_numpy(weight_arrays, partial_k, dtype=np.float32, factors=None):
    """(targets, ranks, ok) as src.pruning.masks.rpg.rank_targets.rank_targets_numpy returns them, from a
    float64 SVD of every layer: the path the Gram targets replaced (benchmarks/rpg_cost.py times
    it as the "before"). ``factors``: each layer's :func:`normalized_svd`, computed once when a
    test sweeps partial_k."""
    p = _check_partial_k(partial_k)
    targets, ranks, ok = [], [], []
    for i, w in enumerate(weight_arrays):
        w2 = _as_2d(w)
        good = bool(np.linalg.norm(w2) > 0.0)
        a_k, k = np.zeros_like(w2), 0
        if good:
            try:
                a_k, k = low_rank_target_numpy(w2, p, None if factors is None else factors[i])
            except np.linalg.LinAlgError:
                a_k, good = np.zeros_like(w2), False
        targets.append(a_k.astype(dtype))
        ranks.append(int(k))
        ok.append(good)
    return targets, ranks, ok
