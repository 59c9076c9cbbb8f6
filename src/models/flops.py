"""Exact multiply-accumulate (MAC) and parameter counts of the project's ResNets.

The count is analytic: it walks the ResNet structure (stem, residual blocks with their shortcut
kind and stride, classifier) and applies the output-size formula of each conv, so it needs no
forward pass and no hooks. Convention (the one behind the usual "ResNet-50 = 4.1 GFLOPs" and
"ResNet-56 = 125 MFLOPs" figures): only convolutions and the fully connected layer are counted,
one MAC per multiply-add; BatchNorm, ReLU, pooling, the residual additions and the FC bias are not.
Parameters are the trainable ones (BatchNorm running statistics excluded), as in
``src.models.resnet.count_parameters``.

Every conv/FC layer is named by its weight parameter (``layer1.0.conv1.weight``), the same names
the pruners and checkpoints use.
"""
from src.models.resnet import BasicBlock, Bottleneck, ResNet, count_parameters


def _pair(value):
    """(height, width) of a kernel/stride/dilation given as int, (h, w) or (depth, h, w)."""
    if isinstance(value, (tuple, list)):
        return (value[0], value[0]) if len(value) == 1 else tuple(value[-2:])
    return value, value


def _padding(cell):
    """(top, bottom, left, right) zero padding of a conv or pool cell in 'pad' mode."""
    pad = getattr(cell, "padding", 0)
    if not isinstance(pad, (tuple, list)):
        return pad, pad, pad, pad
    if len(pad) == 4:       # Conv2d: (top, bottom, left, right)
        return tuple(pad)
    if len(pad) == 3:       # MaxPool2d in pad mode runs as a 3-D pool: (depth, height, width)
        return pad[1], pad[1], pad[2], pad[2]
    if len(pad) == 2:       # (height, width)
        return pad[0], pad[0], pad[1], pad[1]
    return pad[0], pad[0], pad[0], pad[0]


def _out_size(size, kernel, stride, pad_before, pad_after, dilation=1):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _conv_record(conv, height, width):
    """MACs and output size of one nn.Conv2d applied to a height x width input."""
    c_out, c_in_per_group, k_h, k_w = conv.weight.shape
    s_h, s_w = _pair(conv.stride)
    d_h, d_w = _pair(getattr(conv, "dilation", 1))
    if conv.pad_mode == "same":
        out_h, out_w = -(-height // s_h), -(-width // s_w)
    elif conv.pad_mode == "valid":
        out_h = _out_size(height, k_h, s_h, 0, 0, d_h)
        out_w = _out_size(width, k_w, s_w, 0, 0, d_w)
    else:
        top, bottom, left, right = _padding(conv)
        out_h = _out_size(height, k_h, s_h, top, bottom, d_h)
        out_w = _out_size(width, k_w, s_w, left, right, d_w)
    macs = int(c_out) * int(c_in_per_group) * int(k_h) * int(k_w) * out_h * out_w
    return {"name": conv.weight.name, "kind": "conv", "c_in": int(c_in_per_group) * conv.group,
            "c_out": int(c_out), "kernel": (int(k_h), int(k_w)), "stride": (s_h, s_w),
            "in_hw": (height, width), "out_hw": (out_h, out_w), "macs": macs}


def _pool_size(pool, height, width):
    k_h, k_w = _pair(pool.kernel_size)
    s_h, s_w = _pair(pool.stride)
    top, bottom, left, right = _padding(pool)
    return _out_size(height, k_h, s_h, top, bottom), _out_size(width, k_w, s_w, left, right)


def _block_records(block, height, width):
    """Records of one residual block's convs; returns (records, out_h, out_w)."""
    records = []
    if isinstance(block, BasicBlock):
        first = _conv_record(block.conv1, height, width)
        second = _conv_record(block.conv2, *first["out_hw"])
        records += [first, second]
        if block.shortcut_kind == "B":
            records.append(_conv_record(block.downsample[0], height, width))
        return records, second["out_hw"]
    if isinstance(block, Bottleneck):
        first = _conv_record(block.conv1, height, width)
        second = _conv_record(block.conv2, *first["out_hw"])
        third = _conv_record(block.conv3, *second["out_hw"])
        records += [first, second, third]
        if block.has_downsample:
            records.append(_conv_record(block.downsample[0], height, width))
        return records, third["out_hw"]
    raise TypeError(f"unsupported residual block {type(block).__name__}")


def layer_records(net, input_shape):
    """One dict per conv/FC layer in network order: name, c_in, c_out, kernel, stride, in_hw,
    out_hw, macs. ``input_shape`` is (N, C, H, W) or (C, H, W); MACs are per image."""
    if not isinstance(net, ResNet):
        raise TypeError(f"MAC counting supports the project's ResNets, got {type(net).__name__}")
    height, width = int(input_shape[-2]), int(input_shape[-1])
    stem = _conv_record(net.conv1, height, width)
    records = [stem]
    height, width = stem["out_hw"]
    if net.imagenet_stem:
        height, width = _pool_size(net.maxpool, height, width)
    for stage_name in net.stage_names:
        for block in getattr(net, stage_name):
            block_records, (height, width) = _block_records(block, height, width)
            records += block_records
    fc = net.fc
    records.append({"name": fc.weight.name, "kind": "fc", "c_in": int(fc.in_channels),
                    "c_out": int(fc.out_channels), "kernel": (1, 1), "stride": (1, 1),
                    "in_hw": (1, 1), "out_hw": (1, 1),
                    "macs": int(fc.in_channels) * int(fc.out_channels)})
    return records


def per_layer_macs(net, input_shape):
    """[(weight name, MACs per image)] for every conv and the FC layer, in network order."""
    return [(r["name"], r["macs"]) for r in layer_records(net, input_shape)]


def count_macs_params(net, input_shape):
    """(MACs per image, trainable parameters) of a ResNet for inputs of ``input_shape``."""
    macs = sum(r["macs"] for r in layer_records(net, input_shape))
    return int(macs), count_parameters(net)
