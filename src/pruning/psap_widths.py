"""Width rounding (``psap_width_multiple``): kept filter counts that are multiples of N.

CPU and accelerator conv kernels work on channel blocks (e.g. 4 or 8 floats); a layer that keeps
10, 19 or 21 filters pays for the padded block without the FLOPs to show for it, so latency
follows FLOPs badly. Here every layer's kept count n_l - c_l is moved to a multiple of N, choosing
per layer between the multiples around the allocation so the global target is still met:
- allowed kept widths of layer l: multiples of N within its bounds (the pruned count c_l between
  ``lower_l`` - filters that must go, e.g. exactly-zero ones - and ``caps_l`` - max_layer_ratio,
  protected filters, at least one filter kept), plus the original width n_l when nothing has to
  go; a layer without any allowed multiple keeps its unrounded count;
- start from the nearest allowed width of every layer, then move single layers (and, when no single
  move helps, pairs of layers in opposite directions) to a neighbouring allowed width while that
  brings the removed amount closer to the target. The removed amount is computed by the caller's
  exact function (bilinear MACs or filter count), so the result is as close to the target as the
  allowed widths permit with local moves.
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


def round_pruned_counts(counts, filter_counts, multiple, lower, caps, removed, target):
    """Pruned counts per layer with kept widths on multiples of ``multiple`` (module doc).

    ``counts``: the unrounded allocation; ``lower``/``caps``: bounds of each layer's pruned
    count; ``removed(counts)``: the amount removed by integer counts (MACs or filters), compared
    with ``target``. Returns (counts, unrounded) where ``unrounded`` lists the layers left as
    they were because no multiple fits their bounds.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if multiple <= 1:
        return counts.copy(), []
    options, unrounded = [], []
    for layer, (n, c) in enumerate(zip(filter_counts, counts)):
        opts = allowed_pruned_counts(int(n), int(multiple), int(lower[layer]), int(caps[layer]))
        if not opts:
            opts = [int(c)]
            unrounded.append(layer)
        options.append(opts)
    index = {layer: opts.index(_nearest(opts, int(c)))
             for layer, (opts, c) in enumerate(zip(options, counts))}

    def as_counts(idx):
        return np.array([options[layer][idx[layer]] for layer in range(len(options))],
                        dtype=np.int64)

    def error_of(idx):
        return float(removed(as_counts(idx))) - float(target)

    current = abs(error_of(index))
    while True:
        moved = _best_move(options, index, error_of, current)
        if moved is None:
            return as_counts(index), unrounded
        index = moved
        current = abs(error_of(index))
