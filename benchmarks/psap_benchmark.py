"""PSAP against plain soft filter pruning (SFP) and the dense network, Fashion-MNIST ResNet-20:
top-1, parameters, MACs and measured CPU latency of the exported MINDIR models.

    python benchmarks/psap_benchmark.py --data_path DIR [--train_samples 10000 --epochs 6]
                                        [--net resnet56]

Runs, all with the same training images, epochs, seed and learning-rate schedule:
- dense: config/resnet20_fashion_mnist.yaml;
- PSAP: config/psap_resnet20_fashion_mnist.yaml (40 % MACs cut, sparsity-adaptive layer ratios,
  gradient-energy protection);
- SFP: the same PSAP recipe with ``--psap_adaptive false --psap_protect false``: the same soft
  pruning, the same ASFP-shaped schedule and the same MACs target, uniform layer ratios and no
  protection. Only adaptation and protection differ from PSAP (the original SFP prunes at the
  full rate from the first epoch; here both share the gradual schedule).
Each run is `train.py`, `eval.py --json_out` on the full 10,000-image test set (the compact
checkpoint for PSAP/SFP), and `export.py --file_format MINDIR --export_batch 1|32`. Latency: each
MINDIR is loaded (``ms.load`` + ``nn.GraphCell``) and called on a fixed random batch, warm-up
calls first, then the median of repeated calls, the models interleaved in rounds. Timing waits
until the machine is quiet (1-min load < --max_load, or the accuracy benchmark has finished; at
most --max_wait minutes) and the load averages are recorded with the results.

Results: benchmarks/results/psap_benchmark[_NET].{json,md,png}. Finished runs are kept under
--work_dir and skipped when the script is started again.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

from common import ROOT, machine_info, write_results

DENSE_RECIPE = "resnet20_fashion_mnist.yaml"
PSAP_RECIPE = "psap_resnet20_fashion_mnist.yaml"
RUNS = [  # (label, recipe, extra overrides, checkpoint evaluated and exported)
    ("dense", DENSE_RECIPE, [], "last.ckpt"),
    ("PSAP", PSAP_RECIPE, [], "last_compact.ckpt"),
    ("SFP", PSAP_RECIPE, ["--psap_adaptive", "false", "--psap_protect", "false"],
     "last_compact.ckpt"),
]
BATCHES = (1, 32)
ACCURACY_BENCHMARK = "benchmarks/accuracy_sparsity.py"


def _recipe(name):
    return os.path.join(ROOT, "config", name)


def _call(cmd, log_path):
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)


def run(args, label, recipe, extra, ckpt_name, work_dir, seed=None, export=True):
    """Train + evaluate (+ export) one setting; returns its record (cached in the run dir)."""
    seed = args.seed if seed is None else seed
    out = os.path.join(work_dir, label)
    record_path = os.path.join(out, "record.json")
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as handle:
            return json.load(handle)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "commands.log")
    config = ["--config_path", _recipe(recipe)]
    net = ["--net", args.net] if args.net else []
    train = [sys.executable, "train.py", *config, "--data_path", args.data_path, "--output_dir", out,
             "--epoch_size", str(args.epochs), "--train_samples", str(args.train_samples),
             "--seed", str(seed), "--log_interval", "50", "--eval_interval", "0", *net, *extra]
    ckpt = os.path.join(out, ckpt_name)
    seconds_path = os.path.join(out, "train_seconds.json")
    if not os.path.exists(ckpt):
        start = time.time()
        _call(train, log)
        with open(seconds_path, "w", encoding="utf-8") as handle:
            json.dump(time.time() - start, handle)
    seconds = None
    if os.path.exists(seconds_path):
        with open(seconds_path, encoding="utf-8") as handle:
            seconds = json.load(handle)
    eval_json = os.path.join(out, "eval.json")
    _call([sys.executable, "eval.py", *config, *net, "--data_path", args.data_path, "--ckpt", ckpt,
           "--json_out", eval_json], log)
    exports = {}
    for batch in BATCHES if export else ():
        name = os.path.join(out, f"model_b{batch}")
        _call([sys.executable, "export.py", *config, *net, "--ckpt", ckpt, "--file_format", "MINDIR",
               "--file_name", name, "--export_batch", str(batch)], log)
        exports[str(batch)] = name + ".mindir"
    with open(eval_json, encoding="utf-8") as handle:
        result = json.load(handle)
    record = {"label": label, "seed": seed, "recipe": f"config/{recipe}", "overrides": extra + net,
              "checkpoint": ckpt, "train_seconds": seconds, "mindir": exports,
              "train_command": " ".join(["python"] + train[1:]).replace(ROOT + "/", "")}
    record.update({k: result[k] for k in ("top1", "top5", "loss", "params", "flops", "dense_params",
                                          "dense_flops") if k in result})
    if "inner_widths" in result:
        record["inner_widths"] = result["inner_widths"]
    record["pruning_steps"] = pruning_log(out)
    with open(record_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(f"{label}: top1 {record['top1']:.4f} MACs {record['flops']:,} params {record['params']:,}",
          flush=True)
    return record


STEP_LINE = re.compile(r"psap step (\d+) \(epoch (\d+)(?:, final)?\): .*filters zeroed (\d+)/(\d+).*"
                       r"protected (\d+) \(new (\d+)\), regrew (\d+)")
PROTECT_LINE = re.compile(r"psap protection \((\w+) energy\): .* over (\d+) zeroed filters: "
                          r"exactly 0 (\d+), .*> tau (\d+)(?: \(raw interval energies: (\d+)\))?")


def pruning_log(out):
    """Per pruning step: filters zeroed, protected (new), regrown, and how many zeroed filters the
    normalised and the raw energies would protect, parsed from the run's train.log."""
    path = os.path.join(out, "train.log")
    if not os.path.exists(path):
        return []
    steps, pending = [], None
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = PROTECT_LINE.search(line)
            if match:
                pending = {"energy": match.group(1), "zeroed_before": int(match.group(2)),
                           "zero_energy": int(match.group(3)), "above_tau": int(match.group(4)),
                           "raw_above_tau": None if match.group(5) is None else int(match.group(5))}
                continue
            match = STEP_LINE.search(line)
            if match:
                step = {"step": int(match.group(1)), "epoch": int(match.group(2)),
                        "zeroed": int(match.group(3)), "filters": int(match.group(4)),
                        "protected": int(match.group(5)), "newly_protected": int(match.group(6)),
                        "regrew": int(match.group(7))}
                if pending:
                    step["protection"] = pending
                steps.append(step)
                pending = None
    return steps


