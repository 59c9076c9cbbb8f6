"""The pruner plug-in contract of the training loop.

The loop (``src/trainer.py``) knows nothing about any pruning method. It asks the pruner, chosen by
``prune_method``, a few questions and calls a few hooks:

- ``mask_names`` / ``hard_masks``: which parameters carry a mask inside the training graph. With
  hard masks the train step zeroes their gradients, and after every optimizer step multiplies the
  weights and their momentum by the mask, so a pruned weight is exactly 0.0 at every step.
- ``energy_names``: parameters (conv weights) whose per-output-filter gradient energy
  sum(grad**2) the train step accumulates (PSAP's protection needs it).
- ``before_step(step, batch, ctx)``: called before iteration ``step`` (0-based count of finished
  iterations). Returning a float (the iteration's loss) means "this iteration is mine": the pruner
  did its own work on the batch (e.g. RPG's mask update with a dense gradient) and the loop skips
  the ordinary train step. Returning None lets the ordinary step run.
- ``after_step(step, ctx)``, ``on_epoch_end(epoch, ctx)``, ``on_train_end(ctx)``.
- ``state_dict()`` / ``load_state_dict(state)``: everything needed to resume the schedule exactly.
  Values are numpy arrays, ints, floats or strings; they are stored in every checkpoint.
- ``report()``: a short dict for the log line (e.g. {"sparsity": 0.9}).

``ctx`` is the loop's ``TrainContext``: it gives the network, the masks of the train step
(``ctx.get_masks()`` / ``ctx.set_masks(dict)``, which also resets the momentum of masked-out
weights and zeroes them), gradient energies (``ctx.read_energy(reset=True)``), dense gradients
on a batch (``ctx.dense_gradient_cell(names, extra_loss)``, a cell called on it) and a logger.
"""
import fnmatch

import numpy as np


def prunable_weight_names(net, include=(), exclude=(), convs_only=False):
    """Names of conv and FC weights (4-D and 2-D ``weight`` parameters) in network order.

    ``include``/``exclude`` are fnmatch patterns on the parameter name; an empty include list
    means every conv and FC weight.
    """
    names = []
    for param in net.trainable_params():
        if not param.name.endswith("weight"):
            continue
        ndim = len(param.shape)
        if ndim not in (2, 4) or (convs_only and ndim != 4):
            continue
        if include and not any(fnmatch.fnmatch(param.name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatch(param.name, pat) for pat in exclude):
            continue
        names.append(param.name)
    return names


def sparsity_of(arrays):
    """Fraction of exact zeros over a collection of numpy arrays."""
    total = sum(a.size for a in arrays)
    zeros = sum(int(a.size - np.count_nonzero(a)) for a in arrays)
    return zeros / total if total else 0.0


class Pruner:
    """No pruning: the dense baseline and the base class of every pruner."""

    name = "none"
    hard_masks = False

    def __init__(self, cfg, net, steps_per_epoch, logger):
        self.cfg = cfg
        self.net = net
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * cfg.epoch_size
        self.logger = logger

    @property
    def mask_names(self):
        return []

    @property
    def energy_names(self):
        return []

    def before_step(self, step, batch, ctx):
        return None

    def after_step(self, step, ctx):
        pass

    def on_epoch_end(self, epoch, ctx):
        pass

    def on_train_end(self, ctx):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def report(self):
        return {}

    def accept_best(self, step):
        """Whether an evaluation after ``step`` iterations may count as the run's best accuracy."""
        return True
