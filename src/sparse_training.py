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

``step`` runs exactly what train.py runs: RPG's mask update replaces that iteration's optimizer
step, as in the reference. For ``ms.Model.train`` (callbacks, data sinking) use
``PruningAlgorithm`` (``model_train.py``), where the update runs between two optimizer steps.
"""
import logging

import numpy as np
import mindspore as ms
from mindspore import nn, Tensor

from src.config import build_config, keys_of_other_methods
from src.errors import ConfigError, DeadNetworkError, TrainingError, require_finite_loss
from src.pruning.core.base import prunable_weight_names, sparsity_of
from src.pruning.core.context import TrainContext
from src.pruning.core.liveness import (dead_network_message, depends_on_input, probe_from_batch,
                                       probe_inputs)
from src.pruning.core.registry import build_pruner, pruned_weight_names
from src.pruning.core.train_cell import LossCell, TrainStep
from src.recipe_keys import ALIASES, BASE_KEYS
from src.report import layer_rows


def batch_source(batches, name):
    """``batches`` (None, a callable returning an iterable, or a list / other re-iterable) as a
    callable giving a fresh pass each time, or None; anything else is a ConfigError now, not a
    TypeError when the method first reads it at the end of training."""
    if batches is None or callable(batches):
        return batches
    if not hasattr(batches, "__iter__"):
        raise ConfigError(f"{name}: got {type(batches).__name__}, expected a list or other iterable of "
                          "(image, label) batches, or a callable returning one")
    return lambda: iter(batches)


class SparseTraining:
    """A pruning method around a network, loss and optimizer: a train step for your own loop.

    ``amp_network``: a float16 twin of ``network`` sharing its Parameters for the optimizer steps
    (train.py's ``amp_level``); dense gradients for the method always use ``network``.
    What a method ``needs`` besides the batches (``src.pruning.core.base.SUPPLIES``):
    ``input_shape``, one input's shape with batch 1 (methods that count MACs, e.g. PSAP).
    ``training_batches``, for every method: (image, label) training batches for forward passes (the
    BatchNorm re-estimation of PSAP and of ``bn_recalibration``): a list or other re-iterable, or a
    callable returning a fresh iterable each time (or give them to ``end_epoch``).
    """

    def __init__(self, network, loss_fn, optimizer, method="rpg", steps_per_epoch=None, epochs=1,
                 logger=None, amp_network=None, input_shape=None, training_batches=None,
                 settings=None, **keys):
        check_arguments(network, loss_fn, optimizer, amp_network)
        self.cfg = settings or method_settings(method, steps_per_epoch, epochs, keys)
        if ms.get_context("mode") != ms.GRAPH_MODE:
            raise ConfigError("SparseTraining needs graph mode (ms.set_context(mode=ms.GRAPH_MODE)): "
                              "in PyNative mode MindSpore 2.8 moves the optimizer's step counter "
                              "differently and the learning-rate schedule would lag at mask updates")
        self.logger = logger or logging.getLogger("prune")
        self.network = network
        self.optimizer = optimizer
        self.batches_for_method = batch_source(training_batches, "training_batches")
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
        # float16 steps: a non-finite loss may be the scaled loss overflowing (see require_finite_loss)
        self.float16_loss_scale = None if amp_network is None else float(optimizer.loss_scale)
        self.last_loss = None
        # for the end-of-run check that the output still depends on the input: the last batch's
        # input (a reference, no copy), or, set later than that batch, the (shape, dtype) of float
        # inputs to probe with
        self.last_input = None
        self.input_spec = None if input_shape is None else (tuple(input_shape), np.float32)

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
        require_finite_loss(loss, step + 1, f" (epoch {self.ctx.epoch + 1})",
                            self.float16_loss_scale, self.last_loss)
        self.pruner.after_step(step, self.ctx)
        self.iterations, self.last_loss = step + 1, loss
        self.last_input, self.input_spec = image, None   # the batch now says what inputs look like
        return loss

    def advance_schedule(self, iterations):
        """The learning-rate schedule is indexed by the optimizer's step counter, which only moves
        when the optimizer runs: after an iteration the method used without an optimizer step
        (RPG's mask update, as the reference) it is set to the iteration count, so the schedule
        stays indexed by iteration, as the reference's is."""
        self.optimizer.global_step.set_data(Tensor(np.array([iterations], np.int32)))

    def training_batches(self):
        """The method's ``training_batches``: the training batches given to the constructor or to
        ``end_epoch``, as an iterable, or None."""
        return None if self.batches_for_method is None else self.batches_for_method()

    def end_epoch(self, recalibration_batches=None):
        """Call at the end of every epoch (PSAP prunes there; RPG and GMP act only with
        ``bn_recalibration``). ``recalibration_batches``: an iterable of (image, label) training
        batches on which the BatchNorm statistics are re-estimated at the last epoch's end (PSAP's
        final pruning step, ``psap_bn_recalibration``; ``bn_recalibration`` of RPG/GMP/RigL); pass
        it at the last epoch unless the constructor had ``training_batches`` (without either the
        method warns and the pruned network may lose accuracy)."""
        if recalibration_batches is not None:
            self.batches_for_method = batch_source(recalibration_batches, "recalibration_batches")
        self.ctx.step = self.iterations  # the epoch's records name the iterations done
        self.pruner.on_epoch_end(self.ctx.epoch, self.ctx)
        self.ctx.epoch += 1

    def finish(self):
        """End of training: the method's final check (e.g. the exact target sparsity), then that
        the network's output still depends on its input (``DeadNetworkError``, a TrainingError,
        naming the emptied layers, if not); returns the method's extra outputs {file name: (cell,
        metadata)} (PSAP: the compact network) to save."""
        if self.finished:
            raise TrainingError("finish() was called already")
        outputs = self.pruner.on_train_end(self.ctx)
        self.finished = True
        self.check_output_depends_on_input()
        return outputs

    def check_output_depends_on_input(self):
        """DeadNetworkError if different inputs give the same output in eval mode: random ones of
        the shape of ``input_spec`` (when set after the last batch) or of the last batch, or, for
        integer inputs, the last batch's rows (``liveness.probe_from_batch``). Skipped without
        pruning."""
        if self.cfg.prune_method == "none":
            return
        if self.input_spec is not None:
            inputs = probe_inputs(*self.input_spec)
        elif self.last_input is not None:
            inputs = probe_from_batch(self.last_input)
        else:
            return
        require_live_network(self.network, inputs, self.ctx)

    # --- what pruning did ------------------------------------------------------------------------
    def masks(self):
        """{weight name: bool mask} of a hard-mask method."""
        return self.pruner.masks()

    def report(self):
        """{"sparsity": over the pruned weights, "layers": [{name, shape, density, rank,
        full_rank, effective_rank, ...}]} (numerical and effective rank of each weight matrix)."""
        # a mask method's masked weights; else (PSAP) the weights the recipe prunes, as eval.py counts
        names = getattr(self.pruner, "names", None) or pruned_weight_names(self.network, self.cfg)
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


def check_arguments(network, loss_fn, optimizer, amp_network=None):
    """ConfigError (one line) unless the objects are what SparseTraining drives."""
    wanted = (("network", network, isinstance(network, nn.Cell), "a mindspore.nn.Cell"),
              ("loss_fn", loss_fn, callable(loss_fn), "a loss Cell or callable (logits, labels)"),
              ("optimizer", optimizer, isinstance(optimizer, nn.Optimizer),
               "a mindspore.nn.Optimizer over the network's parameters"),
              ("amp_network", amp_network, amp_network is None or isinstance(amp_network, nn.Cell),
               "None or a mindspore.nn.Cell"))
    for name, value, ok, expected in wanted:
        if not ok:
            raise ConfigError(f"SparseTraining: {name} must be {expected}, got "
                              f"{type(value).__name__} {_short_repr(value)}")


def _short_repr(value):
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def require_live_network(network, inputs, ctx):
    """DeadNetworkError (naming the emptied prunable layers) if ``network`` gives the same output
    for the rows of ``inputs``; nothing if ``inputs`` is None (no probe)."""
    if inputs is None or depends_on_input(network, inputs):
        return
    names = prunable_weight_names(network)
    raise DeadNetworkError(dead_network_message(ctx.get_weights(names)))


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
    cfg = build_config({"prune_method": method, "epoch_size": int(epochs), **keys}, {}, "SparseTraining",
                       network_known=False)
    foreign = keys_of_other_methods(cfg)
    if foreign:
        raise ConfigError(f"'{foreign[0]}' is not a key of method {method}")
    return cfg
