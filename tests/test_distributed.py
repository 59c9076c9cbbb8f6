"""Data-parallel training through the msrun launcher: 2 CPU workers on loopback.

- a tiny RPG run with a few mask updates: both workers end bit-identical (weights, masks,
  optimizer state, BatchNorm statistics), only rank 0 writes checkpoints, and the final sparsity of
  rank 0's last.ckpt is the target;
- a worker killed with SIGKILL makes the launch exit non-zero within a bounded time;
- Ctrl-C (SIGINT to the launcher's process group), then SIGTERM to the launcher alone: each time
  the workers stop at the same step, rank 0 saves, the launcher exits 130 with one line naming the
  checkpoint and the resume command; resumed through that command, the run ends bit-identical to
  the uninterrupted one.

Each worker's final state comes from the trainer's debugging aid ``PRUNE_DUMP_RANK_STATE=DIR``
(every rank writes ``DIR/rank<N>.ckpt`` at the end; normal checkpoints come from rank 0 only).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import mindspore as ms
import pytest

from tests.conftest import ROOT, TINY_NET, shell_words

RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
LAUNCHER = os.path.join(ROOT, "scripts", "run_distribute_train.sh")
# 4 steps per epoch (256 images in batches of 32 per worker) x 3 epochs; a mask update every 2 steps
# (checkpoints every 3 steps, 4 steps per epoch: a stop at another step keeps each worker's
# BatchNorm statistics, a stop at 3, 6 or 9 continues from the averaged statistics the
# uninterrupted run saves there)
TINY = ["--train_samples", "256", "--eval_samples", "64", "--batch_size", "32", "--delta", "2",
        "--num_parallel_workers", "1", "--log_interval", "1", "--epoch_size", "3",
        "--save_checkpoint_steps", "3", *TINY_NET]


def tiny_with(key, value):
    """TINY with one of its keys set to another value (a key may not be given twice)."""
    return [(value if previous == key else a) for previous, a in zip([""] + TINY, TINY)]


pytestmark = pytest.mark.skipif(shutil.which("msrun", path=os.path.dirname(sys.executable)) is None
                                and shutil.which("msrun") is None, reason="msrun not installed")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env(**extra):
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, PYTHONPATH=ROOT, GLOG_v="3", PYTHONWARNINGS="ignore",
                MASTER_PORT=str(free_port()), **extra)


def launch(out, *args, command=None, **env):
    """Start the 2-worker launcher (or ``command``) in its own process group, as a terminal would;
    its stdout goes to out/launcher.out, its stderr to out/launcher.err."""
    os.makedirs(out, exist_ok=True)
    command = command or ["bash", LAUNCHER, "2", RPG, "CPU", "--output_dir", str(out), *map(str, args)]
    with open(os.path.join(out, "launcher.out"), "w") as log, \
            open(os.path.join(out, "launcher.err"), "w") as err:
        return subprocess.Popen(command, cwd=ROOT, env=launcher_env(**env), stdout=log, stderr=err,
                                start_new_session=True)


def output(out):
    """What the launcher printed: (stdout, stderr)."""
    return (out / "launcher.out").read_text(), (out / "launcher.err").read_text()


def finish(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def processes_of(out):
    """(pid, environ) of live processes whose command line names the run's output dir."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            if str(out) not in cmdline or "train.py" not in cmdline:
                continue
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = dict(item.split("=", 1) for item in
                               handle.read().decode(errors="replace").split("\0") if "=" in item)
        except OSError:
            continue
        found.append((int(entry), environ))
    return found


def arrays(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if not isinstance(v, str) and not k.startswith("meta.")}


def prunable(params):
    return {k: v for k, v in params.items() if k.endswith("weight") and v.ndim in (2, 4)
            and not k.startswith(("moments.", "pruning_mask."))}


@pytest.fixture(scope="module")
def uninterrupted(fashion_dir, tmp_path_factory):
    """The 2-worker run without interruption: (output dir, every rank's final state dir)."""
    out, dump = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("dump")
    start = time.time()
    proc = launch(out, "--data_path", fashion_dir, *TINY, PRUNE_DUMP_RANK_STATE=str(dump))
    code = finish(proc, timeout=400)
    stdout, stderr = output(out)
    assert code == 0, (stdout + stderr)[-4000:]
    assert stdout.splitlines()[-1] == f"done: {out / 'last.ckpt'}"
    print(f"2-worker run: {time.time() - start:.1f} s")
    return out, dump


def test_two_workers_end_bit_identical(uninterrupted):
    out, dump = uninterrupted

    log = (out / "train.log").read_text()
    assert "batch 32 x 2 device(s)" in log
    updates = re.findall(r"rpg mask update (\d+)/(\d+)", log)
    assert len(updates) >= 3, log
    assert "eval epoch 3" in log
    assert (out / "train_rank1.log").exists() and (out / "msrun_log" / "worker_1.log").exists()
    # only rank 0 writes checkpoints: every 3 steps and at epoch ends (4 steps per worker and
    # epoch), the recipe's newest 3 kept, and last.ckpt
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt", "resnet8_rpg_step6.ckpt",
                                                          "resnet8_rpg_step8.ckpt", "resnet8_rpg_step9.ckpt"]

    rank0, rank1 = arrays(dump / "rank0.ckpt"), arrays(dump / "rank1.ckpt")
    assert rank0.keys() == rank1.keys()
    masks = [k for k in rank0 if k.startswith("pruning_mask.")]
    assert len(masks) == 8
    for name in rank0:  # weights, masks, momentum, BatchNorm statistics, step, learning rates
        assert np.array_equal(rank0[name], rank1[name]), f"ranks differ in {name}"

    last = arrays(out / "last.ckpt")
    for name, value in rank0.items():
        assert np.array_equal(last[name], value), f"last.ckpt differs from rank 0 in {name}"
    weights = prunable(last).values()
    sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(sparsity - 0.9) < 1e-5, sparsity
    for name in masks:  # pruned weights are exactly zero
        assert not np.any(last[name[len("pruning_mask."):]][last[name] == 0])


