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

from tests.conftest import ROOT, TINY_NET, entry_env, run_in_one_process, snapshot

DENSE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
RIGL = os.path.join(ROOT, "config", "rigl_erk_resnet20_fashion_mnist_s90.yaml")
TINY = ["--epoch_size", "1", "--train_samples", "64", "--batch_size", "32", "--eval_samples", "32",
        "--num_parallel_workers", "1"]


def run(args, cwd=ROOT, env_extra=None):
    env = entry_env(**(env_extra or {}))
    command = [sys.executable, *args] if args[0].endswith(".py") or args[0] == "-m" else ["bash", *args]
    return subprocess.run(command, cwd=cwd, env=env, text=True, capture_output=True, timeout=300)


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


@pytest.fixture(scope="module")
def weights_only(finished_run, tmp_path_factory):
    """Checkpoints that hold weights but no training run: one as scripts/convert_*.py write them
    (metadata converted_from), one with no metadata at all (e.g. a model-zoo checkpoint)."""
    import mindspore as ms
    from src import checkpoint
    folder = tmp_path_factory.mktemp("weights_only")
    params, _, _ = checkpoint.load(str(finished_run / "last.ckpt"))
    weights = [p for name, p in params.items() if not name.startswith(("moments.", "pruning_mask."))
               and name not in ("global_step", "learning_rate", "momentum")]
    checkpoint.save_atomic(weights, str(folder / "converted.ckpt"),
                           meta={"net": "resnet20", "num_classes": 10, "converted_from": "resnet20.pth"})
    ms.save_checkpoint(weights, str(folder / "zoo.ckpt"))
    # a training checkpoint whose classifier went NaN (its run stopped on the loss; a copy damaged)
    params, meta, _ = checkpoint.load(str(finished_run / "last.ckpt"))
    broken = [ms.Parameter(np.full(p.shape, np.nan, np.float32), name=n) if n == "fc.weight" else p
              for n, p in params.items()]
    checkpoint.save_atomic(broken, str(folder / "nan.ckpt"), meta=meta)
    return folder


def device_linked_data(folder, fashion_dir):
    """A Fashion-MNIST folder whose training images file is a link to /dev/zero."""
    folder.mkdir()
    for name in os.listdir(fashion_dir):
        if not name.startswith("train-images"):
            os.symlink(os.path.join(fashion_dir, name), folder / name)
    os.symlink("/dev/zero", folder / "train-images-idx3-ubyte")
    return folder


@pytest.fixture
def places(tmp_path, fashion_dir, finished_run, weights_only):
    return make_places(tmp_path, fashion_dir, finished_run, weights_only)


def make_places(tmp_path, fashion_dir, finished_run, weights_only):
    """Paths the cases refer to; files of the wrong kind, read-only files, a broken image folder."""
    (tmp_path / "a_file").write_text("x")
    readonly = tmp_path / "readonly.json"
    readonly.write_text("{}")
    readonly.chmod(stat.S_IRUSR)
    (tmp_path / "existing.sparse.npz").write_bytes(b"an earlier export")
    (tmp_path / "existing.mindir").write_bytes(b"an earlier export")
    for name in ("existing.ckpt", "existing.png", "existing.csv"):
        (tmp_path / name).write_bytes(b"an earlier result")
    np.savez(tmp_path / "weights.npz", **{"fc.weight": np.zeros((10, 4), np.float32)})
    plotted = tmp_path / "plotted"   # a run folder already holding the default outputs
    plotted.mkdir()
    (plotted / "metrics.jsonl").write_bytes((finished_run / "metrics.jsonl").read_bytes())
    (plotted / "run.png").write_bytes(b"an earlier picture")
    (plotted / "layerwise_ranks.csv").write_bytes(b"an earlier table")
    (tmp_path / "dup.yaml").write_text("net: resnet20\nbatch_size: 32\nbatch_size: 64\n")
    (tmp_path / "listkey.yaml").write_text("net: resnet20\n? [batch_size, lr]\n: 32\n")
    (tmp_path / "listvalue.yaml").write_text("net: resnet20\noutput_dir: [a, b]\n")
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(
                    tmp_path / "imagenet" / split / cls / f"{i}.JPEG")
    (tmp_path / "imagenet" / "train" / "b" / "1.JPEG").write_bytes(b"this is not a jpeg" * 20)
    (tmp_path / "gpu.yaml").write_text(open(DENSE).read().replace("device_target: CPU", "device_target: GPU"))
    device_linked_data(tmp_path / "zero_data", fashion_dir)
    return {"tmp": tmp_path, "data": fashion_dir, "run": finished_run, "weights": weights_only}


