"""The public API on networks that are not ResNets, a fourth method added from a test file, and
the README's "use it in your own training script" example, executed as written."""
import os
import re

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops, Tensor

from src.errors import ConfigError, DeadNetworkError, TrainingError
from src.pruning.api import SparseTraining
from src.pruning.core.registry import METHODS, register
from src.pruning.masks.hard_mask import HardMaskPruner
from src.pruning.masks.schedules import ExponentialSchedule
from src.recipe_keys import Key
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
    partial = nn.Momentum([p for p in net.trainable_params() if p.name != "fc1.weight"],
                          learning_rate=0.05, momentum=0.9)
    for keys, message in (({"sparsity": 1.5}, "sparsity"), ({"dleta": 4}, "dleta"),
                          ({"method": "nope"}, "prune_method"),
                          ({"prune_include": ["nothing.*"]}, "prune_include"),
                          ({"prune_exclude": ["fc.wieght"]}, "fc.wieght"),   # a typo, not ignored
                          ({"prune_include": [3]}, "prune_include"),
                          ({"steps_per_epoch": "8"}, "steps_per_epoch"),
                          ({"steps_per_epoch": 2.5}, "steps_per_epoch"),
                          ({"epoch_size": 3}, "epochs="), ({"lr_max": 0.1}, "train.py"),
                          ({"eval_dataset_path": "/x"}, "train.py"),          # an alias of one
                          ({"gmp_frequency": 3}, "gmp_frequency"),          # GMP's key on RPG
                          ({"method": "psap"}, "input_shape"),
                          ({"method": "psap", "input_shape": (1, 1, 16, 16)}, "ResNet"),
                          ({"optimizer": partial}, "fc1.weight"),
                          # read only at the end of training: refused now, not a TypeError then
                          ({"training_batches": 42}, "training_batches: got int")):
        args = {"method": "rpg", "steps_per_epoch": 1000, "optimizer": optimizer, **keys}
        with pytest.raises(ConfigError, match=message):
            SparseTraining(net, nn.CrossEntropyLoss(), args.pop("optimizer"), **args)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        with pytest.raises(ConfigError, match="graph mode"):
            SparseTraining(net, nn.CrossEntropyLoss(), optimizer, steps_per_epoch=10)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_psap_report_counts_the_zeroed_filters():
    """PSAP has no masks: report() counts the zeros of every conv/FC weight, as eval.py does (it
    said 0.0 whatever PSAP had zeroed)."""
    from src.models.resnet import build_resnet
    ms.set_context(mode=ms.GRAPH_MODE)
    net = build_resnet("resnet8", 10, 1)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="psap", steps_per_epoch=4,
                            input_shape=(1, 1, 28, 28))
    conv = net.layer1[0].conv1.weight
    conv.set_data(Tensor(np.concatenate([np.zeros_like(conv.asnumpy()[:8]), conv.asnumpy()[8:]])))
    weights = [p.asnumpy() for p in net.trainable_params() if p.name.endswith("weight") and p.ndim in (2, 4)]
    report = sparse.report()
    assert report["sparsity"] == pytest.approx(sum((w == 0).sum() for w in weights) / sum(w.size for w in weights))
    assert report["sparsity"] > 0 and len(report["layers"]) == len(weights)


@pytest.mark.parametrize("which, value", [("network", None), ("network", lambda x: x),
                                          ("loss_fn", None), ("loss_fn", 3), ("optimizer", None),
                                          ("optimizer", "sgd")])
