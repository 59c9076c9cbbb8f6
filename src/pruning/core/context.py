"""``TrainContext``: what a pruning method may see and do during training, for any method.

It gives the network, host copies of named parameters (``get_weights`` / ``set_weights``), host
zeroing of weights and their optimizer state (``zero_outside``, for soft masks), dense gradients on
a batch (``dense_gradient_cell``), train-step variants with an extra loss term sharing the
method's graph pieces (``step_with_extra_loss``), a logger and ``record(event)`` for structured
run records (``metrics.jsonl`` under train.py). Method-specific state (masks, gradient energy)
lives in the method's own graph pieces, not here.
"""
import logging

import numpy as np
from mindspore import Tensor

from src.models.batchnorm import reestimate_batchnorm
from src.pruning.core.train_cell import DenseGradient, TrainStep, optimizer_state

BN_STATISTICS = ("moving_mean", "moving_variance")


class TrainContext:
    def __init__(self, net, loss_cell, optimizer, train_step, logger=None, train_loss_cell=None):
        self.net = net
        self.loss_cell = loss_cell  # float32 (dense gradients)
        self.train_loss_cell = train_loss_cell or loss_cell  # amp_level's precision (optimizer steps)
        self.optimizer = optimizer
        self.train_step = train_step
        self.logger = logger or logging.getLogger("prune")
        self.epoch = 0
        self.step = 0
        # data parallel (set by the loop): this worker's rank, the number of workers and a
        # collective float32 sum of a host array over them (every worker must call it)
        self.rank = 0
        self.group_size = 1
        self.sum_across_workers = None
        self.before_reading_statistics = None  # data parallel: averages BN statistics (trainer)
        self.recorders = []
        self._params = {p.name: p for p in net.get_parameters()}
        self._variants = {}

    # --- weights ---------------------------------------------------------------------------
    def get_weights(self, names):
        """Host copies; BatchNorm moving statistics are first averaged over the data-parallel
        workers (a collective call: methods make the same calls on every worker)."""
        if self.before_reading_statistics and any(name.endswith(BN_STATISTICS) for name in names):
            self.before_reading_statistics()
        return {name: self._params[name].asnumpy() for name in names}

    def recalibrate_bn(self, batches, num_batches):
        """Re-estimate the BatchNorm moving statistics exactly on up to ``num_batches`` of
        ``batches`` (an iterable of (image, label); None: no data): the average of their batch
        statistics (``src.models.batchnorm``). No weight changes. Returns the number of batches used."""
        return reestimate_batchnorm(self.net, batches, num_batches)

    def set_weights(self, arrays):
        for name, value in arrays.items():
            param = self._params[name]
            param.set_data(Tensor(np.asarray(value, np.float32).reshape(param.shape)))

    def zero_outside(self, masks):
        """Set parameters and their optimizer state to +0.0 where the (broadcastable) mask is 0,
        on the host (soft masks: nothing is kept in the graph)."""
        state = optimizer_state(self.optimizer, [n for n in masks if n in self._trained_names()])
        for name, mask in masks.items():
            keep = np.asarray(mask, np.float32) > 0
            for param in [self._params[name]] + state.get(name, []):
                param.set_data(Tensor(np.where(keep, param.asnumpy(), np.float32(0.0))))

    def _trained_names(self):
        return {p.name for p in self.optimizer.parameters}

    # --- gradients and step variants ---------------------------------------------------------
    def dense_gradient_cell(self, names, extra_loss=None):
        """A compiled cell returning (total, task, extra, grads) for the named parameters, computed
        in float32 whatever ``amp_level`` the optimizer steps use."""
        return DenseGradient(self.loss_cell, [self._params[n] for n in names], extra_loss)

    def step_with_extra_loss(self, key, extra_loss):
        """A train step whose loss also contains ``extra_loss``, with the same graph pieces (one
        compiled variant per ``key``)."""
        if key not in self._variants:
            self._variants[key] = TrainStep(self.train_loss_cell, self.optimizer,
                                            list(self.train_step.pieces), extra_loss)
        return self._variants[key]

    # --- structured records --------------------------------------------------------------------
    def record(self, event):
        """Hand an event (a dict with an "event" name) to every recorder (train.py writes them to
        metrics.jsonl). ``step`` defaults to the current iteration, ``epoch`` to the current epoch
        counted from 1 (as in the log lines)."""
        event = dict(event, step=event.get("step", self.step), epoch=event.get("epoch", self.epoch + 1))
        for recorder in self.recorders:
            recorder(event)
