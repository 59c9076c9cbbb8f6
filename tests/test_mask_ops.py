"""Magnitude masks and drop-and-grow against explicit, loop-based references."""
import numpy as np
import pytest

from src.pruning.masks.mask_ops import drop_and_grow, global_magnitude_masks, layer_magnitude_masks


def _ref_top_k(scores, k):
    """Independent: full Python sort by (-score, flat index), take the first k."""
    flat = [float(x) for x in np.asarray(scores).reshape(-1)]
    order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
    mask = np.zeros(len(flat), dtype=bool)
    for i in order[:k]:
        mask[i] = True
    return mask.reshape(np.shape(scores))


def _layers(rng, ties=False):
    shapes = {"conv1.weight": (4, 3, 3, 3), "layer1.conv.weight": (8, 4, 1, 1),
              "fc.weight": (5, 8)}
    out = {}
    for name, shape in shapes.items():
        w = rng.standard_normal(shape).astype(np.float32)
        if ties:  # few distinct magnitudes with both signs: lots of exact ties
            w = (rng.integers(-3, 4, shape)).astype(np.float32) * 0.5
        out[name] = w
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("density", [0.0, 0.013, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_global_masks_exact_count_and_reference(ties, density):
    weights = _layers(np.random.default_rng(1), ties=ties)
    masks = global_magnitude_masks(weights, density)
    total = sum(w.size for w in weights.values())
    k = round(density * total)
    assert sum(int(m.sum()) for m in masks.values()) == k
    flat_ref = _ref_top_k(np.concatenate([np.abs(w).ravel() for w in weights.values()]), k)
    flat_got = np.concatenate([masks[n].ravel() for n in weights])
    np.testing.assert_array_equal(flat_got, flat_ref)
    for name, w in weights.items():
        assert masks[name].shape == w.shape and masks[name].dtype == bool


def test_global_masks_all_equal_weights():
    weights = {"a": np.ones((10, 10), np.float32), "b": -np.ones((7,), np.float32)}
    masks = global_magnitude_masks(weights, 0.5)
    assert masks["a"].sum() + masks["b"].sum() == round(0.5 * 107)
    # ties go to the smallest global flattened index: all in "a", the first 54 entries
    assert masks["a"].ravel()[:54].all() and not masks["a"].ravel()[54:].any()
    assert not masks["b"].any()


def test_global_masks_threshold_is_global():
    weights = {"small": np.full((10,), 0.01, np.float32),
               "large": np.arange(1, 11, dtype=np.float32)}
    masks = global_magnitude_masks(weights, 0.5)
    assert masks["large"].all() and not masks["small"].any()


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.77, 1.0])
def test_layer_masks_exact_count_per_layer(density):
    weights = _layers(np.random.default_rng(2), ties=True)
    masks = layer_magnitude_masks(weights, {n: round(density * w.size) for n, w in weights.items()})
    for name, w in weights.items():
        assert int(masks[name].sum()) == round(density * w.size)
        np.testing.assert_array_equal(masks[name], _ref_top_k(np.abs(w), round(density * w.size)))


def test_mask_functions_reject_bad_args():
    with pytest.raises(ValueError):
        global_magnitude_masks({"a": np.ones(3)}, 1.5)
    with pytest.raises(ValueError):
        global_magnitude_masks({}, 0.5)
    with pytest.raises(ValueError):
        layer_magnitude_masks({"a": np.ones(3)}, {"a": -1})
    with pytest.raises(ValueError):
        layer_magnitude_masks({"a": np.ones(3)}, {"a": 1.5})
    with pytest.raises(ValueError, match="NaN"):
        global_magnitude_masks({"a": np.array([1.0, np.nan])}, 0.5)


