"""Physical removal of zeroed filters: a soft-pruned ResNet -> a genuinely smaller dense ResNet.

Which convs may lose filters: only the inner convs of residual blocks (basic block: conv1;
bottleneck: conv1 and conv2). Their output channels feed one next conv only. The stem, the last
conv of every block and the downsample convs write into a residual stream whose channels are
summed with a shortcut, so their widths must stay (as in SFP/FPGM).

When is removing filter j of conv l exact? In eval mode the channel outputs
``relu(BN(conv(x)))``. With an all-zero filter that is the constant
``c_j = relu(beta_j - gamma_j * mean_j / sqrt(var_j + eps))``, not 0 in general. So a zero filter
is removed only when its removal provably leaves the network function unchanged:
- ``c_j == 0`` (the case PSAP produces: its last pruning step zeroes the BN gamma and beta of the
  pruned filters as well), or
- ``c_j != 0`` but the next conv is 1x1 without padding: the constant then adds
  ``sum_j W_next[:, j] * c_j`` to every output pixel, which is folded into the next BatchNorm's
  moving mean. Before a 3x3 conv with zero padding the same constant gives different sums at the
  borders, which no per-channel term can absorb; such filters are kept (and counted).
At least one filter per layer is always kept.
"""
import numpy as np
import mindspore as ms

from src.models import build_network
from src.models.resnet import BasicBlock, Bottleneck, ResNet

BN_FIELDS = ("gamma", "beta", "moving_mean", "moving_variance")


def _bn_names(bn):
    return {field: getattr(bn, field).name for field in BN_FIELDS}


def _layer(conv, bn, next_conv, next_bn, block_index, inner_index):
    return {"conv": conv.weight.name, "bn": _bn_names(bn), "bn_eps": float(bn.eps),
            "next_conv": next_conv.weight.name, "next_bn": _bn_names(next_bn),
            "next_kernel": tuple(int(k) for k in next_conv.weight.shape[2:]),
            "next_padding": next_conv.padding if next_conv.pad_mode == "pad" else next_conv.pad_mode,
            "block": block_index, "inner": inner_index}


def prunable_layers(net):
    """Residual-safe filter-prunable convs in network order, with their BN and next conv.

    Each entry: ``conv`` (weight name), ``bn`` ({gamma, beta, moving_mean, moving_variance}
    names), ``bn_eps``, ``next_conv``, ``next_bn``, ``next_kernel``, ``next_padding``, ``block``
    (residual block index, the index into ``inner_widths``) and ``inner`` (position in the block).
    """
    if not isinstance(net, ResNet):
        raise TypeError(f"filter surgery supports the project's ResNets, got {type(net).__name__}")
    layers = []
    block_index = 0
    for stage_name in net.stage_names:
        for block in getattr(net, stage_name):
            if isinstance(block, Bottleneck):
                layers.append(_layer(block.conv1, block.bn1, block.conv2, block.bn2, block_index, 0))
                layers.append(_layer(block.conv2, block.bn2, block.conv3, block.bn3, block_index, 1))
            elif isinstance(block, BasicBlock):
                layers.append(_layer(block.conv1, block.bn1, block.conv2, block.bn2, block_index, 0))
            else:
                raise TypeError(f"unsupported residual block {type(block).__name__}")
            block_index += 1
    return layers


def prunable_filter_convs(net):
    """Weight names of the convs whose output filters may be pruned (inner convs of blocks)."""
    return [layer["conv"] for layer in prunable_layers(net)]


def zero_filters(weight):
    """Boolean (C_out,): output filters whose weights are all exactly zero."""
    flat = np.asarray(weight).reshape(weight.shape[0], -1)
    return ~np.any(flat != 0, axis=1)


def zero_input_constant(arrays, layer):
    """c_j = relu(BN(0)) in eval mode: what an all-zero filter j of ``layer`` outputs."""
    bn = layer["bn"]
    gamma = arrays[bn["gamma"]].astype(np.float64)
    beta = arrays[bn["beta"]].astype(np.float64)
    mean = arrays[bn["moving_mean"]].astype(np.float64)
    var = arrays[bn["moving_variance"]].astype(np.float64)
    return np.maximum(beta - gamma * mean / np.sqrt(var + layer["bn_eps"]), 0.0)