def _accuracy_benchmark_running():
    """True while a process runs benchmarks/accuracy_sparsity.py (read from /proc, nothing else)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ACCURACY_BENCHMARK in cmdline and "python" in cmdline:
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
    import numpy as np
    import mindspore as ms
    from mindspore import nn, Tensor

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
            "median_ms": float(np.median(ms_values)), "p25_ms": float(np.percentile(ms_values, 25)),
            "p75_ms": float(np.percentile(ms_values, 75)), "runs": int(ms_values.size)}
    return result


def plot_widths(records, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    sys.path.insert(0, ROOT)
    from src.models import default_inner_widths
    net = records[0].get("net", "resnet20")
    dense = [w for block in default_inner_widths(net) for w in block]
    labels = [f"b{i}" for i in range(len(dense))]
    pruned = [r for r in records if "inner_widths" in r]
    x = np.arange(len(dense))
    width = 0.8 / (len(pruned) + 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(dense)), 3.8))
    ax.bar(x - 0.4 + width / 2, dense, width, label="dense", color="lightgrey")
    for k, r in enumerate(pruned):
        kept = [w for block in r["inner_widths"] for w in block]
        ax.bar(x - 0.4 + width * (k + 1.5), kept, width, label=r["label"])
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90 if len(dense) > 12 else 0)
    ax.set_xlabel("residual block (inner conv)")
    ax.set_ylabel("filters kept")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


PUBLISHED = """Published numbers of the lineage, as reported in the papers (not reproduced here; PSAP's
own numbers are unknown, only its abstract is public), top-1 % before -> after pruning:

