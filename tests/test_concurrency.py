"""Real use of a folder: one writer at a time, a run complete only when all its outputs exist,
metrics.jsonl holding one attempt (real processes, started together where it matters).

- two fresh train.py runs started together into one output_dir: one trains, the other is refused
  with one line naming the first's pid;
- while a training run holds a folder (a real train.py, stopped with SIGSTOP so that it holds
  still), every command that would write there is refused with one line naming its pid and leaves
  the folder byte-identical; SIGKILLed, it leaves no stale lock;
- two evaluations of one checkpoint at once both keep their results;
- a PSAP run stopped between last.ckpt and last_compact.ckpt is finished by --resume_ckpt auto,
  bit-identical (the state of a run made before this rule too: the same files on disk);
- a fresh start sets an earlier attempt's metrics.jsonl and train.log aside, never mixes them.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from src import run_lock
from tests.conftest import ROOT, TINY_NET, digest, error_lines

DENSE = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
PSAP = os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml")
TINY = ["--epoch_size", "1", "--train_samples", "64", "--batch_size", "32", "--eval_samples", "32",
        "--num_parallel_workers", "1", *TINY_NET]


def env():
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore",
                MASTER_PORT="8241")


def start(*args, **kwargs):
    """Start a script (``.py`` with this Python, else bash) from the project root."""
    args = [str(a) for a in args]
    command = [sys.executable, *args] if args[0].endswith(".py") else ["bash", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)


def run(*args):
    proc = start(*args)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def train(out, *extra, config=DENSE):
    return ["train.py", "--config_path", config, "--data_path", os.environ["FASHION_DIR"],
            "--output_dir", out, *TINY, *extra]


def one_line(code, err, want_code, *fragments):
    lines = error_lines(subprocess.CompletedProcess([], code, "", err))
    assert code == want_code and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files(folder, ignore=()):
    return {p.name: digest(p) for p in folder.iterdir() if p.is_file() and p.name not in ignore}


RESULTS = {"ignore": ("train.log",)}  # what a resume adds to: its log


@pytest.fixture(scope="module", autouse=True)
def data_env(fashion_dir):
    os.environ["FASHION_DIR"] = str(fashion_dir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny dense run (2 steps)."""
    out = tmp_path_factory.mktemp("finished")
    code, _, err = run(*train(out))
    assert code == 0, err[-2000:]
    return out


