"""density_distribution for RPG and GMP (issue 20): one global magnitude threshold (the reference,
the default) or per-layer counts (uniform, ERK) that add up to the exact target; and
rank_loss_layers (conv, the reference, or all: Dense weights in RPG's rank loss too).

The networks here are written as a model library writes them, not with this project's helpers:
a MobileNetV2 (inverted residuals, depthwise convs, ReLU6, Dropout + Dense classifier initialised
with std 0.01, the model zoo's init) trained from scratch, where one global threshold empties the
classifier and ERK keeps every layer; and a small attention block (Dense-heavy, LayerNorm)."""
import logging
import math

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

from src.config import ConfigError
from src.errors import DeadNetworkError
from src.pruning.api import SparseTraining, method_settings
from src.pruning.core.registry import build_pruner
from tests.test_api import make_batches
from tests.test_rigl import erk_by_rigl_formula


# --- a MobileNetV2 as a model library writes it (mindspore models' mobilenetv2.py, tiny widths) ---
class ConvBNReLU(nn.Cell):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.features = nn.SequentialCell([
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, pad_mode="pad", padding=padding,
                      group=groups, has_bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6()])

    def construct(self, x):
        return self.features(x)


class InvertedResidual(nn.Cell):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))
        layers.extend([
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, kernel_size=1, stride=1, has_bias=False),
            nn.BatchNorm2d(oup)])
        self.conv = nn.SequentialCell(layers)

    def construct(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Cell):
    def __init__(self, num_classes=10, in_channels=1, input_channel=8, last_channel=64,
                 inverted_residual_setting=((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2))):
        super().__init__()
        features = [ConvBNReLU(in_channels, input_channel, stride=1)]
        for t, c, n, s in inverted_residual_setting:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, expand_ratio=t))
                input_channel = c
        features.append(ConvBNReLU(input_channel, last_channel, kernel_size=1))
        self.features = nn.SequentialCell(features)
        self.head = nn.SequentialCell([
            nn.Dropout(p=0.2),
            nn.Dense(last_channel, num_classes, weight_init=Normal(0.01), has_bias=True)])
        self._initialize_weights()

    def construct(self, x):
        x = self.features(x)
        return self.head(ops.mean(x, (2, 3)))

    def _initialize_weights(self):
        for _, m in self.cells_and_names():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.set_data(initializer(Normal(np.sqrt(2.0 / n)), m.weight.shape, m.weight.dtype))
            elif isinstance(m, nn.BatchNorm2d):
                m.gamma.set_data(initializer(One(), m.gamma.shape, m.gamma.dtype))
                m.beta.set_data(initializer(Zero(), m.beta.shape, m.beta.dtype))
            elif isinstance(m, nn.Dense):
                m.weight.set_data(initializer(Normal(0.01), m.weight.shape, m.weight.dtype))
                m.bias.set_data(initializer(Zero(), m.bias.shape, m.bias.dtype))


