"""Training-graph cells that keep pruned weights at exactly zero.

``MaskedTrainStep`` is one ordinary optimizer step (forward, backward, gradient all-reduce in
data-parallel runs, optimizer) with the pruning bookkeeping compiled into the same graph:
- hard masks: the gradients of masked-out weights are zeroed before the optimizer; after the step
  the weights and their momentum are multiplied by the mask, so a pruned weight is exactly 0.0
  after every step (weight decay cannot revive it either, since it acts through the gradient);
- gradient energy: for chosen conv weights, sum(grad**2) per output filter is accumulated into a
  buffer the pruner reads (PSAP's protection), measured before any masking.
``DenseGradient`` computes unmasked gradients of task loss (+ an extra loss such as RPG's rank
loss) without touching the optimizer: the signal RPG regrows by.

In data-parallel runs both cells average the gradients over the workers (so RPG's regrowth
gradient and PSAP's gradient energies are the same on every worker) and also return the loss
averaged over the workers: every worker logs the same loss and stops at the same step when it is
not finite.
"""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

MASK_PREFIX = "pruning_mask."
ENERGY_PREFIX = "grad_energy."


def _grad_reducer(params):
    """Mean all-reduce of gradients in data-parallel mode, identity otherwise."""
    from mindspore.context import ParallelMode
    mode = ms.get_auto_parallel_context("parallel_mode")
    if mode in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
        from mindspore.communication import get_group_size
        return nn.DistributedGradReducer(params, mean=True, degree=get_group_size())
    return None


class _WorkerMean(nn.Cell):
    """Mean of a scalar over the data-parallel workers."""

    def __init__(self):
        super().__init__()
        from mindspore.communication import get_group_size
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.degree = float(get_group_size())

    def construct(self, x):
        return self.all_reduce(x) / self.degree


class LossCell(nn.Cell):
    """network + criterion -> scalar loss."""

    def __init__(self, network, criterion):
        super().__init__(auto_prefix=False)
        self.network = network
        self.criterion = criterion

    def construct(self, image, label):
        return self.criterion(self.network(image), label)


class MaskedTrainStep(nn.Cell):
    """One optimizer step with in-graph masks and gradient-energy accumulation."""

    def __init__(self, loss_cell, optimizer, mask_names=(), energy_names=(), extra_loss=None,
                 shared_masks=None):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.optimizer = optimizer
        # Static loss scaling: the loss is multiplied here and the optimizer (built with the same
        # ``loss_scale``) divides the gradients, so the update equals the unscaled one.
        self.loss_scale = float(optimizer.loss_scale)
        self.weights = optimizer.parameters
        self.extra_loss = extra_loss
        self.has_extra_loss = extra_loss is not None
        self.grad_fn = ops.value_and_grad(self._loss, None, self.weights)
        self.reducer = _grad_reducer(self.weights)
        self.use_reducer = self.reducer is not None
        self.loss_mean = _WorkerMean() if self.use_reducer else None

        names = [p.name for p in self.weights]
        index = {name: i for i, name in enumerate(names)}
        missing = [n for n in list(mask_names) + list(energy_names) if n not in index]
        if missing:
            raise ValueError(f"cannot mask parameters the optimizer does not train: {missing[:3]}")
        moments = optimizer.moments
        self.mask_slot = tuple(mask_names.index(n) if n in mask_names else -1 for n in names)
        self.num_params = len(names)
        self.num_masks = len(mask_names)
        # ``shared_masks``: the masks of another step over the same optimizer (one set of masks
        # however many step variants are compiled)
        self.masks = shared_masks if shared_masks is not None else ParameterTuple([
            Parameter(Tensor(np.ones(self.weights[index[n]].shape, np.float32)),
                      name=MASK_PREFIX + n, requires_grad=False) for n in mask_names])
        self.masked_weights = ParameterTuple([self.weights[index[n]] for n in mask_names])
        self.masked_moments = ParameterTuple([moments[index[n]] for n in mask_names])
        self.energy_slot = tuple(index[n] for n in energy_names)
        self.num_energy = len(energy_names)
        self.energy = ParameterTuple([
            Parameter(Tensor(np.zeros(self.weights[index[n]].shape[0], np.float32)),
                      name=ENERGY_PREFIX + n, requires_grad=False) for n in energy_names])

    def _loss(self, image, label):
        loss = self.loss_cell(image, label)
        if self.has_extra_loss:
            loss = loss + self.extra_loss()
        return loss * self.loss_scale

    def construct(self, image, label):
        loss, grads = self.grad_fn(image, label)
        loss = loss / self.loss_scale
        if self.use_reducer:
            grads = self.reducer(grads)
            loss = self.loss_mean(loss)
        for k in range(self.num_energy):
            grad = grads[self.energy_slot[k]] / self.loss_scale
            ops.assign_add(self.energy[k], ops.reduce_sum(grad * grad, (1, 2, 3)))
        if self.num_masks > 0:
            masked = ()
            for i in range(self.num_params):
                slot = self.mask_slot[i]
                if slot >= 0:
                    masked = masked + (grads[i] * self.masks[slot],)
                else:
                    masked = masked + (grads[i],)
            grads = masked
        loss = ops.depend(loss, self.optimizer(grads))
        for k in range(self.num_masks):
            # select, not multiply: w * 0 gives -0.0 for negative w, and pruned weights should be
            # +0.0 bit for bit (sparse encodings compare bits)
            keep = self.masks[k] > 0
            weight = self.masked_weights[k]
            moment = self.masked_moments[k]
            ops.assign(weight, ops.select(keep, weight, ops.zeros_like(weight)))
            ops.assign(moment, ops.select(keep, moment, ops.zeros_like(moment)))
        return loss


class DenseGradient(nn.Cell):
    """Unmasked gradients of task loss + extra loss w.r.t. chosen weights; no optimizer step."""

    def __init__(self, loss_cell, params, extra_loss=None):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.params = ParameterTuple(params)
        self.extra_loss = extra_loss
        self.has_extra_loss = extra_loss is not None
        self.grad_fn = ops.value_and_grad(self._loss, None, self.params, has_aux=True)
        self.reducer = _grad_reducer(self.params)
        self.use_reducer = self.reducer is not None
        self.loss_mean = _WorkerMean() if self.use_reducer else None

    def _loss(self, image, label):
        task = self.loss_cell(image, label)
        extra = ops.zeros((), ms.float32)
        if self.has_extra_loss:
            extra = self.extra_loss()
        return task + extra, task, extra

    def construct(self, image, label):
        (total, task, extra), grads = self.grad_fn(image, label)
        if self.use_reducer:
            grads = self.reducer(grads)
            task = self.loss_mean(task)
            total = task + extra  # extra (e.g. the rank loss) depends on the weights only
        return total, task, extra, grads