# ------------------------------------------------------------------------------ drop and grow
def _ref_drop_and_grow(weight, target, grad, f):
    """Independent loop version of the RigL step described in docs/RPG.md."""
    w, t, g = weight.ravel(), target.ravel(), grad.ravel()
    n_remain = int(t.sum())
    n_grow = int(n_remain * f)
    n_keep = n_remain - n_grow
    inside = sorted((i for i in range(w.size) if t[i]), key=lambda i: (-abs(float(w[i])), i))
    outside = [i for i in range(w.size) if not t[i]]  # outside the target rank last, by index
    kept = set((inside + outside)[:n_keep])
    candidates = sorted((i for i in range(w.size) if i not in kept),
                        key=lambda i: (-abs(float(g[i])), i))
    grown_all = set(candidates[:n_grow])
    new = np.zeros(w.size, dtype=bool)
    new[list(kept | grown_all)] = True
    grown = np.zeros(w.size, dtype=bool)
    grown[[i for i in grown_all if not t[i]]] = True
    return new.reshape(weight.shape), grown.reshape(weight.shape)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("frac", [0.0, 0.05, 0.3, 0.5, 1.0])
def test_drop_and_grow_against_reference(seed, frac):
    rng = np.random.default_rng(seed)
    shape = (6, 4, 3, 3)
    weight = rng.standard_normal(shape).astype(np.float32)
    if seed % 2:  # ties in both scores
        weight = np.round(weight, 0)
    target = rng.random(shape) < 0.3
    weight = weight * target  # as in RPG: weights outside the new target are already zeroed
    grad = rng.standard_normal(shape).astype(np.float32)
    if seed % 2:
        grad = np.round(grad, 1)
    new_mask, grown = drop_and_grow(weight, target, grad, frac)
    ref_new, ref_grown = _ref_drop_and_grow(weight, target, grad, frac)
    np.testing.assert_array_equal(new_mask, ref_new)
    np.testing.assert_array_equal(grown, ref_grown)
    assert new_mask.sum() == target.sum()
    assert not (grown & target).any() and (grown <= new_mask).all()


def test_drop_and_grow_regrows_top_gradient_positions():
    weight = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    target = weight > 0
    grad = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 9.0, 0.2, 8.0, 0.3])
    new_mask, grown = drop_and_grow(weight, target, grad, 0.4)  # n_grow = 2, n_keep = 3
    np.testing.assert_array_equal(np.flatnonzero(new_mask), [0, 1, 2, 6, 8])
    np.testing.assert_array_equal(np.flatnonzero(grown), [6, 8])


def test_drop_and_grow_dropped_weight_may_come_back():
    # a dropped in-target weight with the largest gradient is regrown, but it is not "grown"
    # (it keeps its value): only positions outside the target restart at 0
    weight = np.array([3.0, 2.0, 1.0, 0.0])
    target = np.array([True, True, True, False])
    grad = np.array([0.0, 0.0, 5.0, 1.0])
    new_mask, grown = drop_and_grow(weight, target, grad, 0.34)  # n_grow 1, n_keep 2
    np.testing.assert_array_equal(new_mask, [True, True, True, False])
    assert not grown.any()


def test_drop_and_grow_zero_fraction_keeps_target():
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((8, 8))
    target = rng.random((8, 8)) < 0.5
    new_mask, grown = drop_and_grow(weight * target, target, rng.standard_normal((8, 8)), 0.0)
    np.testing.assert_array_equal(new_mask, target)
    assert not grown.any()


def test_drop_and_grow_rejects_bad_args():
    w = np.ones((3, 3))
    with pytest.raises(ValueError):
        drop_and_grow(w, np.ones((3, 3)), w, 0.1)  # non-boolean mask
    with pytest.raises(ValueError):
        drop_and_grow(w, np.ones((3, 2), bool), w, 0.1)
    with pytest.raises(ValueError):
        drop_and_grow(w, np.ones((3, 3), bool), w, 1.5)


def test_global_masks_vectorised_speed():
    """1M weights must take well under a second (25M measured by hand: see the report)."""
    import time
    rng = np.random.default_rng(0)
    weights = {f"l{i}": rng.standard_normal(250_000).astype(np.float32) for i in range(4)}
    start = time.perf_counter()
    masks = global_magnitude_masks(weights, 0.1)
    assert time.perf_counter() - start < 2.0
    assert sum(int(m.sum()) for m in masks.values()) == 100_000