def _foldable(layer):
    padding = layer["next_padding"]
    no_padding = padding == "valid" or (not isinstance(padding, str) and not np.any(np.asarray(padding)))
    return layer["next_kernel"] == (1, 1) and no_padding


def plan_removal(arrays, layers):
    """Decide, per prunable layer, which filters stay.

    ``arrays``: {parameter name: numpy array} of the whole network. Returns a list (one per layer)
    of dicts: ``keep`` (sorted indices), ``zero`` (count of all-zero filters), ``folded``
    (indices removed whose constant output was folded into the next BN), ``kept_constant``
    (all-zero filters kept because their constant output cannot be folded exactly).
    """
    plans = []
    for layer in layers:
        zero = zero_filters(arrays[layer["conv"]])
        const = zero_input_constant(arrays, layer)
        silent = zero & (const == 0)
        foldable = zero & (const != 0) & _foldable(layer)
        removable = silent | foldable
        if removable.all():
            # keep one filter; prefer a silent one so nothing has to be folded for it
            candidates = np.flatnonzero(silent) if silent.any() else np.flatnonzero(removable)
            removable[candidates[0]] = False
        keep = np.flatnonzero(~removable)
        plans.append({"keep": keep, "zero": int(zero.sum()),
                      "folded": np.flatnonzero(foldable & removable),
                      "kept_constant": np.flatnonzero(zero & (const != 0) & ~removable),
                      "constant": const})
    return plans


def compact_network(net, cfg, plans=None):
    """Remove the removable zero filters of ``net``; returns (compact_net, inner_widths).

    ``cfg`` is the recipe ``net`` was built from (``build_network(cfg, inner_widths)`` rebuilds the
    smaller network). The compact network gives the same eval-mode outputs as ``net``.
    """
    layers = prunable_layers(net)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    if plans is None:
        plans = plan_removal(arrays, layers)

    out_keep, in_keep = {}, {}
    for layer, plan in zip(layers, plans):
        keep = plan["keep"]
        if len(plan["folded"]):
            folded = plan["folded"]
            next_weight = arrays[layer["next_conv"]][:, folded, 0, 0].astype(np.float64)
            shift = next_weight @ plan["constant"][folded]
            mean_name = layer["next_bn"]["moving_mean"]
            arrays[mean_name] = (arrays[mean_name].astype(np.float64) - shift).astype(
                arrays[mean_name].dtype)
        out_keep[layer["conv"]] = keep
        for name in layer["bn"].values():
            out_keep[name] = keep
        in_keep[layer["next_conv"]] = keep

    widths = [list(w) for w in _current_widths(net, layers)]
    for layer, plan in zip(layers, plans):
        widths[layer["block"]][layer["inner"]] = int(len(plan["keep"]))

    compact = build_network(cfg, widths)
    for param in compact.get_parameters():
        if param.name not in arrays:
            raise RuntimeError(f"compact network parameter '{param.name}' has no source in the "
                               "pruned network (was it built from another recipe?)")
        value = arrays[param.name]
        if param.name in out_keep:
            value = value[out_keep[param.name]]
        if param.name in in_keep:
            value = value[:, in_keep[param.name]]
        if tuple(value.shape) != tuple(param.shape):
            raise RuntimeError(f"surgery shape mismatch for '{param.name}': {tuple(value.shape)} "
                               f"from the pruned network, {tuple(param.shape)} in the compact one")
        param.set_data(ms.Tensor(np.ascontiguousarray(value), param.dtype))
    return compact, widths


def _current_widths(net, layers):
    """inner_widths of ``net`` as built (read from the conv weights)."""
    shapes = {p.name: p.shape for p in net.get_parameters()}
    num_blocks = max(layer["block"] for layer in layers) + 1
    widths = [[] for _ in range(num_blocks)]
    for layer in layers:
        widths[layer["block"]].append(int(shapes[layer["conv"]][0]))
    return widths