def test_wrong_argument_types_are_one_line_config_errors(which, value):
    """Checked at construction: not an AttributeError inside the method, nor a failure at the
    first step (loss_fn=None)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = PlainConvNet()
    args = {"network": net, "loss_fn": nn.CrossEntropyLoss(),
            "optimizer": nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)}
    args[which] = value
    with pytest.raises(ConfigError, match=f"SparseTraining: {which} must be") as err:
        SparseTraining(**args, method="rpg", steps_per_epoch=10)
    assert "\n" not in str(err.value)


def test_finish_refuses_a_network_whose_output_no_longer_depends_on_its_input():
    """A classifier initialised at a small scale (as some MobileNetV2 implementations do) is the
    first thing a global magnitude threshold removes: the network then outputs its bias whatever
    the input. finish() says so in one line naming the emptied layer; healthy networks pass
    (every other test here calls finish())."""
    ms.set_seed(3)
    net = SeparableNet()
    net.classifier.weight.set_data(Tensor(np.full((10, 32), 1e-4, np.float32)))
    with pytest.raises(DeadNetworkError) as err:
        _train(net, "rpg", epochs=1, sparsity=0.9, delta=4)
    message = str(err.value)
    assert "no longer depends on its input" in message and "\n" not in message
    assert "1 of 4 prunable layers have no weight left: classifier.weight)" in message
    assert "prune_exclude" in message and "density_distribution: erk" in message
    assert np.count_nonzero(net.classifier.weight.asnumpy()) == 0


class TokenNet(nn.Cell):
    """Integer inputs (token ids): an embedding, mean over the tokens, two Dense layers; the
    classifier initialised at a small scale, as in the test above."""

    def __init__(self, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.fc1 = nn.Dense(16, 32)
        self.relu = nn.ReLU()
        self.classifier = nn.Dense(32, 10, weight_init=Tensor(np.full((10, 32), 1e-4, np.float32)))

    def construct(self, tokens):
        return self.classifier(self.relu(self.fc1(ops.mean(self.embed(tokens), 1))))


def token_batches(count=12, batch=16, length=8, seed=0):
    """Token batches whose label is the most frequent token's class (learnable)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        tokens = rng.integers(0, 50, (batch, length)).astype(np.int32)
        out.append((Tensor(tokens), Tensor((tokens[:, 0] % 10).astype(np.int32))))
    return out


