"""Model-zoo habits (issue 12): the zoo's flag names as aliases, eval_data_path and the zoo's ImageNet
layout, device_id, and mixed precision (amp_level) with exact zeros in pruned weights."""
import json
import logging
import os

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn, ops, ParameterTuple

from src.config import build_config, parse_args
from src.dataset import DataError, create_dataset, split_path
from src.device import standalone_device_id
from src.errors import ConfigError
from src.models import build_network, training_network
from src.training_graph import build_training_graph
from tests.conftest import ROOT, TINY_NET, run_script
from tests.test_dataset import collect, write_image_tree

RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
EVAL_FLAGS = {"ckpt": "", "json_out": ""}


# ---------------------------------------------------------------- aliases

@pytest.mark.parametrize("flag", ["ckpt", "checkpoint_file_path", "ckpt_file"])
def test_zoo_checkpoint_flags_set_ckpt(flag):
    _, flags = parse_args(["--config_path", RPG, f"--{flag}", "a.ckpt"], extra_flags=EVAL_FLAGS)
    assert flags["ckpt"] == "a.ckpt"


def test_alias_and_its_flag_together_are_given_twice():
    with pytest.raises(ConfigError, match=r"--ckpt is given twice .*--ckpt_file"):
        parse_args(["--ckpt", "a.ckpt", "--ckpt_file", "b.ckpt"], extra_flags=EVAL_FLAGS)


def test_did_you_mean_lists_aliases_and_the_scripts_flags():
    with pytest.raises(ConfigError, match=r"unknown config key 'checkpoint_path'.*checkpoint_file_path"):
        parse_args(["--checkpoint_path", "a.ckpt"], extra_flags=EVAL_FLAGS)
    with pytest.raises(ConfigError, match=r"unknown config key 'json_ou'.*json_out"):
        parse_args(["--json_ou", "r.json"], extra_flags=EVAL_FLAGS)


def test_alias_of_a_flag_the_script_lacks_is_unknown():
    # train.py has no --ckpt: the zoo's name for it must not slip through as a recipe key
    with pytest.raises(ConfigError, match="unknown config key 'ckpt_file'"):
        parse_args(["--ckpt_file", "a.ckpt"])


def test_zoo_eval_dataset_path_sets_eval_data_path(tmp_path):
    cfg, _ = parse_args(["--eval_dataset_path", "/data/val"])
    assert cfg.eval_data_path == "/data/val"
    recipe = tmp_path / "zoo.yaml"
    recipe.write_text("eval_dataset_path: /data/v2\n")
    assert parse_args(["--config_path", str(recipe)])[0].eval_data_path == "/data/v2"
    recipe.write_text("eval_dataset_path: /data/v2\neval_data_path: /data/v3\n")
    with pytest.raises(ConfigError, match="given twice"):
        parse_args(["--config_path", str(recipe)])


def test_help_lists_the_new_keys():
    proc = run_script("train.py", "--help")
    for key in ("--eval_data_path", "--device_id", "--amp_level"):
        assert key in proc.stdout, key
    proc = run_script("eval.py", "--help")
    assert "--ckpt  (also --checkpoint_file_path, --ckpt_file)" in proc.stdout


# ---------------------------------------------------------------- eval_data_path

@pytest.fixture(name="zoo_imagenet")
def fixture_zoo_imagenet(tmp_path):
    """The model zoo's layout: train/ beside validation_preprocess/."""
    root = tmp_path / "imagenet"
    write_image_tree(str(root / "train"), per_class=3)
    write_image_tree(str(root / "validation_preprocess"), per_class=2)
    return str(root)


def test_zoo_imagenet_layout_is_found(zoo_imagenet):
    _, labels, sizes = collect(create_dataset("imagenet", zoo_imagenet, False, 8, image_size=16))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])  # validation_preprocess/: 2 per class
    _, labels, _ = collect(create_dataset("imagenet", zoo_imagenet, True, 2, image_size=16))
    assert len(labels) == 6  # train/: 3 per class