# --- a small attention block: patch embedding, self-attention, MLP, LayerNorm (Dense only) ---
class AttentionNet(nn.Cell):
    def __init__(self, num_classes=10, patch=4, dim=32, heads=2, image=16):
        super().__init__()
        self.patch, self.tokens, self.heads, self.dim = patch, (image // patch) ** 2, heads, dim
        self.embed = nn.Dense(patch * patch, dim)
        self.norm1 = nn.LayerNorm((dim,))
        self.qkv = nn.Dense(dim, 3 * dim)
        self.proj = nn.Dense(dim, dim)
        self.norm2 = nn.LayerNorm((dim,))
        self.mlp = nn.SequentialCell([nn.Dense(dim, 2 * dim), nn.GELU(), nn.Dense(2 * dim, dim)])
        self.norm3 = nn.LayerNorm((dim,))
        self.classifier = nn.Dense(dim, num_classes)

    def construct(self, x):
        b = x.shape[0]
        side = x.shape[2] // self.patch
        x = x.reshape(b, side, self.patch, side, self.patch).transpose(0, 1, 3, 2, 4)
        x = self.embed(x.reshape(b, self.tokens, self.patch * self.patch))
        q, k, v = ops.split(self.qkv(self.norm1(x)), self.dim, axis=-1)
        split = lambda t: t.reshape(b, self.tokens, self.heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        attn = ops.softmax(ops.matmul(q, k.transpose(0, 1, 3, 2)) / math.sqrt(self.dim // self.heads), -1)
        x = x + self.proj(ops.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, self.tokens, self.dim))
        x = x + self.mlp(self.norm2(x))
        return self.classifier(ops.mean(self.norm3(x), 1))


def _train(net, method, epochs=3, lr=0.05, **keys):
    """A short run through SparseTraining: (sparse, losses, mask_update events); not finished."""
    ms.set_context(mode=ms.GRAPH_MODE)
    batches = make_batches()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=lr, momentum=0.9, weight_decay=1e-4)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method=method,
                            steps_per_epoch=len(batches), epochs=epochs, **keys)
    events = []
    sparse.ctx.recorders.append(events.append)
    losses = []
    for _ in range(epochs):
        losses += [sparse.step(image, label) for image, label in batches]
        sparse.end_epoch()
    return sparse, losses, [e for e in events if e["event"] == "mask_update"]


def _kept(masks):
    return {name: int(mask.sum()) for name, mask in masks.items()}


def _check_updates_exact(sparse, updates):
    """Every mask update kept exactly round(target density * N) weights."""
    total = sum(m.size for m in sparse.masks().values())
    for event in updates:
        assert event["sparsity"] == (total - round(event["target_density"] * total)) / total


# --- the allocation: per-layer counts against an independent NumPy computation ---------------
def _hamilton(quotas, sizes, total):
    """Largest-remainder apportionment of ``total`` in proportion to ``quotas``, no layer above
    its size (written here independently of distributions.apportion)."""
    full = quotas >= sizes
    while True:
        share = np.where(full, sizes, quotas * (total - sizes[full].sum()) / quotas[~full].sum())
        if not np.any(~full & (share >= sizes)):
            break
        full |= share >= sizes
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def _expected_counts(shapes, density, distribution, dense_first, power):
    sizes = np.array([np.prod(s) for s in shapes], np.int64)
    if distribution == "uniform" and not dense_first:
        densities = np.full(len(shapes), density)
    else:  # uniform with a dense first layer is the ERK loop without the shape factor
        densities = erk_by_rigl_formula(shapes, density, power if distribution == "erk" else 0.0,
                                         dense_first)[0]
    return _hamilton(densities * sizes, sizes, round(density * sizes.sum())), densities, sizes


def _pruner(method, net, **keys):
    schedule = {"delta": 4} if method != "gmp" else {}
    cfg = method_settings(method, 10, 4, {"sparsity": 0.9, **schedule, **keys})
    return build_pruner(cfg, net, 10, logging.getLogger("test"))


@pytest.mark.parametrize("method", ["rpg", "gmp"])
@pytest.mark.parametrize("distribution,dense_first,power", [("uniform", False, 1.0), ("uniform", True, 1.0),
                                                            ("erk", False, 1.0), ("erk", True, 0.5)])
def test_layer_counts_follow_the_distribution_and_add_up(method, distribution, dense_first, power):
    pruner = _pruner(method, MobileNetV2(), density_distribution=distribution, dense_first_layer=dense_first,
                     erk_power_scale=power)
    shapes = list(pruner.shapes.values())
    rng = np.random.default_rng(0)
    weights = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in pruner.shapes.items()}
    for density in (0.1, 0.37, 0.03):
        want, densities, sizes = _expected_counts(shapes, density, distribution, dense_first, power)
        got = pruner.layer_counts(density)
        assert list(got.values()) == want.tolist()
        assert sum(got.values()) == round(density * sizes.sum())          # the exact target
        assert np.all(np.abs(want / sizes - densities) < 2.0 / sizes + 1e-3)
        if dense_first:
            assert want[0] == sizes[0]
        masks = pruner.distribute(weights, density)                       # what an update targets
        for name, mask in masks.items():
            assert int(mask.sum()) == got[name]
            magnitude = np.abs(weights[name])
            if 0 < got[name] < mask.size:                                 # the largest |w| of the layer
                assert magnitude[mask].min() >= magnitude[~mask].max()


