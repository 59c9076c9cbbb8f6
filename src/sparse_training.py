"""Prune any MindSpore network while training it in your own loop.

    from src.sparse_training import SparseTraining
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="rpg",
                            steps_per_epoch=len(batches), epochs=10, sparsity=0.9, delta=50)
    for epoch in range(10):
        for image, label in batches:
            loss = sparse.step(image, label)     # an optimizer step, or a mask update
        sparse.end_epoch()
    sparse.finish()                              # checks the final sparsity
    print(sparse.report())                       # sparsity, per-layer density and rank

``method`` is any registered method (``rpg``, ``gmp``, ``psap`` for this project's ResNets, or
one you ``register``); every other keyword is a recipe key of that method (see ``python train.py
--help``) with the recipe's defaults. Prunable weights are the conv (4-D) and Dense (2-D)
``*weight`` parameters, narrowed by ``prune_include`` / ``prune_exclude`` name patterns.
The optimizer must train every pruned weight; its per-parameter state (every optimizer Parameter
named "<slot>.<weight name>", see ``train_cell.optimizer_state``) is zeroed with the pruned weights.
Graph mode (``ms.set_context(mode=ms.GRAPH_MODE)``) is required, as for train.py.

Why not ``ms.Model.train``: RPG's mask update replaces an iteration's optimizer step with a dense
gradient and host work on that iteration's batch, and the learning-rate schedule must then be
moved on by hand; a callback sees a step only after it ran (and with dataset sinking, after many
steps), so it could not reproduce the reference. ``step`` runs exactly what train.py runs.
"""
import logging

import numpy as np
import mindspore as ms
from mindspore import Tensor

from src.config import build_config, keys_of_other_methods
from src.errors import ConfigError, TrainingError, require_finite_loss
from src.pruning.core.base import sparsity_of
from src.pruning.core.context import TrainContext
from src.pruning.core.registry import build_pruner
from src.pruning.core.train_cell import LossCell, TrainStep
from src.recipe_keys import ALIASES, BASE_KEYS
from src.report import layer_rows


