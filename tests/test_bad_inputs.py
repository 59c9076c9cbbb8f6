"""Bad input, table-driven: every case ends with one line on stderr, the documented exit code, no
traceback, and leaves every file that existed before the command byte-identical.

MindSpore's own log lines are switched off (GLOG_v=4), as the README tells users who want a quiet
console; what remains on stderr is the project's one line.
"""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, digest

DENSE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
RIGL = os.path.join(ROOT, "config", "rigl_erk_resnet20_fashion_mnist_s90.yaml")
TINY = ["--epoch_size", "1", "--train_samples", "64", "--batch_size", "32", "--eval_samples", "32",
        "--num_parallel_workers", "1"]


def run(args, cwd=ROOT, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore")
    for name in ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE"):
        env.pop(name, None)
    env.update(env_extra or {})
    command = [sys.executable, *args] if args[0].endswith(".py") else ["bash", *args]
    return subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)


def snapshot(*folders):
    """sha256 of every file under the folders."""
    found = {}
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(base, name)
                found[path] = digest(path)
    return found


@pytest.fixture(scope="module")
def finished_run(fashion_dir, tmp_path_factory):
    """A finished tiny dense run (2 steps) to point bad commands at."""
    out = tmp_path_factory.mktemp("finished")
    proc = run(["train.py", "--config_path", DENSE, "--data_path", fashion_dir, "--output_dir", out, *TINY,
                "--scratch_warning", "published numbers need a pre-trained net"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a recipe whose published number needs pre_trained says so when run without it
    assert "training from scratch (no pre_trained): published numbers need" in proc.stdout
    return out


@pytest.fixture
def places(tmp_path, fashion_dir, finished_run):
    """Paths the cases refer to; files of the wrong kind, read-only files, a broken image folder."""
    (tmp_path / "a_file").write_text("x")
    readonly = tmp_path / "readonly.json"
    readonly.write_text("{}")
    readonly.chmod(stat.S_IRUSR)
    (tmp_path / "existing.sparse.npz").write_bytes(b"an earlier export")
    (tmp_path / "existing.mindir").write_bytes(b"an earlier export")
    (tmp_path / "dup.yaml").write_text("net: resnet20\nbatch_size: 32\nbatch_size: 64\n")
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(
                    tmp_path / "imagenet" / split / cls / f"{i}.JPEG")
    (tmp_path / "imagenet" / "train" / "b" / "1.JPEG").write_bytes(b"this is not a jpeg" * 20)
    (tmp_path / "gpu.yaml").write_text(open(DENSE).read().replace("device_target: CPU", "device_target: GPU"))
    return {"tmp": tmp_path, "data": fashion_dir, "run": finished_run}


def train(*extra, config=RPG, out="{tmp}/out"):
    return ["train.py", "--config_path", config, "--data_path", "{data}", "--output_dir", out, *TINY, *extra]


def evaluate(*extra):
    return ["eval.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt", *extra]


# (id, command, exit code, a fragment of the one stderr line)
# Mistakes in the recipe or the command line, caught while parsing, before MindSpore starts: run
# in this process through the entry script's own main() and error handling (fast).
PARSE_CASES = [
    ("lamb-nan", train("--lamb", "nan"), 2, "'lamb'"),
    ("sparsity-nan", train("--sparsity", "nan"), 2, "'sparsity'"),
    ("alpha-nan", train("--alpha", "nan"), 2, "'alpha'"),
    ("lr-max-nan", train("--lr_max", "nan"), 2, "'lr_max'"),
    ("lr-max-inf", train("--lr_max", "inf"), 2, "'lr_max'"),
    ("loss-scale-nan", train("--loss_scale", "NaN"), 2, "'loss_scale'"),
    ("key-twice-command-line", train("--batch_size", "16"), 2, "given twice"),
    ("key-twice-yaml", ["train.py", "--config_path", "{tmp}/dup.yaml"], 2, "given twice"),
    ("width-on-imagenet-net", train("--net", "resnet18", "--width_multiplier", "2"), 2, "width_multiplier"),
    ("width-rounds-to-zero", train("--width_multiplier", "0.01"), 2, "width_multiplier"),
    ("channels-mismatch", train("--in_channels", "3"), 2, "in_channels"),
    ("distribute-without-launcher", train("--run_distribute", "true"), 2, "launcher"),
    ("output-dir-is-a-file", train(out="{tmp}/a_file"), 2, "not a directory"),
    ("output-dir-under-a-file", train(out="{tmp}/a_file/sub"), 2, "is a file"),
    ("output-dir-empty", train(out=""), 2, "output_dir"),
    ("pynative-training", train("--mode", "pynative"), 2, "graph mode"),
    ("allow-changes-unknown-key", train("--resume_allow_changes", "sparsty"), 2, "sparsity"),
    ("eval-json-out-is-a-dir", evaluate("--json_out", "{tmp}"), 2, "is a directory"),
    ("eval-json-and-png-same-file", evaluate("--json_out", "{tmp}/r.out", "--report_png", "{tmp}/r.out"), 2,
     "same file"),
    ("eval-json-out-missing-dir", evaluate("--json_out", "{tmp}/missing/r.json"), 2, "does not exist"),
    ("eval-json-out-exists", evaluate("--json_out", "{tmp}/readonly.json"), 2, "--overwrite true"),
    # the run's recipe built option-A shortcuts: a B network would get fresh 1x1 shortcut convs
    ("eval-other-architecture", evaluate("--shortcut", "B"), 1, "--shortcut A"),
    ("export-other-architecture", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                   "--shortcut", "B", "--file_name", "{tmp}/arch"], 1, "--shortcut A"),
    ("export-suffix-any-case", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                "--file_name", "{tmp}/existing.MINDIR"], 2, "--overwrite true"),
    ("export-file-name-missing-dir", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                      "--file_name", "{tmp}/missing/net"], 2, "does not exist"),
    ("export-file-name-exists", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                 "--file_format", "SPARSE", "--file_name", "{tmp}/existing"], 2, "exists"),
    ("export-file-name-with-suffix-exists", ["export.py", "--config_path", DENSE, "--ckpt",
                                             "{run}/last.ckpt", "--file_name", "{tmp}/existing.mindir"],
     2, "exists"),
    ("export-sparse-name-with-suffix-exists", ["export.py", "--config_path", DENSE, "--ckpt",
                                               "{run}/last.ckpt", "--file_format", "SPARSE",
                                               "--file_name", "{tmp}/existing.sparse.npz"], 2, "exists"),
    ("export-overwrite-not-bool", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                   "--overwrite", "maybe"], 2, "--overwrite"),
    ("export-fold-bn-not-bool", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                 "--file_name", "{tmp}/net", "--fold_bn", "maybe"], 2, "--fold_bn"),
    ("export-fold-bn-sparse", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                               "--file_format", "SPARSE", "--file_name", "{tmp}/net", "--fold_bn", "true"],
     2, "never folded"),
    ("amp-level-unknown", train("--amp_level", "O7"), 2, "'amp_level'"),
    ("device-id-negative", train("--device_id", "-1"), 2, "'device_id'"),
    ("eval-zoo-flag-and-ckpt", evaluate("--checkpoint_file_path", "{run}/last.ckpt"), 2, "given twice"),
    ("density-distribution-unknown", train("--density_distribution", "layer"), 2, "'density_distribution'"),
    ("dense-first-layer-with-global", train("--dense_first_layer", "true"), 2, "'dense_first_layer'"),
    ("rigl-global-constant-schedule", train("--density_distribution", "global", config=RIGL), 2,
     "'density_distribution'"),
    ("gmp-scope-removed", train("--gmp_scope", "layer"), 2, "gmp_scope"),
    ("rank-loss-layers-unknown", train("--rank_loss_layers", "dense"), 2, "'rank_loss_layers'"),
]
# Mistakes that need the data, the network or a checkpoint to be seen: real processes.
RUN_CASES = [
    ("iterative-end-after-end", train("--T_end_percent", "0.5", "--iterative_T_end_percent", "0.6"), 2,
     "iterative_T_end_percent"),
    ("no-update-fits", train("--delta", "1000"), 2, "T_end_percent"),
    ("prune-include-selects-nothing", train("--prune_include", "nothing*"), 2, "prune_include"),
    ("prune-exclude-typo", train("--prune_exclude", "fc.wieght"), 2, "fc.wieght"),
    ("rigl-no-drop-and-grow-fits", train("--delta", "1000", config=RIGL), 2, "no drop-and-grow update fits"),
    ("dense-first-layer-above-the-density", train("--density_distribution", "uniform", "--dense_first_layer",
                                                  "true", "--sparsity", "0.9999"), 2, "too low"),
    ("train-samples-beyond-data", train("--train_samples", "1000000"), 2, "train_samples"),
    ("device-missing", train("--device_target", "GPU"), 2, "GPU"),
    ("fresh-run-into-finished-run", train(config=DENSE, out="{run}"), 2, "already holds"),
    ("resume-with-other-recipe", train("--resume_ckpt", "auto", "--delta", "1", "--T_end_percent", "1",
                                       "--iterative_T_end_percent", "1", out="{run}"), 2, "prune_method"),
    ("resume-other-sparsity", train("--resume_ckpt", "{run}/last.ckpt", "--sparsity", "0.5", config=DENSE,
                                    out="{run}"), 2, "sparsity"),
    ("undecodable-image", ["train.py", "--config_path", DENSE, "--dataset", "imagenet", "--net", "resnet18",
                           "--in_channels", "3", "--image_size", "32", "--batch_size", "4", "--data_path",
                           "{tmp}/imagenet", "--output_dir", "{tmp}/out", "--shortcut", "B"], 1, "1.JPEG"),
    ("output-dir-cannot-be-created", train(out="/proc/self/no_such_dir"), 1, "/proc/self/no_such_dir"),
    ("allowed-change-on-a-complete-run", train("--resume_ckpt", "auto", "--sparsity", "0.5",
                                               "--resume_allow_changes", "sparsity", config=DENSE, out="{run}"),
     2, "already complete"),
    ("export-name-mindspore-refuses", ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt",
                                       "--file_name", "{tmp}/net+v2"], 1, "net+v2"),
    ("psap-width-multiple-unreachable", train("--psap_width_multiple", "32",
                                              config=os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml")),
     2, "psap_width_multiple"),
    ("eval-missing-checkpoint", ["eval.py", "--config_path", DENSE, "--data_path", "{data}",
                                 "--ckpt", "{tmp}/nothing.ckpt"], 1, "not found"),
    ("device-id-beyond-devices", train("--device_id", "7"), 2, "'device_id'"),
    ("train-eval-data-path-missing", train("--eval_data_path", "{tmp}/no_val"), 1, "eval_data_path"),
    ("eval-eval-data-path-missing", evaluate("--data_path", "{data}", "--eval_data_path", "{tmp}/no_val"), 1,
     "eval_data_path"),
]


