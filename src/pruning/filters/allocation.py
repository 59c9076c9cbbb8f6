"""PSAP allocation: the global schedule, layer weight sparsity and per-layer pruning counts.

Pure functions (numpy only): how many filters each prunable layer loses at a pruning step so the
global target (a fraction of the prunable filters or of the dense MACs) is met, with per-layer
ratios proportional to the layers' weight sparsity (see ``pruner``).
"""
import math

import numpy as np


def asfp_target(epoch, final_ratio, end_epoch, k):
    """Global pruning target after ``epoch`` finished epochs.

    ASFP-shaped: P(t) = P * (1 - exp(-k t / T)) / (1 - exp(-k)), normalised so it equals P at
    t = T = ``end_epoch`` and stays there; k = 0 is the linear ramp P * t / T.
    """
    if end_epoch < 1:
        raise ValueError(f"end_epoch must be >= 1, got {end_epoch}")
    if epoch >= end_epoch:
        return float(final_ratio)
    t = max(epoch, 0) / end_epoch
    if k == 0:
        return float(final_ratio * t)
    return float(final_ratio * (1.0 - math.exp(-k * t)) / (1.0 - math.exp(-k)))


def weight_sparsity_ratio(weight, eps, exclude=None):
    """Fraction of weights with |w| < eps * max|W| (the layer's weight sparsity ratio).

    ``exclude``: optional boolean (C_out,) of filters left out of the count (the max is still
    taken over the whole layer). An all-zero layer has sparsity 1.
    """
    weight = np.abs(np.asarray(weight, dtype=np.float64))
    peak = weight.max() if weight.size else 0.0
    if peak == 0:
        return 1.0
    if exclude is not None and not np.all(exclude):
        weight = weight[~np.asarray(exclude, dtype=bool)]
    return float(np.mean(weight < eps * peak))


def _water_fill(weights, sizes, lower, caps, unit_costs, target):
    """Continuous counts x_l = clip(alpha * w_l * n_l, lower_l, cap_l) (lower_l where w_l = 0)
    with sum(u_l x_l) = target, or the nearest bound when the target lies outside."""
    active = weights > 0
    full = np.where(active, caps, lower)
    if not np.any(active) or np.dot(unit_costs, full) <= target:
        return full
    if np.dot(unit_costs, lower) >= target:
        return lower.copy()
    demand = np.where(active, weights * sizes, 0.0)
    low, high = 0.0, float(np.max(np.where(active, caps / np.where(active, demand, 1.0), 0.0)))
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.dot(unit_costs, np.clip(mid * demand, lower, caps)) < target:
            low = mid
        else:
            high = mid
    return np.clip(high * demand, lower, caps)

def count_bounds(filter_counts, max_ratio, available, minimum):
    """(n, lower, caps): per-layer filter counts and the bounds of the pruned counts
    (lower = ``minimum``, caps = min(floor(max_ratio n), n - 1, ``available``), caps >= lower)."""
    n = np.asarray(filter_counts, dtype=np.int64)
    caps = np.minimum(np.floor(max_ratio * n + 1e-9).astype(np.int64), n - 1)
    if available is not None:
        caps = np.minimum(caps, np.asarray(available, dtype=np.int64))
    lower = np.zeros(len(n), dtype=np.int64) if minimum is None else \
        np.minimum(np.asarray(minimum, dtype=np.int64), n - 1)
    caps = np.maximum(np.maximum(caps, lower), 0)
    return n, lower, caps


def _round_to_filter_target(counts, order, caps, lower, target):
    """Integer counts summing to the filter target exactly: the largest fractions get the
    missing filters; float slack only removes one per layer at most."""
    missing = int(target) - int(counts.sum())
    while missing > 0:
        progressed = False
        for layer in order:
            if missing == 0:
                break
            if counts[layer] < caps[layer]:
                counts[layer] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    for layer in order[::-1]:  # float slack only: never more than one per layer
        if missing >= 0:
            break
        if counts[layer] > lower[layer]:
            counts[layer] -= 1
            missing += 1
    return counts


def _round_to_cost_target(counts, order, caps, unit, target):
    """Integer counts whose cost is as close as single filters allow to the cost target."""
    remainder = target - float(np.dot(counts, unit))
    while True:
        for layer in order:
            if counts[layer] < caps[layer] and unit[layer] < 2 * remainder:
                counts[layer] += 1
                remainder -= unit[layer]
                break
        else:
            return counts