def test_two_fresh_runs_started_together_one_is_refused(tmp_path):
    out = tmp_path / "out"
    procs = [start(*train(out, "--seed", str(seed))) for seed in (1, 2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    results = [(p.pid, p.returncode, err, stdout) for p, (stdout, err) in zip(procs, outputs)]
    assert sorted(code for _, code, _, _ in results) == [0, 2], [r[2][-500:] for r in results]
    (winner, _, _, won_out), = [r for r in results if r[1] == 0]
    (_, _, refused_err, refused_out), = [r for r in results if r[1] == 2]
    one_line(2, refused_err, 2, f"output_dir {out} is in use by pid {winner} (train.py")
    assert "done:" in won_out and "done:" not in refused_out
    # the folder holds the winner's run only: its seed, each event once, one log
    seed = 1 if results[0][0] == winner else 2
    assert json.loads((out / "run.json").read_text())["recipe"]["seed"] == seed
    events = [(e["event"], e["step"]) for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert len(events) == len(set(events)) and ("eval", 2) in events
    assert (out / "train.log").read_text().count("done:") == 1
    assert (out / ".lock").read_bytes() == b""   # the kernel names the holder: nothing is written


@pytest.fixture(scope="module")
def held(finished, tmp_path_factory):
    """A folder a live train.py holds (stopped by SIGSTOP, so it holds still), with a checkpoint
    to evaluate in it under a name no training run counts: (folder, pid)."""
    folder = tmp_path_factory.mktemp("held")
    shutil.copy(finished / "last.ckpt", folder / "model.ckpt")
    proc = start(*train(folder))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and run_lock.holder(str(folder)) != proc.pid:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGSTOP)
    yield folder, proc
    proc.kill()
    proc.communicate()


ELSEWHERE = "{tmp}/elsewhere"
HELD_CASES = [
    ("train-fresh", lambda h: train(h), "output_dir"),
    ("train-resume", lambda h: train(h, "--resume_ckpt", "auto"), "output_dir"),
    ("standalone-launcher", lambda h: ["scripts/run_standalone_train.sh", DENSE, "--data_path",
                                       os.environ["FASHION_DIR"], "--output_dir", h, *TINY], "output_dir"),
    ("distribute-launcher", lambda h: ["scripts/run_distribute_train.sh", "2", DENSE, "CPU", "--data_path",
                                       os.environ["FASHION_DIR"], "--output_dir", h, *TINY], "output_dir"),
    ("eval-json-out", lambda h: ["eval.py", "--config_path", DENSE, "--ckpt", f"{h}/model.ckpt",
                                 "--json_out", f"{h}/r.json", *TINY_NET], "--json_out folder"),
    ("eval-report-png", lambda h: ["eval.py", "--config_path", DENSE, "--ckpt", f"{h}/model.ckpt",
                                   "--report_png", f"{h}/r.png", *TINY_NET], "--report_png folder"),
    ("run-eval", lambda h: ["scripts/run_eval.sh", DENSE, f"{h}/model.ckpt", *TINY_NET], "folder"),
    ("export", lambda h: ["export.py", "--config_path", DENSE, "--ckpt", f"{h}/model.ckpt",
                          "--file_name", f"{h}/net", *TINY_NET], "--file_name folder"),
    ("run-export", lambda h: ["scripts/run_export.sh", DENSE, f"{h}/model.ckpt", "MINDIR",
                              ELSEWHERE + "/net", *TINY_NET], "folder"),
]


@pytest.mark.parametrize("command,label", [c[1:] for c in HELD_CASES], ids=[c[0] for c in HELD_CASES])
def test_a_held_folder_is_refused_naming_the_holder(held, tmp_path, command, label):
    folder, holder = held
    (tmp_path / "elsewhere").mkdir()
    before = files(folder)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in command(folder)]
    code, _, err = run(*args)
    one_line(code, err, 2, f"{label} {folder} is in use by pid {holder.pid} (train.py")
    assert files(folder) == before
    assert not os.listdir(tmp_path / "elsewhere")


@pytest.mark.parametrize("exclusive", [True, False], ids=["training-run", "evaluation"])
def test_a_killed_holder_leaves_no_stale_lock(finished, tmp_path, exclusive):
    """Held as a training run holds it, or shared as eval.py/export.py do: a training launch is
    refused naming the holder; once the holder is SIGKILLed the folder is free."""
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from src import run_lock; "
                               "run_lock.hold(sys.argv[1], exclusive=sys.argv[2] == 'True'); "
                               "print('held', flush=True); time.sleep(600)", str(folder), str(exclusive)],
                              cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    check = ["scripts/_preflight.py", "--config_path", DENSE, "--output_dir", folder, "--resume_ckpt", "auto"]
    code, _, err = run(*check)
    one_line(code, err, 2, f"pid {holder.pid}")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    code, out, err = run(*check)
    assert code == 0 and out.strip() == str(folder), err


def test_two_evaluations_at_once_both_keep_their_results(finished, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished, folder)
    data = ["--data_path", os.environ["FASHION_DIR"], "--eval_samples", "32", *TINY_NET]
    procs = [start("scripts/run_eval.sh", DENSE, folder / "last.ckpt", *data) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-1000:] for _, e in outs]
    named = sorted(line.split("results ")[1].split(",")[0] for out, _ in outs for line in out.splitlines()
                   if line.startswith("evaluating"))
    assert named == [str(folder / "eval.json"), str(folder / "eval_2.json")]
    for name in ("eval", "eval_2"):
        assert json.loads((folder / f"{name}.json").read_text())["samples"] == 32
        assert "top1" in (folder / f"{name}.log").read_text()
    # eval.py with one --json_out twice at once: one result written, the other refused in one line
    target = tmp_path / "r.json"
    procs = [start("eval.py", "--config_path", DENSE, "--ckpt", folder / "last.ckpt", *data,
                   "--json_out", target) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 1], [0, 2]), [e[-1000:] for _, e in outs]
    refused = outs[codes.index(max(codes))][1]
    one_line(max(codes), refused, max(codes), str(target))
    assert json.loads(target.read_text())["samples"] == 32