def test_global_is_the_default_of_rpg_and_gmp_and_erk_stays_rigls():
    from src.pruning.masks.mask_ops import global_magnitude_masks
    for method in ("rpg", "gmp"):
        pruner = _pruner(method, MobileNetV2())
        assert pruner.cfg.density_distribution == "global"
        rng = np.random.default_rng(1)
        weights = {n: rng.standard_normal(s).astype(np.float32) for n, s in pruner.shapes.items()}
        got, want = pruner.distribute(weights, 0.2), global_magnitude_masks(weights, 0.2)
        assert all(np.array_equal(got[n], want[n]) for n in want)
    assert method_settings("rigl", 10, 4, {}).density_distribution == "erk"
    assert method_settings("rigl", 10, 4, {"density_distribution": "uniform"}).density_distribution == "uniform"
    assert method_settings("rpg", 10, 4, {"density_distribution": "erk"}).density_distribution == "erk"


def test_register_refuses_a_default_the_key_does_not_accept():
    from src.pruning.masks.hard_mask import HardMaskPruner
    from src.pruning.core.registry import METHODS, register

    class WrongDefault(HardMaskPruner):
        name = "wrong_default"
        key_defaults = {"density_distribution": "layer"}

    class ForeignDefault(HardMaskPruner):
        name = "foreign_default"
        key_defaults = {"lamb": 1.0}             # RPG's key, not one this method reads

    for method in (WrongDefault, ForeignDefault):
        with pytest.raises(ValueError, match="key_defaults"):
            register(method)
        assert method.name not in METHODS


def test_recipe_checks_of_the_shared_key(capsys):
    from src.config import parse_args
    with pytest.raises(ConfigError, match="'density_distribution'"):
        method_settings("rpg", 10, 4, {"density_distribution": "layer"})
    with pytest.raises(ConfigError, match="'dense_first_layer'.*uniform or erk"):
        method_settings("gmp", 10, 4, {"dense_first_layer": True})
    with pytest.raises(ConfigError, match="'density_distribution'.*exponential"):
        method_settings("rigl", 10, 4, {"density_distribution": "global"})
    # global with RPG's schedule is RigL's grow rule on global magnitude targets
    assert method_settings("rigl", 10, 4, {"density_distribution": "global",
                                           "density_schedule": "exponential"}).density_distribution == "global"
    with pytest.raises(ConfigError, match="'sparsity' / 'density_distribution'.*too low"):
        _pruner("rpg", MobileNetV2(), sparsity=0.999, density_distribution="uniform", dense_first_layer=True)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    line = [l for l in capsys.readouterr().out.splitlines() if "--density_distribution" in l][0]
    assert "default 'global' (rigl: 'erk'); one of global, uniform, erk" in line


# --- RPG at 90 % on a MobileNetV2 trained from scratch ------------------------------------------
def _mobilenet_run(distribution):
    """72 iterations: the density falls to 0.1 in 8 updates by iteration 32, then 36 iterations of
    training at the final masks."""
    ms.set_seed(0)
    return _train(MobileNetV2(), "rpg", epochs=6, sparsity=0.9, delta=4, T_end_percent=0.5,
                  iterative_T_end_percent=0.45, density_distribution=distribution)


def test_rpg_erk_keeps_every_layer_of_a_mobilenet_from_scratch():
    sparse, losses, updates = _mobilenet_run("erk")
    masks = sparse.masks()
    assert len(masks) == 17 and all(u["empty_layers"] == 0 for u in updates)
    assert min(_kept(masks).values()) > 0                                 # every layer keeps weights
    assert _kept(masks) == sparse.pruner.layer_counts(0.1)
    _check_updates_exact(sparse, updates)
    total = sum(m.size for m in masks.values())
    assert sum(_kept(masks).values()) == round(0.1 * total)             # the exact target
    sparse.finish()                                                       # the final check passes
    assert np.mean(losses[:6]) > 0.95 * math.log(10)
    assert np.mean(losses[-12:]) < 0.8 * math.log(10)                     # it learns


def test_rpg_global_empties_the_classifier_of_the_same_network():
    """Why erk exists: one threshold ranks the std-0.01 classifier below every He-initialised
    conv, so the classifier is cut whole and the output no longer depends on the input."""
    sparse, losses, updates = _mobilenet_run("global")
    masks = sparse.masks()
    assert not masks["head.1.weight"].any()
    assert updates[-1]["empty_layers"] > 0
    _check_updates_exact(sparse, updates)
    net = sparse.network
    net.set_train(False)
    image, _ = make_batches(count=1, seed=5)[0]
    logits = net(image).asnumpy()
    np.testing.assert_array_equal(logits, np.broadcast_to(logits[:1], logits.shape))
    assert np.mean(losses[-12:]) > 0.9 * math.log(10)
    # not a silent dead run: finish() refuses it, naming the classifier and what avoids it
    with pytest.raises(DeadNetworkError, match=r"no longer depends on its input.*head\.1\.weight.*"
                                               r"density_distribution: erk"):
        sparse.finish()