def test_eval_data_path_is_the_evaluation_folder(tmp_path):
    cfg = build_config({"data_path": "/train/here"}, {})
    assert split_path(cfg, training=False) == ("/train/here", "data_path")
    cfg = build_config({"data_path": "/train/here", "eval_data_path": "/val/there"}, {})
    assert split_path(cfg, training=False) == ("/val/there", "eval_data_path")
    assert split_path(cfg, training=True) == ("/train/here", "data_path")
    with pytest.raises(DataError, match=r"^eval_data_path '.*nowhere' does not exist$"):
        create_dataset("fashion_mnist", str(tmp_path / "nowhere"), False, 8, path_key="eval_data_path")


# ---------------------------------------------------------------- device_id

def test_device_id_checked_on_a_standalone_run_ignored_under_a_launcher(monkeypatch):
    for name in ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert standalone_device_id(build_config({}, {"device_id": "0"})) == 0
    with pytest.raises(ConfigError, match=r"'device_id': got 1, but this machine has 1 CPU device"):
        standalone_device_id(build_config({}, {"device_id": "1"}))
    monkeypatch.setenv("MS_WORKER_NUM", "2")  # msrun assigns the devices
    assert standalone_device_id(build_config({}, {"device_id": "1"})) is None


# ---------------------------------------------------------------- mixed precision

def _graph(amp_level, sparsity=0.9, delta=2):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config({"net": "resnet8", "in_channels": 1, "num_classes": 10, "prune_method": "rpg",
                        "sparsity": sparsity, "delta": delta, "epoch_size": 1, "loss_scale": 1024,
                        "amp_level": amp_level}, {})
    ms.set_seed(0)
    net = build_network(cfg)
    session = build_training_graph(cfg, net, 12, logging.getLogger("t.amp"), (1, 1, 28, 28))
    pruner, step, ctx = session.pruner, session.train_step, session.ctx
    return net, pruner, step, ctx


def _batch(seed):
    rng = np.random.default_rng(seed)
    return (Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32)),
            Tensor(rng.integers(0, 10, 8).astype(np.int32)))