def test_the_dead_network_check_covers_integer_inputs():
    """Token ids cannot be probed with random normal values: the last batch's own rows are the
    probe. The same emptied classifier as above ends with DeadNetworkError, not a silent run."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(3)
    net = TokenNet()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    batches = token_batches()
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="rpg", sparsity=0.9,
                            steps_per_epoch=len(batches), epochs=1, delta=4)
    for tokens, label in batches:
        sparse.step(tokens, label)
    with pytest.raises(DeadNetworkError, match=r"no longer depends on its input.*"
                                               r"1 of 2 prunable layers have no weight left: "
                                               r"classifier\.weight\)"):
        sparse.finish()


def test_probe_inputs_from_a_batch():
    from src.pruning.core.liveness import probe_from_batch
    floats = probe_from_batch(np.zeros((1, 3, 4, 4), np.float16))
    assert floats.shape == (2, 3, 4, 4) and floats.dtype == np.float16 and np.any(floats[0] != floats[1])
    tokens = np.array([[1, 2], [3, 4]], np.int32)
    np.testing.assert_array_equal(probe_from_batch(Tensor(tokens)), tokens)
    assert probe_from_batch(np.array([[5, 6], [5, 6]], np.int64)) is None    # nothing to compare
    assert probe_from_batch(np.array([[5, 6]], np.int64)) is None


def test_emptied_layers_are_named_by_patterns_that_match_only_them():
    import fnmatch
    from src.pruning.core.liveness import describe_layers
    names = ["conv1.weight"] + [f"layer{s}.{b}.conv{c}.weight" for s in (1, 2, 3) for b in range(3)
                                for c in (1, 2)] + ["fc.weight"]
    shapes = {n: (10, 64) if n == "fc.weight" else (16, 16, 3, 3) for n in names}
    stage3 = [n for n in names if n.startswith("layer3.")]
    assert describe_layers(stage3 + ["fc.weight"], names, shapes) == "layer3.*.conv* (6 convs), fc.weight"
    # part of a stage: the pattern must not claim the layers that still have weights
    some = ["layer2.0.conv2.weight", "layer2.1.conv2.weight", "layer3.2.conv1.weight", "conv1.weight"]
    text = describe_layers(some, names, shapes)
    assert text == "conv1.weight, layer2.0.conv2.weight, layer2.1.conv2.weight, layer3.2.conv1.weight"
    assert describe_layers(names[:-1], names, shapes) == "conv1.weight, layer*.*.conv* (18 convs)"
    for part in text.split(", "):
        pattern = part.split(" (")[0]
        assert {n for n in names if fnmatch.fnmatchcase(n, pattern)} <= set(some), pattern


def test_steps_beyond_the_plan_or_after_finish_are_refused():
    ms.set_seed(4)
    sparse, _ = _train(PlainConvNet(), "rpg", sparsity=0.9, delta=4)
    image, label = make_batches(count=1)[0]
    with pytest.raises(TrainingError, match="planned for 24 iterations"):
        sparse.step(image, label)
    with pytest.raises(TrainingError, match="finish"):
        sparse.finish()


def test_state_dict_with_the_train_step_continues_exactly(tmp_path):
    """Stop after 10 iterations, save the train step's parameters and the state, continue in a
    new SparseTraining: the end is bit-identical to an uninterrupted run."""
    ms.set_context(mode=ms.GRAPH_MODE)
    batches = make_batches()

    def start(seed=5):
        ms.set_seed(seed)
        net = PlainConvNet()
        optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
        return SparseTraining(net, nn.CrossEntropyLoss(), optimizer, steps_per_epoch=len(batches),
                              sparsity=0.9, delta=4)

    whole = start()
    for image, label in batches:
        whole.step(image, label)
    first = start()
    for image, label in batches[:10]:
        first.step(image, label)
    path = str(tmp_path / "state.ckpt")
    ms.save_checkpoint(first.train_step, path)
    np.savez(tmp_path / "state.npz", **first.state_dict())   # as docs/API.md says to keep it
    second = start(seed=6)                       # other initial weights: all must come from the file
    ms.load_checkpoint(path, second.train_step)
    second.load_state_dict(dict(np.load(tmp_path / "state.npz")))
    for image, label in batches[10:]:
        second.step(image, label)
    end = {p.name: p.asnumpy() for p in second.train_step.get_parameters()}
    for param in whole.train_step.get_parameters():
        assert np.array_equal(param.asnumpy(), end[param.name]), param.name


@pytest.mark.parametrize("make_optimizer", [
    lambda params: nn.AdamWeightDecay(params, learning_rate=0.01),
    lambda params: nn.SGD(params, learning_rate=0.05, momentum=0.9),
    lambda params: nn.RMSProp(params, learning_rate=0.01)])
def test_every_optimizers_state_is_zeroed_with_the_pruned_weights(make_optimizer):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(7)
    net = PlainConvNet()
    optimizer = make_optimizer(net.trainable_params())
    batches = make_batches(count=8)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="gmp",
                            steps_per_epoch=len(batches), sparsity=0.8, gmp_frequency=2)
    for image, label in batches:
        sparse.step(image, label)
    masks = sparse.masks()
    slots = [p for p in optimizer.get_parameters() if p.name.partition(".")[2] in masks
             and not p.name.startswith("stat.") and p.name.partition(".")[2] != p.name]
    assert slots
    for state in slots:
        mask = masks[state.name.partition(".")[2]]
        assert np.all(state.asnumpy()[~mask] == 0), state.name


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


def test_register_refuses_what_would_break_the_schema():
    class Taken(RandomRegrowth):
        name = "rpg"                                          # the built-in's name

    class Collides(RandomRegrowth):
        name = "toy_collides"
        keys = {"delta": Key(int, 4, 1, None)}                # RPG's key

    class BaseKey(RandomRegrowth):
        name = "toy_base_key"
        keys = {"seed": Key(int, 4, 1, None)}

    class NotAKey(RandomRegrowth):
        name = "toy_not_a_key"
        keys = {"k": 3}

    class CaseVariant(RandomRegrowth):
        name = "RPG"

    class ScriptFlag(RandomRegrowth):
        name = "toy_script_flag"
        keys = {"ckpt": Key(str, "")}

    class UnknownNeed(RandomRegrowth):
        name = "toy_unknown_need"
        needs = ("labels",)                                   # the loop cannot supply it

    before = dict(METHODS)
    for method, message in ((Taken, "taken"), (Collides, "delta"), (BaseKey, "seed"),
                            (NotAKey, "Key"), (CaseVariant, "lower case"), (ScriptFlag, "ckpt"),
                            (UnknownNeed, "labels")):
        with pytest.raises(ValueError, match=message):
            register(method)
    assert METHODS == before
    from src.config import build_config
    build_config({"prune_method": "rpg"}, {})              # the schema still builds


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
    cfg = build_config({"prune_method": toy_method, "toy_delta": 3, "sparsity": 0.85, "net": "resnet8",
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
