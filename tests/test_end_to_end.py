"""The command contract, as a user runs it: train -> eval -> export -> reload, resume, pruning
targets, and bad input that must end with one clear line and leave earlier outputs intact."""
import json
import os
from types import SimpleNamespace

import numpy as np
import mindspore as ms
import pytest

from src.sparse_format import read_sparse
from tests.conftest import ROOT, TINY_NET, error_lines, run_in_one_process, run_script

DENSE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
GMP = os.path.join(ROOT, "config", "gmp_resnet20_fashion_mnist_s90.yaml")
SHORT = ["--epoch_size", "1", "--train_samples", "512", "--eval_samples", "256", *TINY_NET]


def mask_sparsity_and_leaks(path):
    """(fraction of zeros in the masks, number of non-zero weights where the mask is 0)."""
    params = {k: v for k, v in ms.load_checkpoint(str(path)).items() if not isinstance(v, str)}
    masks = {k[len("pruning_mask."):]: v.asnumpy() for k, v in params.items() if k.startswith("pruning_mask.")}
    zeros = sum(int((m == 0).sum()) for m in masks.values()) / sum(m.size for m in masks.values())
    leaks = sum(int(np.count_nonzero(params[n].asnumpy()[m == 0])) for n, m in masks.items())
    return zeros, leaks


def schedule_position(path):
    """(optimizer step counter, iterations run) stored in a training checkpoint."""
    raw = ms.load_checkpoint(str(path))
    return int(raw["global_step"].asnumpy().reshape(-1)[0]), int(json.loads(raw["meta.step"]))


def checkpoint_network(path):
    """The trained network (ResNet-8) rebuilt here from the checkpoint, in eval mode."""
    from src.models.resnet import build_resnet
    net = build_resnet(TINY_NET[1], 10, 1)
    ms.load_param_into_net(net, {k: v for k, v in ms.load_checkpoint(str(path)).items()
                                 if not k.startswith(("meta.", "moments.", "pruning_mask."))})
    net.set_train(False)
    return net


def prunable_zero_fraction(path):
    params = ms.load_checkpoint(str(path))
    arrays = [v.asnumpy() for k, v in params.items()
              if k.endswith("weight") and not k.startswith(("moments.", "pruning_mask."))
              and v.asnumpy().ndim in (2, 4)]
    return sum(int((a == 0).sum()) for a in arrays) / sum(a.size for a in arrays)


@pytest.fixture(scope="module")
def dense_run(fashion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    run_script("train.py", "--config_path", DENSE, "--data_path", fashion_dir, "--output_dir", out,
               *SHORT, "--log_interval", "4", "--batch_size", "32")
    return out


def test_contract_train_eval_export(dense_run, fashion_dir, tmp_path):
    ckpt = dense_run / "last.ckpt"
    assert ckpt.exists()
    log = (dense_run / "train.log").read_text()
    assert "img/s" in log and "lr" in log and "eval epoch 1" in log
    result_path = tmp_path / "r.json"
    run_script("eval.py", "--config_path", DENSE, "--ckpt", ckpt, "--data_path", fashion_dir,
               "--json_out", result_path, "--eval_samples", "256", *TINY_NET)
    result = json.loads(result_path.read_text())
    for key in ("top1", "top5", "loss", "sparsity", "params", "flops", "dense_params", "dense_flops"):
        assert key in result
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0 and result["sparsity"] < 0.01
    assert result["output_depends_on_input"] is True
    proc = run_script("export.py", "--config_path", DENSE, "--ckpt", ckpt, "--file_format", "MINDIR",
                      "--file_name", tmp_path / "net", *TINY_NET)
    assert proc.returncode == 0
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "net.mindir")))
    x = ms.Tensor(np.random.default_rng(5).standard_normal((1, 1, 28, 28)).astype(np.float32))
    net = checkpoint_network(ckpt)
    np.testing.assert_allclose(graph(x).asnumpy(), net(x).asnumpy(), rtol=0, atol=1e-4)
    proc = run_script("export.py", "--config_path", DENSE, "--ckpt", ckpt, "--file_format", "ONNX",
                      "--file_name", tmp_path / "net", *TINY_NET)
    assert (tmp_path / "net.onnx").stat().st_size > 4 * 75_290   # ResNet-8's float32 parameters


def test_air_off_ascend_is_a_clear_error(dense_run, tmp_path):
    proc = run_script("export.py", "--config_path", DENSE, "--ckpt", dense_run / "last.ckpt",
                      "--file_format", "AIR", "--file_name", tmp_path / "n", *TINY_NET, check=False)
    assert proc.returncode == 2 and "Ascend" in error_lines(proc)[0]