def test_twin_shares_float32_parameters_and_computes_in_float16(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to the working directory
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config({"net": "resnet8", "in_channels": 1}, {})
    net = build_network(cfg)
    net.set_train(False)
    image = _batch(0)[0]
    reference = net(image).asnumpy()
    for level in ("O1", "O2", "O3"):
        twin = training_network(net, level, lambda: build_network(cfg))
        assert [id(p) for p in twin.get_parameters()] == [id(p) for p in net.get_parameters()]
        assert [p.name for p in twin.get_parameters()] == [p.name for p in net.get_parameters()]
        assert all(p.dtype == ms.float32 for p in net.get_parameters())
        twin.set_train(False)
        full, half = net(image), twin(image)
        np.testing.assert_array_equal(full.asnumpy(), reference)  # net itself was not cast
        assert full.dtype == half.dtype == ms.float32  # the loss sees float32 logits
        diff = np.abs(full.asnumpy() - half.asnumpy()).max()
        # float16 rounding shows (a lost cast would give exactly 0), and is small
        assert 0 < diff < 0.05 * np.abs(full.asnumpy()).max(), (level, diff)
    assert training_network(net, "O0", lambda: build_network(cfg)) is net
    assert not os.listdir(tmp_path)  # (MindSpore's rewrite-based O1 leaves ./rewritten_network/)


def test_o2_keeps_pruned_weights_exact_positive_zero_through_rpg_updates():
    net, pruner, step, ctx = _graph("O2")
    params = {p.name: p for p in net.get_parameters()}
    for it in range(12):
        batch = _batch(it)
        loss = pruner.before_step(it, batch, ctx)
        if loss is None:
            loss = float(step(*batch).asnumpy())
        assert np.isfinite(loss), it
    assert pruner.updates_done == len(pruner.update_steps) == 4
    assert pruner.target_density == pytest.approx(0.1)
    masks = pruner.masks()
    for name, mask in masks.items():
        weight = params[name].asnumpy()
        assert weight.dtype == np.float32
        pruned = weight[mask == 0]
        assert pruned.size and np.all(pruned.view(np.uint32) == 0), name  # +0.0 bit for bit
    moments = {p.name: m for p, m in zip(ctx.optimizer.parameters, ctx.optimizer.moments)}
    assert all(np.all(moments[n].asnumpy()[m == 0] == 0) for n, m in masks.items())


class _Float32Grads(nn.Cell):
    """Reference: plain float32 gradients of the float32 network's loss."""

    def __init__(self, net, params):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = nn.CrossEntropyLoss()
        self.params = ParameterTuple(params)
        self.grad = ops.GradOperation(get_by_list=True)

    def forward(self, image, label):
        return self.loss(self.net(image), label)

    def construct(self, image, label):
        return self.grad(self.forward, self.params)(image, label)


def test_rpg_dense_gradient_is_float32_under_o2():
    net, pruner, _, ctx = _graph("O2")
    cell = ctx.dense_gradient_cell(pruner.names)  # no rank term: the task gradient alone
    batch = _batch(3)
    _, _, _, grads = cell(*batch)
    params = {p.name: p for p in net.get_parameters()}
    want = _Float32Grads(net, [params[n] for n in pruner.names])(*batch)
    for name, got, ref in zip(pruner.names, grads, want):
        assert got.dtype == ms.float32
        np.testing.assert_allclose(got.asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- the user's commands

@pytest.fixture(scope="module")
def o2_run(fashion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("o2")
    proc = run_script("train.py", "--config_path", RPG, "--data_path", fashion_dir, "--output_dir", out,
                      "--epoch_size", "1", "--train_samples", "256", "--batch_size", "32",
                      "--eval_samples", "32", "--num_parallel_workers", "1", "--delta", "2",
                      "--amp_level", "O2", "--loss_scale", "1024", "--log_interval", "1", *TINY_NET)
    return out, proc


def test_amp_o2_train_run_on_cpu(o2_run):
    out, proc = o2_run
    assert "mixed precision O2" in proc.stdout and "rpg mask update 3/3" in proc.stdout
    losses = [float(line.split(" loss ")[1].split()[0]) for line in proc.stdout.splitlines()
              if " step " in line and " loss " in line and "mask update" not in line]
    assert len(losses) == 8 and all(np.isfinite(losses))
    params = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(out / "last.ckpt")).items()
              if not isinstance(v, str)}
    masks = {k[len("pruning_mask."):]: v for k, v in params.items() if k.startswith("pruning_mask.")}
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.9 * sum(m.size for m in masks.values()))
    for name, mask in masks.items():
        assert params[name].dtype == np.float32  # checkpoints hold the float32 master weights
        assert np.all(params[name][mask == 0].view(np.uint32) == 0), name


def test_eval_of_an_amp_checkpoint_same_json_for_the_zoo_flags(o2_run, fashion_dir, tmp_path):
    out, _ = o2_run
    results = []
    for flag, data in (("--ckpt", ["--data_path", fashion_dir]),
                       ("--checkpoint_file_path", ["--data_path", fashion_dir]),
                       # the images from eval_data_path, whatever data_path says
                       ("--ckpt_file", ["--data_path", str(tmp_path / "elsewhere"), "--eval_data_path", fashion_dir])):
        target = tmp_path / f"{flag.strip('-')}.json"
        run_script("eval.py", "--config_path", RPG, flag, out / "last.ckpt", *data, "--eval_samples", "64",
                   "--json_out", target, *TINY_NET)
        results.append(json.loads(target.read_text()))
    assert results[0]["samples"] == 64 and 0.0 < results[0]["sparsity"] < 1.0
    assert results[0] == results[1] == results[2]
