"""Data-parallel scaling on this machine: 1 worker vs 2 CPU workers (msrun, loopback).

    python -m benchmarks.scaling [--data_path DIR] [--train_samples 10240] [--max_load 1.5]
    # writes benchmarks/results/scaling.{json,md}

Runs the Fashion-MNIST RPG recipe (config/rpg_resnet20_fashion_mnist_s90.yaml, batch 128 per
worker, so 2 workers train with a global batch of 256) for one epoch of ``train_samples`` images,
first as one process (train.py), then as 2 workers (scripts/run_distribute_train.sh 2 ... CPU).
From rank 0's metrics.jsonl (``log_interval 1``: one "train" event per iteration, with its
images/s over all workers, and one "mask_update" event per update):

- training images/s: all images over all time of the ordinary steps, leaving out the first
  ``--warmup`` iterations (graph compilation) and the mask-update iterations;
- mask update: the wall time of a mask-update iteration (dense gradient of task + rank loss,
  all-reduced in the 2-worker run, the host mask computation, installing the masks), the first
  one left out (it compiles the gradient graph), and its overhead over an ordinary step.

Both processes share the same 2 cores, so near 1x is the expected result here; the point is to
measure it honestly. The script waits for a quiet machine (1-min load <= --max_load, a few
retries), records the load before and after each run and the CPU other processes used meanwhile.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import ROOT, machine_info, write_results
from src.cli import OneLineParser
from src.logs import read_metrics
from src.outputs import write_text_atomic

RECIPE = "config/rpg_resnet20_fashion_mnist_s90.yaml"


def load1():
    return os.getloadavg()[0]


def descendants(pid):
    """Pids of the live descendants of ``pid``."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_for_quiet(max_load, retries, pause):
    seen = []
    for attempt in range(retries + 1):
        seen.append(round(load1(), 2))
        if seen[-1] <= max_load:
            return True, seen
        if attempt < retries:
            print(f"load average {seen[-1]:.2f} > {max_load}: waiting {pause} s "
                  f"({attempt + 1}/{retries})", flush=True)
            time.sleep(pause)
    return False, seen


def cpu_seconds():
    """{pid: CPU seconds (user + system) so far} of every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def other_cpu_seconds(before, after, own):
    """CPU seconds used between two snapshots by processes that are not ours (``own`` pids).
    Processes of others that ended in between are missed: a lower bound."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items() if pid not in own)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def iteration_times(out, global_batch, warmup):
    """Per-iteration rates and mask updates of a run, from its metrics.jsonl."""
    rates = {e["step"]: e["images_per_s"] for e in read_metrics(out, "train")}
    # an update "at step u" is done by the iteration logged as step u + 1
    updates = sorted(e["step"] + 1 for e in read_metrics(out, "mask_update"))
    seconds = {step: global_batch / rate for step, rate in rates.items()}
    ordinary = [s for s in sorted(seconds) if s > warmup and s not in updates]
    if not ordinary:
        raise SystemExit(f"no steady-state steps in {out}/metrics.jsonl: raise --train_samples")
    step_s = float(np.median([seconds[s] for s in ordinary]))
    update_s = [seconds[s] for s in updates[1:] if s in seconds]
    return {
        "iterations": len(rates), "steady_iterations": len(ordinary),
        "images_per_s": global_batch * len(ordinary) / sum(seconds[s] for s in ordinary),
        "step_s_median": step_s,
        "mask_updates": len(updates),
        "first_mask_update_s": seconds.get(updates[0]) if updates else None,
        "mask_update_s_median": float(np.median(update_s)) if update_s else None,
        "mask_update_overhead_s": float(np.median(update_s)) - step_s if update_s else None,
    }


