"""The train step, assembled from the graph pieces the pruning method declares.

``TrainStep`` is one ordinary optimizer step (forward, backward, gradient all-reduce in
data-parallel runs, optimizer) around which a method's *pieces* run in the same compiled graph.
A piece is an ``nn.Cell`` with two methods:

- ``on_gradients(grads)`` -> grads: sees the (all-reduced) gradients of every trained parameter
  before the optimizer, and may observe them (PSAP's gradient energy) or change them (hard masks
  zero the gradients of pruned weights);
- ``after_update()`` -> a scalar: runs after the optimizer step (hard masks set pruned weights
  and their optimizer state to +0.0).

Pieces run in the order given. A method with no pieces gets a plain optimizer step; nothing of
another method is compiled into it. ``DenseGradient`` computes unmasked gradients of task loss
(+ an extra loss such as RPG's rank loss) without touching the optimizer.

In data-parallel runs both cells average the gradients over the workers and also return the loss
averaged over the workers: every worker logs the same loss and stops at the same step when it is
not finite.
"""
import mindspore as ms
from mindspore import nn, ops, ParameterTuple

# Optimizer state is named "<slot>.<parameter name>" (nn.Momentum: moments; Adam: moment1/moment2;
# AdamWeightDecay: adam_m/adam_v; Lamb: lamb_m/lamb_v; SGD: accum; RMSProp: moment/mean_square).
# SGD's "stat" (a first-step flag, not a running statistic) is left alone.
NOT_STATE = ("stat",)


def optimizer_state(optimizer, names):
    """{parameter name: [state Parameters shaped like it]} for the named trained parameters: every
    optimizer Parameter called "<slot>.<name>" with the parameter's shape."""
    params = {p.name: p for p in optimizer.parameters}
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"the optimizer does not train {len(missing)} of the pruned weights (first: "
                         f"{missing[0]}): give the optimizer every weight to prune, or exclude it")
    state = {n: [] for n in names}
    for param in optimizer.get_parameters():
        slot, _, owner = param.name.partition(".")
        if owner in state and slot not in NOT_STATE and param is not params[owner] \
                and tuple(param.shape) == tuple(params[owner].shape):
            state[owner].append(param)
    return state


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


class TrainStep(nn.Cell):
    """One optimizer step with the method's pieces (see the module notes) and an optional extra
    loss term (a cell without inputs, e.g. lamb * rank loss)."""

    def __init__(self, loss_cell, optimizer, pieces=(), extra_loss=None):
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
        # no prefix: a piece holds the network's own Parameters, whose names must not change
        self.pieces = nn.CellList(list(pieces), auto_prefix=False)
        self.num_pieces = len(pieces)

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
        for piece in self.pieces:
            grads = piece.on_gradients(grads)
        loss = ops.depend(loss, self.optimizer(grads))
        for piece in self.pieces:
            loss = ops.depend(loss, piece.after_update())
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
