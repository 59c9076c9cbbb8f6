"""Prune inside ``ms.Model.train``: an algorithm object in the shape of MindSpore Golden Stick's
(``apply`` / ``callbacks`` / ``convert``), plus ``optimizer`` for the masks inside Model's step.

    from src.pruning.api import PruningAlgorithm
    algo = PruningAlgorithm("rpg", steps_per_epoch=ds.get_dataset_size(), epochs=E, sparsity=0.9)
    net = algo.apply(net)                                  # the method, its prunable weights
    opt = algo.optimizer(nn.Momentum(net.trainable_params(), 0.1, 0.9))
    model = ms.Model(net, nn.CrossEntropyLoss(), opt, metrics={"accuracy"})
    model.train(E, ds, callbacks=algo.callbacks(ds) + [LossMonitor()])
    net = algo.convert(net)                                # PSAP: the compact network

It runs the engine of ``SparseTraining`` (``src/sparse_training.py``), nothing of a method is re-implemented:
``apply`` builds the method from the registry; ``optimizer`` puts the method's graph pieces
(``HardMasks``: masked gradients before the update, pruned weights and their optimizer state
+0.0 after it; PSAP's ``GradientEnergy``) around your optimizer, inside Model's
``TrainOneStepCell``; the callback calls the method's host hooks at the iteration counts where
``SparseTraining.step`` calls them (``before_step(n)`` after n iterations, ``after_step``,
``on_epoch_end`` every ``steps_per_epoch`` iterations); ``convert`` runs ``on_train_end`` (the
final-sparsity check; PSAP's compact network).

What differs from the exact loop (docs/RPG.md, "Under ms.Model.train"): Model takes an optimizer
step on every iteration, so a mask update that the reference runs *instead of* that iteration's
step (RPG, RigL's gradient regrowth) runs *between* two steps, on a batch the callback draws from
its own pass over the dataset; the learning-rate schedule is not moved (the optimizer's step
counter equals the iteration count throughout).

Data sinking: the callback sees the host only at sink boundaries, so every step at which the
method needs the host must be one (``sink_step``): a ``sink_size`` that does not divide it is
refused with one ConfigError line (``callbacks(ds, sink_size=...)``, and again when Model.train
starts sinking); ``algo.sink_size`` is the largest that works.
"""
import logging
import math

import numpy as np
import mindspore as ms
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank
from mindspore.train import Callback

from src.errors import ConfigError, TrainingError
from src.metrics import all_reduce
from src.pruning.core.base import Pruner
from src.pruning.core.context import TrainContext
from src.pruning.core.registry import METHODS, build_pruner
from src.pruning.core.train_cell import LossCell
from src.pruning.filters.pruner import PSAPPruner
from src.pruning.masks.hard_mask import HardMaskPruner
from src.pruning.core.liveness import probe_from_batch
from src.sparse_training import method_settings, require_live_network
from src.training_graph import average_bn_statistics


class MaskedOptimizer(nn.Optimizer):
    """``optimizer`` with the method's graph pieces around it, for Model's TrainOneStepCell:
    ``construct(grads)`` runs each piece's ``on_gradients`` (the gradients arrive all-reduced),
    the optimizer, then each piece's ``after_update``. Model checks for an ``nn.Optimizer``;
    ``nn.Optimizer.__init__`` is not run (it would create a second step counter and learning
    rate): ``parameters``, ``learning_rate``, ``global_step`` and ``loss_scale`` are the wrapped
    optimizer's, so LR callbacks and checkpoints see the real ones."""

    def __init__(self, optimizer, pieces):
        nn.Cell.__init__(self, auto_prefix=False)   # names of the pieces' Parameters unchanged
        self.optimizer = optimizer
        self.pieces = nn.CellList(list(pieces), auto_prefix=False)

    parameters = property(lambda self: self.optimizer.parameters)
    learning_rate = property(lambda self: self.optimizer.learning_rate)
    global_step = property(lambda self: self.optimizer.global_step)
    loss_scale = property(lambda self: self.optimizer.loss_scale)

    def get_lr(self):
        return self.optimizer.get_lr()

    def construct(self, gradients):
        for piece in self.pieces:
            gradients = piece.on_gradients(gradients)
        success = self.optimizer(gradients)
        for piece in self.pieces:
            success = ops.depend(success, piece.after_update())
        return success


