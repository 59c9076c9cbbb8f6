"""Analytic MAC/parameter counter: hand counts for single blocks and the published totals."""
import pytest

from src.models.flops import count_macs_params, layer_records, per_layer_macs
from src.models.resnet import build_resnet, default_inner_widths


def _cifar_expected(arch, num_classes=10, in_channels=3, size=32, mult=1.0):
    """Independent count of a CIFAR ResNet (option A shortcut: no shortcut MACs)."""
    blocks = {"resnet20": 3, "resnet56": 9}[arch]
    widths = [int(round(c * mult)) for c in (16, 32, 64)]
    macs = widths[0] * in_channels * 9 * size * size
    cin = widths[0]
    for stage, c in enumerate(widths):
        for i in range(blocks):
            if stage > 0 and i == 0:
                size = (size + 1) // 2
            macs += c * cin * 9 * size * size + c * c * 9 * size * size
            cin = c
    return macs + widths[-1] * num_classes


def _resnet50_expected(size=224, num_classes=1000):
    """Independent count of torchvision's ResNet-50 v1.5 (stride on the 3x3 conv)."""
    size = (size + 6 - 7) // 2 + 1           # stem 7x7/2
    macs = 64 * 3 * 49 * size * size
    size = (size + 2 - 3) // 2 + 1           # max pool 3x3/2
    cin = 64
    for stage, (count, c) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        for i in range(count):
            stride = 2 if (stage > 0 and i == 0) else 1
            out = (size - 1) // stride + 1
            macs += c * cin * size * size                 # 1x1 reduce (at input size)
            macs += c * c * 9 * out * out                 # 3x3, carries the stride
            macs += 4 * c * c * out * out                 # 1x1 expand
            if i == 0:
                macs += 4 * c * cin * out * out           # projection shortcut
            cin, size = 4 * c, out
    return macs + 2048 * num_classes


def test_one_basic_block_by_hand():
    net = build_resnet("resnet20", num_classes=10, in_channels=3)
    macs = dict(per_layer_macs(net, (1, 3, 32, 32)))
    # layer2.0: 16 -> 32 channels, 3x3 stride 2 on 32x32 -> 16x16, then 32 -> 32 3x3 at 16x16
    assert macs["layer2.0.conv1.weight"] == 32 * 16 * 9 * 16 * 16 == 1179648
    assert macs["layer2.0.conv2.weight"] == 32 * 32 * 9 * 16 * 16 == 2359296
    assert "layer2.0.downsample.0.weight" not in macs  # option A shortcut costs no MACs
    assert macs["fc.weight"] == 64 * 10


def test_one_bottleneck_block_by_hand():
    records = {r["name"]: r for r in layer_records(build_resnet("resnet50"), (1, 3, 224, 224))}
    # layer2.0 sees 56x56 with 256 channels; v1.5: the 3x3 conv carries the stride
    assert records["layer2.0.conv1.weight"]["macs"] == 128 * 256 * 56 * 56
    assert records["layer2.0.conv2.weight"]["macs"] == 128 * 128 * 9 * 28 * 28
    assert records["layer2.0.conv3.weight"]["macs"] == 512 * 128 * 28 * 28
    assert records["layer2.0.downsample.0.weight"]["macs"] == 512 * 256 * 28 * 28
    assert records["layer2.0.conv2.weight"]["out_hw"] == (28, 28)


def test_resnet50_imagenet_total():
    macs, params = count_macs_params(build_resnet("resnet50"), (1, 3, 224, 224))
    assert macs == _resnet50_expected() == 4089184256   # torchvision's 4.09 G(MAC)s
    assert params == 25557032                             # torchvision's ResNet-50


def test_resnet56_and_resnet20_cifar_totals():
    macs, params = count_macs_params(build_resnet("resnet56", 10, 3), (1, 3, 32, 32))
    assert macs == _cifar_expected("resnet56") == 125485696   # the usual 125.5 MMACs
    assert params == 853018                                   # 0.85 M
    macs, _ = count_macs_params(build_resnet("resnet20", 10, 1), (1, 1, 28, 28))
    assert macs == _cifar_expected("resnet20", in_channels=1, size=28)


def test_pruned_widths_and_option_b_shortcut():
    widths = default_inner_widths("resnet20")
    widths[0] = [5]
    net = build_resnet("resnet20", 10, 3, shortcut="B", inner_widths=widths)
    macs = dict(per_layer_macs(net, (2, 3, 32, 32)))
    assert macs["layer1.0.conv1.weight"] == 5 * 16 * 9 * 32 * 32
    assert macs["layer1.0.conv2.weight"] == 16 * 5 * 9 * 32 * 32
    assert macs["layer2.0.downsample.0.weight"] == 32 * 16 * 16 * 16


def test_rejects_other_networks():
    from mindspore import nn
    with pytest.raises(TypeError):
        count_macs_params(nn.Dense(3, 4), (1, 3))
