"""Network definitions: parameter counts against the published / torchvision figures."""
import numpy as np
import mindspore as ms
import pytest

from src.models.resnet import ARCHITECTURES, build_resnet, count_parameters, default_inner_widths, is_cifar_style
from src.recipe_keys import CIFAR_NETS, NETS


@pytest.mark.parametrize("arch,classes,in_channels,width,expected", [
    ("resnet50", 1000, 3, 1.0, 25_557_032),   # torchvision resnet50
    ("resnet18", 1000, 3, 1.0, 11_689_512),   # torchvision resnet18
    ("resnet34", 1000, 3, 1.0, 21_797_672),   # torchvision resnet34
    ("resnet8", 10, 3, 1.0, 75_290),          # hand count: 464 + 4,672 + 13,952 + 55,552 + 650
    ("resnet20", 10, 3, 1.0, 269_722),        # He et al. 2016: 0.27M
    ("resnet56", 10, 3, 1.0, 853_018),        # 0.85M
    ("resnet110", 10, 3, 1.0, 1_727_962),     # 1.7M (hand count: 464 + 84,096 + 329,472 + 1,313,280 + 650)
])
def test_parameter_counts(arch, classes, in_channels, width, expected):
    assert count_parameters(build_resnet(arch, classes, in_channels, width)) == expected


def test_width_multiplier_and_channels():
    net = build_resnet("resnet32", 10, 3, 2.0)
    assert net.conv1.weight.shape == (32, 3, 3, 3) and net.fc.weight.shape == (10, 128)
    net = build_resnet("resnet20", 10, 1)
    assert net.conv1.weight.shape == (16, 1, 3, 3)


def test_forward_shapes_and_inner_widths():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    widths = default_inner_widths("resnet20")
    widths[0] = [5]
    net = build_resnet("resnet20", 10, 1, inner_widths=widths)
    assert net.layer1[0].conv1.weight.shape == (5, 16, 3, 3)
    net.set_train(False)
    out = net(ms.Tensor(np.zeros((2, 1, 28, 28), np.float32)))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="inner_widths"):
        build_resnet("resnet20", 10, 1, inner_widths=widths[:-1])


def test_the_recipe_choices_are_the_networks_built():
    assert sorted(NETS) == sorted(ARCHITECTURES)
    assert [net for net in NETS if is_cifar_style(net)] == CIFAR_NETS