def test_killed_worker_ends_the_launch(fashion_dir, tmp_path):
    out = tmp_path / "run"
    # long enough that it cannot finish on its own; CLUSTER_TIME_OUT bounds a death during startup
    # MS_NODE_TIMEOUT: the scheduler notices the dead worker after 10 s instead of 30
    proc = launch(out, "--data_path", fashion_dir, *tiny_with("--epoch_size", "50"), CLUSTER_TIME_OUT="60",
                  MS_NODE_TIMEOUT="10")
    victim, deadline = None, time.time() + 240
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            log = out / "train.log"
            if log.exists() and re.search(r"step [1-9]\d*/", log.read_text()):
                victim = next((pid for pid, env in processes_of(out)
                               if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == "1"), None)
            time.sleep(0.2)
        assert victim is not None, "".join(output(out))[-3000:]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        code = finish(proc, timeout=150)
        elapsed = time.time() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"launcher exited {code} {elapsed:.1f} s after the worker was killed")
    assert code != 0
    assert elapsed < 120
    assert "distributed training failed" in output(out)[1]
    assert not processes_of(out), "workers left running"
    assert not (out / "last.ckpt").exists()


def interrupt_after(proc, out, pattern, send, logs=("train.log",)):
    """Call ``send(proc)`` once this session's part of each of ``logs`` matches ``pattern``;
    returns (exit code, seconds from the signal to the launcher's exit)."""
    start = {log: (out / log).stat().st_size if (out / log).exists() else 0 for log in logs}

    def matches(log):
        if not (out / log).exists():
            return False
        with open(out / log, "rb") as handle:
            handle.seek(start[log])
            return re.search(pattern, handle.read().decode(errors="replace"))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not all(map(matches, logs)):
        time.sleep(0.05)
    assert proc.poll() is None, "".join(output(out))[-3000:]
    send(proc)
    sent = time.time()
    return finish(proc, timeout=150), time.time() - sent


def check_interrupted(out, code):
    """Exit 130, one line on stderr naming the step every worker stopped at and its checkpoint;
    returns the resume command the line gives."""
    stdout, stderr = output(out)
    assert code == 130, (stdout + stderr)[-4000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    match = re.fullmatch(r"interrupted at step (\d+)/12; saved (.+?); resume with: (.+)", lines[0])
    assert match, lines[0]
    step, saved = int(match.group(1)), match.group(2)
    assert saved == str(out / f"resnet8_rpg_step{step}.ckpt") and os.path.exists(saved)
    for log in ("train.log", "train_rank1.log"):  # both workers stopped at that step
        assert f"interrupted at step {step}/12; saved {saved}" in (out / log).read_text().splitlines()[-1]
    assert not (out / "last.ckpt").exists() and "done:" not in stdout
    assert not processes_of(out), "workers left running"
    return step, shell_words(match.group(3))


def test_ctrl_c_and_sigterm_save_and_resume_matches_uninterrupted(uninterrupted, fashion_dir, tmp_path):
    out = tmp_path / "run"
    proc = launch(out, "--data_path", fashion_dir, *TINY)
    # Ctrl-C in a terminal: SIGINT to the launcher's process group once both workers are past
    # start-up, while the first step compiles: they stop after step 1, where each holds BatchNorm
    # statistics of its own batches (the next averaging is at the mask update before step 3), so
    # the resumed run must restore each worker's own statistics to end bit-identical
    code, took = interrupt_after(proc, out, r"prune_method rpg", lambda p: os.killpg(p.pid, signal.SIGINT),
                                 logs=("train.log", "train_rank1.log"))
    first, resume = check_interrupted(out, code)
    print(f"Ctrl-C: stopped at step {first}, launcher exited {took:.1f} s after the signal")
    assert first == 1
    assert resume[:2] == ["bash", LAUNCHER] and resume[-2:] == ["--resume_ckpt", "auto"]

    # the resume command it printed, the workers agreeing every 3 steps; a scheduler's SIGTERM to
    # the launcher alone: the stop lands on a step whose checkpoint the uninterrupted run writes as
    # well, mid-epoch (so it continues from the averaged BatchNorm statistics, not each worker's own)
    every_3 = [("3" if previous == "--log_interval" else word) for previous, word in zip([""] + resume, resume)]
    proc = launch(out, command=every_3)
    code, took = interrupt_after(proc, out, r"step \d+/12 ", lambda p: p.send_signal(signal.SIGTERM))
    second, again = check_interrupted(out, code)
    print(f"SIGTERM: stopped at step {second}, launcher exited {took:.1f} s after the signal")
    assert second > first and second % 3 == 0 and again == every_3  # --resume_ckpt auto given once
    assert f"resumed from {out / f'resnet8_rpg_step{first}.ckpt'} at step {first} " in \
        (out / "train.log").read_text()

    proc = launch(out, command=resume)
    assert finish(proc, timeout=400) == 0, "".join(output(out))[-4000:]
    assert output(out)[0].splitlines()[-1] == f"done: {out / 'last.ckpt'}"
    got, want = arrays(out / "last.ckpt"), arrays(uninterrupted[0] / "last.ckpt")
    assert got.keys() == want.keys() and any(k.startswith("pruning_mask.") for k in want)
    for name, value in want.items():  # weights, masks, momentum, BatchNorm statistics, step
        assert np.array_equal(got[name], value), f"{name} differs from the uninterrupted run"
