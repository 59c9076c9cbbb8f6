"""Training that survives interruption (tiny RPG runs on one CPU process).

- SIGKILL at an arbitrary step, then ``--resume_ckpt auto``: the same final state, bit for bit,
  as an uninterrupted run with the same seed;
- a truncated newest checkpoint: ``auto`` names it in a warning and falls back to the previous
  good one; the same file given explicitly is one clear error line;
- a non-finite loss stops training with one line naming the step, and the last good checkpoint
  is left byte-for-byte as it was (resuming from it meets the same step again);
- the resumed run's metrics.jsonl lists the uninterrupted run's events, none twice;
- Ctrl-C: one line on stderr (also in train.log, not on stdout), a checkpoint, exit 130; a
  SIGTERM to run_standalone_train.sh alone is passed on to train.py (same line, with the resume
  command).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import mindspore as ms
import pytest

from src.logs import read_metrics
from tests.conftest import ROOT, TINY_NET, digest, error_lines, run_script, shell_words

RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
# 8 steps per epoch x 2 epochs, mask updates at steps 2, 4, ..., 12, a checkpoint every 3 steps
# (and at the end of epoch 1); one data worker so that the augmentation stream repeats exactly.
TINY = ["--config_path", RPG, "--train_samples", "256", "--eval_samples", "64", "--batch_size", "32",
        "--delta", "2", "--epoch_size", "2", "--eval_interval", "0", "--num_parallel_workers", "1",
        "--save_checkpoint_steps", "3", "--keep_checkpoint_max", "10", "--log_interval", "1", *TINY_NET]


def state(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if not isinstance(v, str) and not k.startswith("meta.")}


def assert_same_final_state(path, reference):
    got, want = state(path), state(reference)
    assert got.keys() == want.keys()
    assert any(k.startswith("pruning_mask.") for k in want)
    for name, value in want.items():
        assert np.array_equal(got[name], value), f"{name} differs"   # resume is bit-exact


def step_of(path):
    return int(re.search(r"step(\d+)\.ckpt$", str(path)).group(1))


def resumed_line(path, steps_per_epoch=8):
    """What the resumed run logs; epochs counted from 1, as the progress lines count them."""
    step = step_of(path)
    return f"resumed from {path} at step {step} (continuing in epoch {step // steps_per_epoch + 1})"


def events(out):
    return [(e["event"], e["step"]) for e in read_metrics(str(out))]


def step_checkpoints(out):
    """Step checkpoints in ``out`` (not temporary files of a writer), oldest first."""
    found = [p for p in out.glob("*.ckpt") if re.fullmatch(r"[^.].*_step\d+\.ckpt", p.name)]
    return sorted(found, key=step_of)


@pytest.fixture(scope="module")
def reference(fashion_dir, tmp_path_factory):
    """The uninterrupted run: its output dir (step checkpoints and last.ckpt)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    run_script("train.py", *TINY, "--data_path", fashion_dir, "--output_dir", out)
    return out


