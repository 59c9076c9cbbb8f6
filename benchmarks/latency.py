"""Latency of exported MINDIR networks on this CPU, measured when the machine is quiet: the
benchmarks' shared timing (``psap_benchmark``, ``psap_width_latency``)."""
import os
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

BATCHES = (1, 32)
# how a running accuracy benchmark shows in a process's command line (by path, or as a module)
ACCURACY_BENCHMARK = ("benchmarks/accuracy_sparsity.py", "benchmarks.accuracy_sparsity")


def _accuracy_benchmark_running():
    """True while a process runs the accuracy benchmark (read from /proc, nothing else)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in ACCURACY_BENCHMARK) and "python" in cmdline:
            return True
    return False


def wait_until_quiet(max_load, max_wait_min, poll_s=60):
    """Poll the 1-min load until it is below ``max_load`` or the accuracy benchmark has ended."""
    start = time.time()
    waits = []
    while True:
        load = os.getloadavg()[0]
        running = _accuracy_benchmark_running()
        waits.append({"t_s": round(time.time() - start), "load_1min": load,
                      "accuracy_benchmark_running": running})
        if load < max_load:
            return "load below threshold", waits
        if not running:
            # its last process may still weigh on the 1-min average: give it a little time
            if len(waits) > 1 and not waits[-2]["accuracy_benchmark_running"]:
                return "accuracy benchmark finished", waits
        if time.time() - start > 60 * max_wait_min:
            return f"gave up waiting after {max_wait_min} min", waits
        print(f"waiting for a quiet machine: 1-min load {load:.2f}, accuracy benchmark "
              f"{'running' if running else 'finished'}", flush=True)
        time.sleep(poll_s)


def measure_latency(records, repeats, warmup, rounds, seed):
    """Median latency (ms) of every exported MINDIR at every batch size, models interleaved."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rng = np.random.default_rng(seed)
    cells, inputs = {}, {}
    for batch in BATCHES:
        inputs[batch] = Tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32))
        for r in records:
            graph = nn.GraphCell(ms.load(r["mindir"][str(batch)]))
            graph(inputs[batch]).asnumpy()               # compile
            cells[(r["label"], batch)] = graph
    times = {key: [] for key in cells}
    for _ in range(rounds):
        for (label, batch), graph in cells.items():
            x = inputs[batch]
            for _ in range(warmup):
                graph(x).asnumpy()
            for _ in range(repeats[batch] // rounds):
                start = time.perf_counter()
                graph(x).asnumpy()
                times[(label, batch)].append(time.perf_counter() - start)
    result = {}
    for (label, batch), values in times.items():
        ms_values = 1000 * np.asarray(values)
        result.setdefault(label, {})[str(batch)] = {
            "median_ms": float(np.median(ms_values)), "min_ms": float(ms_values.min()),
            "p10_ms": float(np.percentile(ms_values, 10)),
            "p25_ms": float(np.percentile(ms_values, 25)),
            "p75_ms": float(np.percentile(ms_values, 75)), "runs": int(ms_values.size)}
    return result