def sink_step(pruner, steps_per_epoch):
    """(n, why): the method needs the host only at multiples of n iterations; a data-sinking
    ``sink_size`` must divide n. ``why`` names what runs there (for the error line)."""
    if isinstance(pruner, HardMaskPruner):
        steps = pruner.update_steps
        every = math.gcd(*steps) if steps else pruner.total_steps
        return every, f"method {pruner.name} updates its masks at multiples of {every} iterations"
    if isinstance(pruner, PSAPPruner):
        cfg = pruner.cfg
        if cfg.filter_score == "taylor_bn":
            return 1, ("psap with filter_score taylor_bn accumulates the Taylor importance on the "
                       "host at every one of the last psap_taylor_batches steps of a pruning epoch")
        if cfg.psap_protect and cfg.protect_energy == "normalized":
            return 1, ("psap with protect_energy normalized reads the gradient energy of the first "
                       "step after each pruning step (protect_energy raw or psap_protect false "
                       "need the host only at epoch ends)")
        return steps_per_epoch, f"method psap prunes at epoch ends ({steps_per_epoch} iterations)"
    if type(pruner) is Pruner:
        return pruner.total_steps, "no pruning"
    return 1, f"method {pruner.name} does not say at which steps it needs the host"


def _require_graph_mode():
    import mindspore as ms
    if ms.get_context("mode") != ms.GRAPH_MODE:
        raise ConfigError("PruningAlgorithm needs graph mode (ms.set_context(mode=ms.GRAPH_MODE)), "
                          "as train.py and SparseTraining: it is tested there only (in PyNative "
                          "mode masked toy runs trained far worse)")


class _LazyBatch:
    """The (image, label) batch a method may use at a step: drawn from the callback's own pass
    over the dataset only when the method reads it (most steps need none)."""

    def __init__(self, draw):
        self._draw, self._value = draw, None

    def _get(self):
        if self._value is None:
            self._value = self._draw()
        return self._value

    def __iter__(self):
        return iter(self._get())

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self):
        return len(self._get())


class PruningCallback(Callback):
    """Runs the method's host hooks inside ``ms.Model.train`` (see the module notes)."""

    def __init__(self, algo, dataset):
        super().__init__()
        self.algo = algo
        self.dataset = dataset
        self.batches = None
        self.seen = 0

    def on_train_begin(self, run_context):
        params = run_context.original_args()
        self.algo.begin_training(params)
        self.seen = params.cur_step_num
        if self.algo.iterations == 0:
            self.algo.before_step(0, _LazyBatch(self.draw))

    def on_train_step_end(self, run_context):
        current = run_context.original_args().cur_step_num
        ran, self.seen = current - self.seen, current
        self.algo.after_steps(ran, _LazyBatch(self.draw))

    def draw(self):
        """The next batch of the callback's own pass over the dataset (a new pass when one ends;
        after a resume, the pass continues where the saved run's was)."""
        algo = self.algo
        if self.batches is None:
            self.batches = self.dataset.create_tuple_iterator(num_epochs=1)
            for _ in range(algo.draws % algo.steps_per_epoch):
                next(self.batches)
        try:
            batch = next(self.batches)
        except StopIteration:
            self.batches = self.dataset.create_tuple_iterator(num_epochs=1)
            batch = next(self.batches)
        algo.draws += 1
        return tuple(batch[:2])