# --- a Dense-heavy attention block ---------------------------------------------------------------
@pytest.mark.parametrize("method,distribution", [("rpg", "erk"), ("gmp", "uniform")])
def test_attention_block_keeps_every_layer_at_the_exact_target(method, distribution):
    ms.set_seed(0)
    keys = {"delta": 4} if method == "rpg" else {"gmp_frequency": 4}
    sparse, losses, updates = _train(AttentionNet(), method, epochs=2, sparsity=0.9,
                                     density_distribution=distribution, **keys)
    masks = sparse.masks()
    assert len(masks) == 6 and all(len(m.shape) == 2 for m in masks.values())
    assert min(_kept(masks).values()) > 0 and all(u["empty_layers"] == 0 for u in updates)
    assert _kept(masks) == sparse.pruner.layer_counts(0.1)
    _check_updates_exact(sparse, updates)
    assert np.all(np.isfinite(losses))
    sparse.finish()
    assert sparse.pruner.mask_sparsity() == 1 - round(0.1 * sum(m.size for m in masks.values())) / \
        sum(m.size for m in masks.values())


# --- rank_loss_layers: the rank loss on Dense weights too ---------------------------------------
@pytest.mark.parametrize("layers", ["conv", "all"])
def test_rank_loss_layers_on_a_dense_only_network(layers):
    """conv (the reference) leaves a Dense-only network without rank loss; all puts every Dense
    weight in it: the regrowth gradient is the task gradient plus lamb times the mean of the
    layers' rank-loss gradients (NumPy float64 formula of test_method_rpg)."""
    from tests.test_method_rpg import TaskGrad, rank_loss_and_grad
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    lamb, partial_k = 0.5, 0.2
    net = AttentionNet()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="rpg", steps_per_epoch=12,
                            epochs=1, sparsity=0.9, delta=4, lamb=lamb, partial_k=partial_k,
                            rank_loss_layers=layers, density_distribution="erk")
    pruner, ctx = sparse.pruner, sparse.ctx
    events = []
    ctx.recorders.append(events.append)
    batch = make_batches(count=1, seed=3)[0]
    weights = {n: w.copy() for n, w in ctx.get_weights(pruner.names).items()}
    if layers == "conv":
        assert pruner.rank_names == [] and pruner.rank_term is None
        pruner.before_step(pruner.update_steps[0], batch, ctx)
        assert events[0]["rank_loss"] is None
        return
    assert pruner.rank_names == pruner.names and len(pruner.names) == 6
    pruner._set_rank_targets(weights, ctx)
    pruner.grad_cell = ctx.dense_gradient_cell(pruner.names, pruner.rank_term)  # the update's own
    _, _, extra, grads = pruner.grad_cell(*batch)
    task = TaskGrad(ctx.loss_cell, [ctx._params[n] for n in pruner.names])(*batch)
    terms = {n: rank_loss_and_grad(weights[n], partial_k) for n in pruner.names}
    assert float(extra.asnumpy()) == pytest.approx(lamb * np.mean([t[0] for t in terms.values()]), rel=1e-4)
    for name, grad, task_grad in zip(pruner.names, grads, task):
        want = task_grad.asnumpy() + lamb * terms[name][1] / len(terms)
        scale = np.abs(want).max()
        np.testing.assert_allclose(grad.asnumpy(), want, rtol=0, atol=1e-4 * scale, err_msg=name)
        assert np.abs(grad.asnumpy() - task_grad.asnumpy()).max() > 1e-3 * scale   # not negligible
    pruner.before_step(pruner.update_steps[0], batch, ctx)                # an update with it runs
    assert events[0]["rank_loss"] < 0
    ranks = [e for e in events if e["event"] == "layer_ranks"][0]["layers"]
    assert [r["name"] for r in ranks] == pruner.names and all(r["k"] for r in ranks)
