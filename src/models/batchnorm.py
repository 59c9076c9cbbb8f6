"""BatchNorm statistics re-estimated exactly: the average of the batch statistics of up to N
training batches, whatever the moving averages held before (as ``torch.optim.swa_utils.update_bn``
does with cumulative averaging).

Re-estimating by running forward passes in training mode is not enough after a large change of
the weights: MindSpore's moving average keeps ``0.9 ** k`` of the old value after k batches, and a
channel whose variance fell by orders of magnitude (a layer nearly emptied by the last mask update)
stays dominated by its old variance. A collapsed 99.5 %-sparse ResNet-20 (10.4 % top-1) stayed at
10.4 % after 40 batches of moving-average updates and came back to 54.1 % with the exact average
(docs/RESULTS.md, "Why 99.5 % runs collapse").
"""
import numpy as np
from mindspore import Tensor
from mindspore.nn.layer.normalization import _BatchNorm


def batchnorm_layers(net):
    """The BatchNorm cells of ``net`` (any subclass of MindSpore's _BatchNorm), in network order."""
    return [cell for _, cell in net.cells_and_names() if isinstance(cell, _BatchNorm)]


def reestimate_batchnorm(net, batches, num_batches):
    """Set every BatchNorm's moving mean and variance to the average of its batch statistics over
    up to ``num_batches`` of ``batches`` (an iterable of (image, label); forward passes in training
    mode, no weight changes). Returns the number of batches used (0: statistics left as they were)."""
    layers = batchnorm_layers(net)
    if batches is None or num_batches <= 0 or not layers:
        return 0
    stats = [(layer.moving_mean, layer.moving_variance, float(layer.momentum)) for layer in layers]
    sums = [[np.zeros(mean.shape, np.float64), np.zeros(var.shape, np.float64)] for mean, var, _ in stats]
    net.set_train(True)
    used = 0
    for image, _ in batches:
        if used >= num_batches:
            break
        for mean, var, _ in stats:   # from zero, the update leaves weight * the batch's statistic
            mean.set_data(Tensor(np.zeros(mean.shape, np.float32)))
            var.set_data(Tensor(np.zeros(var.shape, np.float32)))
        net(image)
        for (mean, var, weight), total in zip(stats, sums):
            total[0] += mean.asnumpy() / weight
            total[1] += var.asnumpy() / weight
        used += 1
    if used:   # (no batch read: nothing was zeroed, the statistics are as they were)
        for (mean, var, _), total in zip(stats, sums):
            mean.set_data(Tensor((total[0] / used).astype(np.float32)))
            var.set_data(Tensor((total[1] / used).astype(np.float32)))
    return used