def test_rpg_contract_reaches_exact_sparsity(fashion_dir, tmp_path):
    proc = run_script("train.py", "--config_path", RPG, "--data_path", fashion_dir, "--output_dir",
                      tmp_path, *SHORT, "--batch_size", "32", "--delta", "2")
    assert "rpg mask update" in proc.stdout and "rank loss" in proc.stdout
    # 16 iterations, 6 of them mask updates without an optimizer step: the learning-rate schedule
    # is still indexed by iteration (it used to fall one step behind per update)
    assert schedule_position(tmp_path / "last.ckpt") == (16, 16)
    # the masks hold exactly round(0.9 N) zeros; a kept weight may also be 0 (regrown, no gradient)
    zeros, leaks = mask_sparsity_and_leaks(tmp_path / "last.ckpt")
    assert abs(zeros - 0.9) < 1e-5 and leaks == 0
    assert 0.9 - 1e-5 < prunable_zero_fraction(tmp_path / "last.ckpt") < 0.9 + 1e-4
    report = tmp_path / "layers.png"
    proc = run_script("eval.py", "--config_path", RPG, "--ckpt", tmp_path / "last.ckpt", "--data_path",
                      fashion_dir, "--eval_samples", "256", "--report_png", report,
                      "--json_out", tmp_path / "r.json", *TINY_NET)
    assert "rel.rank" in proc.stdout and report.stat().st_size > 1000
    result = json.loads((tmp_path / "r.json").read_text())
    layers = result["layers"]
    assert len(layers) == 8 and all(0 <= row["relative_rank"] <= 1 for row in layers)
    # params count the dense shapes; the nonzero count is what the 90 % masks leave (BN and biases kept)
    net = checkpoint_network(tmp_path / "last.ckpt")
    assert result["params"] == result["dense_params"] and result["nonzero_params"] < 0.2 * result["params"]
    assert result["nonzero_params"] == sum(np.count_nonzero(p.asnumpy()) for p in net.trainable_params())
    assert f"nonzero params {result['nonzero_params']:,} (params/MACs count the masks' zeros)" in proc.stdout
    proc = run_script("export.py", "--config_path", RPG, "--ckpt", tmp_path / "last.ckpt",
                      "--file_format", "SPARSE", "--file_name", tmp_path / "s", *TINY_NET)
    restored, _ = read_sparse(str(tmp_path / "s.sparse.npz"))
    for name, value in ms.load_checkpoint(str(tmp_path / "last.ckpt")).items():
        if name in restored:
            want = np.where(value.asnumpy() == 0, np.float32(0.0), value.asnumpy())
            assert np.array_equal(restored[name].view(np.uint32), want.view(np.uint32)), name
    assert len(restored) == len(list(checkpoint_network(tmp_path / "last.ckpt").get_parameters()))
    assert (tmp_path / "s.sparse.npz").stat().st_size < 0.3 * (tmp_path / "last.ckpt").stat().st_size


def test_rpg_applied_update_step_keeps_the_schedule(fashion_dir, tmp_path):
    # rpg_apply_update_step: the mask-update iterations also take an optimizer step
    run_script("train.py", "--config_path", RPG, "--data_path", fashion_dir, "--output_dir", tmp_path,
               "--epoch_size", "1", "--train_samples", "256", "--eval_samples", "64", "--batch_size", "32",
               "--delta", "2", "--rpg_apply_update_step", "true", *TINY_NET)
    assert schedule_position(tmp_path / "last.ckpt") == (8, 8)
    zeros, leaks = mask_sparsity_and_leaks(tmp_path / "last.ckpt")
    assert abs(zeros - 0.9) < 1e-5 and leaks == 0


def test_gmp_reaches_target_and_eval_reports_it_over_the_pruned_weights(fashion_dir, tmp_path):
    """GMP reaches its target exactly. With prune_exclude the target (and train.py's figure) is the
    sparsity of the pruned weights; eval.py reports the same number, and the one over every conv/FC
    weight beside it (its layer figure in the format of the file's extension)."""
    keys = ["--config_path", GMP, "--data_path", fashion_dir, "--eval_samples", "64", "--batch_size", "32",
            *TINY_NET]
    proc = run_script("train.py", *keys, "--output_dir", tmp_path, "--epoch_size", "1", "--prune_exclude",
                      "fc.weight", "--train_samples", "512", "--gmp_frequency", "3")
    assert "gmp mask update" in proc.stdout and "sparsity 0.9000 best" in proc.stdout   # its eval line
    assert schedule_position(tmp_path / "last.ckpt") == (16, 16)
    # evaluated with the recipe file alone (the README's way): the run's recorded selection counts
    proc = run_script("eval.py", *keys, "--ckpt", tmp_path / "last.ckpt", "--json_out", tmp_path / "e.json",
                      "--report_png", tmp_path / "layers.pdf")
    assert (tmp_path / "layers.pdf").read_bytes().startswith(b"%PDF")   # the extension's format
    result = json.loads((tmp_path / "e.json").read_text())
    assert abs(result["sparsity"] - 0.9) < 1e-5
    assert 0 < result["sparsity_all_conv_fc"] < result["sparsity"]
    assert f"sparsity {result['sparsity']:.4f} (of the 7 pruned weights" in proc.stdout