def run(workers, args, common, out):
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3", PYTHONWARNINGS="ignore",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if workers == 1:
        cmd = [sys.executable, "train.py", "--config_path", RECIPE, *common, "--output_dir", out]
        shown = "python train.py --config_path " + RECIPE
    else:
        env["MASTER_PORT"] = str(free_port())
        cmd = ["bash", "scripts/run_distribute_train.sh", str(workers), RECIPE, "CPU", *common,
               "--output_dir", out]
        shown = f"bash scripts/run_distribute_train.sh {workers} {RECIPE} CPU"
    shown += " " + " ".join(common)
    before = round(load1(), 2)
    snapshot = cpu_seconds()
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    own = {os.getpid(), proc.pid}
    while proc.poll() is None:  # note our own processes (workers, scheduler) while they live
        own |= descendants(proc.pid)
        time.sleep(1.0)
    stdout, stderr = proc.communicate()
    wall = time.time() - start
    others = other_cpu_seconds(snapshot, cpu_seconds(), own)
    if proc.returncode != 0:
        raise SystemExit(f"{workers}-worker run failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    result = iteration_times(out, args.batch_size * workers, args.warmup)
    result.update({"workers": workers, "global_batch": args.batch_size * workers,
                   "wall_s": wall, "load_before": before, "load_after": round(load1(), 2),
                   "other_processes_cpu_cores": others / wall, "command": shown})
    if result["mask_update_s_median"] is None:
        raise SystemExit(f"{workers}-worker run had fewer than 2 mask updates: raise "
                         "--train_samples or lower --delta")
    print(f"{workers} worker(s): {result['images_per_s']:.1f} img/s, mask update "
          f"{result['mask_update_s_median']:.3f} s, wall {wall:.0f} s, other processes used "
          f"{result['other_processes_cpu_cores']:.2f} cores", flush=True)
    return result


def main():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data_path", default=os.environ.get("FASHION_MNIST_DIR",
                                                              "/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train_samples", type=int, default=10240)
    parser.add_argument("--batch_size", type=int, default=128, help="per worker (the recipe's)")
    parser.add_argument("--delta", type=int, default=8, help="iterations between mask updates")
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out")
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--pause", type=int, default=120, help="seconds between load checks")
    parser.add_argument("--force", action="store_true", help="measure even on a busy machine")
    parser.add_argument("--render", metavar="JSON", help="only rebuild the Markdown from a result file")
    args = parser.parse_args()
    if args.render:
        with open(args.render, encoding="utf-8") as handle:
            data = json.load(handle)
        path = os.path.join(ROOT, "benchmarks", "results", "scaling.md")
        write_text_atomic(render(data) + "\n", path)
        print(render(data))
        return

    quiet, loads = wait_for_quiet(args.max_load, args.retries, args.pause)
    if not quiet and not args.force:
        raise SystemExit(f"machine busy (1-min load {loads}); try later or pass --force")
    common = ["--data_path", args.data_path, "--train_samples", str(args.train_samples),
              "--eval_samples", "256", "--batch_size", str(args.batch_size), "--epoch_size", "1",
              "--delta", str(args.delta), "--eval_interval", "0", "--log_interval", "1"]
    workdir = tempfile.mkdtemp(prefix="scaling_")
    try:
        one = run(1, args, common, os.path.join(workdir, "w1"))
        two = run(2, args, common, os.path.join(workdir, "w2"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info = machine_info()
    data = {"machine": info, "load_checks_before": loads, "quiet": quiet,
            "argv": sys.argv[1:], "train_samples": args.train_samples,
            "batch_size_per_worker": args.batch_size, "delta": args.delta, "warmup": args.warmup,
            "runs": [one, two],
            "speedup_2_vs_1": two["images_per_s"] / one["images_per_s"],
            "mask_update_time_ratio_2_vs_1": two["mask_update_s_median"] / one["mask_update_s_median"],
            "mask_update_overhead_ratio_2_vs_1":
                two["mask_update_overhead_s"] / one["mask_update_overhead_s"]}
    write_results("scaling", data, render(data))


def render(data):
    """The Markdown table of a result dict (``--render`` rebuilds it from the JSON)."""
    info, loads, (one, two) = data["machine"], data["load_checks_before"], data["runs"]
    lines = [
        "# Data-parallel scaling: 1 worker vs 2 CPU workers (msrun, loopback)", "",
        f"Command: `python -m benchmarks.scaling {' '.join(data['argv'])}`".rstrip(), "",
        f"Machine: {info['cpu_count']} cores, MindSpore {info['mindspore']}; 1-min load average "
        f"before starting {loads[-1]:.2f}"
        + ("" if data["quiet"] else " (BUSY: measured with --force)") + ".",
        f"Recipe `{RECIPE}`, one epoch of {data['train_samples']} images, batch "
        f"{data['batch_size_per_worker']} per worker, mask update every {data['delta']} "
        f"iterations; images/s over the ordinary steps after the first {data['warmup']} "
        "(compilation); mask-update time = median wall time of an update iteration after the "
        "first (which compiles the gradient graph); its overhead = that minus the median "
        "ordinary step.", "",
        "| workers | global batch | train img/s | step (s) | mask update (s) | update overhead "
        "over a step (s) | first update (s) | load before / after | others' CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in (one, two):
        lines.append(f"| {r['workers']} | {r['global_batch']} | {r['images_per_s']:.1f} | "
                     f"{r['step_s_median']:.3f} | {r['mask_update_s_median']:.3f} | "
                     f"{r['mask_update_overhead_s']:.3f} | {r['first_mask_update_s']:.1f} | "
                     f"{r['load_before']:.2f} / {r['load_after']:.2f} | "
                     f"{r['other_processes_cpu_cores']:.2f} |")
    lines += [
        "", "Load after a run includes the run itself; \"others' CPU\" is the CPU time other "
        "processes on the machine used during the run, in cores (of 2): a lower bound, processes "
        "that ended during the run are missed.", "",
        f"Speed-up of 2 workers over 1: **{data['speedup_2_vs_1']:.2f}x** in images/s. A mask-update "
        f"iteration takes {data['mask_update_time_ratio_2_vs_1']:.2f}x as long with 2 workers, "
        f"mostly because every iteration does (each worker's batch of "
        f"{data['batch_size_per_worker']} shares the cores with the other's); its overhead over an "
        f"ordinary step is {data['mask_update_overhead_ratio_2_vs_1']:.2f}x that of 1 worker "
        "(the dense gradient is all-reduced and the host mask computation runs on each worker).", "",
        "Both workers share the machine's 2 cores (and each MindSpore process uses several "
        "threads), so no speed-up is expected here: the 2-worker run shows that data parallelism "
        "works and what it costs, not how it scales on multi-device hosts.", "",
        "Runs:", ""]
    lines += [f"- {r['workers']} worker(s): `{r['command']}`" for r in (one, two)]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
