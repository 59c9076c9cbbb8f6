"""Width rounding (``psap_width_multiple``): kept filter counts that are multiples of N.

CPU and accelerator conv kernels work on channel blocks (e.g. 4 or 8 floats); a layer that keeps
10, 19 or 21 filters pays for the padded block without the FLOPs to show for it, so latency
follows FLOPs badly. Here every layer's kept count n_l - c_l is moved to a multiple of N, choosing
per layer between the multiples around the allocation so the global target is still met:
- allowed kept widths of layer l: multiples of N within its bounds (the pruned count c_l between
  ``lower_l`` - filters that must go, e.g. exactly-zero ones - and ``caps_l`` - max_layer_ratio,
  protected filters, at least one filter kept), plus the original width n_l when nothing has to
  go; a layer without any allowed multiple keeps its unrounded count;
- every layer first chooses between the two allowed widths around its allocation (the layer
  ratios stay what the allocation made them, within N filters): start from the nearest, then move
  single layers (and, when no single move helps, pairs of layers in opposite directions) to the
  other one while that brings the removed amount closer to the target;
- only if that misses the target by more than ``tolerance`` (e.g. a max_layer_ratio cap leaves a
  narrow layer no multiple below its allocation) may layers move further: every layer's choice
  widens by one allowed width on each side at a time, and the same search runs again, so the
  compensation is spread over the layers instead of piling onto one.
The removed amount is computed by the caller's exact function (bilinear MACs or filter count).
"""
import numpy as np


def allowed_pruned_counts(n, multiple, lower, cap):
    """Sorted pruned counts of one layer whose kept width n - c is allowed (see module doc);
    empty when none is."""
    kept = [k for k in range(multiple, n + 1, multiple) if lower <= n - k <= cap]
    if lower == 0 and n not in kept:
        kept.append(n)
    return sorted(n - k for k in kept)


def _nearest(options, count):
    return min(options, key=lambda c: (abs(c - count), c))


def _moves(options, index):
    """(layer, new count) for every single-step move of a layer to a neighbouring option."""
    for layer, opts in enumerate(options):
        pos = index[layer]
        for step in (-1, 1):
            if 0 <= pos + step < len(opts):
                yield layer, pos + step


def _best_move(options, index, error_of, current):
    """The single or paired move with the smallest |error| below ``current``, or None."""
    best, best_error = None, current
    singles = list(_moves(options, index))
    for layer, pos in singles:
        trial = dict(index)
        trial[layer] = pos
        error = abs(error_of(trial))
        if error < best_error - 1e-12:
            best, best_error = trial, error
    if best is not None:
        return best
    for first, pos1 in singles:
        for second, pos2 in singles:
            if second <= first or (pos1 - index[first]) == (pos2 - index[second]):
                continue   # pairs move in opposite directions, each pair once
            trial = dict(index)
            trial[first], trial[second] = pos1, pos2
            error = abs(error_of(trial))
            if error < best_error - 1e-12:
                best, best_error = trial, error
    return best


def _search(options, index, error_of):
    """Local search from ``index`` (positions into ``options``); returns the final positions."""
    current = abs(error_of(index))
    while True:
        moved = _best_move(options, index, error_of, current)
        if moved is None:
            return index
        index = moved
        current = abs(error_of(index))


def _around(opts, count):
    """The allowed counts just below and just above ``count`` (one if it is allowed itself)."""
    below = [c for c in opts if c <= count]
    above = [c for c in opts if c >= count]
    return sorted({*(below[-1:]), *(above[:1])})


def round_pruned_counts(counts, filter_counts, multiple, lower, caps, removed, target,
                        tolerance=0.0):
    """Pruned counts per layer with kept widths on multiples of ``multiple`` (module doc).

    ``counts``: the unrounded allocation; ``lower``/``caps``: bounds of each layer's pruned
    count; ``removed(counts)``: the amount removed by integer counts (MACs or filters), compared
    with ``target``; ``tolerance``: the miss (in the same unit) above which layers may leave the
    two widths around their allocation. Returns (counts, unrounded) where ``unrounded`` lists
    the layers left as they were because no multiple fits their bounds.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if multiple <= 1:
        return counts.copy(), []
    allowed, unrounded = [], []
    for layer, (n, c) in enumerate(zip(filter_counts, counts)):
        opts = allowed_pruned_counts(int(n), int(multiple), int(lower[layer]), int(caps[layer]))
        if not opts:
            opts = [int(c)]
            unrounded.append(layer)
        allowed.append(opts)
    near = [_around(opts, int(c)) for opts, c in zip(allowed, counts)]

    def as_counts(options, idx):
        return np.array([options[layer][idx[layer]] for layer in range(len(options))],
                        dtype=np.int64)

    def error_fn(options):
        return lambda idx: float(removed(as_counts(options, idx))) - float(target)

    start = {layer: opts.index(_nearest(opts, int(c)))
             for layer, (opts, c) in enumerate(zip(near, counts))}
    index = _search(near, start, error_fn(near))
    result = as_counts(near, index)
    for radius in range(1, max(len(opts) for opts in allowed)):
        if abs(float(removed(result)) - float(target)) <= tolerance:
            break
        wider = [_widen(opts, ring, radius) for opts, ring in zip(allowed, near)]
        index = {layer: opts.index(int(c)) for layer, (opts, c) in enumerate(zip(wider, result))}
        result = as_counts(wider, _search(wider, index, error_fn(wider)))
    return result, unrounded


def _widen(opts, ring, radius):
    """``ring`` (the widths around the allocation) plus ``radius`` more allowed widths each side."""
    low, high = opts.index(ring[0]), opts.index(ring[-1])
    return opts[max(low - radius, 0):high + radius + 1]
