"""Layer-wise density distributions of the RigL family (pure NumPy): how an overall density is
shared among the masked layers.

- ``uniform``: every layer at the overall density (RigL's ``get_sparsities_uniform``).
- ``erk`` (Erdos-Renyi-Kernel, RigL's ``get_sparsities_erdos_renyi`` with kernels included): the
  density of a layer of shape s is eps * (sum(s) / prod(s)) ** power_scale, with one global eps
  chosen so that the layers hold as many weights as the overall density asks; a layer whose
  density would exceed 1 is made dense and eps is recomputed over the others, until none
  exceeds 1. Small layers (the stem, the classifier) end up denser, wide 3x3 convs sparser.

Both follow RigL's accounting (google-research/rigl, ``rigl/sparse_utils.py``): a layer of n
weights at sparsity S "has" n - floor(S * n) weights, and a layer made dense takes its
floor(S * n) zeros from the budget of the others. ``dense`` layers (e.g. the first one,
``dense_first_layer``) are dense from the start; for ``uniform`` the others then share the rest
equally (the same loop with power_scale 0), so the total stays the target - RigL instead leaves
its dense first layer out of the masked set altogether (``prune_exclude`` does that here).

The masks at these densities keep exactly round(density * n) weights per layer
(``mask_ops.layer_masks_at``), so the overall count can differ from round(D * N) by at most half a
weight per layer.
"""
import numpy as np

DISTRIBUTIONS = ("uniform", "erk")


def _n_zeros(size, sparsity):
    """Zeros of a layer of ``size`` weights at ``sparsity``, as RigL counts them (floor)."""
    return int(np.floor(sparsity * size))


def erk_densities(shapes, density, power_scale=1.0, dense=()):
    """Per-layer densities (list, in the order of ``shapes``) of the ERK distribution at overall
    ``density``; the layer indices in ``dense`` are dense from the start.

    Raises ValueError when the dense layers alone hold more weights than the overall density
    allows (the others would need a negative density)."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    raw = [(float(np.sum(shape)) / size) ** power_scale for shape, size in zip(shapes, sizes)]
    sparsity = 1.0 - density
    dense = set(dense)
    eps = 0.0
    while len(dense) < len(shapes):
        # eps * sum_sparse(raw_l * n_l) = sum_sparse(n_l - zeros_l) - sum_dense(zeros_l)
        rhs, divisor = 0, 0.0
        for index, (size, prob) in enumerate(zip(sizes, raw)):
            zeros = _n_zeros(size, sparsity)
            if index in dense:
                rhs -= zeros
            else:
                rhs += size - zeros
                divisor += prob * size
        eps = rhs / divisor
        top = max(raw[i] for i in range(len(shapes)) if i not in dense)
        if top * eps <= 1.0:
            break
        dense.update(i for i in range(len(shapes)) if i not in dense and raw[i] == top)
    if eps < 0.0:
        raise ValueError(f"density {density} is too low: the layers kept dense alone hold more "
                         "weights than that")
    # min(1, .): eps * top can exceed 1 by a rounding error when it is exactly 1
    return [1.0 if i in dense else min(1.0, eps * raw[i]) for i in range(len(shapes))]


def uniform_densities(shapes, density, dense=()):
    """Every layer at ``density``; with ``dense`` layers, the others at one common density that
    keeps the total (the ERK loop without the shape factor)."""
    if not dense:
        return [float(density)] * len(shapes)
    return erk_densities(shapes, density, power_scale=0.0, dense=dense)


def layer_densities(shapes, density, distribution, dense_first_layer=False, power_scale=1.0):
    """Per-layer densities of ``distribution`` (uniform | erk) at overall ``density``; the first
    layer dense when ``dense_first_layer``."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if dense_first_layer and len(shapes) < 2:
        raise ValueError("a dense first layer needs at least two masked layers")
    dense = (0,) if dense_first_layer else ()
    if distribution == "uniform":
        return uniform_densities(shapes, density, dense)
    return erk_densities(shapes, density, power_scale, dense)
