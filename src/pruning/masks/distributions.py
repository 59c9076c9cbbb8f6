"""Layer-wise density distributions of the unstructured methods (pure NumPy): how an overall
density is shared among the masked layers (``density_distribution``; ``global`` - one magnitude
threshold over all layers, RPG's reference - needs no distribution and is ``mask_ops``').

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

The masks keep integer counts (``layer_counts``): the densities' weights d_l * n_l scaled to
exactly round(D * N) weights in total (global magnitude's count), floored, and the weights left
over given one each to the layers with the largest remainders (Hamilton's method), no layer above
its size. The final sparsity is then the target to the weight, whatever the rounding per layer.
"""
import numpy as np

DISTRIBUTIONS = ("uniform", "erk")
# the values of the recipe key: global magnitude (no per-layer allocation) or a distribution
ALLOCATIONS = ("global",) + DISTRIBUTIONS


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


def apportion(quotas, sizes, total):
    """Integer counts (list) with 0 <= c_l <= sizes[l] and sum exactly ``total``, proportional to
    ``quotas`` (e.g. d_l * n_l): layers whose quota reaches their size are full; the quotas of the
    others are scaled to the weights left (again until none exceeds its size), floored, and the
    rest go one each to the largest remainders (ties: the earlier layer)."""
    quotas = np.asarray(quotas, np.float64)
    sizes = np.asarray(sizes, np.int64)
    if not 0 <= total <= int(sizes.sum()):
        raise ValueError(f"cannot place {total} weights in layers of {int(sizes.sum())}")
    full = quotas >= sizes
    while True:
        free = total - int(sizes[full].sum())
        if free < 0:
            raise ValueError(f"the layers kept dense hold {int(sizes[full].sum())} weights, more than "
                             f"the {total} the density allows")
        rest = quotas[~full].sum()
        scaled = np.where(full, sizes, quotas * (free / rest) if rest > 0 else 0.0)
        over = ~full & (scaled >= sizes)
        if not over.any():
            break
        full |= over
    counts = np.minimum(np.floor(scaled).astype(np.int64), sizes)
    remainder = scaled - counts
    left = total - int(counts.sum())     # < number of layers (up to a rounding error of the scale)
    order = np.lexsort((np.arange(len(sizes)), -remainder))  # largest remainder first
    while left:
        step = 1 if left > 0 else -1     # -1 only if float rounding floored one weight too many
        for index in (order if step > 0 else order[::-1]):
            if left and 0 <= counts[index] + step <= sizes[index]:
                counts[index] += step
                left -= step
    return [int(c) for c in counts]


def layer_counts(shapes, density, distribution, dense_first_layer=False, power_scale=1.0):
    """Weights kept per layer (list of ints) under ``distribution`` at overall ``density``:
    ``layer_densities``' shares of exactly round(density * N) weights (``apportion``)."""
    densities = layer_densities(shapes, density, distribution, dense_first_layer, power_scale)
    sizes = [int(np.prod(shape)) for shape in shapes]
    quotas = [d * n for d, n in zip(densities, sizes)]
    return apportion(quotas, sizes, round(density * sum(sizes)))
