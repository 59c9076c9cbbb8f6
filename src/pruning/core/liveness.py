"""Is the pruned network still a function of its input? The check at the end of a pruning run.

At extreme sparsity a global magnitude threshold can remove whole layers (every conv of a stage,
or the classifier whose initial weights are small): the network then answers every input with the
same output, and a run that "reached its target sparsity" produced a constant. ``finish`` of
``SparseTraining`` (and ``convert`` of ``PruningAlgorithm``, and eval.py / export.py for a
checkpoint: ``checkpoint_network_message``) asks the network itself: different
inputs, in eval mode, must give different outputs (beyond float rounding). The inputs are
standard-normal ones of the training batch's shape for float inputs (images); for integer inputs
(token ids, indices, where a random value could be out of range) the rows of a real batch. A low
accuracy is not checked: a healthy network after a few steps may be poor, but its output still
follows its input.
"""
import fnmatch
import itertools
import re

import numpy as np
from mindspore import Tensor

# outputs closer than this, relative to their largest magnitude, count as equal (float32 rounding
# of the same constant through different lanes stays orders of magnitude below it)
RELATIVE_TOLERANCE = 1e-6


def probe_inputs(shape, dtype, seed=0):
    """A batch of at least two different standard-normal inputs of ``shape`` (batch first)."""
    shape = (max(2, int(shape[0])),) + tuple(int(s) for s in shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def probe_from_batch(batch, seed=0):
    """The inputs ``depends_on_input`` compares, from a real batch (a Tensor or an array): random
    standard-normal ones of its shape for float inputs, the batch itself for integer inputs; None
    when an integer batch has no two different rows (nothing to compare)."""
    values = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    if np.issubdtype(values.dtype, np.floating):
        return probe_inputs(values.shape, values.dtype, seed)
    rows = values.reshape(values.shape[0], -1)
    return values if len(rows) > 1 and np.any(rows != rows[:1]) else None


def _flat_outputs(output):
    """(batch, features) float64 array of a Tensor output or a tuple/list of them."""
    parts = output if isinstance(output, (tuple, list)) else (output,)
    arrays = [p.asnumpy() for p in parts if hasattr(p, "asnumpy")]
    return np.concatenate([a.reshape(a.shape[0], -1).astype(np.float64) for a in arrays], axis=1)


def depends_on_input(network, inputs, batch=None):
    """Whether ``network`` (in eval mode) gives different outputs for the rows of ``inputs`` (fed
    ``batch`` rows per call, all at once by default)."""
    was_training = network.training
    network.set_train(False)
    batch = batch or len(inputs)
    try:
        out = np.concatenate([_flat_outputs(network(Tensor(inputs[i:i + batch])))
                              for i in range(0, len(inputs), batch)])
    finally:
        network.set_train(was_training)
    spread = float(np.max(np.abs(out - out[:1])))
    scale = float(np.max(np.abs(out))) if out.size else 0.0
    # NaN outputs are not "constant": they fail elsewhere (the loss check)
    return not spread <= RELATIVE_TOLERANCE * scale


def _kind(names, shapes):
    dims = {len(shapes[n]) for n in names}
    return "convs" if dims == {4} else "FC weights" if dims == {2} else "layers"


def _widest_pattern(name, empty, all_names):
    """The name with as many of its numbers replaced by '*' as possible while the pattern matches
    only emptied weights (trailing ``.weight`` dropped when a '*' absorbs it)."""
    parts = re.split(r"(\d+)", name)
    numbers = [i for i, part in enumerate(parts) if part.isdigit()]
    for count in range(len(numbers), 0, -1):
        for chosen in itertools.combinations(numbers, count):
            pattern = "".join("*" if i in chosen else p for i, p in enumerate(parts))
            if pattern.endswith("*.weight"):
                pattern = pattern[:-len(".weight")]
            matched = [n for n in all_names if fnmatch.fnmatchcase(n, pattern)]
            if set(matched) <= empty:
                return pattern, matched
    return name, [name]


def describe_layers(empty, all_names, shapes):
    """Emptied weights named compactly, in network order: "layer3.*.conv* (6 convs), fc.weight".
    Every pattern is a valid ``prune_exclude`` pattern matching exactly emptied weights."""
    empty = set(empty)
    left, groups = [n for n in all_names if n in empty], []
    while left:
        pattern, matched = _widest_pattern(left[0], empty, all_names)
        groups.append(matched[0] if len(matched) == 1 else f"{pattern} ({len(matched)} "
                                                            f"{_kind(matched, shapes)})")
        left = [n for n in left if n not in matched]
    return ", ".join(groups)


def dead_network_message(weights):
    """The one line for a network whose output no longer depends on its input; ``weights`` are the
    prunable weights {name: array} in network order."""
    names = list(weights)
    empty = [n for n in names if not np.any(weights[n])]
    if empty:
        shapes = {n: weights[n].shape for n in names}
        cause = (f"{len(empty)} of {len(names)} prunable layers have no weight left: "
                 f"{describe_layers(empty, names, shapes)}")
    else:
        cause = ("no prunable layer is empty, but what is left no longer carries the input to the output "
                 "(pruned channels, or units that only ever output zero)")
    return (f"the pruned network's output no longer depends on its input ({cause}); keep those "
            "layers with prune_exclude, use a per-layer allocation (density_distribution: erk) or "
            "lower the sparsity")


def checkpoint_network_message(net, shape, names):
    """None when ``net`` (a checkpoint's network) answers random inputs of ``shape`` (batch first,
    float32) differently; else the one line of ``dead_network_message`` over its weights
    ``names`` (its conv/FC weights, in network order). The inputs go in calls of ``shape``'s batch
    (two calls for batch 1): the shape the caller's graph was compiled for, so nothing compiles."""
    if depends_on_input(net, probe_inputs(shape, np.float32), batch=int(shape[0])):
        return None
    params = {p.name: p for p in net.trainable_params()}
    return dead_network_message({n: params[n].asnumpy() for n in names})