def test_sigkill_then_resume_matches_uninterrupted(reference, fashion_dir, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "train.py", *TINY, "--data_path", str(fashion_dir),
                             "--output_dir", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "train.log"
    try:
        deadline = time.time() + 300
        # kill once step 7 is done: after the step-6 checkpoint and a mask update, so the resumed
        # run has to redo finished work (the epoch-1 checkpoint at step 8 may or may not exist)
        while time.time() < deadline and proc.poll() is None and not (
                log.exists() and "step 7/16" in log.read_text()):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert not (out / "last.ckpt").exists()
    killed_after = int(re.findall(r"step (\d+)/16", log.read_text())[-1])
    newest = step_checkpoints(out)[-1]

    proc = run_script("train.py", *TINY, "--data_path", fashion_dir, "--output_dir", out,
                      "--resume_ckpt", "auto")
    assert resumed_line(newest) in proc.stdout, proc.stdout[-2000:]
    print(f"killed after step {killed_after}, resumed from step {step_of(newest)}")
    assert_same_final_state(out / "last.ckpt", reference / "last.ckpt")
    # the mask update at the checkpoint's step ran after it: repeated, and recorded once
    assert events(out) == events(reference)


def test_truncated_newest_checkpoint_falls_back(reference, fashion_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for step in (3, 6, 9, 12, 15):
        shutil.copy(reference / f"resnet8_rpg_step{step}.ckpt", out)
    shutil.copy(reference / "run.json", out)
    newest = out / "resnet8_rpg_step15.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    # a temporary file left by a writer killed mid-save is never taken for a checkpoint
    (out / ".resnet8_rpg_step16.ckpt.tmp999.ckpt").write_bytes(b"partial")

    # given explicitly, a truncated checkpoint is one clear error line
    proc = run_script("train.py", *TINY, "--data_path", fashion_dir, "--output_dir", tmp_path / "x",
                      "--resume_ckpt", newest, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1 and str(newest) in lines[0] and "corrupt" in lines[0], lines

    # auto: warn naming the file, resume from the previous good one, reach the same final state;
    # keep_checkpoint_max counts the checkpoints already on disk, not only those of this session
    keep_two = tiny_with("--keep_checkpoint_max", "2")
    proc = run_script("train.py", *keep_two, "--data_path", fashion_dir, "--output_dir", out,
                      "--resume_ckpt", "auto")
    assert [step_of(p) for p in step_checkpoints(out)] == [12, 15]
    warnings = [line for line in proc.stdout.splitlines() if "skipping unusable checkpoint" in line]
    assert len(warnings) == 1 and str(newest) in warnings[0], proc.stdout[-2000:]
    assert resumed_line(out / "resnet8_rpg_step12.ckpt") in proc.stdout
    assert_same_final_state(out / "last.ckpt", reference / "last.ckpt")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(reference, fashion_dir, tmp_path):
    # Weights that overflow on the second step: the last BatchNorm scale times 1e30 gives huge but
    # finite logits at step 1, and its gradient makes the classifier overflow at step 2.
    params = ms.load_checkpoint(str(reference / "last.ckpt"))
    net = {k: v for k, v in params.items() if not isinstance(v, str)
           and not k.startswith(("moments.", "pruning_mask.", "pruner.", "meta."))}
    last_gamma = [k for k in net if k.endswith("gamma")][-1]
    net[last_gamma] = ms.Tensor(net[last_gamma].asnumpy() * np.float32(1e30))
    poisoned = tmp_path / "poisoned.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in net.items()], str(poisoned))

    out = tmp_path / "run"
    every_step = tiny_with("--save_checkpoint_steps", "1")
    args = ["train.py", *every_step, "--data_path", fashion_dir, "--output_dir", out, "--prune_method",
            "none", "--pre_trained", poisoned]
    proc = run_script(*args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    match = re.search(r"loss is (nan|inf|-inf) at step (\d+)", lines[0])
    assert match, lines[0]
    bad_step = int(match.group(2))
    saved = step_checkpoints(out)
    assert saved and step_of(saved[-1]) == bad_step - 1, saved
    assert not (out / "last.ckpt").exists()
    good = saved[-1]
    before = digest(good)
    for value in state(good).values():
        assert np.isfinite(value).all()

    # resuming from the last good checkpoint meets the same step again and leaves it untouched
    proc = run_script(*args, "--resume_ckpt", "auto", check=False)
    assert proc.returncode == 1
    assert f"resumed from {good}" in proc.stdout
    assert f"at step {bad_step} " in error_lines(proc)[0]
    assert digest(good) == before
    assert step_checkpoints(out) == saved


def start_in_own_session(args, script="train.py", stdout=subprocess.DEVNULL):
    """Start a script as a terminal would: its own process group, so Ctrl-C reaches every process."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=ROOT, env=env,
                            stdout=stdout, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def tiny_with(key, value):
    """TINY with one of its keys set to another value (a key may not be given twice)."""
    return [(value if previous == key else a) for previous, a in zip([""] + TINY, TINY)]


def test_ctrl_c_saves_and_resume_matches_uninterrupted(reference, fashion_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = start_in_own_session([*TINY, "--data_path", fashion_dir, "--output_dir", out],
                                stdout=subprocess.PIPE)
    log = out / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            log.exists() and "step 5/16" in log.read_text()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(r"interrupted at step (\d+)/16; saved (.+?); resume with "
                         r"--resume_ckpt auto", lines[0])
    assert match, lines[0]
    stopped, saved = int(match.group(1)), match.group(2)
    assert 5 <= stopped < 16 and saved == str(out / f"resnet8_rpg_step{stopped}.ckpt")
    assert step_checkpoints(out)[-1] == out / f"resnet8_rpg_step{stopped}.ckpt"
    assert not (out / "last.ckpt").exists()
    assert log.read_text().splitlines()[-1].endswith(lines[0])   # in the log too, not on stdout
    assert "interrupted at step" not in stdout

    proc = run_script("train.py", *TINY, "--data_path", fashion_dir, "--output_dir", out,
                      "--resume_ckpt", "auto")
    assert resumed_line(saved) in proc.stdout
    assert_same_final_state(out / "last.ckpt", reference / "last.ckpt")


def test_ctrl_c_after_the_last_step_completes_the_run_and_still_exits_130(reference, fashion_dir, tmp_path):
    """The end-of-run work (evaluation, last.ckpt) completes, then exit 130 and one line: a command
    chained after train.py must not run because the user asked to stop."""
    out = tmp_path / "late"
    # a longer evaluation: the signal arrives during the end-of-run work
    proc = start_in_own_session([*tiny_with("--eval_samples", "4000"), "--data_path", fashion_dir,
                                 "--output_dir", out], stdout=subprocess.PIPE)
    log = out / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            log.exists() and "step 16/16" in log.read_text()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, stderr
    assert "done:" not in stdout   # it did not end as asked; the line says what it did
    assert lines[0] == (f"interrupted after the last step: the run is complete ({out / 'last.ckpt'} saved); "
                        "nothing to resume")
    assert_same_final_state(out / "last.ckpt", reference / "last.ckpt")


def test_ctrl_c_during_start_up_is_one_line(fashion_dir, tmp_path):
    proc = start_in_own_session([*TINY, "--data_path", fashion_dir, "--output_dir", tmp_path / "o"])
    time.sleep(1.5)  # importing MindSpore or building the graph
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted"), lines[0]


@pytest.mark.parametrize("allow", [True, False])
def test_a_pruning_schedule_cannot_be_stretched_on_resume(reference, fashion_dir, tmp_path, allow):
    """Allowed or not, the same refusal: not allowed, the line must not advise allowing epoch_size
    (that would be refused next)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: digest(p) for p in out.iterdir() if p.is_file()}
    longer = tiny_with("--epoch_size", "3")
    allowing = ["--resume_allow_changes", "epoch_size"] if allow else []
    proc = run_script("train.py", *longer, "--data_path", fashion_dir, "--output_dir", out,
                      "--resume_ckpt", "auto", *allowing, check=False)
    assert proc.returncode == 2 and "cannot be stretched" in error_lines(proc)[0], proc.stderr
    assert "resume_allow_changes" not in error_lines(proc)[0]
    assert {p.name: digest(p) for p in out.iterdir() if p.is_file() and p.name != "train.log"} == \
        {k: v for k, v in before.items() if k != "train.log"}


def test_ctrl_c_during_evaluation_is_one_line(reference, fashion_dir, tmp_path):
    proc = start_in_own_session(["--config_path", RPG, "--data_path", fashion_dir, "--ckpt",
                                 reference / "last.ckpt", "--batch_size", "4", *TINY_NET], script="eval.py")
    time.sleep(8)  # imports done, the evaluation under way (10,000 images, 2,500 batches)
    assert proc.poll() is None, "the evaluation ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("interrupted"), lines[0]


@pytest.mark.parametrize("change, allow", [(["--sparsity", "0.8"], True),
                                           (["--alpha", "0.5"], True),
                                           (["--sparsity", "0.8"], False)])
def test_pruning_keys_cannot_change_mid_run(reference, fashion_dir, tmp_path, change, allow):
    """Allowed or not, the target and the method's keys stay fixed once masks exist: the run would
    end off target or the change would do nothing. One line, exit 2, nothing written; not allowed,
    the line must not suggest allowing it (that would be refused next)."""
    out = tmp_path / "run"
    out.mkdir()
    middle = step_checkpoints(reference)[1]
    shutil.copy(reference / "run.json", out / "run.json")
    shutil.copy(middle, out / middle.name)
    before = {p.name: digest(p) for p in out.iterdir()}
    key = change[0][2:]
    allowing = ["--resume_allow_changes", f"[{key}]"] if allow else []
    proc = run_script("train.py", *TINY, *change, "--data_path", fashion_dir, "--output_dir", out,
                      "--resume_ckpt", "auto", *allowing, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and key in lines[0] and "mid-run" in lines[0], lines
    assert "resume_allow_changes" not in lines[0]
    # (the refused run held the folder while it looked: it leaves the empty lock file, src/run_lock.py)
    assert {p.name: digest(p) for p in out.iterdir() if p.name != ".lock"} == before


def test_bn_recalibration_may_be_added_to_a_run_under_way(reference, fashion_dir, tmp_path):
    """It acts after the last epoch and never on the masks: allowed mid-run, it runs once."""
    out = tmp_path / "run"
    out.mkdir()
    middle = step_checkpoints(reference)[1]
    shutil.copy(reference / "run.json", out / "run.json")
    shutil.copy(middle, out / middle.name)
    proc = run_script("train.py", *TINY, "--data_path", fashion_dir, "--output_dir", out, "--resume_ckpt",
                      "auto", "--bn_recalibration", "2", "--resume_allow_changes", "[bn_recalibration]")
    assert "BatchNorm statistics re-estimated on 2 training batches" in proc.stdout
    assert [e["batches"] for e in read_metrics(str(out), "bn_recalibration")] == [2]


def test_sigterm_to_the_launcher_alone_saves(fashion_dir, tmp_path):
    """A scheduler's SIGTERM to run_standalone_train.sh only (not to train.py): passed on, so
    train.py saves and the launcher ends with the line and the resume command, exit 130."""
    out = tmp_path / "run"
    launcher = os.path.join(ROOT, "scripts", "run_standalone_train.sh")
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(["bash", launcher, RPG, *TINY[2:], "--data_path", str(fashion_dir),
                             "--output_dir", str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    log, deadline = out / "train.log", time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            log.exists() and "step 1/16" in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(r"interrupted at step (\d+)/16; saved (.+?); resume with: (.+)", lines[0])
    assert match, lines[0]
    assert os.path.exists(match.group(2)) and match.group(2) == str(step_checkpoints(out)[-1])
    # a command to paste into a shell, quoted where the clone's path has a space
    resume = shell_words(match.group(3))
    assert resume[:3] == ["bash", launcher, RPG] and resume[-2:] == ["--resume_ckpt", "auto"]
    assert log.read_text().splitlines()[-1].endswith(lines[0].split("; resume with")[0] +
                                                     "; resume with --resume_ckpt auto")
    assert not (out / "last.ckpt").exists()
    alive = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout
    assert not alive.strip(), "train.py left running"
