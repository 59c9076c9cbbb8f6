"""PSAP's graph piece: per-filter gradient energy sum(grad**2), accumulated inside every train
step (before any masking, so zeroed filters are measured too) and read by the protection."""
import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, ParameterTuple, Tensor

ENERGY_PREFIX = "grad_energy."


class GradientEnergy(nn.Cell):
    """Graph piece (see ``train_cell``): adds sum(grad**2) over each output filter of the named
    conv weights to a buffer; ``read(reset)`` returns {name: per-filter energy}."""

    def __init__(self, optimizer, names):
        super().__init__(auto_prefix=False)
        index = {p.name: i for i, p in enumerate(optimizer.parameters)}
        missing = [n for n in names if n not in index]
        if missing:
            raise ValueError(f"the optimizer does not train {missing[0]}")
        self.names = list(names)
        # the optimizer divides the gradients by the static loss scale; the energy must not see it
        self.loss_scale = float(optimizer.loss_scale)
        self.slot = tuple(index[n] for n in names)
        self.count = len(names)
        self.energy = ParameterTuple([
            Parameter(Tensor(np.zeros(optimizer.parameters[index[n]].shape[0], np.float32)),
                      name=ENERGY_PREFIX + n, requires_grad=False) for n in names])

    def on_gradients(self, grads):
        for k in range(self.count):
            grad = grads[self.slot[k]] / self.loss_scale
            ops.assign_add(self.energy[k], ops.reduce_sum(grad * grad, (1, 2, 3)))
        return grads

    def after_update(self):
        return ops.zeros((), ms.float32)

    def read(self, reset=True):
        energy = {name: p.asnumpy() for name, p in zip(self.names, self.energy)}
        if reset:
            for param in self.energy:
                param.set_data(Tensor(np.zeros(param.shape, np.float32)))
        return energy
