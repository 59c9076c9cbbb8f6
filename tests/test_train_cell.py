"""The masked train step: pruned weights, their gradients' effect and their momentum stay exactly
zero over many steps (weight decay included), and gradient energy is accumulated per filter."""
import numpy as np
import mindspore as ms
from mindspore import nn, Tensor

from src.pruning.core.base import prunable_weight_names
from src.pruning.core.train_cell import DenseGradient, LossCell, TrainStep
from src.pruning.filters.energy import GradientEnergy
from src.pruning.masks.hard_mask import HardMasks


class _Block(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class SmallNet(nn.Cell):
    """A stem, one block of two convs, pooling and a Dense classifier (ResNet names: conv1,
    layer1.0.conv1, ...): what the train step does to masked weights, their momentum and the
    gradient energy does not depend on depth, and a ResNet-20 graph takes far longer to compile."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.CellList([_Block()])
        self.fc = nn.Dense(16, 10)

    def construct(self, x):
        x = self.layer1[0](self.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean(axis=(2, 3)))


def masked_step(loss_cell, opt, mask_names=(), energy_names=()):
    """A train step with the gradient-energy piece (PSAP's) and the hard-mask piece; the pieces
    are returned too (step, masks piece, energy piece)."""
    energy = GradientEnergy(opt, list(energy_names)) if energy_names else None
    masks = HardMasks(opt, list(mask_names)) if mask_names else None
    step = TrainStep(loss_cell, opt, [p for p in (energy, masks) if p is not None])
    step.set_train(True)
    return step, masks, energy


def _setup(mask_names=(), energy_names=()):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = SmallNet()
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9, weight_decay=1e-3)
    loss = LossCell(net, nn.CrossEntropyLoss())
    step, masks, energy = masked_step(loss, opt, mask_names, energy_names)
    return net, opt, loss, (step, masks, energy)


def _batch(seed):
    rng = np.random.default_rng(seed)
    return (Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32)),
            Tensor(rng.integers(0, 10, 8).astype(np.int32)))


def test_masked_weights_and_momentum_stay_zero():
    net = SmallNet()
    names = prunable_weight_names(net)
    net, opt, _, (step, pieces, _) = _setup(names)
    params = {p.name: p for p in net.trainable_params()}
    moments = {p.name: m for p, m in zip(opt.parameters, opt.moments)}
    rng = np.random.default_rng(1)
    masks = {}
    for mask_param in pieces.masks:
        name = mask_param.name[len("pruning_mask."):]
        mask = (rng.random(mask_param.shape) > 0.8).astype(np.float32)
        masks[name] = mask
        mask_param.set_data(Tensor(mask))
        # a stale momentum at pruned positions must be wiped by the first step
        moments[name].set_data(Tensor(np.ones(mask.shape, np.float32)))
    for i in range(12):
        step(*_batch(i))
        for name, mask in masks.items():
            weight = params[name].asnumpy()
            assert np.all(weight[mask == 0] == 0.0), name
            # +0.0 bit for bit (a multiplication by the mask would leave -0.0 at negative weights)
            assert not np.signbit(weight[mask == 0]).any(), name
            assert np.all(moments[name].asnumpy()[mask == 0] == 0.0), name
    kept = params[names[3]].asnumpy()[masks[names[3]] == 1]
    assert np.count_nonzero(kept) == kept.size  # unpruned weights do train


def test_gradient_energy_accumulates_per_filter():
    net = SmallNet()
    name = "layer1.0.conv1.weight"
    net, _, loss, (step, _, energy_piece) = _setup(energy_names=[name])
    image, label = _batch(3)
    grad = DenseGradient(loss, [p for p in net.trainable_params() if p.name == name])
    _, _, _, (expected,) = grad(image, label)
    expected = (expected.asnumpy() ** 2).sum(axis=(1, 2, 3))
    step(image, label)
    energy = energy_piece.read(reset=False)[name]
    assert energy.shape == (16,)
    np.testing.assert_allclose(energy, expected, rtol=1e-4, atol=1e-12)


def _train_with_loss_scale(loss_scale, steps=6):
    """Weights and gradient energy after ``steps`` masked steps with a static loss scale."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    net = SmallNet()
    names = prunable_weight_names(net)
    energy_name = "layer1.0.conv1.weight"
    opt = nn.Momentum(net.trainable_params(), learning_rate=0.1, momentum=0.9, weight_decay=1e-3,
                      loss_scale=loss_scale)
    step, masks, energy = masked_step(LossCell(net, nn.CrossEntropyLoss()), opt, names, [energy_name])
    rng = np.random.default_rng(5)
    for mask in masks.masks:
        mask.set_data(Tensor((rng.random(mask.shape) > 0.5).astype(np.float32)))
    losses = [float(step(*_batch(i)).asnumpy()) for i in range(steps)]
    return ({p.name: p.asnumpy() for p in net.trainable_params()}, energy.read(reset=False)[energy_name],
            losses)


def test_static_loss_scale_gives_the_unscaled_update():
    # loss_scale multiplies the loss in the train step and the optimizer divides the gradients
    # (and its weight decay compensates), so the trajectory is the unscaled one
    plain, plain_energy, plain_losses = _train_with_loss_scale(1.0)
    scaled, scaled_energy, scaled_losses = _train_with_loss_scale(1024.0)
    np.testing.assert_allclose(scaled_losses, plain_losses, rtol=1e-3)
    np.testing.assert_allclose(scaled_energy, plain_energy, rtol=1e-3)
    for name, value in plain.items():
        change = np.linalg.norm(scaled[name] - value) / max(np.linalg.norm(value), 1e-12)
        assert change < 1e-3, (name, change)
