"""ResNets in MindSpore.

Two families:
- ImageNet ResNet-18/34/50 (v1.5 as in the model zoo and torchvision: in a bottleneck the stride
  sits on the 3x3 conv). Parameter names follow torchvision (``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight``, ``fc.weight``) so that converted weights map name by name.
- CIFAR-style ResNet-8/20/32/56/110 (He et al. 2016): three stages of basic blocks with
  16/32/64 channels times ``width_multiplier``; the shortcut is option A (stride-2 subsample plus
  zero channels, as in the paper and in SFP/FPGM) or option B (1x1 projection conv).

Every constructor accepts ``inner_widths``: one list per residual block giving the output channels
of the block's inner convs (basic block: [conv1]; bottleneck: [conv1, conv2]). ``None`` means the
standard widths. Filter pruning (PSAP) shrinks these widths; the CIFAR-style constructor also
accepts ``stage_widths`` (the residual-stream channels of each stage, PSAP's
``psap_stream_ratios``), ``None`` meaning 16/32/64 x ``width_multiplier``.
"""
import math

import numpy as np
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, HeUniform, Uniform


def _conv(in_channels, out_channels, kernel_size, stride=1):
    """Conv without bias, torch-style symmetric padding (so converted weights give equal outputs)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     pad_mode="pad", padding=kernel_size // 2, has_bias=False,
                     weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))


def _bn(channels, zero_gamma=False):
    return nn.BatchNorm2d(channels, momentum=0.9, eps=1e-5,
                          gamma_init="zeros" if zero_gamma else "ones")


def _fc(in_features, num_classes):
    # torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    bound = 1.0 / math.sqrt(in_features)
    return nn.Dense(in_features, num_classes, weight_init=HeUniform(math.sqrt(5)),
                    bias_init=Uniform(bound))


def _projection(in_channels, out_channels, stride):
    """The projection shortcut (option B, and every ImageNet downsample): strided 1x1 conv + BN."""
    return nn.SequentialCell([_conv(in_channels, out_channels, 1, stride), _bn(out_channels)])


class _ResidualBlock(nn.Cell):
    """A residual block of ``expansion`` x ``channels`` output channels whose ``num_inner`` inner
    convs have the widths ``inner`` (default ``channels``; smaller in a compact PSAP network)."""
    expansion = 1
    num_inner = 1

    def __init__(self, in_channels, channels, stride=1, shortcut="B", inner=None,
                 zero_gamma=False):
        super().__init__()
        inner = [channels] * self.num_inner if inner is None else [int(w) for w in inner]
        self._layers(in_channels, channels * self.expansion, stride, shortcut, inner, zero_gamma)

    def _layers(self, in_channels, out_channels, stride, shortcut, inner, zero_gamma):
        raise NotImplementedError


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs; ``inner`` is the output width of the first conv."""

    def _layers(self, in_channels, out_channels, stride, shortcut, inner, zero_gamma):
        mid = inner[0]
        self.conv1 = _conv(in_channels, mid, 3, stride)
        self.bn1 = _bn(mid)
        self.conv2 = _conv(mid, out_channels, 3)
        self.bn2 = _bn(out_channels, zero_gamma)
        self.relu = nn.ReLU()
        self.shortcut_kind = "identity"
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut_kind = "A"
                self.pad_channels = out_channels - in_channels
                self.stride = stride
            else:
                self.shortcut_kind = "B"
                self.downsample = _projection(in_channels, out_channels, stride)

    def _shortcut(self, x):
        if self.shortcut_kind == "B":
            return self.downsample(x)
        if self.shortcut_kind == "A":
            x = x[:, :, ::self.stride, ::self.stride]
            zeros = ops.zeros((x.shape[0], self.pad_channels, x.shape[2], x.shape[3]), x.dtype)
            return ops.concat((x, zeros), axis=1)
        return x

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self._shortcut(x))


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1; ``inner`` gives the widths of the first two convs."""
    expansion = 4
    num_inner = 2

    def _layers(self, in_channels, out_channels, stride, shortcut, inner, zero_gamma):
        mid1, mid2 = inner
        self.conv1 = _conv(in_channels, mid1, 1)
        self.bn1 = _bn(mid1)
        self.conv2 = _conv(mid1, mid2, 3, stride)
        self.bn2 = _bn(mid2)
        self.conv3 = _conv(mid2, out_channels, 1)
        self.bn3 = _bn(out_channels, zero_gamma)
        self.relu = nn.ReLU()
        self.has_downsample = stride != 1 or in_channels != out_channels
        if self.has_downsample:
            self.downsample = _projection(in_channels, out_channels, stride)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.has_downsample else x
        return self.relu(out + identity)


class ResNet(nn.Cell):
    """Generic ResNet: a stem, stages of residual blocks, global average pool, FC."""

    def __init__(self, block, stage_blocks, stage_channels, num_classes, in_channels=3,
                 imagenet_stem=True, shortcut="B", inner_widths=None, zero_gamma=False):
        super().__init__()
        # what built it, so that PSAP's surgery can build the same network with fewer channels
        # (with_widths) from the network alone, whoever built it (train.py or a user's script)
        self.arch = None   # the name build_resnet gave it
        self._build_args = dict(block=block, stage_blocks=list(stage_blocks), stage_channels=list(stage_channels),
                                num_classes=num_classes, in_channels=in_channels, imagenet_stem=imagenet_stem,
                                shortcut=shortcut, zero_gamma=zero_gamma)
        num_blocks = sum(stage_blocks)
        if inner_widths is not None and len(inner_widths) != num_blocks:
            raise ValueError(f"inner_widths has {len(inner_widths)} entries, the network has "
                             f"{num_blocks} residual blocks")
        stem_channels = 64 if imagenet_stem else stage_channels[0]
        self.imagenet_stem = imagenet_stem
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, pad_mode="pad",
                                   padding=3, has_bias=False,
                                   weight_init=HeNormal(mode="fan_out", nonlinearity="relu"))
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        else:
            self.conv1 = _conv(in_channels, stem_channels, 3)
        self.bn1 = _bn(stem_channels)
        self.relu = nn.ReLU()

        channels_in = stem_channels
        block_index = 0
        self.stage_names = []
        for stage, (count, channels) in enumerate(zip(stage_blocks, stage_channels)):
            blocks = []
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                inner = None if inner_widths is None else list(inner_widths[block_index])
                blocks.append(block(channels_in, channels, stride, shortcut, inner, zero_gamma))
                channels_in = channels * block.expansion
                block_index += 1
            name = f"layer{stage + 1}"
            setattr(self, name, nn.SequentialCell(blocks))
            self.stage_names.append(name)
        self.num_stages = len(stage_blocks)
        self.pool = ops.ReduceMean(keep_dims=False)
        self.fc = _fc(channels_in, num_classes)

    def with_widths(self, inner_widths, stage_channels=None):
        """A new network of this architecture with other inner-conv widths (and residual-stream
        widths, ``stage_channels``); its parameters are freshly initialised."""
        args = dict(self._build_args, inner_widths=inner_widths)
        if stage_channels is not None:
            args["stage_channels"] = list(stage_channels)
        net = ResNet(**args)
        net.arch = self.arch
        return net

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.imagenet_stem:
            x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        if self.num_stages > 3:
            x = self.layer4(x)
        return self.pool(x, (2, 3))

    def construct(self, x):
        return self.fc(self.features(x))


IMAGENET_DEPTHS = {18: (BasicBlock, [2, 2, 2, 2]),
                   34: (BasicBlock, [3, 4, 6, 3]),
                   50: (Bottleneck, [3, 4, 6, 3])}
CIFAR_DEPTHS = {8: 1, 20: 3, 32: 5, 56: 9, 110: 18}   # depth 6n+2: n blocks per stage
ARCHITECTURES = [f"resnet{d}" for d in IMAGENET_DEPTHS] + [f"resnet{d}" for d in CIFAR_DEPTHS]


def is_cifar_style(arch):
    return int(arch.replace("resnet", "")) in CIFAR_DEPTHS


def block_type(arch):
    depth = int(arch.replace("resnet", ""))
    return IMAGENET_DEPTHS[depth][0] if depth in IMAGENET_DEPTHS else BasicBlock


def default_inner_widths(arch, width_multiplier=1.0):
    """Standard inner widths of every residual block, in network order."""
    depth = int(arch.replace("resnet", ""))
    widths = []
    if depth in IMAGENET_DEPTHS:
        block, stages = IMAGENET_DEPTHS[depth]
        for count, channels in zip(stages, [64, 128, 256, 512]):
            widths += [[channels] * block.num_inner for _ in range(count)]
    else:
        for channels in cifar_stage_widths(width_multiplier):
            widths += [[channels] for _ in range(CIFAR_DEPTHS[depth])]
    return widths


def cifar_stage_widths(width_multiplier):
    return [int(round(c * width_multiplier)) for c in (16, 32, 64)]


def build_resnet(arch, num_classes=1000, in_channels=3, width_multiplier=1.0, shortcut=None,
                 inner_widths=None, zero_gamma=False, stage_widths=None):
    """Build a ResNet by name: resnet18/34/50 (ImageNet) or resnet8/20/32/56/110 (CIFAR-style);
    ``stage_widths`` (CIFAR-style only) replaces the three stages' residual-stream widths."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown network '{arch}'; choose one of {', '.join(ARCHITECTURES)}")
    depth = int(arch.replace("resnet", ""))
    if depth in IMAGENET_DEPTHS:
        if width_multiplier != 1.0:
            raise ValueError("width_multiplier applies to CIFAR-style ResNets only")
        if stage_widths is not None:
            raise ValueError("stage_widths applies to CIFAR-style ResNets only")
        block, stages = IMAGENET_DEPTHS[depth]
        net = ResNet(block, stages, [64, 128, 256, 512], num_classes, in_channels,
                     imagenet_stem=True, shortcut=shortcut or "B", inner_widths=inner_widths,
                     zero_gamma=zero_gamma)
    else:
        count = CIFAR_DEPTHS[depth]
        shortcut = shortcut or "A"
        channels = cifar_stage_widths(width_multiplier) if stage_widths is None else \
            checked_stage_widths(stage_widths, shortcut)
        net = ResNet(BasicBlock, [count] * 3, channels, num_classes,
                     in_channels, imagenet_stem=False, shortcut=shortcut,
                     inner_widths=inner_widths, zero_gamma=zero_gamma)
    net.arch = arch
    return net


def checked_stage_widths(stage_widths, shortcut):
    """Three positive stage widths as ints; ValueError if not, or if they shrink from one stage to
    the next under option-A shortcuts."""
    widths = [int(w) for w in stage_widths]
    if len(widths) != 3 or min(widths) < 1:
        raise ValueError(f"stage_widths must be three positive widths, got {list(stage_widths)}")
    if shortcut == "A" and any(b < a for a, b in zip(widths, widths[1:])):
        # option A adds the previous stream zero-padded: a stage cannot be narrower than the last
        raise ValueError(f"stage_widths {widths} shrink from one stage to the next, which option-A "
                         "shortcuts cannot do")
    return widths


def count_parameters(net):
    """Number of trainable parameters (BatchNorm running statistics excluded, as in torch)."""
    return int(sum(np.prod(p.shape) for p in net.trainable_params()))