def train(*extra, config=RPG, out="{tmp}/out"):
    return ["train.py", "--config_path", config, "--data_path", "{data}", "--output_dir", out, *TINY, *extra]


def resume_dense(batch_size="32", train_samples="64", *extra):
    """The finished dense run (TINY) continued with another batch_size / train_samples."""
    return ["train.py", "--config_path", DENSE, "--data_path", "{data}", "--output_dir", "{run}",
            "--epoch_size", "1", "--train_samples", train_samples, "--batch_size", batch_size,
            "--eval_samples", "32", "--num_parallel_workers", "1", "--resume_ckpt", "auto", *extra]


def evaluate(*extra):
    return ["eval.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt", *extra]


def export(*extra):
    return ["export.py", "--config_path", DENSE, "--ckpt", "{run}/last.ckpt", *extra]


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
    ("eval-report-png-unknown-format", evaluate("--report_png", "{tmp}/r.tiff"), 2, "not .tiff"),
    ("eval-json-out-missing-dir", evaluate("--json_out", "{tmp}/missing/r.json"), 2, "does not exist"),
    ("eval-json-out-exists", evaluate("--json_out", "{tmp}/readonly.json"), 2, "--overwrite true"),
    # the run's recipe built option-A shortcuts: a B network would get fresh 1x1 shortcut convs
    ("eval-other-architecture", evaluate("--shortcut", "B"), 1, "--shortcut A"),
    ("export-other-architecture", export("--shortcut", "B", "--file_name", "{tmp}/arch"), 1, "--shortcut A"),
    ("export-suffix-any-case", export("--file_name", "{tmp}/existing.MINDIR"), 2, "--overwrite true"),
    ("export-file-name-missing-dir", export("--file_name", "{tmp}/missing/net"), 2, "does not exist"),
    ("export-file-name-exists", export("--file_format", "SPARSE", "--file_name", "{tmp}/existing"), 2,
     "exists"),
    ("export-file-name-with-suffix-exists", export("--file_name", "{tmp}/existing.mindir"),
     2, "exists"),
    ("export-sparse-name-with-suffix-exists", export("--file_format", "SPARSE", "--file_name",
                                                     "{tmp}/existing.sparse.npz"), 2, "exists"),
    ("export-overwrite-not-bool", export("--overwrite", "maybe"), 2, "--overwrite"),
    ("export-fold-bn-not-bool", export("--file_name", "{tmp}/net", "--fold_bn", "maybe"), 2, "--fold_bn"),
    ("export-fold-bn-sparse", export("--file_format", "SPARSE", "--file_name", "{tmp}/net", "--fold_bn", "true"),
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
    ("yaml-list-as-key", train(config="{tmp}/listkey.yaml"), 2, "line 2 is a list, not a name"),
    ("yaml-list-for-a-text-key", train(config="{tmp}/listvalue.yaml"), 2,
     "config key 'output_dir': got ['a', 'b'], expected a value of type str"),
    ("export-file-name-ends-with-slash", export("--file_name", "{tmp}/"), 2, "is a folder"),
    ("export-file-name-of-another-format", export("--file_name", "{tmp}/net.onnx"), 2, "--file_format ONNX"),
    ("export-file-name-is-a-folder", export("--file_format", "SPARSE", "--file_name", "{tmp}"), 2, "is a folder"),
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
    # nothing a user named is replaced without --overwrite, by any script (src/outputs.refuse_existing)
    ("convert-torchvision-output-exists", ["scripts/convert_torchvision_resnet50.py", "--input",
                                           "{tmp}/weights.npz", "--output", "{tmp}/existing.ckpt"],
     2, "--overwrite true"),
    ("convert-zoo-output-exists", ["scripts/convert_zoo_resnet50.py", "--input", "{run}/last.ckpt",
                                   "--output", "{tmp}/existing.ckpt"], 2, "--overwrite true"),
    ("plot-run-out-exists", ["-m", "benchmarks.plot_run", "{run}", "--out", "{tmp}/existing.png"], 2,
     "--overwrite true"),
    ("plot-run-out-unknown-format", ["-m", "benchmarks.plot_run", "{tmp}/plotted", "--out", "{tmp}/r.gif"],
     2, "not .gif"),
    ("plot-run-default-out-exists", ["-m", "benchmarks.plot_run", "{tmp}/plotted"], 2, "run.png exists"),
    ("plot-run-overwrite-not-bool", ["-m", "benchmarks.plot_run", "{tmp}/plotted", "--overwrite", "maybe"], 2,
     "--overwrite"),
    ("layer-ranks-csv-out-exists", ["-m", "benchmarks.layer_ranks_csv", "{run}", "--out", "{tmp}/existing.csv"],
     2, "--overwrite true"),
    ("layer-ranks-csv-default-out-exists", ["-m", "benchmarks.layer_ranks_csv", "{tmp}/plotted"], 2,
     "layerwise_ranks.csv exists"),
    # --name is a file under benchmarks/results: "../x" wrote beside the repository
    ("benchmark-name-is-a-path", ["-m", "benchmarks.extreme_sparsity", "--data_path", "{data}", "--name",
                                  "../escaped"], 2, "'../escaped' is not a file name under benchmarks/results"),
    ("benchmark-name-has-a-newline", ["-m", "benchmarks.extreme_sparsity", "--data_path", "{data}", "--name",
                                      "a\nb"], 2, "no control characters"),
    ("psap-benchmark-name-is-a-path", ["-m", "benchmarks.psap_benchmark", "--data_path", "{data}", "--name",
                                       "sub/x"], 2, "'sub/x' is not a file name"),
    ("psap-width-multiple-unreachable", train("--psap_width_multiple", "32",
                                              config=os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml")),
     2, "psap_width_multiple"),
    ("eval-missing-checkpoint", ["eval.py", "--config_path", DENSE, "--data_path", "{data}",
                                 "--ckpt", "{tmp}/nothing.ckpt"], 1, "not found"),
    ("device-id-beyond-devices", train("--device_id", "7"), 2, "'device_id'"),
    ("train-eval-data-path-missing", train("--eval_data_path", "{tmp}/no_val"), 1, "eval_data_path"),
    ("eval-eval-data-path-missing", evaluate("--data_path", "{data}", "--eval_data_path", "{tmp}/no_val"), 1,
     "eval_data_path"),
    # a classifier with fewer outputs than the labels: not a GatherDGradV2 traceback in the loss
    ("num-classes-below-labels", train("--num_classes", "5", config=DENSE), 2, "set --num_classes 10"),
    # another steps-per-epoch cannot continue: said at once, allowed or not (no advice to allow it)
    ("resume-other-batch-size", resume_dense("16"), 2,
     "batch_size (32 -> 16)): a run cannot continue with another number of steps per epoch"),
    ("resume-other-batch-size-allowed", resume_dense("16", "64", "--resume_allow_changes", "batch_size"), 2,
     "another number of steps per epoch"),
    ("resume-other-train-samples", resume_dense("32", "128"), 2,
     "another number of steps per epoch"),
    ("amp-float16-overflow", train("--amp_level", "O2", "--loss_scale", "16777216", config=DENSE), 1,
     "float16 overflow of the scaled loss (loss_scale 16777216"),
    ("resume-from-converted-checkpoint", train("--resume_ckpt", "{weights}/converted.ckpt", config=DENSE), 1,
     "is a converted pre-trained checkpoint (from resnet20.pth), not a training run: give it as --pre_trained"),
    ("resume-from-weights-only-checkpoint", train("--resume_ckpt", "{weights}/zoo.ckpt", config=DENSE), 1,
     "records no training step"),
    # the file's extra blocks would be dropped without a word
    ("pre-trained-of-a-deeper-network", train("--net", "resnet8", "--pre_trained", "{run}/last.ckpt", config=DENSE),
     1, "holds 60 layer parameter(s) this network does not have (first: 'layer1.1.conv1.weight')"),
    ("eval-other-net", evaluate("--net", "resnet8"), 1, "pass --net resnet20"),
    # not "allow it with resume_allow_changes": no allowance makes the weights fit
    ("resume-on-another-net", train("--resume_ckpt", "auto", "--net", "resnet8", "--resume_allow_changes", "net",
                                    config=DENSE, out="{run}"), 2,
     "holds another network (net ('resnet20' -> 'resnet8')): a run cannot continue on another network"),
    ("eval-non-finite-checkpoint", ["eval.py", "--config_path", DENSE, "--data_path", "{data}", "--ckpt",
                                    "{weights}/nan.ckpt"], 1, "non-finite values (NaN or Inf) in 'fc.weight'"),
    ("export-non-finite-checkpoint", ["export.py", "--config_path", DENSE, "--ckpt", "{weights}/nan.ckpt",
                                      "--file_name", "{tmp}/nan"], 1, "non-finite values"),
    ("idx-file-is-a-device", ["train.py", "--config_path", DENSE, "--data_path", "{tmp}/zero_data",
                              "--output_dir", "{tmp}/out", *TINY], 1,
     "train-images-idx3-ubyte: not a regular file"),
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


@pytest.fixture(scope="module")
def run_case_results(fashion_dir, finished_run, weights_only, tmp_path_factory):
    cases = []
    for name, command, _, _ in RUN_CASES:
        places = make_places(tmp_path_factory.mktemp(name), fashion_dir, finished_run, weights_only)
        cases.append([name, [str(a).format(**places) for a in command], [str(places["tmp"]), str(places["run"])]])
    return run_in_one_process(cases)


@pytest.mark.parametrize("name,code,fragment", [(c[0], *c[2:]) for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_bad_input_is_one_line(run_case_results, name, code, fragment):
    got_code, _, stderr, files_unchanged = run_case_results[name]
    check_one_line(got_code, stderr, code, fragment)
    assert files_unchanged


def test_launcher_keeps_the_recipes_device(places):
    # the recipe says GPU and the user names no device: the launcher must not train on CPU instead
    proc = run(["scripts/run_standalone_train.sh", "{tmp}/gpu.yaml".format(**places), "--data_path",
                places["data"], "--output_dir", str(places["tmp"] / "gpu_out"), *TINY])
    assert proc.returncode == 2, proc.stderr
    assert "GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not list((places["tmp"] / "gpu_out").glob("*.ckpt"))


def test_a_refused_start_writes_no_run_record(places, tmp_path):
    """A start refused after the folder's lock is taken (here: no complete batch) records no run:
    a new folder holds only the lock file, an earlier run's record (a run that saved no checkpoint)
    stays byte-identical (it was replaced by the refused run's)."""
    fresh = tmp_path / "fresh"
    proc = run(["train.py", "--config_path", DENSE, "--data_path", places["data"], "--output_dir", str(fresh),
                "--train_samples", "10", "--batch_size", "32", *TINY_NET])
    assert proc.returncode == 1 and "0 batches" in proc.stderr, proc.stderr
    assert sorted(os.listdir(fresh)) == [".lock"]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "run.json").write_text('{"run_id": "earlier", "recipe": {}}\n')
    proc = run(["train.py", "--config_path", DENSE, "--data_path", places["data"], "--output_dir", str(earlier),
                "--train_samples", "10", "--batch_size", "32", *TINY_NET])
    assert proc.returncode == 1
    assert (earlier / "run.json").read_text() == '{"run_id": "earlier", "recipe": {}}\n'


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
    # the log follows the umask as the result does (it was a 0600 temporary file renamed)
    assert stat.S_IMODE((folder / "eval_2.log").stat().st_mode) == stat.S_IMODE((folder / "eval_2.json").stat().st_mode)


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


def test_sparse_export_replaces_only_after_its_read_back(places, capsys, monkeypatch):
    """--overwrite true replaces an earlier SPARSE file only with one that read back bit-exact: a
    failing read-back leaves the earlier file byte for byte and no temporary behind."""
    from src import export_model   # imports read_sparse at its top: patched where it is called
    args = ["export.py", "--config_path", DENSE, "--ckpt", str(places["run"] / "last.ckpt"), "--file_format",
            "SPARSE", "--file_name", str(places["tmp"] / "existing"), "--overwrite", "true"]
    real_read = export_model.read_sparse

    def one_bit_off(path):
        arrays, meta = real_read(path)
        name = sorted(arrays)[0]
        arrays[name] = (arrays[name].view(np.uint32) ^ np.uint32(1)).view(np.float32)
        return arrays, meta
    before, listing = snapshot(places["tmp"], places["run"]), sorted(os.listdir(places["tmp"]))
    monkeypatch.setattr(export_model, "read_sparse", one_bit_off)
    check_one_line(*in_process(args, capsys, monkeypatch), 1, "does not read back bit-exact")
    assert unchanged(places, before) and sorted(os.listdir(places["tmp"])) == listing
    monkeypatch.setattr(export_model, "read_sparse", real_read)
    import export   # the same command with a sound read-back replaces it
    export.main()
    assert real_read(str(places["tmp"] / "existing.sparse.npz"))[1]["net"] == "resnet20"
    assert sorted(os.listdir(places["tmp"])) == listing


def test_a_pruning_run_that_empties_layers_ends_with_exit_1(fashion_dir, tmp_path):
    """The s999 recipe (4 steps, two mask updates) on ResNet-8 (TINY_NET: one block per stage)
    removes both layer3 convs and the classifier: the output is a constant. The run keeps
    last.ckpt, then ends with exit 1 and one line naming the emptied layers and what avoids it (not
    'final sparsity 0.999 (target 0.999)' and exit 0)."""
    out = tmp_path / "s999"
    proc = run(["train.py", "--config_path", os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s999.yaml"),
                "--data_path", fashion_dir, "--output_dir", str(out), "--train_samples", "128", "--batch_size",
                "32", "--eval_samples", "32", "--epoch_size", "1", "--delta", "1", "--num_parallel_workers", "1",
                *TINY_NET])
    emptied = "3 of 8 prunable layers have no weight left: layer3.*.conv* (2 convs), fc.weight"
    check_one_line(proc.returncode, proc.stderr, 1, f"the pruned network's output no longer depends on its "
                   f"input ({emptied})")
    assert "prune_exclude" in proc.stderr and "density_distribution: erk" in proc.stderr
    assert (out / "last.ckpt").exists() and f"{out / 'last.ckpt'} is saved" in proc.stderr
    # the layers were already reported as emptied while training (a warning, the run went on)
    assert "3 layer(s) have no weight left" in proc.stdout
    # the kept checkpoint: eval.py measures it (exit 0: its accuracy is what was asked) and warns
    # in one line naming the emptied layers; export.py refuses it in one line and writes nothing
    recipe = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s999.yaml")
    proc = run(["eval.py", "--config_path", recipe, "--data_path", fashion_dir, "--ckpt", str(out / "last.ckpt"),
                "--eval_samples", "32", "--json_out", str(tmp_path / "e.json"), *TINY_NET])
    check_one_line(proc.returncode, proc.stderr, 0, f"warning: {out / 'last.ckpt'}: the pruned network's output "
                   f"no longer depends on its input ({emptied})")
    assert json.loads((tmp_path / "e.json").read_text())["output_depends_on_input"] is False
    # the launcher says it on stderr too (its log holds both streams)
    proc = run(["scripts/run_eval.sh", recipe, str(out / "last.ckpt"), "--data_path", fashion_dir,
                "--eval_samples", "32", *TINY_NET])
    assert proc.returncode == 0 and "no longer depends on its input" in proc.stderr, proc.stderr
    assert "no longer depends" not in proc.stdout and "top1" in proc.stdout
    proc = run(["export.py", "--config_path", recipe, "--ckpt", str(out / "last.ckpt"), "--file_name",
                str(tmp_path / "dead"), *TINY_NET])
    check_one_line(proc.returncode, proc.stderr, 1, f"({emptied}); ")
    assert proc.stderr.strip().endswith("nothing exported") and not list(tmp_path.glob("dead*"))


# imported by the benchmarks, not run
LIBRARY_MODULES = {"common.py", "runs.py", "latency.py", "psap_report.py", "__init__.py"}
HELPERS = sorted(f"{folder}/{name}" for folder in ("benchmarks", "scripts", "tools")
                 for name in os.listdir(os.path.join(ROOT, folder)) if name.endswith(".py"))


# Runs every helper's --help, then with an unknown flag, in one fresh process (one MindSpore import,
# not one per helper), each as `python -m NAME ARGS` / `python scripts/NAME.py ARGS` would:
# {"SCRIPT ARGS": (exit code, stdout, stderr)}
HELP_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for script, args in [(s, a) for s in sys.argv[1:] for a in (["--help"], ["--no_such_flag", "1"])]:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if script.startswith("scripts/"):
                runpy.run_path(script, run_name="__main__")
            else:
                runpy.run_module(script[:-3].replace("/", "."), run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[" ".join([script, *args])] = (code, out.getvalue(), err.getvalue())
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def helper_help():
    commands = [h for h in HELPERS if os.path.basename(h) not in LIBRARY_MODULES]
    results = os.path.join(ROOT, "benchmarks", "results")
    before = snapshot(results)
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", HELP_DRIVER, *commands], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), snapshot(results) == before


@pytest.mark.parametrize("script", HELPERS)
def test_every_helper_answers_help(script, helper_help):
    """``--help`` prints a usage and exits 0, without a traceback and without starting work (no
    result file written). Library modules say they are not commands by having no __main__."""
    source = open(os.path.join(ROOT, script), encoding="utf-8").read()
    if os.path.basename(script) in LIBRARY_MODULES:
        assert '__name__ == "__main__"' not in source, f"{script} became a command: drop it from LIBRARY_MODULES"
        return
    results, nothing_written = helper_help
    code, stdout, stderr = results[f"{script} --help"]
    assert code == 0 and "Traceback" not in stderr, stderr[-2000:]
    assert "usage" in stdout.lower(), stdout[-2000:]
    assert nothing_written, "a --help or an unknown flag wrote into benchmarks/results"
    # a mistyped flag is one line (argparse's usage block was three to six), exit 2, no work started
    code, stdout, stderr = results[f"{script} --no_such_flag 1"]
    check_one_line(code, stderr, 2, "error: ")


def no_mindspore_env(tmp_path):
    """A PATH whose `python` lacks MindSpore (the interpreter the venv was made from) and no venv."""
    base = os.path.join(sys.base_prefix, "bin", "python3")
    check = subprocess.run([base, "-c", "import importlib.util as u; print(u.find_spec('mindspore'))"],
                           capture_output=True, text=True)
    if check.stdout.strip() != "None":
        pytest.skip("the base interpreter has MindSpore installed")
    (tmp_path / "bin").mkdir(parents=True)
    os.symlink(base, tmp_path / "bin" / "python")
    return {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PRUNE_VENV": ""}   # empty: the python on PATH


LAUNCHES = {  # a launch each launcher would accept
    "standalone": ["scripts/run_standalone_train.sh", DENSE, "--data_path", "{data}", "--output_dir",
                   "{tmp}/out"],
    "distribute": ["scripts/run_distribute_train.sh", "2", DENSE, "CPU", "--data_path", "{data}",
                   "--output_dir", "{tmp}/out"],
    "eval": ["scripts/run_eval.sh", DENSE, "{run}/last.ckpt", "--data_path", "{data}"],
    "export": ["scripts/run_export.sh", DENSE, "{run}/last.ckpt", "MINDIR", "{tmp}/net"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHES))
def test_launcher_without_mindspore_says_how_to_set_up(places, launcher):
    env = no_mindspore_env(places["tmp"] / "env")
    before = snapshot(places["tmp"], places["run"])
    proc = run([str(a).format(**places) for a in LAUNCHES[launcher]], env_extra=env)
    check_one_line(proc.returncode, proc.stderr, 1, "source scripts/setup_env.sh")
    assert "MindSpore is not importable" in proc.stderr
    assert unchanged(places, before) and not (places["tmp"] / "out").exists()


@pytest.mark.parametrize("venv", ["project", "PRUNE_VENV"])
def test_launcher_uses_the_project_venv(places, venv):
    # PATH without the venv and without a `python` that has MindSpore: the launcher finds ROOT/.venv
    # (or the one PRUNE_VENV names: the tests' own) and gets as far as the recipe check
    env = no_mindspore_env(places["tmp"] / "env")
    if venv == "project":
        if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")):
            pytest.skip("no project .venv")
        env.pop("PRUNE_VENV")
    else:
        if sys.prefix == sys.base_prefix:
            pytest.skip("the tests do not run in a virtual environment")
        env["PRUNE_VENV"] = sys.prefix
    proc = run(["scripts/run_standalone_train.sh", DENSE, "--lamb", "nan"], env_extra=env)
    check_one_line(proc.returncode, proc.stderr, 2, "'lamb'")


def test_launcher_refuses_a_prune_venv_that_is_not_there(places):
    # it fell back to the python on PATH without a word
    proc = run(["scripts/run_standalone_train.sh", DENSE], env_extra={"PRUNE_VENV": str(places["tmp"] / "nope")})
    check_one_line(proc.returncode, proc.stderr, 1, f"PRUNE_VENV={places['tmp'] / 'nope'} has no bin/python")


def test_launcher_never_says_done_without_last_ckpt(places):
    # a finished run resumed into another folder: nothing to train, so no last.ckpt there
    out = places["tmp"] / "elsewhere"
    proc = run(["scripts/run_standalone_train.sh", DENSE, "--data_path", places["data"], "--output_dir",
                str(out), *TINY, "--resume_ckpt", str(places["run"] / "last.ckpt")])
    assert "already complete" in (out / "train_stdout.log").read_text()
    check_one_line(proc.returncode, proc.stderr, 1, f"without writing {out / 'last.ckpt'}")
    assert "done:" not in proc.stdout


def test_distributed_launch_on_a_port_in_use_is_one_line(places):
    """msrun's scheduler cannot listen on a port another process holds: it dies at start-up while
    the workers wait for it. The launcher checks the port first: one line, exit 2, nothing written."""
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        out = places["tmp"] / "dist"
        proc = run(["scripts/run_distribute_train.sh", "2", DENSE, "CPU", "--data_path", str(places["data"]),
                    "--output_dir", str(out), *TINY], env_extra={"MASTER_PORT": str(port)})
    check_one_line(proc.returncode, proc.stderr, 2, f"MASTER_PORT {port} on 127.0.0.1 is in use")
    assert not out.exists()


def test_run_tests_runs_the_file_it_is_given():
    """`bash scripts/run_tests.sh tests/test_layout.py` runs that file alone (pytest.ini's
    testpaths give the whole suite only when no file or folder is named)."""
    proc = subprocess.run(["bash", "scripts/run_tests.sh", "tests/test_layout.py", "--collect-only",
                           "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("tests/")]
    assert files == ["tests/test_layout.py"], proc.stdout