def in_process(args, capsys, monkeypatch):
    """Run an entry script's main() as its ``__main__`` does; returns (exit code, stderr)."""
    import importlib
    module = importlib.import_module(args[0][:-len(".py")])
    monkeypatch.setattr(sys, "argv", args)
    from src.cli import run as run_entry
    with pytest.raises(SystemExit) as stop:
        run_entry(module.main)
    return stop.value.code, capsys.readouterr().err


def check_one_line(code, stderr, want_code, fragment):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == want_code, stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert fragment in lines[0], lines[0]


def unchanged(places, before):
    after = snapshot(places["tmp"], places["run"])
    return {path: after.get(path) for path in before} == before


@pytest.mark.parametrize("command,code,fragment", [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_recipe_mistake_is_one_line(places, command, code, fragment, capsys, monkeypatch):
    args = [str(a).format(**places) for a in command]
    before = snapshot(places["tmp"], places["run"])
    check_one_line(*in_process(args, capsys, monkeypatch), code, fragment)
    assert unchanged(places, before)


@pytest.mark.parametrize("command,code,fragment", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_input_is_one_line(places, command, code, fragment):
    args = [str(a).format(**places) for a in command]
    before = snapshot(places["tmp"], places["run"])
    proc = run(args)
    check_one_line(proc.returncode, proc.stderr, code, fragment)
    assert unchanged(places, before)


def test_launcher_keeps_the_recipes_device(places):
    # the recipe says GPU and the user names no device: the launcher must not train on CPU instead
    proc = run(["scripts/run_standalone_train.sh", "{tmp}/gpu.yaml".format(**places), "--data_path",
                places["data"], "--output_dir", str(places["tmp"] / "gpu_out"), *TINY])
    assert proc.returncode == 2, proc.stderr
    assert "GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((places["tmp"] / "gpu_out").glob("*.ckpt"))


def test_run_eval_never_replaces_an_earlier_result(places, tmp_path):
    folder = tmp_path / "ckpt_dir"
    folder.mkdir()
    ckpt = folder / "last.ckpt"
    ckpt.write_bytes((places["run"] / "last.ckpt").read_bytes())
    (folder / "eval.json").write_text('{"top1": 0.5}\n')
    (folder / "eval.log").write_text("earlier evaluation\n")
    before = snapshot(folder)
    failed = run(["scripts/run_eval.sh", DENSE, str(ckpt), "--data_path", str(tmp_path / "no_data")])
    assert failed.returncode == 1 and "data_path" in failed.stderr
    assert unchanged({"tmp": folder, "run": folder}, before)
    assert (folder / "eval_failed.log").exists()
    done = run(["scripts/run_eval.sh", DENSE, str(ckpt), "--data_path", places["data"],
                "--eval_samples", "32"])
    assert done.returncode == 0, done.stderr
    assert unchanged({"tmp": folder, "run": folder}, before)
    assert json.loads((folder / "eval_2.json").read_text())["samples"] == 32


def test_deliberate_recipe_change_and_complete_run(places, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(places["run"], out)
    base = ["train.py", "--config_path", DENSE, "--data_path", places["data"], "--output_dir", str(out),
            "--train_samples", "64", "--batch_size", "32", "--eval_samples", "32", "--resume_ckpt", "auto"]
    # the finished run resumed as it was: nothing to train, nothing but a log line written
    def results():
        return {k: v for k, v in snapshot(out).items() if not k.endswith("train.log")}
    before = results()
    proc = run([*base, "--epoch_size", "1"])
    assert proc.returncode == 0 and "already complete" in proc.stdout, proc.stderr
    assert results() == before
    # more epochs change the schedule: refused, unless allowed on purpose
    proc = run([*base, "--epoch_size", "2"])
    assert proc.returncode == 2 and "epoch_size" in proc.stderr
    proc = run([*base, "--epoch_size", "2", "--resume_allow_changes", "epoch_size"])
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "step 4/4" in proc.stdout
