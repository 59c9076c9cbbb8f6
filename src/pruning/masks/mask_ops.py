"""Magnitude masks and the RigL drop-and-grow step (pure NumPy, vectorised).

Every selection here keeps an EXACT number of entries. Ties are broken deterministically:
among equal scores the entry with the smaller flattened index wins (for the global mask the
flattened index runs over the layers in the dict's order). The reference thresholds with
``score >= kthvalue`` instead, which keeps one extra weight plus every tie; exact counts make
the reported sparsity the requested one and results reproducible.

Cost: O(N) per call (np.argpartition / np.partition, no sort, no Python loop over elements).
"""
import numpy as np


def _top_k_mask(scores, k):
    """Boolean mask (same shape as ``scores``) with exactly ``k`` True at the largest scores.

    Ties at the threshold value go to the smallest flattened indices.
    """
    flat = scores.reshape(-1)
    n = flat.size
    if k <= 0:
        return np.zeros(scores.shape, dtype=bool)
    if k >= n:
        return np.ones(scores.shape, dtype=bool)
    # value of the k-th largest score: one O(n) partition
    threshold = np.partition(flat, n - k)[n - k]
    mask = flat > threshold
    missing = k - int(np.count_nonzero(mask))
    if missing > 0:
        # the first `missing` entries equal to the threshold, in index order (deterministic)
        ties = np.flatnonzero(flat == threshold)[:missing]
        mask[ties] = True
    return mask.reshape(scores.shape)


def _check_density(density):
    density = float(density)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    return density


def _magnitudes(name, w):
    a = np.abs(np.asarray(w))
    if a.dtype.kind not in "fiu":
        raise ValueError(f"weight {name!r} must be a real numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError(f"weight {name!r} contains NaN; cannot rank by magnitude")
    return a


def global_magnitude_masks(weights, density):
    """One global magnitude threshold over all layers.

    Keeps exactly k = round(density * N_total) weights with the largest |w| over the
    concatenation of all layers (N_total = total number of weights). Returns
    {name: bool array of the layer's shape}. Per-layer densities are whatever the global
    threshold leaves (RPG reads its layer sparsities S[l] off this mask).
    """
    density = _check_density(density)
    if not weights:
        raise ValueError("weights must be a non-empty dict of arrays")
    names = list(weights)
    mags = [_magnitudes(n, weights[n]) for n in names]
    # one common float dtype for the concatenation (float32 for float32 nets: half the memory)
    dtype = np.result_type(*[m.dtype for m in mags], np.float32)
    flat = np.concatenate([m.reshape(-1).astype(dtype, copy=False) for m in mags])
    k = round(density * flat.size)
    keep = _top_k_mask(flat, k)
    masks, offset = {}, 0
    for name, m in zip(names, mags):
        masks[name] = keep[offset:offset + m.size].reshape(m.shape)
        offset += m.size
    return masks


def layer_magnitude_masks(weights, counts):
    """Per-layer magnitude masks: layer l keeps exactly ``counts[l]`` weights ({name: int}, e.g.
    ``distributions.layer_counts``), its largest |w|."""
    masks = {}
    for name, w in weights.items():
        m = _magnitudes(name, w)
        masks[name] = _top_k_mask(m, _check_count(name, counts[name], m.size))
    return masks


def random_layer_masks(shapes, counts, rng):
    """Random masks ({name: shape}, {name: count}, a numpy Generator): layer l keeps exactly
    ``counts[l]`` positions drawn uniformly (RigL's random initial masks)."""
    masks = {}
    for name, shape in shapes.items():
        count = _check_count(name, counts[name], int(np.prod(shape)))
        masks[name] = _top_k_mask(rng.random(shape), count)
    return masks


def _check_count(name, count, size):
    if not 0 <= count <= size or int(count) != count:
        raise ValueError(f"layer {name!r} of {size} weights cannot keep {count}")
    return int(count)


def drop_and_grow(weight, target_mask, dense_grad, drop_fraction):
    """RigL drop-and-grow inside one layer (RPG's topology update).

    n_remain = target_mask.sum(); n_grow = int(n_remain * drop_fraction);
    n_keep = n_remain - n_grow.

    1. Keep: the n_keep largest |weight| among the target-mask positions (positions outside the
       target mask rank below every position inside it).
    2. Grow: among all positions not kept, the n_grow largest |dense_grad|.

    Returns (new_mask, grown): ``new_mask`` (bool, weight's shape) has exactly n_remain True;
    ``grown`` marks new_mask positions that are NOT in target_mask. Their weights must be set
    to 0 by the caller (regrown weights start at 0); grown positions that were inside the
    target mask keep their current value, as in the reference.
    """
    weight = np.asarray(weight)
    target_mask = np.asarray(target_mask)
    dense_grad = np.asarray(dense_grad)
    if target_mask.dtype != bool:
        raise ValueError(f"target_mask must be a boolean array, got dtype {target_mask.dtype}")
    if weight.shape != target_mask.shape or weight.shape != dense_grad.shape:
        raise ValueError(
            f"shape mismatch: weight {weight.shape}, target_mask {target_mask.shape}, "
            f"dense_grad {dense_grad.shape}")
    f = float(drop_fraction)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction}")
    n_remain = int(np.count_nonzero(target_mask))
    n_grow = int(n_remain * f)
    n_keep = n_remain - n_grow

    # |w| >= 0, so -1 puts every position outside the target mask strictly last
    keep_score = np.where(target_mask, _magnitudes("weight", weight), -1.0)
    kept = _top_k_mask(keep_score, n_keep)
    # kept positions get -1 (< any |g|) so the n_grow <= N - n_keep winners are all not-kept
    grow_score = np.where(kept, -1.0, _magnitudes("dense_grad", dense_grad))
    regrown = _top_k_mask(grow_score, n_grow) & ~kept
    new_mask = kept | regrown
    grown = regrown & ~target_mask
    return new_mask, grown