class SparseTraining:
    """A pruning method around a network, loss and optimizer: a train step for your own loop.

    ``amp_network``: a float16 twin of ``network`` sharing its Parameters for the optimizer steps
    (train.py's ``amp_level``); dense gradients for the method always use ``network``.
    What a method ``needs`` besides the batches (``src.pruning.core.base.SUPPLIES``):
    ``input_shape``, one input's shape with batch 1 (methods that count MACs, e.g. PSAP);
    ``training_batches``, a callable returning an iterable of (image, label) training batches
    (forward passes, e.g. PSAP's BatchNorm re-estimation; or give them to ``end_epoch``).
    """

    def __init__(self, network, loss_fn, optimizer, method="rpg", steps_per_epoch=None, epochs=1,
                 logger=None, amp_network=None, input_shape=None, training_batches=None,
                 settings=None, **keys):
        self.cfg = settings or method_settings(method, steps_per_epoch, epochs, keys)
        if ms.get_context("mode") != ms.GRAPH_MODE:
            raise ConfigError("SparseTraining needs graph mode (ms.set_context(mode=ms.GRAPH_MODE)): "
                              "in PyNative mode MindSpore 2.8 moves the optimizer's step counter "
                              "differently and the learning-rate schedule would lag at mask updates")
        self.logger = logger or logging.getLogger("prune")
        self.network = network
        self.optimizer = optimizer
        self.batches_for_method = training_batches
        supplies = {"input_shape": input_shape, "training_batches": self.training_batches}
        try:
            self.pruner = build_pruner(self.cfg, network, steps_per_epoch, self.logger, supplies)
            pieces = self.pruner.graph_pieces(optimizer)
        except (TypeError, ValueError) as err:  # e.g. weights the optimizer does not train
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"method {self.cfg.prune_method}: {err}") from None
        loss_cell = LossCell(network, loss_fn)
        train_loss_cell = loss_cell if amp_network is None else LossCell(amp_network, loss_fn)
        self.train_step = TrainStep(train_loss_cell, optimizer, pieces)
        self.train_step.set_train(True)
        network.set_train(True)  # also under a twin: dense gradients use batch statistics
        self.ctx = TrainContext(network, loss_cell, optimizer, self.train_step, self.logger,
                                train_loss_cell)
        self.iterations = 0
        self.planned = self.pruner.total_steps
        self.finished = False

    # --- the loop ----------------------------------------------------------------------------
    def step(self, image, label):
        """One iteration on a batch; returns its loss (a float)."""
        if self.finished or self.iterations >= self.planned:
            raise TrainingError(f"this run was planned for {self.planned} iterations "
                                f"(steps_per_epoch x epochs){' and has finished' if self.finished else ''}: "
                                "its schedule has no step " f"{self.iterations + 1}")
        step = self.iterations
        self.ctx.step = step
        loss = self.pruner.before_step(step, (image, label), self.ctx)
        if loss is None:
            loss = float(self.train_step(image, label).asnumpy())
        else:
            self.advance_schedule(step + 1)
        require_finite_loss(loss, step + 1, f" (epoch {self.ctx.epoch + 1})")
        self.pruner.after_step(step, self.ctx)
        self.iterations = step + 1
        return loss

    def advance_schedule(self, iterations):
        """The learning-rate schedule is indexed by the optimizer's step counter, which only moves
        when the optimizer runs: after an iteration the method used without an optimizer step
        (RPG's mask update, as the reference) it is set to the iteration count, so the schedule
        stays indexed by iteration, as the reference's is."""
        self.optimizer.global_step.set_data(Tensor(np.array([iterations], np.int32)))

    def training_batches(self):
        """What a method that needs ``training_batches`` gets: the training batches given to the
        constructor or to ``end_epoch``, as an iterable, or None."""
        return None if self.batches_for_method is None else self.batches_for_method()

    def end_epoch(self, recalibration_batches=None):
        """Call at the end of every epoch (PSAP prunes there; RPG and GMP need nothing).
        ``recalibration_batches``: an iterable of (image, label) training batches on which PSAP's
        final pruning step re-estimates the BatchNorm statistics (``psap_bn_recalibration``); pass
        it at the last epoch unless the constructor had ``training_batches`` (without either PSAP
        warns and the pruned network may lose accuracy)."""
        if recalibration_batches is not None:
            self.batches_for_method = lambda: iter(recalibration_batches)
        self.ctx.step = self.iterations  # the epoch's records name the iterations done
        self.pruner.on_epoch_end(self.ctx.epoch, self.ctx)
        self.ctx.epoch += 1

    def finish(self):
        """End of training: the method's final check (e.g. the exact target sparsity); returns its
        extra outputs {file name: (cell, metadata)} (PSAP: the compact network) to save."""
        if self.finished:
            raise TrainingError("finish() was called already")
        outputs = self.pruner.on_train_end(self.ctx)
        self.finished = True
        return outputs

    # --- what pruning did ------------------------------------------------------------------------
    def masks(self):
        """{weight name: bool mask} of a hard-mask method."""
        return self.pruner.masks()

    def report(self):
        """{"sparsity": over the pruned weights, "layers": [{name, shape, density, rank,
        full_rank, effective_rank, ...}]} (numerical and effective rank of each weight matrix)."""
        names = getattr(self.pruner, "names", None) or []
        rows = layer_rows(self.network, names)   # the SVDs of the pruned layers only
        weights = self.ctx.get_weights(names).values()
        return {"sparsity": sparsity_of(weights) if names else 0.0, "layers": rows}

    def state_dict(self):
        """The method's schedule state and the finished iterations (numpy values). With the
        parameters of ``train_step`` (the network, the optimizer's state and the masks, e.g.
        ``ms.save_checkpoint(sparse.train_step, path)``) it continues a run exactly."""
        return {"iterations": np.int64(self.iterations), **self.pruner.state_dict()}

    def load_state_dict(self, state):
        """Continue a run: load ``train_step``'s parameters first (``ms.load_checkpoint(path,
        sparse.train_step)``), then this."""
        if "iterations" not in state:
            raise ConfigError("state has no 'iterations': pass what state_dict() returned")
        state = dict(state)
        self.resume(state, int(state.pop("iterations")))

    def resume(self, method_state, iterations):
        """The method's state and the number of finished iterations (train.py's resume)."""
        self.pruner.load_state_dict(method_state)
        self.iterations = iterations
        self.ctx.epoch = iterations // self.pruner.steps_per_epoch
        self.advance_schedule(iterations)


# base recipe keys SparseTraining takes as keywords; the others are train.py's (data, optimizer,
# learning rate, logging), which your own loop owns
API_BASE_KEYS = ("sparsity", "prune_include", "prune_exclude", "seed")


def method_settings(method, steps_per_epoch, epochs, keys):
    """The checked settings of ``method`` from SparseTraining's keywords (ConfigError if wrong)."""
    for name, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name}: got {value!r}, expected a positive integer")
    if "epoch_size" in keys or "prune_method" in keys:
        raise ConfigError("give the run's length as epochs= and the method as method=")
    other = [k for k in keys if ALIASES.get(k, k) in BASE_KEYS and ALIASES.get(k, k) not in API_BASE_KEYS]
    if other:
        raise ConfigError(f"'{other[0]}' is a train.py recipe key: SparseTraining takes the method's "
                          f"keys and {', '.join(API_BASE_KEYS)}; your loop owns the rest")
    cfg = build_config({"prune_method": method, "epoch_size": int(epochs), **keys}, {}, "SparseTraining")
    foreign = keys_of_other_methods(cfg)
    if foreign:
        raise ConfigError(f"'{foreign[0]}' is not a key of method {method}")
    return cfg
