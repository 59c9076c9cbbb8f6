"""``PruningAlgorithm``: the methods inside ``ms.Model.train`` (src/model_train.py).

The README's Model.train example, executed as written; every method's promises (exact final
sparsity, pruned weights and their momentum +0.0, mask updates after exactly the scheduled number
of optimizer steps); for the methods that never skip an optimizer step, bit-identity with the
exact loop (SparseTraining); PSAP's compact network and its MINDIR; the data-sinking check;
one-line errors; resume; two data-parallel workers under msrun."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import mindspore as ms
import mindspore.dataset as de
import pytest
from mindspore import nn

from src.config import ConfigError
from src.errors import TrainingError
from src.models.resnet import build_resnet
from src.pruning import api
from src.pruning.api import PruningAlgorithm, SparseTraining
from src.pruning.core.train_cell import optimizer_state
from tests.conftest import ROOT
from tests.model_train_worker import toy_data
from tests.test_api import SIZE, PlainConvNet

EPOCHS = 3


@pytest.fixture(autouse=True)
def graph(graph_mode):
    yield


def toy_dataset(count=96, batch=16):
    """Fixed order (no shuffle): 6 batches of the learnable toy data."""
    return de.NumpySlicesDataset(toy_data(count), column_names=["image", "label"],
                                 shuffle=False).batch(batch)


class _CountingSteps(PruningAlgorithm):
    """The README's class, noting the optimizer's step count at every event."""

    def optimizer(self, optimizer):
        masked = super().optimizer(optimizer)
        self.steps_seen = []
        self.ctx.recorders.append(lambda event: self.steps_seen.append(
            (event["event"], event["step"], int(optimizer.global_step.asnumpy()[0]))))
        return masked


def build(method, net, ds, epochs=EPOCHS, **keys):
    """The README's steps up to the Model (noting the optimizer's step count at every event)."""
    algo = _CountingSteps(method, steps_per_epoch=ds.get_dataset_size(), epochs=epochs, **keys)
    net = algo.apply(net)
    opt = algo.optimizer(nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9,
                                     weight_decay=1e-4))
    return algo, net, opt, ms.Model(net, nn.CrossEntropyLoss(), opt)


def check_hard_masks(algo, net, opt, kept):
    """``kept`` weights in the masks, every other weight and its optimizer state +0.0 bit for bit,
    the updates at the scheduled steps after exactly that many optimizer steps."""
    masks = algo.masks()
    assert sum(int(m.sum()) for m in masks.values()) == kept
    params = {p.name: p.asnumpy() for p in net.trainable_params()}
    state = optimizer_state(opt.optimizer, list(masks))
    for name, mask in masks.items():
        assert np.all(params[name][~mask].view(np.uint32) == 0), name
        assert state[name], name
        for slot in state[name]:
            assert np.all(slot.asnumpy()[~mask].view(np.uint32) == 0), slot.name
    updates = [(step, seen) for event, step, seen in algo.steps_seen if event == "mask_update"]
    assert [step for step, _ in updates] == list(algo.pruner.update_steps)
    assert all(step == seen for step, seen in updates)   # between optimizer steps step and step + 1
    assert int(opt.global_step.asnumpy()[0]) == algo.planned   # every iteration stepped


def check_mindir(cell, image, path, against=None):
    """ms.export -> ms.load + nn.GraphCell gives ``cell``'s outputs; no mask Parameter in it."""
    ms.export(cell, image, file_name=str(path), file_format="MINDIR")
    loaded = nn.GraphCell(ms.load(f"{path}.mindir"))
    expected = (against or cell)(image).asnumpy()
    np.testing.assert_allclose(loaded(image).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    data = open(f"{path}.mindir", "rb").read()
    assert b"pruning_mask" not in data and b"grad_energy" not in data


def _readme_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    match = re.search(r"<!-- model-train-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no model-train-example block"
    return match.group(1)


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    code = _readme_example()
    assert len(code.strip().splitlines()) < 20
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "PruningAlgorithm", _CountingSteps)
    ms.set_seed(3)
    namespace = {"net": PlainConvNet(), "ds": toy_dataset()}
    exec(compile(code, "README.md (model-train example)", "exec"), namespace)
    algo, net = namespace["algo"], namespace["net"]
    total = sum(m.size for m in algo.masks().values())
    steps = [e["step"] for e in algo.events if e["event"] == "mask_update"]
    assert steps == algo.pruner.update_steps == [4, 8, 12]
    # each update after exactly that many optimizer steps (between steps 4 and 5, ...)
    assert [x for x in algo.steps_seen if x[0] == "mask_update"] == [("mask_update", s, s) for s in steps]
    params = {p.name: p.asnumpy() for p in net.trainable_params()}
    moments = optimizer_state(namespace["opt"].optimizer, list(algo.masks()))
    for name, mask in algo.masks().items():
        assert np.all(params[name][~mask].view(np.uint32) == 0)
        assert np.all(moments[name][0].asnumpy()[~mask].view(np.uint32) == 0)
    assert sum(int(m.sum()) for m in algo.masks().values()) == round(0.1 * total)
    loaded = nn.GraphCell(ms.load(str(tmp_path / "pruned.mindir")))
    image = namespace["image"]
    np.testing.assert_allclose(loaded(image).asnumpy(), net(image).asnumpy(), rtol=1e-5, atol=1e-5)
    assert b"pruning_mask" not in (tmp_path / "pruned.mindir").read_bytes()


@pytest.mark.parametrize("method, keys, same_as_loop", [
    ("gmp", {"gmp_frequency": 2}, True),
    ("rigl", {"delta": 4}, False),                        # gradient regrowth: between two steps
    ("rigl", {"delta": 4, "grow_rule": "random"}, True),  # SET: the step runs, as in the loop
])
def test_hard_mask_methods_under_model_train(method, keys, same_as_loop, tmp_path):
    ds = toy_dataset()
    ms.set_seed(3)
    algo, net, opt, model = build(method, PlainConvNet(), ds, sparsity=0.9, **keys)
    model.train(EPOCHS, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)
    assert algo.convert(net) is net
    if method == "gmp":
        kept = round(0.1 * sum(m.size for m in algo.masks().values()))
    else:   # RigL: each layer keeps its ERK count (they add up to round(0.1 * N))
        kept = sum(algo.pruner.layer_counts(algo.pruner.final_density).values())
    check_hard_masks(algo, net, opt, kept)
    check_mindir(net, next(ds.create_tuple_iterator())[0], tmp_path / method)
    if same_as_loop:   # no step is skipped: the exact loop computes the same, bit for bit
        ms.set_seed(3)
        other = PlainConvNet()
        loop = SparseTraining(other, nn.CrossEntropyLoss(), nn.Momentum(
            other.trainable_params(), learning_rate=0.05, momentum=0.9, weight_decay=1e-4),
            method=method, steps_per_epoch=6, epochs=EPOCHS, sparsity=0.9, **keys)
        for _ in range(EPOCHS):
            for image, label in ds.create_tuple_iterator(num_epochs=1):
                loop.step(image, label)
            loop.end_epoch()
        ours = {p.name: p.asnumpy() for p in model.train_network.get_parameters()}
        for param in loop.train_step.get_parameters():
            assert np.array_equal(param.asnumpy(), ours[param.name]), param.name


def test_psap_converts_to_the_compact_network_and_its_mindir(tmp_path):
    ds = toy_dataset()
    ms.set_seed(3)
    algo, net, opt, model = build("psap", build_resnet("resnet8", 10, 1), ds,
                                  input_shape=(1, 1, SIZE, SIZE), psap_ratio=0.4)
    model.train(EPOCHS, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)
    compact = algo.convert(net)
    meta = algo.outputs["last_compact.ckpt"][1]
    assert compact is not net and abs(meta["achieved_ratio"] - 0.4) <= 0.01
    # the user's network decides the compact one, not the recipe's default net (resnet20)
    assert meta["net"] == compact.arch == "resnet8" and len(meta["inner_widths"]) == 3
    widths = [int(p.shape[0]) for p in compact.trainable_params()
              if re.fullmatch(r"layer\d\.\d\.conv1\.weight", p.name)]
    assert widths == [w[0] for w in meta["inner_widths"]] and meta["compact_macs"] < meta["dense_macs"]
    # one pruning step per epoch end, after exactly that many optimizer steps; its record names the
    # iterations done, as train.py's metrics.jsonl does (it said one fewer)
    steps = [(step, seen) for event, step, seen in algo.steps_seen if event == "psap_step"]
    assert steps == [(6, 6), (12, 12), (18, 18)]
    image = next(ds.create_tuple_iterator())[0]
    net.set_train(False)
    np.testing.assert_allclose(compact(image).asnumpy(), net(image).asnumpy(), rtol=1e-4, atol=1e-4)
    check_mindir(compact, image, tmp_path / "psap")


def test_a_sink_size_that_does_not_divide_delta_is_one_line():
    ds = toy_dataset()
    algo, _, _, model = build("rpg", PlainConvNet(), ds, sparsity=0.9, delta=4)
    with pytest.raises(ConfigError) as err:
        algo.callbacks(ds, sink_size=3)
    message = str(err.value)
    assert "\n" not in message and message.startswith("sink_size 3 does not divide 4")
    assert algo.sink_size == 2        # divides delta and the run (18 iterations)
    algo.callbacks(ds, sink_size=2)
    algo.callbacks(ds, sink_size=4)   # updates at 4, 8, 12 are sink boundaries
    with pytest.raises(ConfigError, match=r"sink_size -1 \(= 6, the epoch\) does not divide 4"):
        algo.callbacks(ds, sink_size=-1)   # Model's default: a whole epoch (6) per sink
    # what Model.train reports when it does sink (CPU never does): checked at the start
    sinking = dict(network=algo.net, loss_fn=nn.CrossEntropyLoss(), optimizer=algo.masked,
                   dataset_sink_mode=True, batch_num=6, epoch_num=3, train_dataset=ds)
    with pytest.raises(ConfigError, match="sink_size 6 does not divide 4"):
        algo.begin_training(_Params(sinking))
    algo.begin_training(_Params(sinking, batch_num=2, epoch_num=9))
    # PSAP's default protection reads the first step after each pruning step: sink_size 1 only
    psap = PruningAlgorithm("psap", steps_per_epoch=6, epochs=3, input_shape=(1, 1, SIZE, SIZE))
    psap.apply(build_resnet("resnet8", 10, 1))
    assert psap.sink_size == 1
    raw = PruningAlgorithm("psap", steps_per_epoch=6, epochs=3, input_shape=(1, 1, SIZE, SIZE),
                           protect_energy="raw")
    raw.apply(build_resnet("resnet8", 10, 1))
    assert raw.sink_size == 6


class _Params(dict):
    """Model's callback parameters (an attribute dict), as Model.train fills them."""
    __getattr__ = dict.__getitem__


def _refusals():
    def fresh(**keys):
        return build("rpg", PlainConvNet(), toy_dataset(), sparsity=0.9, delta=4, **keys)

    def model_with_another_optimizer():
        algo, net, _, _ = fresh()
        other = ms.Model(net, nn.CrossEntropyLoss(), nn.Momentum(net.trainable_params(), 0.1, 0.9))
        ds = toy_dataset()
        other.train(1, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)

    def too_long():
        algo, _, _, model = fresh()
        ds = toy_dataset()
        model.train(EPOCHS + 1, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)

    def apply_twice():
        algo, net, _, _ = fresh()
        algo.apply(net)

    return [
        (lambda: PruningAlgorithm("rpg", steps_per_epoch=6, rpg_apply_update_step=True),
         ConfigError, "rpg_apply_update_step"),
        (lambda: PruningAlgorithm("psap", steps_per_epoch=6), ConfigError, "input_shape"),
        (lambda: PruningAlgorithm("rpg", steps_per_epoch=6, lr_max=0.1), ConfigError, "lr_max"),
        (lambda: PruningAlgorithm("rpg", steps_per_epoch=6).optimizer(None), ConfigError, "apply"),
        (apply_twice, ConfigError, "called already"),
        (lambda: fresh()[0].callbacks(toy_dataset(count=64)), ConfigError,
         "gives 4 batches per epoch.*steps_per_epoch=6"),
        (model_with_another_optimizer, ConfigError, "another optimizer"),
        (too_long, ConfigError, "would run 24 iterations after 0.*planned for 18"),
        (lambda: fresh()[0].convert(fresh()[1]), ConfigError, "network given to apply"),
        (lambda: (lambda a: a[0].convert(a[1]))(fresh()), TrainingError, "ran 0 of the 18"),
    ]


def test_convert_refuses_a_network_whose_output_no_longer_depends_on_its_input():
    """As the exact loop's finish(): an integer-input network whose small classifier the global
    threshold removes is a DeadNetworkError in convert, not a network to export."""
    from src.errors import DeadNetworkError
    from tests.test_api import TokenNet, token_batches
    ms.set_seed(3)
    batches = token_batches()
    ds = de.NumpySlicesDataset((np.concatenate([t.asnumpy() for t, _ in batches]),
                                np.concatenate([l.asnumpy() for _, l in batches])),
                               column_names=["tokens", "label"], shuffle=False).batch(16)
    algo, net, _, model = build("rpg", TokenNet(), ds, epochs=1, sparsity=0.9, delta=4)
    model.train(1, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)
    with pytest.raises(DeadNetworkError, match=r"no longer depends on its input.*classifier\.weight"):
        algo.convert(net)


def test_mistakes_are_one_line_errors():
    for make, kind, pattern in _refusals():
        with pytest.raises(kind, match=pattern) as err:
            make()
        assert "\n" not in str(err.value), str(err.value)


def test_pynative_mode_is_refused(pynative):
    with pytest.raises(ConfigError, match="graph mode"):
        PruningAlgorithm("gmp", steps_per_epoch=6)


def test_state_dict_with_the_train_network_continues_exactly(tmp_path):
    keys = {"sparsity": 0.9, "delta": 3, "lamb": 0}   # updates at 3, 6, 9 (two after the resume)
    ms.set_seed(3)
    whole, _, _, model = build("rpg", PlainConvNet(), toy_dataset(), epochs=2, **keys)
    model.train(2, toy_dataset(), callbacks=whole.callbacks(toy_dataset()), dataset_sink_mode=False)
    expected = {p.name: p.asnumpy() for p in model.train_network.get_parameters()}

    ms.set_seed(3)
    first, _, _, model = build("rpg", PlainConvNet(), toy_dataset(), epochs=2, **keys)
    model.train(1, toy_dataset(), callbacks=first.callbacks(toy_dataset()), dataset_sink_mode=False)
    ms.save_checkpoint(model.train_network, str(tmp_path / "epoch1.ckpt"))
    np.savez(tmp_path / "state.npz", **first.state_dict())   # as docs/API.md says to keep it

    ms.set_seed(7)   # another initialisation: everything must come from the checkpoint
    second, _, _, model = build("rpg", PlainConvNet(), toy_dataset(), epochs=2, **keys)
    ms.load_checkpoint(str(tmp_path / "epoch1.ckpt"), model.train_network)
    state = dict(np.load(tmp_path / "state.npz"))
    second.load_state_dict(state)
    model.train(2, toy_dataset(), callbacks=second.callbacks(toy_dataset()),
                dataset_sink_mode=False, initial_epoch=1)
    for param in model.train_network.get_parameters():
        assert np.array_equal(param.asnumpy(), expected[param.name]), param.name
    assert [e for e in first.events + second.events] == whole.events
    with pytest.raises(ConfigError, match="state has no"):
        second.load_state_dict({})


def _port():
    if os.environ.get("MASTER_PORT"):
        return os.environ["MASTER_PORT"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.skipif(shutil.which("msrun", path=os.path.dirname(sys.executable)) is None
                    and shutil.which("msrun") is None, reason="msrun not installed")
def test_two_data_parallel_workers_end_with_the_same_masks(tmp_path):
    """msrun + Model: 2 CPU workers, each on its own half of the data (about 50 s here)."""
    msrun = shutil.which("msrun", path=os.path.dirname(sys.executable)) or shutil.which("msrun")
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3", PYTHONWARNINGS="ignore")
    proc = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                           f"--master_port={_port()}", f"--log_dir={tmp_path / 'log'}", "--join=True",
                           "--cluster_time_out=120", os.path.join(ROOT, "tests", "model_train_worker.py"),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    logs = "".join(p.read_text()[-2000:] for p in (tmp_path / "log").glob("worker_*.log"))
    assert proc.returncode == 0, logs
    rank0, rank1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert list(rank0["update_steps"]) == [2, 4, 6]
    masks = [k for k in rank0.files if k.startswith("pruning_mask.")]
    assert len(masks) == 4 and rank0.files == rank1.files
    for name in rank0.files:   # masks, weights, momentum, BatchNorm statistics (averaged)
        assert np.array_equal(rank0[name], rank1[name]), f"workers differ in {name}"
    kept = sum(int(rank0[k].sum()) for k in masks)
    assert kept == round(0.1 * sum(rank0[k].size for k in masks))


def test_the_benchmark_reuses_finished_runs_and_refuses_another_recipe(tmp_path, monkeypatch):
    """benchmarks/model_train_vs_loop.py: finished runs (run.json + result.json) are reported
    without training again; a folder of another budget is one BenchmarkError line."""
    from benchmarks import model_train_vs_loop as bench
    from benchmarks.runs import BenchmarkError
    from src.config import parse_args
    from src.outputs import write_json_atomic
    from src.run_record import recipe_of, write_run
    work, results = tmp_path / "work", tmp_path / "results"
    budget = ["--train_samples", "512", "--epochs", "1", "--delta", "1", "--eval_samples", "128"]
    places = ["--work_dir", str(work), "--results_dir", str(results)]
    bench_args = ["--data_path", "somewhere", "--sparsities", "90", "--seeds", "1", "2", *budget, *places]
    namespace = type("Args", (), {"data_path": "somewhere", "train_samples": 512, "epochs": 1,
                                  "delta": 1, "eval_samples": 128})
    for path, top1 in (("loop", (0.50, 0.54)), ("model", (0.52, 0.60))):
        for seed, value in zip((1, 2), top1):
            out = work / f"s90_{path}_seed{seed}"
            cfg, _ = parse_args(bench.train_args(namespace, 90, seed, str(out)))
            write_run(str(out), "someid", recipe_of(cfg))
            write_json_atomic({"path": path, "sparsity_target": 0.9, "seed": seed, "top1": value,
                               "top5": 0.9, "sparsity": 0.9, "seconds": 10.0}, str(out / "result.json"))

    def no_training(*_, **__):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench, "call", no_training)
    monkeypatch.setattr(bench, "train", no_training)
    monkeypatch.setattr(sys, "argv", ["model_train_vs_loop.py", *bench_args])
    bench.main()
    rows = {r["path"]: r for r in json.load(open(results / "model_train_vs_loop.json"))["rows"]}
    assert rows["loop"]["top1_runs"] == [0.50, 0.54] and rows["model"]["seeds"] == [1, 2]
    assert rows["model"]["top1_mean"] == pytest.approx(0.56)
    assert rows["model"]["top1_std"] == pytest.approx(np.std([0.52, 0.60], ddof=1))
    assert "| 90 % | model | 2 | 56.00 +- 5.66 (52.0..60.0) | 52.0, 60.0 | 10 |" in \
        (results / "model_train_vs_loop.md").read_text()
    assert (results / "model_train_vs_loop.png").stat().st_size > 0
    monkeypatch.setattr(sys, "argv", ["model_train_vs_loop.py", *bench_args, "--epochs", "2"])
    with pytest.raises(BenchmarkError, match=r"epoch_size \(1 -> 2\)"):
        bench.main()