| model / data | method | top-1 (%) | FLOPs cut | source |
|---|---|---|---|---|
| ResNet-56 / CIFAR-10 | SFP (from scratch) | 93.59 -> 92.26 | 52.6 % | He et al., IJCAI 2018 |
| ResNet-56 / CIFAR-10 | FPGM (from pretrained) | 93.59 -> 93.49 | 52.6 % | He et al., CVPR 2019 |
| ResNet-56 / CIFAR-10 | HRank | 93.26 -> 93.17 | 50.0 % | Lin et al., CVPR 2020 |
| ResNet-50 / ImageNet | SFP | 76.15 -> 74.61 | 41.8 % | He et al., IJCAI 2018 |
| ResNet-50 / ImageNet | FPGM | 76.15 -> 75.59 | 42.2 % | He et al., CVPR 2019 |
| ResNet-50 / ImageNet | FPGM | 76.15 -> 74.83 | 53.5 % | He et al., CVPR 2019 |
| ResNet-50 / ImageNet | HRank | 76.15 -> 74.98 | 43.8 % | Lin et al., CVPR 2020 |
| ResNet-50 / ImageNet | HRank | 76.15 -> 71.98 | 62.1 % | Lin et al., CVPR 2020 |"""


def markdown(data):
    a = data["args"]
    net_name = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}.get(data["net"], data["net"])
    rows = data["runs"]
    dense = rows[0]
    lines = [f"# PSAP vs SFP vs dense: {net_name} on Fashion-MNIST", "",
             f"Command: `{data['command']}`", "",
             f"Every run: the first {a['train_samples']} training images, {a['epochs']} epochs, seed "
             f"{a['seed']}, the same learning-rate schedule; top-1 on the full 10,000-image test "
             "set. PSAP and SFP: 40 % MACs target, soft pruning after every epoch on the same "
             "ASFP-shaped schedule, zero filters removed physically at the end (the compact "
             "network is evaluated and exported). SFP = the PSAP recipe with "
             "`--psap_adaptive false --psap_protect false` (uniform layer ratios, no protection): "
             "only adaptation and protection differ. (Filters that are exactly zero, dead ReLUs, "
             "are pruned first in both, so SFP's final widths are not exactly uniform.)", "",
             f"Latency: exported MINDIR, `ms.load` + `nn.GraphCell` on this CPU "
             f"({data['machine']['cpu_count']} cores, MindSpore {data['machine']['mindspore']}), "
             f"median of {a['repeats_b1']} calls at batch 1 and {a['repeats_b32']} at batch 32 after "
             f"warm-up, models interleaved in {a['rounds']} rounds. 1-min load average "
             f"{data['load_before_timing'][0]:.2f} before timing ({data['quiet_reason']}), "
             f"{data['load_after_timing'][0]:.2f} after. Speed-ups are dense / model; the last two "
             "columns are latency speed-up divided by FLOPs speed-up (1.0 = latency follows "
             "FLOPs).", "",
             ]
    table = ["| model | top-1 (%) | params | MACs | FLOPs speed-up | latency b1 (ms) | "
             "latency b32 (ms) | latency speed-up b1 / b32 | latency/FLOPs speed-up b1 / b32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency"]
        table.append(
            f"| {r['label']} | {100 * r['top1']:.2f} | {r['params']:,} | {r['flops'] / 1e6:.2f} M | "
            f"{r['flops_speedup']:.2f}x | {lat['1']['median_ms']:.3f} | {lat['32']['median_ms']:.2f} | "
            f"{r['latency_speedup']['1']:.2f}x / {r['latency_speedup']['32']:.2f}x | "
            f"{r['latency_over_flops']['1']:.2f} / {r['latency_over_flops']['32']:.2f} |")
    lines += table
    lines += ["", "Latency interquartile ranges (ms): " + "; ".join(
        f"{r['label']} b1 {r['latency']['1']['p25_ms']:.3f}-{r['latency']['1']['p75_ms']:.3f}, "
        f"b32 {r['latency']['32']['p25_ms']:.2f}-{r['latency']['32']['p75_ms']:.2f}" for r in rows) + "."]
    seeds = data.get("top1_by_seed", {})
    seed_list = sorted({k for v in seeds.values() for k in v}, key=int)
    seed_table = []
    if len(seed_list) > 1:
        seed_table = ["| model | " + " | ".join(f"top-1 seed {k} (%)" for k in seed_list)
                      + " | mean (%) |", "|---" * (len(seed_list) + 2) + "|"]
        for label, values in seeds.items():
            tops = [100 * values[k] for k in seed_list if k in values]
            seed_table.append(f"| {label} | " + " | ".join(
                f"{100 * values[k]:.2f}" if k in values else "-" for k in seed_list)
                + f" | {sum(tops) / len(tops):.2f} |")
        lines += ["", "Top-1 over seeds (same data, epochs and recipes; the latency runs are seed "
                  f"{a['seed']}):", ""] + seed_table
    widths = [r for r in rows if "inner_widths" in r]
    if widths:
        lines += ["", "Kept filters of the inner convs (dense: "
                  + " ".join(str(w[0]) for w in data["dense_inner_widths"]) + "):"]
        for r in widths:
            lines.append(f"- {r['label']}: " + " ".join(str(w[0]) for w in r["inner_widths"]))
        lines += ["", f"![kept filters per layer]({data['png']})"]
    psap = next((r for r in rows if r["label"] == "PSAP"), None)
    if psap and psap.get("pruning_steps"):
        lines += ["", "What PSAP's protection did at each pruning step (from its train.log): zeroed "
                  "filters of the previous step whose BN-normalised first-step gradient energy "
                  "exceeds tau x the median of the layer's kept filters, next to how many the raw "
                  "interval energies would have protected:", "",
                  "| step (epoch) | zeroed before | of those with zero gradient (dead ReLU) | "
                  "protected, normalised | protected, raw | regrew | SFP: regrew (no protection) |",
                  "|---|---|---|---|---|---|---|"]
        sfp = next((r for r in rows if r["label"] == "SFP"), {})
        sfp_regrew = {st["step"]: st["regrew"] for st in sfp.get("pruning_steps", [])}
        for st in psap["pruning_steps"]:
            p = st.get("protection")
            if not p:
                continue
            lines.append(f"| {st['step']} ({st['epoch']}) | {p['zeroed_before']} | "
                         f"{p['zero_energy']} | {p['above_tau']} | {p['raw_above_tau']} | "
                         f"{st['regrew']} | {sfp_regrew.get(st['step'], '-')} |")
    lines += ["", "## PSAP (paragraph for the README)", "",
              f"PSAP (Li & Zhao, arXiv 2303.11881) is implemented from its abstract only: no full "
              "text, tables or code are public. What follows the abstract: iterative soft filter "
              "pruning, each layer's ratio set by its own weight sparsity before every pruning "
              "step, and a protective mechanism driven by gradients. Design choices of this "
              "project: the ASFP-shaped global schedule (filters or FLOPs target), layer ratio "
              "proportional to the layer's weight sparsity, L2 or FPGM filter score, pruning of "
              "the inner convs of residual blocks only, protection of a zeroed filter whose "
              "BatchNorm-normalised gradient energy on the first step after pruning exceeds tau x "
              "the median of its layer's kept filters, and physical removal of the zero filters at "
              "the end. "
              f"On {net_name} / Fashion-MNIST ({a['train_samples']} training images, {a['epochs']} "
              f"epochs, CPU) at a {100 * (1 - rows[1]['flops'] / dense['flops']):.1f} % MACs cut:", "",
              *table, "", *(["Top-1 over seeds:", "", *seed_table, ""] if seed_table else []),
              *[line for finding in _findings(data) for line in (finding, "")], PUBLISHED]
    return "\n".join(lines)


def _findings(data):
    """Sentences drawn from the numbers: seed spread, what protection did, latency vs FLOPs."""
    rows = {r["label"]: r for r in data["runs"]}
    out = []
    seeds = data.get("top1_by_seed", {})
    if seeds and len(next(iter(seeds.values()))) > 1:
        def stats(label):
            values = [100 * v for v in seeds[label].values()]
            return sum(values) / len(values), min(values), max(values)
        parts = [f"{label} {m:.2f} % ({lo:.2f}-{hi:.2f})" for label, (m, lo, hi)
                 in ((k, stats(k)) for k in seeds)]
        out.append(f"Mean top-1 over {len(next(iter(seeds.values())))} seeds (range): "
                   + ", ".join(parts) + ". With these short runs the seed-to-seed spread of a "
                   "pruned network is several points, larger than the difference between PSAP "
                   "and SFP: this benchmark does not separate them on accuracy.")
    else:
        out.append("One seed only: short CPU runs vary by several points from seed to seed.")
    psap, sfp = rows.get("PSAP", {}), rows.get("SFP", {})
    steps = [st for st in psap.get("pruning_steps", []) if st.get("protection")]
    if steps and sfp.get("pruning_steps"):
        dead = sum(st["protection"]["zero_energy"] for st in steps)
        zeroed = sum(st["protection"]["zeroed_before"] for st in steps)
        protected = sum(st["protection"]["above_tau"] for st in steps)
        regrew = sum(st["regrew"] for st in steps)
        sfp_regrew = sum(st["regrew"] for st in sfp["pruning_steps"])
        out.append(
            f"Protection (seed {data['args']['seed']}, summed over the {len(steps)} pruning steps "
            f"that follow another): of {zeroed} zeroed filters, {dead} had exactly zero gradient "
            "on the first step after zeroing (BatchNorm shift <= 0: the ReLU is dead, and nearly "
            f"all of them stay zero); {protected} were protected and {regrew} regrew, while SFP "
            f"without any protection saw {sfp_regrew} regrow. A zeroed filter with a live ReLU "
            "regrows whether protected or not, so protection changes little here; PSAP and SFP "
            "differ mainly by the layer widths (above).")
    pruned = [r for r in data["runs"] if r["label"] != "dense"]
    if pruned:
        def span(key):
            values = [v for r in pruned for v in r[key].values()]
            return min(values), max(values)
        (s_lo, s_hi), (q_lo, q_hi) = span("latency_speedup"), span("latency_over_flops")
        flops = "/".join(sorted({f"{r['flops_speedup']:.2f}x" for r in pruned}))
        out.append(f"Latency: for {flops} fewer MACs the compact networks are {s_lo:.2f}-{s_hi:.2f}x "
                   f"faster at batch 1 and 32 on this CPU, i.e. latency speed-up / FLOPs speed-up "
                   f"= {q_lo:.2f}-{q_hi:.2f}: work that is not counted as MACs and does not shrink "
                   "with the inner widths (BatchNorm, ReLU and additions on the residual streams, "
                   "per-operator overhead) keeps its cost.")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--train_samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--net", default="", help="override the recipes' network (e.g. resnet56)")
    parser.add_argument("--repeats_b1", type=int, default=50)
    parser.add_argument("--repeats_b32", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max_load", type=float, default=1.5)
    parser.add_argument("--max_wait", type=float, default=40, help="minutes")
    parser.add_argument("--work_dir", default="")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite the markdown from the stored results JSON (no runs, no timing)")
    parser.add_argument("--extra_seeds", type=int, nargs="*", default=[],
                        help="also train and evaluate every setting with these seeds (top-1 only)")
    args = parser.parse_args()

    net = args.net or "resnet20"
    suffix = "" if net == "resnet20" else f"_{net}"
    if args.report_only:
        path = os.path.join(ROOT, "benchmarks", "results", f"psap_benchmark{suffix}.json")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        write_results(f"psap_benchmark{suffix}", data, markdown(data))
        return
    work_dir = args.work_dir or os.path.join(ROOT, "output", f"bench_psap{suffix}")
    records = [run(args, label, recipe, extra, ckpt, work_dir) for label, recipe, extra, ckpt in RUNS]
    for label, r in zip([x[0] for x in RUNS], records):
        r["net"] = net
        r["pruning_steps"] = pruning_log(os.path.join(work_dir, label))

    load_start = os.getloadavg()
    reason, waits = wait_until_quiet(args.max_load, args.max_wait)
    load_before = os.getloadavg()
    latency = measure_latency(records, {1: args.repeats_b1, 32: args.repeats_b32}, args.warmup,
                              args.rounds, args.seed)
    load_after = os.getloadavg()

    # more seeds (train + evaluate only, after the timing so that it runs on a quiet machine)
    seeds = {r["label"]: {str(args.seed): r["top1"]} for r in records}
    for seed in args.extra_seeds:
        for label, recipe, extra, ckpt in RUNS:
            other = run(args, label, recipe, extra, ckpt, os.path.join(work_dir, f"seed{seed}"),
                        seed=seed, export=False)
            seeds[label][str(seed)] = other["top1"]

    dense = records[0]
    for r in records:
        r["latency"] = latency[r["label"]]
        r["flops_speedup"] = dense["flops"] / r["flops"]
        r["latency_speedup"] = {b: dense["latency"][b]["median_ms"] / r["latency"][b]["median_ms"]
                                for b in r["latency"]}
        r["latency_over_flops"] = {b: s / r["flops_speedup"] for b, s in r["latency_speedup"].items()}
    sys.path.insert(0, ROOT)
    from src.models import default_inner_widths
    name = f"psap_benchmark{suffix}"
    png = os.path.join(ROOT, "benchmarks", "results", f"{name}.png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    plot_widths(records, png, f"{net} on Fashion-MNIST: kept filters per inner conv")
    command = (f"python benchmarks/psap_benchmark.py --data_path DIR --train_samples "
               f"{args.train_samples} --epochs {args.epochs} --seed {args.seed}"
               + (f" --net {args.net}" if args.net else "")
               + (" --extra_seeds " + " ".join(map(str, args.extra_seeds)) if args.extra_seeds else ""))
    data = {"machine": machine_info(), "command": command, "args": vars(args), "net": net,
            "load_at_start_of_wait": list(load_start), "load_before_timing": list(load_before),
            "load_after_timing": list(load_after), "quiet_reason": reason, "wait_log": waits,
            "dense_inner_widths": default_inner_widths(net), "png": os.path.basename(png),
            "runs": records, "top1_by_seed": seeds}
    data["args"]["data_path"] = "DIR"
    write_results(name, data, markdown(data))


if __name__ == "__main__":
    main()
