"""Physical removal of zeroed filters: a soft-pruned ResNet -> a genuinely smaller dense ResNet.

Which convs may lose filters: the inner convs of residual blocks (basic block: conv1;
bottleneck: conv1 and conv2). Their output channels feed one next conv only. The stem, the last
conv of every block and the downsample convs write into a residual stream whose channels are
summed with a shortcut, so their widths stay (as in SFP/FPGM) - unless the streams are pruned as
well (PSAP's ``psap_stream_ratios``, CIFAR-style ResNets): a stream channel goes when every conv
writing it is zero there and its BatchNorm gamma and beta are zero (see ``residual_streams``).

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


def _writer(conv, bn):
    return {"conv": conv.weight.name, "bn": _bn_names(bn), "bn_eps": float(bn.eps)}


def residual_streams(net):
    """The residual streams of a CIFAR-style ResNet, one per stage, in network order.

    Each entry: ``channels``; ``writers`` (convs whose outputs are added into the stream, with
    their BN: the stem for the first stage, a projection shortcut (option B), every block's conv2);
    ``readers`` (weights whose input axis 1 is the stream: the conv1 of every block fed by it, the
    next stage's first conv1 and projection, or the FC); ``carried``: how many of the previous
    stage's channels an option-A shortcut adds, zero-padded, into this stream's first channels
    (0 for the first stage and for option B).

    A stream channel outputs exactly 0 in eval mode when every writer's filter and BN gamma and
    beta are 0 there and, if it is one of the ``carried`` channels, it is 0 in the previous stream
    too: each block then computes relu(0 + 0).
    """
    if not isinstance(net, ResNet) or net.imagenet_stem or \
            not all(isinstance(b, BasicBlock) for s in net.stage_names for b in getattr(net, s)):
        raise TypeError("residual-stream pruning supports the CIFAR-style ResNets "
                        "(resnet8/20/32/56/110)")
    stages = [list(getattr(net, name)) for name in net.stage_names]
    streams = []
    for s, blocks in enumerate(stages):
        first = blocks[0]
        writers = [_writer(net.conv1, net.bn1)] if s == 0 else []
        carried = 0
        if first.shortcut_kind == "B":
            writers.append(_writer(first.downsample[0], first.downsample[1]))
        elif first.shortcut_kind == "A":
            carried = int(first.conv1.weight.shape[1])
        writers += [_writer(b.conv2, b.bn2) for b in blocks]
        readers = [b.conv1.weight.name for b in (blocks if s == 0 else blocks[1:])]
        if s + 1 < len(stages):
            following = stages[s + 1][0]
            readers.append(following.conv1.weight.name)
            if following.shortcut_kind == "B":
                readers.append(following.downsample[0].weight.name)
        else:
            readers.append(net.fc.weight.name)
        streams.append({"channels": int(first.conv2.weight.shape[0]), "writers": writers,
                        "readers": readers, "carried": carried})
    return streams


def silent_stream_channels(arrays, stream):
    """Boolean (channels,): stream channels every writer leaves exactly 0 (zero filter, zero BN
    gamma and beta)."""
    silent = np.ones(stream["channels"], dtype=bool)
    for writer in stream["writers"]:
        silent &= zero_filters(arrays[writer["conv"]])
        silent &= arrays[writer["bn"]["gamma"]] == 0
        silent &= arrays[writer["bn"]["beta"]] == 0
    return silent


def plan_stream_removal(arrays, streams):
    """Per stream, the kept channels in compact order (a list of index arrays).

    A channel is removed when it is silent (``silent_stream_channels``) and, if carried by an
    option-A shortcut, removed from the previous stream too; at least one channel stays. Compact
    order: the previous stream's kept channels first (in their order), so that an option-A
    shortcut stays "subsample, then zero-pad", then the others ascending.
    """
    orders = []
    for s, stream in enumerate(streams):
        removable = silent_stream_channels(arrays, stream)
        if stream["carried"]:
            carried_kept = orders[s - 1]
            removable[carried_kept] = False
        if removable.all():
            removable[0] = False
        kept = np.flatnonzero(~removable)
        head = orders[s - 1] if stream["carried"] else np.array([], dtype=np.int64)
        tail = np.setdiff1d(kept, head)
        orders.append(np.concatenate([head, tail]).astype(np.int64))
    return orders


def compact_network(net, plans=None, stream_plans=None):
    """Remove the removable zero filters of ``net``; returns (compact_net, inner_widths,
    stage_widths) (stage_widths None when the streams are not pruned).

    The smaller network is ``net``'s architecture with fewer channels (``ResNet.with_widths``:
    what built ``net`` decides it, not a recipe). ``stream_plans`` (``plan_stream_removal``):
    the kept residual-stream channels of every stage, in compact order. The compact network gives
    the same eval-mode outputs as ``net``.
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

    stage_widths = None
    if stream_plans is not None:
        for stream, order in zip(residual_streams(net), stream_plans):
            for writer in stream["writers"]:
                for name in [writer["conv"], *writer["bn"].values()]:
                    out_keep[name] = order
            for name in stream["readers"]:
                in_keep[name] = order
        stage_widths = [int(len(order)) for order in stream_plans]

    widths = [list(w) for w in _current_widths(net, layers)]
    for layer, plan in zip(layers, plans):
        widths[layer["block"]][layer["inner"]] = int(len(plan["keep"]))

    compact = net.with_widths(widths, stage_widths)
    _copy_kept(compact, arrays, out_keep, in_keep)
    return compact, widths, stage_widths


def _copy_kept(compact, arrays, out_keep, in_keep):
    """Every parameter of ``compact`` from the pruned network's ``arrays``, narrowed to the kept
    output (``out_keep``) and input (``in_keep``) channels."""
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


def _current_widths(net, layers):
    """inner_widths of ``net`` as built (read from the conv weights)."""
    shapes = {p.name: p.shape for p in net.get_parameters()}
    num_blocks = max(layer["block"] for layer in layers) + 1
    widths = [[] for _ in range(num_blocks)]
    for layer in layers:
        widths[layer["block"]].append(int(shapes[layer["conv"]][0]))
    return widths
