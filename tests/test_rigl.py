"""The RigL family (prune_method rigl): ERK densities against RigL's formula computed here
independently, exact per-layer counts, the constant and exponential density schedules, gradient
(RigL), random (SET) and no regrowth (static), and the recipe combination that is refused."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from src.config import build_config, parse_args
from src.errors import ConfigError
from src.models.resnet import build_resnet
from src.pruning.api import SparseTraining
from src.pruning.masks.distributions import layer_densities
from src.pruning.masks.mask_ops import layer_magnitude_masks, random_layer_masks
from src.pruning.masks.schedules import ConstantSchedule
from tests.conftest import ROOT
from tests.test_api import PlainConvNet, make_batches

SPARSITY = 0.8


def erk_by_rigl_formula(shapes, density, power=1.0, dense_first=False):
    """RigL's Erdos-Renyi-Kernel loop, written here with arrays: eps solves
    eps * sum_sparse(raw * n) = sum_sparse(n - zeros) - sum_dense(zeros), zeros = floor(S * n);
    while some eps * raw exceeds 1, the layers with the largest raw become dense."""
    n = np.array([np.prod(s) for s in shapes], np.float64)
    raw = (np.array([np.sum(s) for s in shapes], np.float64) / n) ** power
    zeros = np.floor((1.0 - density) * n)
    dense = np.zeros(len(shapes), bool)
    dense[0] = dense_first
    while True:
        eps = ((n - zeros)[~dense].sum() - zeros[dense].sum()) / (raw * n)[~dense].sum()
        if not np.any(~dense & (eps * raw > 1.0)):
            return np.where(dense, 1.0, eps * raw), dense, n, zeros
        dense |= ~dense & (raw == raw[~dense].max())


def _shapes(arch, classes, channels):
    net = build_resnet(arch, classes, channels)
    return [tuple(p.shape) for p in net.trainable_params()
            if p.name.endswith("weight") and len(p.shape) in (2, 4)]


@pytest.mark.parametrize("arch,classes,channels", [("resnet20", 10, 1), ("resnet50", 1000, 3)])
@pytest.mark.parametrize("density,power,dense_first", [(0.1, 1.0, False), (0.2, 1.0, True),
                                                       (0.05, 0.5, False), (0.5, 1.0, False)])
def test_erk_densities_follow_rigl_formula(arch, classes, channels, density, power, dense_first):
    shapes = _shapes(arch, classes, channels)
    got = np.array(layer_densities(shapes, density, "erk", dense_first, power))
    want, dense, n, zeros = erk_by_rigl_formula(shapes, density, power, dense_first)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert np.all((got > 0) & (got <= 1.0))
    # RigL's accounting: the layers hold n - floor(S n) weights in total
    assert (got * n).sum() == pytest.approx((n - zeros).sum(), rel=1e-12)
    if density == 0.1 and arch == "resnet50":
        assert dense.any()            # the loop did make some layers dense


def test_uniform_densities_and_a_dense_first_layer():
    shapes = _shapes("resnet20", 10, 1)
    assert layer_densities(shapes, 0.1, "uniform") == [0.1] * len(shapes)
    first = np.array(layer_densities(shapes, 0.1, "uniform", dense_first_layer=True))
    n = np.array([np.prod(s) for s in shapes], np.float64)
    assert first[0] == 1.0 and np.all(first[1:] == first[1])
    assert (first * n).sum() == pytest.approx((n - np.floor(0.9 * n)).sum(), rel=1e-12)
    # power scale 0 is uniform (RigL's erk_power_scale doc)
    np.testing.assert_allclose(layer_densities(shapes, 0.1, "erk", power_scale=0.0),
                               (n - np.floor(0.9 * n)).sum() / n.sum())
    with pytest.raises(ValueError, match="too low"):
        layer_densities([(64, 64, 3, 3), (2, 2)], 0.0001, "uniform", dense_first_layer=True)


def test_masks_at_layer_counts_keep_exact_counts():
    rng = np.random.default_rng(0)
    weights = {"a": rng.standard_normal((8, 4, 3, 3)), "b": rng.standard_normal((10, 33))}
    counts = {"a": 107, "b": 17}
    for masks in (layer_magnitude_masks(weights, counts),
                  random_layer_masks({n: w.shape for n, w in weights.items()}, counts, rng)):
        for name, w in weights.items():
            assert masks[name].shape == w.shape
            assert int(masks[name].sum()) == counts[name]
    with pytest.raises(ValueError, match="cannot keep"):
        layer_magnitude_masks(weights, {"a": 289, "b": 0})
    top = layer_magnitude_masks(weights, counts)["a"]
    assert np.abs(weights["a"][top]).min() >= np.abs(weights["a"][~top]).max()


def test_constant_schedule():
    schedule = ConstantSchedule(100, 10, 0.901, 0.2, 0.3)
    assert schedule.update_steps == [0] + list(range(10, 90, 10))  # T_end = 90, strict
    assert {schedule.density(i, t) for i, t in enumerate(schedule.update_steps)} == {0.2}
    assert schedule.drop_fraction(0) == pytest.approx(0.3) and schedule.drop_fraction(90) == 0.0
    assert ConstantSchedule(100, 10, 0.901, 0.2, 0.3, regrow=False).update_steps == [0]


def _run(epochs=1, **keys):
    """A short rigl run on a tiny net; the masks after every iteration and the events."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(7)
    net = PlainConvNet()
    batches = make_batches()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="rigl",
                            steps_per_epoch=len(batches), epochs=epochs, sparsity=SPARSITY, delta=3,
                            seed=3, **keys)
    events, history = [], []
    sparse.ctx.recorders.append(events.append)
    for _ in range(epochs):
        for image, label in batches:
            sparse.step(image, label)
            history.append(sparse.masks())
        sparse.end_epoch()
    sparse.finish()
    return sparse, history, [e for e in events if e["event"] == "mask_update"]


