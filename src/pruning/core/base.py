"""The pruning-method contract. The training loop (``src/trainer.py``, through the public
``src.sparse_training.SparseTraining``) never tells methods apart; a method is one class:

- ``name`` and ``keys`` (its recipe keys, ``src.recipe_keys.Key``; the schema is built from the
  registry), ``check_recipe(cfg)`` (constraints the yaml alone decides, checked at parse time).
- ``graph_pieces(optimizer)``: the cells its train step needs (``src.pruning.core.train_cell``): hard
  masks (``HardMasks``), gradient energy (PSAP's ``GradientEnergy``) or nothing.
- ``before_step(step, batch, ctx)``: called before iteration ``step`` (0-based count of finished
  iterations). Returning a float (the iteration's loss) means "this iteration is mine": the method
  did its own work on the batch (e.g. RPG's mask update with a dense gradient) and the ordinary
  train step is skipped. Returning None lets the ordinary step run.
- ``after_step(step, ctx)``, ``on_epoch_end(epoch, ctx)``, ``on_train_end(ctx)`` (which returns
  the extra outputs the caller saves: {file name: (cell, metadata)}, e.g. PSAP's compact network).
- ``state_dict()`` / ``load_state_dict(state)``: everything needed to resume the schedule exactly.
  Values are numpy arrays, ints, floats or strings; they are stored in every checkpoint.
- ``report()``: a short dict for the log line (e.g. {"sparsity": 0.9}).
- ``needs``: what the method needs from the training loop to be built, besides each step's batch
  (names of ``SUPPLIES``); the loop gives each to the constructor as a keyword argument (None when
  it has none), so the loop never asks which method it runs. ``training_batches`` is not a need:
  every method gets it as the attribute ``self.training_batches`` once built (registry.build_pruner;
  ``reestimate_bn`` reads it).

``ctx`` is a ``src.pruning.core.context.TrainContext``: the network, host copies of weights, dense
gradients on a batch, train-step variants with an extra loss, a logger and ``record(event)``.
"""
import fnmatch

import numpy as np


# What the training loop can give a method that declares it in ``Pruner.needs``
SUPPLIES = {
    "input_shape": "one input's shape with batch 1, e.g. (1, 3, 224, 224)",
}


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


def unmatched_patterns(net, include=(), exclude=()):
    """(key, pattern) pairs of prune_include / prune_exclude patterns that match no conv or FC
    weight of ``net`` (a typo there would otherwise silently prune, or keep, the wrong layers)."""
    names = prunable_weight_names(net)
    return [(key, pattern) for key, patterns in (("prune_include", include), ("prune_exclude", exclude))
            for pattern in patterns if not any(fnmatch.fnmatch(n, pattern) for n in names)]


def sparsity_of(arrays):
    """Fraction of exact zeros over a collection of numpy arrays."""
    total = sum(a.size for a in arrays)
    zeros = sum(int(a.size - np.count_nonzero(a)) for a in arrays)
    return zeros / total if total else 0.0


class Pruner:
    """No pruning: the dense baseline and the base class of every pruner."""

    name = "none"
    keys = {}
    needs = ()
    # the base recipe's pruning keys (sparsity, prune_include, prune_exclude) the method reads: a
    # run that sets one it does not read is told so (PSAP's target is its MACs cut)
    base_keys_read = ()

    @classmethod
    def check_recipe(cls, cfg):
        """Recipe constraints the yaml alone decides (raise ConfigError naming the key)."""

    def __init__(self, cfg, net, steps_per_epoch, logger):
        self.cfg = cfg
        self.net = net
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * cfg.epoch_size
        self.logger = logger
        # a callable returning an iterable of (image, label) training batches, or None when the loop
        # has none: set on every method after construction (registry.build_pruner) for forward
        # passes such as the BatchNorm re-estimation
        self.training_batches = None

    def reestimate_bn(self, ctx, wanted, when):
        """Re-estimate the BatchNorm statistics exactly on ``wanted`` training batches (the loop's
        ``training_batches``), record a ``bn_recalibration`` event and log it; ``when`` ends the log
        line ("after the final pruning step"). Returns the number of batches used."""
        used = ctx.recalibrate_bn(self.training_batches() if self.training_batches else None, wanted)
        ctx.record({"event": "bn_recalibration", "batches": int(used), "asked": int(wanted)})
        if used:
            self.logger.info("%s: BatchNorm statistics re-estimated on %d training batches %s%s", self.name,
                             used, when, f" (all the data gives; {wanted} asked)" if used < wanted else "")
        else:
            self.logger.warning("%s: no training batches to re-estimate the BatchNorm statistics %s; the "
                                "pruned network may lose accuracy (SparseTraining: give it training_batches, "
                                "or recalibration_batches to end_epoch)", self.name, when)
        return used

    def graph_pieces(self, optimizer):
        return []

    def masks(self):
        """{weight name: bool mask} of the pruned weights ({} without hard masks)."""
        return {}

    def before_step(self, step, batch, ctx):
        return None

    def after_step(self, step, ctx):
        pass

    def on_epoch_end(self, epoch, ctx):
        pass

    def on_train_end(self, ctx):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def report(self):
        return {}

    def accept_best(self, step):
        """Whether an evaluation after ``step`` iterations may count as the run's best accuracy."""
        return True