def adaptive_layer_ratios(sparsities, filter_counts, global_ratio, max_ratio, costs=None,
                          total_cost=None, available=None, minimum=None):
    """Integer number of filters to prune per layer.

    Layer ratio P_l = clip(alpha * global_ratio * s_l / s_mean, lower_l, cap_l), s_mean the
    filter-weighted mean sparsity, alpha chosen so the total meets the target:
    - ``costs=None``: sum(counts) == round(global_ratio * sum(filter_counts)) exactly;
    - ``costs`` (per-filter cost of each layer, e.g. MACs a filter removes): sum(counts * costs)
      as close as integer counts allow to global_ratio * total_cost (default sum(n_l * c_l)).
    cap_l = min(floor(max_ratio * n_l), n_l - 1, available_l): every layer keeps a filter.
    ``minimum`` (lower_l, default 0): filters a layer must count in any case (PSAP: filters that
    are already exactly zero and cannot come back); it overrides the max_ratio cap, and if the
    minimums alone exceed the target they are returned as they are.
    Layers with zero sparsity get no share unless the others cannot absorb the target; then the
    rest is spread uniformly. Raises ValueError if the caps cannot hold the target.
    """
    s = np.maximum(np.asarray(sparsities, dtype=np.float64), 0.0)
    n, lower, caps = count_bounds(filter_counts, max_ratio, available, minimum)
    unit = np.ones(len(n)) if costs is None else np.asarray(costs, dtype=np.float64)
    if costs is None:
        target = float(int(round(global_ratio * n.sum())))
    else:
        total = float(np.dot(n, unit)) if total_cost is None else float(total_cost)
        target = global_ratio * total
    if np.dot(unit, caps) < target - 1e-9:
        raise ValueError(f"pruning target {global_ratio:.4f} cannot be met with the per-layer "
                         f"caps (max_layer_ratio={max_ratio}, protected filters excluded)")
    s_mean = np.dot(n, s) / n.sum()
    weights = s / s_mean if s_mean > 0 else np.ones(len(n))
    sizes = n.astype(np.float64)
    x = _water_fill(weights, sizes, lower.astype(np.float64), caps.astype(np.float64), unit, target)
    if target - np.dot(unit, x) > 1e-9:  # sparse layers are full: level the rest uniformly
        room = (caps - x > 1e-9).astype(np.float64)
        x = _water_fill(room, sizes, x, caps.astype(np.float64), unit, target)

    counts = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    order = np.argsort(-(x - counts), kind="stable")
    if costs is None:
        return _round_to_filter_target(counts, order, caps, lower, target)
    return _round_to_cost_target(counts, order, caps, unit, target)


def cut_records(records, out_cut, in_cut):
    """``records`` (``layer_records``) of the network with ``out_cut[name]`` output and
    ``in_cut[name]`` input channels removed from the named convs / FC; MACs exact (bilinear where
    both sides of a conv shrink)."""
    result = []
    for r in records:
        cut_out, cut_in = out_cut.get(r["name"], 0), in_cut.get(r["name"], 0)
        if cut_out or cut_in:
            per_pair = r["macs"] // (r["c_out"] * r["c_in"])
            c_out, c_in = r["c_out"] - cut_out, r["c_in"] - cut_in
            r = dict(r, c_out=c_out, c_in=c_in, macs=c_out * c_in * per_pair)
        result.append(r)
    return result


def removed_macs(records, layers, counts):
    """MACs removed when ``counts[l]`` output filters of prunable layer l (and the matching input
    channels of its next conv) are removed; exact, bilinear where both sides of a conv shrink."""
    out_cut = {layer["conv"]: int(c) for layer, c in zip(layers, counts)}
    in_cut = {layer["next_conv"]: int(c) for layer, c in zip(layers, counts)}
    return sum(r["macs"] for r in records) - \
        sum(r["macs"] for r in cut_records(records, out_cut, in_cut))


def filter_costs(records, layers):
    """MACs one filter of each prunable layer removes: its share of its own conv plus its input
    share of the next conv (at dense widths)."""
    by_name = {r["name"]: r for r in records}
    costs = []
    for layer in layers:
        own, nxt = by_name[layer["conv"]], by_name[layer["next_conv"]]
        costs.append(own["macs"] / own["c_out"] + nxt["macs"] / nxt["c_in"])
    return np.asarray(costs)


def flops_layer_counts(sparsities, filter_counts, flops_ratio, max_ratio, records, layers,
                       available=None, minimum=None):
    """Per-layer counts whose exact MAC reduction is closest to ``flops_ratio`` of the dense MACs.

    Linear per-filter costs overestimate the saving where both convs of a bottleneck pair shrink
    (the bilinear overlap), so the linear target is raised by bisection until the exact count
    meets the requested ratio.
    """
    dense = sum(r["macs"] for r in records)
    costs = filter_costs(records, layers)
    target = flops_ratio * dense

    def attempt(requested):
        counts = adaptive_layer_ratios(sparsities, filter_counts, requested, max_ratio,
                                       costs=costs, total_cost=dense, available=available,
                                       minimum=minimum)
        return counts, removed_macs(records, layers, counts)

    best_counts, best_removed = attempt(flops_ratio)
    if best_removed >= target or flops_ratio == 0:
        return best_counts
    low = flops_ratio
    high = _max_linear_ratio(filter_counts, max_ratio, costs, dense, available, minimum)
    for _ in range(40):
        mid = 0.5 * (low + high)
        counts, removed = attempt(mid)
        if abs(removed - target) < abs(best_removed - target):
            best_counts, best_removed = counts, removed
        if removed < target:
            low = mid
        else:
            high = mid
    return best_counts


def _max_linear_ratio(filter_counts, max_ratio, costs, dense, available, minimum):
    _, _, caps = count_bounds(filter_counts, max_ratio, available, minimum)
    return float(np.dot(caps, costs)) / dense * (1 - 1e-12)