def _layer_counts(masks):
    return {name: int(mask.sum()) for name, mask in masks.items()}


def _check_exact(sparse, masks):
    """Each layer holds its count of the final distribution (within one weight of d_l * n_l), the
    total is exactly round(D * N), and every pruned weight is +0.0 bit for bit."""
    want = sparse.pruner.layer_counts(1 - SPARSITY)
    assert _layer_counts(masks) == want
    shapes = list(sparse.pruner.shapes.values())
    cfg = sparse.cfg
    densities = layer_densities(shapes, 1 - SPARSITY, cfg.density_distribution, cfg.dense_first_layer)
    total = sum(m.size for m in masks.values())
    assert sum(want.values()) == round((1 - SPARSITY) * total)
    # RigL's accounting (n - floor(S n) per layer) holds a few weights more than the exact total;
    # the counts give them back in proportion, so each stays within one weight of its share
    quotas = np.array([d * m.size for d, m in zip(densities, masks.values())])
    scaled = quotas * sum(want.values()) / quotas.sum()
    assert np.all(np.abs(np.array(list(want.values())) - scaled) < 1.0)
    achieved = 1 - sum(want.values()) / total
    # the final check counts the masks: a weight regrown where its gradient stays 0 is still 0
    assert sparse.pruner.mask_sparsity() == pytest.approx(achieved, abs=1e-12)
    params = {p.name: p.asnumpy() for p in sparse.network.trainable_params()}
    for name, mask in masks.items():
        assert np.all(params[name][~mask].view(np.uint32) == 0), name


@pytest.fixture(scope="module")
def rigl_run():
    return _run(grow_rule="gradient", density_distribution="erk")


def test_rigl_has_the_final_density_from_step_0(rigl_run):
    sparse, history, updates = rigl_run
    assert updates[0]["step"] == 0 and updates[0]["regrown"] == 0
    _check_exact(sparse, history[-1])
    for masks in history:                       # the final counts from the first iteration on
        assert _layer_counts(masks) == _layer_counts(history[-1])
    assert sum(u["regrown"] for u in updates) > 0
    assert any(not np.array_equal(history[0][n], history[-1][n]) for n in history[0])
    # the gradient updates consumed their iterations (no optimizer step), as RigL's
    assert int(sparse.optimizer.global_step.asnumpy()[0]) == sparse.iterations


def test_set_regrows_elsewhere_than_rigl(rigl_run):
    _, rigl_history, _ = rigl_run
    sparse, history, updates = _run(grow_rule="random", density_distribution="erk")
    _check_exact(sparse, history[-1])
    assert sum(u["regrown"] for u in updates) > 0
    for name in history[0]:                     # the same random start (seed, update number) ...
        np.testing.assert_array_equal(history[0][name], rigl_history[0][name])
    # ... and different regrowth
    assert any(not np.array_equal(history[-1][n], rigl_history[-1][n]) for n in history[-1])


def test_static_topology_never_changes():
    sparse, history, updates = _run(grow_rule="none", density_distribution="erk")
    assert [u["step"] for u in updates] == [0]
    for masks in history:
        for name in masks:
            np.testing.assert_array_equal(masks[name], history[0][name])
    _check_exact(sparse, history[-1])


def test_exponential_schedule_from_dense_with_a_dense_first_layer():
    sparse, history, updates = _run(epochs=2, grow_rule="gradient", density_schedule="exponential",
                                    density_distribution="uniform", dense_first_layer=True)
    assert all(m.all() for m in history[0].values())           # dense until the first update
    assert updates[0]["step"] == 3
    assert [u["target_density"] for u in updates][-1] == pytest.approx(1 - SPARSITY)
    masks = history[-1]
    _check_exact(sparse, masks)
    assert masks["conv1.weight"].all()


def test_a_static_topology_that_shrinks_is_refused_at_parse_time():
    recipe = f"{ROOT}/config/static_erk_resnet20_fashion_mnist_s90.yaml"
    assert parse_args(["--config_path", recipe])[0].grow_rule == "none"
    with pytest.raises(ConfigError, match="'grow_rule'.*density_schedule"):
        parse_args(["--config_path", recipe, "--density_schedule", "exponential"])
    with pytest.raises(ConfigError, match="'density_distribution'"):
        build_config({"prune_method": "rigl", "density_distribution": "er"}, {})
