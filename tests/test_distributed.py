"""Data-parallel training through the msrun launcher: 2 CPU workers on loopback.

- a tiny RPG run with a few mask updates: both workers end bit-identical (weights, masks,
  optimizer state, BatchNorm statistics), only rank 0 writes checkpoints, and the final sparsity of
  rank 0's last.ckpt is the target;
- a worker killed with SIGKILL makes the launch exit non-zero within a bounded time.

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

from tests.conftest import ROOT

RPG = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s90.yaml")
LAUNCHER = os.path.join(ROOT, "scripts", "run_distribute_train.sh")
TINY = ["--train_samples", "256", "--eval_samples", "64", "--batch_size", "32", "--delta", "2",
        "--num_parallel_workers", "1", "--log_interval", "1"]

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


def launch(out, *args, **env):
    """Start the 2-worker launcher in its own process group; output goes to out/launcher.out."""
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "launcher.out"), "w")
    return subprocess.Popen(["bash", LAUNCHER, "2", RPG, "CPU", "--output_dir", str(out), *map(str, args)],
                            cwd=ROOT, env=launcher_env(**env), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


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


def test_two_workers_end_bit_identical(fashion_dir, tmp_path):
    out, dump = tmp_path / "run", tmp_path / "dump"
    start = time.time()
    proc = launch(out, "--data_path", fashion_dir, *TINY, "--epoch_size", "2",
                  PRUNE_DUMP_RANK_STATE=str(dump))
    code = finish(proc, timeout=400)
    text = (out / "launcher.out").read_text()
    assert code == 0, text[-4000:]
    print(f"2-worker run: {time.time() - start:.1f} s")

    log = (out / "train.log").read_text()
    assert "batch 32 x 2 device(s)" in log
    updates = re.findall(r"rpg mask update (\d+)/(\d+)", log)
    assert len(updates) >= 3, log
    assert "eval epoch 2" in log
    assert (out / "train_rank1.log").exists() and (out / "msrun_log" / "worker_1.log").exists()
    # only rank 0 writes checkpoints: one at the end of epoch 1 (4 steps per worker) and last.ckpt
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt", "resnet20_rpg_step4.ckpt"]

    rank0, rank1 = arrays(dump / "rank0.ckpt"), arrays(dump / "rank1.ckpt")
    assert rank0.keys() == rank1.keys()
    masks = [k for k in rank0 if k.startswith("pruning_mask.")]
    assert len(masks) == 20
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
    proc = launch(out, "--data_path", fashion_dir, *TINY, "--epoch_size", "50", CLUSTER_TIME_OUT="60",
                  MS_NODE_TIMEOUT="10")
    victim, deadline = None, time.time() + 240
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            log = out / "train.log"
            if log.exists() and re.search(r"step [1-9]\d*/", log.read_text()):
                victim = next((pid for pid, env in processes_of(out)
                               if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == "1"), None)
            time.sleep(0.2)
        assert victim is not None, (out / "launcher.out").read_text()[-3000:]
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
    assert "distributed training failed" in (out / "launcher.out").read_text()
    assert not processes_of(out), "workers left running"
    assert not (out / "last.ckpt").exists()
