"""The public API on networks that are not ResNets, a fourth method added from a test file, and
the README's "use it in your own training script" example, executed as written."""
import os
import re

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops, Tensor

from src.config import ConfigError, Key
from src.pruning.api import SparseTraining
from src.pruning.hard_mask import HardMaskPruner
from src.pruning.registry import METHODS, register
from src.pruning.schedules import ExponentialSchedule
from tests.conftest import ROOT

SIZE = 16


class PlainConvNet(nn.Cell):
    """Two convs, then two Dense layers (a classic small CNN)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Dense(16 * (SIZE // 2) ** 2, 32)
        self.fc2 = nn.Dense(32, 10)

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class SeparableNet(nn.Cell):
    """A MobileNet-style depthwise-separable block between a stem and a Dense classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, group=16)
        self.bn1 = nn.BatchNorm2d(16)
        self.pointwise = nn.Conv2d(16, 32, 1)
        self.bn2 = nn.BatchNorm2d(32)
        self.act = nn.ReLU6()
        self.classifier = nn.Dense(32, 10)

    def construct(self, x):
        x = self.act(self.bn0(self.stem(x)))
        x = self.act(self.bn1(self.depthwise(x)))
        x = self.act(self.bn2(self.pointwise(x)))
        return self.classifier(ops.mean(x, (2, 3)))


def make_batches(count=12, batch=16, seed=0):
    """Learnable toy data: the class sets the row of a bright band."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        label = rng.integers(0, 10, batch)
        image = rng.normal(0, 0.3, (batch, 1, SIZE, SIZE)).astype(np.float32)
        for i, c in enumerate(label):
            image[i, 0, c:c + 4, :] += 2.0
        batches.append((Tensor(image), Tensor(label.astype(np.int32))))
    return batches


def _train(net, method, epochs=2, **keys):
    ms.set_context(mode=ms.GRAPH_MODE)
    batches = make_batches()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9, weight_decay=1e-4)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method=method,
                            steps_per_epoch=len(batches), epochs=epochs, **keys)
    losses = []
    for _ in range(epochs):
        losses += [sparse.step(image, label) for image, label in batches]
        sparse.end_epoch()
    sparse.finish()
    return sparse, losses


def _check_exact(sparse, sparsity):
    masks = sparse.masks()
    params = {p.name: p.asnumpy() for p in sparse.network.trainable_params()}
    total = sum(m.size for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round((1 - sparsity) * total)               # exactly the target
    for name, mask in masks.items():
        pruned = params[name][~mask]
        assert np.all(pruned.view(np.uint32) == 0), name        # +0.0 bit for bit
    report = sparse.report()
    assert report["sparsity"] == pytest.approx(1 - kept / total, abs=1e-12)
    assert {r["name"] for r in report["layers"]} == set(masks)
    return report


@pytest.mark.parametrize("make_net", [PlainConvNet, SeparableNet])
def test_rpg_on_networks_that_are_not_resnets(make_net):
    ms.set_seed(1)
    net = make_net()
    sparse, losses = _train(net, "rpg", sparsity=0.9, delta=4)
    assert np.all(np.isfinite(losses))
    assert sparse.pruner.updates_done == len(sparse.pruner.update_steps) == 5
    report = _check_exact(sparse, 0.9)
    # every conv and Dense weight was pruned, the depthwise one included
    shapes = {r["name"]: r["shape"] for r in report["layers"]}
    assert len(shapes) == len([p for p in net.trainable_params() if p.name.endswith("weight")
                               and len(p.shape) in (2, 4)])
    # the optimizer's step counter follows the iterations (mask updates skip the optimizer)
    assert int(sparse.optimizer.global_step.asnumpy()[0]) == sparse.iterations == 24


def test_gmp_with_patterns_on_a_separable_net():
    ms.set_seed(2)
    net = SeparableNet()
    sparse, _ = _train(net, "gmp", sparsity=0.8, gmp_frequency=3, prune_exclude=["stem.*"])
    assert "stem.weight" not in sparse.masks()
    _check_exact(sparse, 0.8)
    assert np.count_nonzero(net.stem.weight.asnumpy()) == net.stem.weight.size


def test_api_errors_are_one_line_config_errors():
    ms.set_context(mode=ms.GRAPH_MODE)
    net = PlainConvNet()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    for keys, message in (({"sparsity": 1.5}, "sparsity"), ({"dleta": 4}, "dleta"),
                          ({"method": "nope"}, "prune_method"),
                          ({"prune_include": ["nothing.*"]}, "prune_include")):
        with pytest.raises(ConfigError, match=message):
            SparseTraining(net, nn.CrossEntropyLoss(), optimizer, steps_per_epoch=10,
                           **{"method": "rpg", **keys})


class RandomRegrowth(HardMaskPruner):
    """A toy fourth method (SET-like): RPG's schedule and global magnitude target, regrowth at
    random positions. One class, registered from here: nothing else changes."""

    name = "toy_random_regrowth"
    keys = {"toy_delta": Key(int, 4, 1, None, help_text="iterations between mask updates")}

    def __init__(self, cfg, net, steps_per_epoch, logger):
        super().__init__(cfg, net, steps_per_epoch, logger)
        self.schedule = ExponentialSchedule(self.total_steps, cfg.toy_delta, cfg.T_end_percent, 0.8,
                                            self.final_density, alpha=0.3)
        self.rng = np.random.default_rng(cfg.seed)

    def grow_signal(self, step, batch, ctx, weights):
        return {n: self.rng.random(w.shape) for n, w in weights.items()}, None


@pytest.fixture
def toy_method():
    register(RandomRegrowth)
    yield RandomRegrowth.name
    METHODS.pop(RandomRegrowth.name)


def test_a_fourth_method_from_one_class(toy_method, fashion_dir, tmp_path):
    from src.config import build_config
    from src.logs import read_metrics
    from src.trainer import Trainer
    from src import checkpoint
    cfg = build_config({"prune_method": toy_method, "toy_delta": 3, "sparsity": 0.85,
                        "data_path": fashion_dir, "train_samples": 256, "eval_samples": 64,
                        "batch_size": 32, "epoch_size": 2, "output_dir": str(tmp_path),
                        "log_interval": 4}, {})
    Trainer(cfg).train()
    params, meta, _ = checkpoint.load(os.path.join(str(tmp_path), "last.ckpt"))
    masks = {n[len("pruning_mask."):]: np.asarray(v) > 0 for n, v in params.items()
             if n.startswith("pruning_mask.")}
    total = sum(m.size for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.15 * total)
    for name, mask in masks.items():
        assert np.all(np.asarray(params[name])[~mask].view(np.uint32) == 0), name
    updates = read_metrics(str(tmp_path), "mask_update")
    assert [u["method"] for u in updates] == [toy_method] * 4
    assert updates[-1]["target_density"] == pytest.approx(0.15)
    assert sum(u["regrown"] for u in updates) > 0          # the random regrowth did act
    assert read_metrics(str(tmp_path), "eval")[-1]["sparsity"] > 0.8


def _readme_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    match = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no api-example block"
    return match.group(1)


def test_the_readme_example_runs_as_written():
    code = _readme_example()
    assert len(code.strip().splitlines()) < 20
    ms.set_seed(3)
    namespace = {"net": PlainConvNet(), "batches": make_batches(count=8)}
    exec(compile(code, "README.md (api example)", "exec"), namespace)
    assert namespace["report"]["sparsity"] == pytest.approx(0.9, abs=1e-4)