class PruningAlgorithm:
    """A pruning method for ``ms.Model.train`` (see the module notes). ``method`` and the
    keywords are those of ``SparseTraining`` (``input_shape`` for psap; ``settings``: a checked
    recipe instead, as benchmarks/model_train_vs_loop.py passes); ``events`` collects the
    method's records (``mask_update``, ``psap_step``, ...), as train.py's metrics.jsonl does."""

    def __init__(self, method="rpg", steps_per_epoch=None, epochs=1, logger=None,
                 input_shape=None, settings=None, **keys):
        if settings is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ConfigError(f"steps_per_epoch: got {steps_per_epoch!r}, expected a positive integer")
        self.cfg = settings or method_settings(method, steps_per_epoch, epochs, keys)
        epochs = self.cfg.epoch_size
        _require_graph_mode()
        if getattr(self.cfg, "rpg_apply_update_step", False):
            raise ConfigError("rpg_apply_update_step: under ms.Model.train every iteration takes its "
                              "optimizer step already (the mask update runs between two steps); "
                              "leave it false")
        if "input_shape" in METHODS[self.cfg.prune_method].needs and input_shape is None:
            raise ConfigError(f"method {self.cfg.prune_method} needs input_shape (one input's shape "
                              "with batch 1), e.g. to count MACs")
        self.steps_per_epoch = int(steps_per_epoch)
        self.planned = self.steps_per_epoch * int(epochs)
        self.logger = logger or logging.getLogger("prune")
        self.input_shape = input_shape
        self.dataset = None        # the training set given to callbacks(): the method's batches
        self.net = self.pruner = self.ctx = self.masked = None
        self.iterations = 0
        self.draws = 0             # batches the callback drew (its pass continues on resume)
        self.events = []
        self.outputs = None        # what the method's on_train_end gave (PSAP: compact + metadata)

    # --- Golden Stick's three calls, and the optimizer ------------------------------------------
    def apply(self, network):
        """Build the method on ``network`` (prunable weights, schedule); returns ``network``
        itself: the masks live in the optimizer step, the forward pass is untouched."""
        if self.pruner is not None:
            raise ConfigError("apply() was called already: one PruningAlgorithm per network")
        try:
            supplies = {"input_shape": self.input_shape, "training_batches": self.training_batches}
            self.pruner = build_pruner(self.cfg, network, self.steps_per_epoch, self.logger, supplies)
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"method {self.cfg.prune_method}: {err}") from None
        self.net = network
        network.set_train(True)
        return network

    def optimizer(self, optimizer):
        """``optimizer`` with the method's graph pieces, for ``ms.Model(net, loss, optimizer)``.
        It must train every pruned weight; its per-weight state is zeroed with them."""
        self._require(pruner=True)
        if self.masked is not None:
            raise ConfigError("optimizer() was called already: pass its result to ms.Model")
        if not isinstance(optimizer, nn.Optimizer):
            raise ConfigError(f"optimizer(): expected an nn.Optimizer, got {type(optimizer).__name__}")
        try:
            pieces = self.pruner.graph_pieces(optimizer)
        except (TypeError, ValueError) as err:  # e.g. weights the optimizer does not train
            raise ConfigError(f"method {self.cfg.prune_method}: {err}") from None
        self.masked = MaskedOptimizer(optimizer, pieces)
        # the loss cell comes from the Model when training starts (begin_training)
        self.ctx = TrainContext(self.net, None, optimizer, self.masked, self.logger)
        self.ctx.recorders.append(self.events.append)
        self._data_parallel()
        return self.masked

    def callbacks(self, dataset, sink_size=None):
        """[the callback] for ``model.train(..., callbacks=...)``. ``dataset``: the training set
        given to Model.train (the regrowth gradient and PSAP's BatchNorm re-estimation draw from
        their own pass over it). ``sink_size``: the one given to Model.train with data sinking,
        checked now (it is checked again when Model.train starts sinking)."""
        self._require(pruner=True, masked=True)
        size = dataset.get_dataset_size()
        if size != self.steps_per_epoch:
            raise ConfigError(f"callbacks(dataset): the dataset gives {size} batches per epoch, the "
                              f"algorithm was built with steps_per_epoch={self.steps_per_epoch}")
        if sink_size == -1:   # Model.train's default: a whole epoch per sink
            self.check_sink_size(size, f"-1 (= {size}, the epoch)")
        elif sink_size is not None:
            self.check_sink_size(sink_size)
        callback = PruningCallback(self, dataset)
        self.dataset = dataset
        return [callback]

    def convert(self, network):
        """After training: the method's final checks (exact sparsity; DeadNetworkError if the output
        no longer depends on the input) and the network to export,
        in inference mode: ``network`` itself (pruned weights +0.0, no mask op in it) or what the
        method builds at the end (PSAP: the compact network; its metadata in ``outputs``)."""
        self._require(pruner=True, masked=True)
        if network is not self.net:
            raise ConfigError("convert(network): pass the network given to apply()")
        if self.outputs is not None:
            raise TrainingError("convert() was called already")
        if self.iterations < self.planned:
            raise TrainingError(f"training ran {self.iterations} of the {self.planned} planned "
                                "iterations (steps_per_epoch x epochs): convert() needs the whole "
                                "schedule")
        if self.ctx.before_reading_statistics:   # every worker converts the same network
            self.ctx.before_reading_statistics()
        self.outputs = self.pruner.on_train_end(self.ctx)
        cells = [cell for cell, _ in self.outputs.values()]
        converted = cells[0] if len(cells) == 1 else network
        # as the exact loop's finish(): a network whose output no longer follows its input is an
        # error, not a result (inputs: random of a real batch's shape, or its rows if integer)
        batch = next(self.dataset.create_tuple_iterator(num_epochs=1))[0]
        require_live_network(converted, probe_from_batch(batch), self.ctx)
        return converted.set_train(False)

    # --- what the callback calls ------------------------------------------------------------------
    def begin_training(self, params):
        """Model.train starts: take its loss, check its optimizer, its sink size and length."""
        _require_graph_mode()
        if params.optimizer is not self.masked:
            raise ConfigError("ms.Model was given another optimizer than algo.optimizer(...)'s: "
                              "the masks would not hold")
        self.ctx.loss_cell = self.ctx.train_loss_cell = (
            LossCell(params.network, params.loss_fn) if params.loss_fn is not None else params.network)
        per_epoch = params.train_dataset.get_dataset_size()
        if params.dataset_sink_mode:
            self.check_sink_size(params.batch_num)
            per_epoch = params.batch_num
        if self.iterations + params.epoch_num * per_epoch > self.planned:
            raise ConfigError(f"Model.train would run {params.epoch_num * per_epoch} iterations after "
                              f"{self.iterations}, the algorithm was planned for {self.planned} "
                              "(steps_per_epoch x epochs)")
        self.ctx.epoch = self.iterations // self.steps_per_epoch

    def before_step(self, step, batch):
        self.ctx.step = step
        self.pruner.before_step(step, batch, self.ctx)   # a loss it returns is not ours to use

    def after_steps(self, ran, batch):
        """``ran`` iterations ended (1, or a sink's worth): the hooks SparseTraining would call
        after the last of them, then the epoch end, then the next step's ``before_step``."""
        step = self.iterations + ran - 1
        if step >= self.planned:
            raise TrainingError(f"this run was planned for {self.planned} iterations "
                                "(steps_per_epoch x epochs): its schedule has no step "
                                f"{step + 1}")
        self.ctx.step = step
        self.pruner.after_step(step, self.ctx)
        self.iterations = step + 1
        while self.iterations // self.steps_per_epoch > self.ctx.epoch:   # an epoch ended
            self.ctx.step = self.iterations   # an epoch's records name the iterations done, as in the loop
            self.pruner.on_epoch_end(self.ctx.epoch, self.ctx)
            self.ctx.epoch += 1
        if self.iterations < self.planned:
            self.before_step(self.iterations, batch)

    # --- data sinking, resume, results ------------------------------------------------------------
    @property
    def sink_size(self):
        """The largest ``sink_size`` at which every host step of the method is a sink boundary
        and the run is a whole number of sinks (Model.train's epoch count: planned / sink_size)."""
        self._require(pruner=True)
        return math.gcd(sink_step(self.pruner, self.steps_per_epoch)[0], self.planned)

    def check_sink_size(self, sink_size, shown=None):
        every, why = sink_step(self.pruner, self.steps_per_epoch)
        if isinstance(sink_size, bool) or not isinstance(sink_size, (int, np.integer)) or sink_size < 1:
            raise ConfigError(f"sink_size: got {sink_size!r}, expected a positive integer or -1")
        if every % sink_size:
            raise ConfigError(f"sink_size {shown or sink_size} does not divide {every}: {why}, which must be "
                              f"sink boundaries; use a sink_size that divides {every} "
                              f"(algo.sink_size = {self.sink_size})")

    def masks(self):
        """{weight name: bool mask} of a hard-mask method."""
        return self.pruner.masks()

    def state_dict(self):
        """The method's state, the finished iterations and the callback's position in its pass
        (numpy values). With the parameters of ``model.train_network`` (network, optimizer state,
        masks: ``ms.save_checkpoint(model.train_network, path)``) it continues a run."""
        return {"iterations": np.int64(self.iterations), "draws": np.int64(self.draws),
                **self.pruner.state_dict()}

    def load_state_dict(self, state):
        """Continue a run: build apply/optimizer/Model as before, ``ms.load_checkpoint(path,
        model.train_network)``, then this, then ``model.train(E, ds, ..., initial_epoch=k)``."""
        self._require(pruner=True, masked=True)
        if "iterations" not in state or "draws" not in state:
            raise ConfigError("state has no 'iterations' / 'draws': pass what state_dict() returned")
        state = dict(state)
        self.iterations, self.draws = int(state.pop("iterations")), int(state.pop("draws"))
        self.pruner.load_state_dict(state)
        self.ctx.epoch = self.iterations // self.steps_per_epoch

    # --- internals ---------------------------------------------------------------------------------
    def training_batches(self):
        """The method's ``training_batches``: a pass over the training set given to ``callbacks``
        (the BatchNorm re-estimation), or None before it."""
        return None if self.dataset is None else self.dataset.create_tuple_iterator(num_epochs=1)

    def _require(self, pruner=False, masked=False):
        if pruner and self.pruner is None:
            raise ConfigError("call algo.apply(net) first")
        if masked and self.masked is None:
            raise ConfigError("call algo.optimizer(your_optimizer) first and give its result to ms.Model")

    def _data_parallel(self):
        """Data parallel (msrun + Model): the rank loss splits its host SVDs over the workers and
        the methods read BatchNorm statistics averaged over them, as under train.py."""
        mode = ms.get_auto_parallel_context("parallel_mode")
        if mode not in (ms.ParallelMode.DATA_PARALLEL, ms.ParallelMode.HYBRID_PARALLEL):
            return
        self.ctx.rank, self.ctx.group_size = get_rank(), get_group_size()
        self.ctx.sum_across_workers = all_reduce
        if self.ctx.group_size > 1:
            self.ctx.before_reading_statistics = \
                lambda: average_bn_statistics(self.net, self.ctx.group_size)