def test_resume_continues_identically(fashion_dir, tmp_path):
    common = ["--config_path", RPG, "--data_path", fashion_dir, "--train_samples", "256",
              "--eval_samples", "64", "--batch_size", "32", "--delta", "3", "--eval_interval", "0",
              "--num_parallel_workers", "1", *TINY_NET]
    # The whole 2-epoch run, keeping a mid-epoch checkpoint; continuing the same schedule from that
    # checkpoint in a new folder must end bit-identical to it
    run_script("train.py", *common, "--epoch_size", "2", "--output_dir", tmp_path / "full",
               "--save_checkpoint_steps", "5", "--keep_checkpoint_max", "10")
    ckpts = sorted((tmp_path / "full").glob("*_step5.ckpt"))
    assert ckpts, "no mid-epoch checkpoint"
    proc = run_script("train.py", *common, "--epoch_size", "2", "--output_dir", tmp_path / "resumed",
                      "--resume_ckpt", ckpts[0])
    assert "resumed from" in proc.stdout
    full = ms.load_checkpoint(str(tmp_path / "full" / "last.ckpt"))
    resumed = ms.load_checkpoint(str(tmp_path / "resumed" / "last.ckpt"))
    for name, value in full.items():
        if isinstance(value, str) or name.startswith("meta."):
            continue
        # bit-exact: the same steps on the same batches from the same state
        assert np.array_equal(resumed[name].asnumpy(), value.asnumpy()), name


# --- bad input --------------------------------------------------------------------------------

def _one_line_failure(code, stderr, *words):
    assert code != 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(SimpleNamespace(stderr=stderr))
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_inputs_leave_outputs_intact(dense_run, fashion_dir, tmp_path):
    """Each a one-line failure leaving every existing file as it was (all run in one process:
    they fail before training, where MindSpore's import is most of their cost)."""
    ckpt = dense_run / "last.ckpt"
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"this is not an IDX file at all")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage" * 100)
    json_out = tmp_path / "r.json"
    json_out.write_text("{\"keep\": 1}")
    train = ["train.py", "--config_path", DENSE, "--output_dir", tmp_path / "fresh", *SHORT]
    evaluate = ["eval.py", "--config_path", DENSE, "--data_path", fashion_dir, "--eval_samples", "64", *TINY_NET]
    cases = {  # name: (command, words the one line names)
        "no-data-folder": ([*train, "--data_path", tmp_path / "nowhere"], ["nowhere"]),
        "empty-data-folder": ([*train, "--data_path", tmp_path / "empty"], ["empty"]),
        "not-idx-files": ([*train, "--data_path", bad], ["bad"]),
        "negative-batch-size": ([*train, "--data_path", fashion_dir, "--batch_size", "-1"], ["batch_size"]),
        "missing-checkpoint": ([*evaluate, "--ckpt", tmp_path / "missing.ckpt"], ["not found"]),
        "eval-other-net": ([*evaluate[:-2], "--ckpt", ckpt, "--net", "resnet32"], ["resnet"]),
        # the checkpoint's recipe names the architecture: the error says what to pass
        "eval-other-width": ([*evaluate, "--ckpt", ckpt, "--width_multiplier", "2"], ["--width_multiplier 1.0"]),
        "junk-checkpoint": ([*evaluate, "--ckpt", junk], ["junk.ckpt"]),
        "junk-checkpoint-json-out": ([*evaluate, "--ckpt", junk, "--json_out", json_out], []),
        "resume-from-junk": ([*train, "--data_path", fashion_dir, "--resume_ckpt", junk], ["junk.ckpt"]),
        # a fresh run into the finished run's folder is refused before anything is written
        "fresh-run-into-a-finished-one": (["train.py", "--config_path", DENSE, "--output_dir", dense_run, *SHORT,
                                           "--data_path", fashion_dir], ["already holds"]),
    }
    results = run_in_one_process([[name, command, [tmp_path, dense_run]] for name, (command, _) in cases.items()])
    for name, (_, words) in cases.items():
        code, _, stderr, unchanged = results[name]
        _one_line_failure(code, stderr, *words)
        assert unchanged, f"{name} changed a file that existed before it"
    assert json.loads(json_out.read_text()) == {"keep": 1}
