"""BatchNorm folding for deployment: every conv + BatchNorm pair of a ResNet becomes one conv with bias.

In eval mode a BatchNorm applies a fixed affine map per channel, so after a conv
``BN(W * x + b) = s * (W * x + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)`` equals the
conv ``W' * x + b'`` with ``W' = s * W`` (per output channel) and ``b' = beta + s * (b - mean)``.
The folded network computes the eval-mode function of the original with one operator less per
pair; on this CPU MindSpore runs the BatchNorm of an exported MINDIR as its own operator, whose
cost does not shrink with the pruned inner widths (benchmarks/psap_width_latency.py --fold_bn).

Pairs are found by the project's naming: a child ``convK`` with a sibling ``bnK`` (the stem and
the convs of every residual block, any compact PSAP widths) and a ``SequentialCell`` of exactly a
conv and a BatchNorm (the option-B / ImageNet downsample). A BatchNorm left over after folding is
an error, never silently kept.
"""
import copy

import numpy as np
from mindspore import Tensor, nn


def fold_conv_bn(conv, bn):
    """One ``nn.Conv2d`` with bias computing ``bn(conv(x))`` in eval mode (weights in float64)."""
    scale = (bn.gamma.asnumpy().astype(np.float64)
             / np.sqrt(bn.moving_variance.asnumpy().astype(np.float64) + bn.eps))
    weight = conv.weight.asnumpy().astype(np.float64) * scale[:, None, None, None]
    bias = conv.bias.asnumpy().astype(np.float64) if conv.has_bias else 0.0
    mean = bn.moving_mean.asnumpy().astype(np.float64)
    bias = bn.beta.asnumpy().astype(np.float64) + scale * (bias - mean)
    dtype = conv.weight.dtype
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                     pad_mode=conv.pad_mode, padding=conv.padding, dilation=conv.dilation,
                     group=conv.group, has_bias=True,
                     weight_init=Tensor(weight.astype(np.float32), dtype),
                     bias_init=Tensor(bias.astype(np.float32), dtype))


def _is_conv_bn(cell):
    cells = list(cell.cell_list) if isinstance(cell, nn.SequentialCell) else []
    return (len(cells) == 2 and isinstance(cells[0], nn.Conv2d)
            and isinstance(cells[1], nn.BatchNorm2d))


def _fold_children(cell):
    """Fold the conv + BN pairs among ``cell``'s direct children (in place)."""
    children = dict(cell.name_cells())
    for name, child in children.items():
        if _is_conv_bn(child):  # downsample [conv, bn] -> [conv]: its weight keeps its name
            setattr(cell, name, nn.SequentialCell([fold_conv_bn(*child.cell_list)]))
        elif name.startswith("conv") and isinstance(children.get("bn" + name[4:]), nn.BatchNorm2d):
            setattr(cell, name, fold_conv_bn(child, children["bn" + name[4:]]))
            setattr(cell, "bn" + name[4:], nn.Identity())


def fold_batchnorm(net):
    """A copy of ``net`` with every conv + BN pair folded into one conv with bias; ``net`` is left
    as it is. The copy is in eval mode and gives ``net``'s eval-mode outputs (to float32
    rounding). Parameters keep their structural names (``layer1.0.conv1.weight``, ``.bias``)."""
    folded = copy.deepcopy(net)
    for _, cell in list(folded.cells_and_names()):
        _fold_children(cell)
    left = [name for name, cell in folded.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm without a conv to fold into: {', '.join(left)}")
    for name, param in folded.parameters_and_names():
        param.name = name  # a cell set after construction names its parameters without the path
    folded.set_train(False)
    return folded
