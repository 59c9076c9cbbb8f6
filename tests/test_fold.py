"""BatchNorm folding (src/models/fold.py): the folded copy computes the eval-mode function of the
original network to float32 rounding, holds no BatchNorm, and leaves the original untouched."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from src.models.fold import fold_batchnorm
from src.models.resnet import build_resnet
from tests.conftest import batchnorm_like

BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")


def _trained_looking(net, seed):
    """Give every BatchNorm non-trivial statistics (the fresh ones fold to the identity)."""
    rng = np.random.default_rng(seed)
    for param in net.get_parameters():
        value = batchnorm_like(param.name.rsplit(".", 1)[-1], param.shape, rng)
        if value is not None and param.name.rsplit(".", 1)[-1] in BN_LEAVES:
            param.set_data(ms.Tensor(value.astype(np.float32)))
    net.set_train(False)
    return net


CASES = {
    "resnet20-A": dict(arch="resnet20", shortcut="A", channels=1, size=28),
    "resnet20-B": dict(arch="resnet20", shortcut="B", channels=1, size=28),
    "resnet20-compact": dict(arch="resnet20", shortcut="A", channels=1, size=28,
                             inner=[[5], [16], [9], [20], [32], [7], [64], [40], [13]]),
    "resnet50-small-image": dict(arch="resnet50", shortcut="B", channels=3, size=32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_folded_network_computes_the_same(case, pynative):
    c = CASES[case]
    ms.set_seed(5)
    net = _trained_looking(build_resnet(c["arch"], 10, c["channels"], shortcut=c["shortcut"],
                                        inner_widths=c.get("inner")), seed=5)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    folded = fold_batchnorm(net)
    x = ms.Tensor(np.random.default_rng(6).standard_normal(
        (2, c["channels"], c["size"], c["size"])).astype(np.float32))
    expected, got = net(x).asnumpy(), folded(x).asnumpy()
    assert np.abs(expected).max() > 0.1           # a network that computes something
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    # the original keeps its BatchNorms and its values
    assert all(np.array_equal(p.asnumpy(), before[p.name]) for p in net.get_parameters())


@pytest.mark.parametrize("case", ["resnet20-B", "resnet20-compact"])
def test_no_batchnorm_is_left(case):
    c = CASES[case]
    net = build_resnet(c["arch"], 10, c["channels"], shortcut=c["shortcut"],
                       inner_widths=c.get("inner"))
    folded = fold_batchnorm(net)
    names = [p.name for p in folded.get_parameters()]
    assert not [n for n in names if n.rsplit(".", 1)[-1] in BN_LEAVES]
    assert not [n for n, cell in folded.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    convs = [n for n in names if n.endswith(".weight") and "fc" not in n]
    original = [p.name for p in net.get_parameters()
                if p.name.endswith(".weight") and "fc" not in p.name]
    # the same convs under the same names, each with a bias now; names stay unique
    assert convs == original
    assert all(n[:-len("weight")] + "bias" in names for n in convs)
    assert len(set(names)) == len(names)


def test_a_batchnorm_without_its_conv_is_refused():
    class Lonely(nn.Cell):
        def __init__(self):
            super().__init__()
            self.norm = nn.BatchNorm2d(4)

        def construct(self, x):
            return self.norm(x)

    with pytest.raises(ValueError, match="norm"):
        fold_batchnorm(Lonely())