def test_a_run_stopped_before_its_compact_network_is_finished_by_resume(tmp_path):
    out = tmp_path / "psap"
    code, _, err = run(*train(out, config=PSAP))
    assert code == 0, err[-2000:]
    compact = out / "last_compact.ckpt"
    written = digest(compact)
    compact.unlink()  # what a kill between the two writes leaves (every write is atomic)
    before = files(out, **RESULTS)
    code, stdout, err = run(*train(out, "--resume_ckpt", "auto", config=PSAP))
    assert code == 0, err[-2000:]
    assert "stopped before writing last_compact.ckpt" in stdout and "already complete" not in stdout
    assert digest(compact) == written                       # the same network, bit for bit
    after = files(out, **RESULTS)
    assert after == dict(before, **{"last_compact.ckpt": written})   # metrics.jsonl untouched
    code, stdout, err = run(*train(out, "--resume_ckpt", "auto", config=PSAP))
    assert code == 0 and "already complete" in stdout, err[-2000:]
    assert files(out, **RESULTS) == after


KILLED_ATTEMPT = [{"event": "train", "step": 1, "epoch": 1, "loss": 2.3},
                  {"event": "mask_update", "update": 1, "step": 1, "before_iteration": True},
                  {"event": "layer_ranks", "update": 1, "step": 1, "before_iteration": True, "layers": []},
                  {"event": "mask_update", "update": 2, "step": 2, "before_iteration": True}]


@pytest.mark.parametrize("resume", ["", "auto"])
def test_a_fresh_start_sets_the_earlier_attempt_aside(tmp_path, resume):
    """A run killed before its first checkpoint left run.json, metrics.jsonl and train.log; a
    fresh run there (or auto, finding no checkpoint) starts both files anew."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "killed", "recipe": {}}))
    (out / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in KILLED_ATTEMPT))
    (out / "train.log").write_text("the killed attempt's log\n")
    earlier = {name: digest(out / name) for name in ("metrics.jsonl", "train.log")}
    code, stdout, err = run(*train(out, *(["--resume_ckpt", resume] if resume else [])))
    assert code == 0, err[-2000:]
    aside = sorted(p.name for p in out.iterdir() if ".abandoned-" in p.name)
    assert len(aside) == 2, aside
    stamp = aside[0].split(".abandoned-")[1].rsplit(".", 1)[0]
    assert aside == [f"metrics.abandoned-{stamp}.jsonl", f"train.abandoned-{stamp}.log"]
    assert digest(out / aside[0]) == earlier["metrics.jsonl"]
    assert digest(out / aside[1]) == earlier["train.log"]
    assert f"kept an earlier attempt's metrics.jsonl as {aside[0]}" in stdout
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} == {"train", "eval"}, events   # this attempt's only
    assert len({(e["event"], e["step"]) for e in events}) == len(events)
    if resume:
        assert "no checkpoint" in stdout and "starting fresh" in stdout
    assert "killed attempt" not in (out / "train.log").read_text()


def test_a_checkpoint_of_another_run_does_not_take_over_its_metrics(finished, tmp_path):
    """Resuming a checkpoint of run A in a folder whose metrics.jsonl belongs to run B (no
    checkpoints of B left): B's events are set aside, not cut and continued."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "another", "recipe": {}}))
    (out / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    earlier = digest(out / "metrics.jsonl")
    code, stdout, err = run(*train(out, "--resume_ckpt", finished / "last.ckpt"))
    assert code == 0 and "already complete" in stdout, err[-2000:]
    aside = [p for p in out.iterdir() if p.name.startswith("metrics.abandoned-")]
    assert len(aside) == 1 and digest(aside[0]) == earlier
    assert not (out / "metrics.jsonl").exists()
