"""Does width rounding make latency follow FLOPs? Compact ResNets built straight from widths.

    python -m benchmarks.psap_width_latency [--net resnet56] [--cuts 0.4 0.6] [--multiples 1 4 8]
                                            [--fold_bn] [--profiles uniform adaptive all]

For every MACs cut, two layer-width profiles of the PSAP allocation (``flops_layer_counts``, the
function the pruner calls): ``uniform`` (equal layer sparsities: SFP's ratios) and ``adaptive``
(layer sparsities drawn uniformly in [0.05, 0.6], seed --seed: uneven widths like PSAP's), each
unrounded (multiple 1) and rounded to multiples of N (``round_pruned_counts``, the function behind
``psap_width_multiple``). A third profile, ``all``, is the bound for any channel pruning of the
network: every width shrinks, the residual streams included (stage channels 16/32/64 scaled
alike, each a multiple of N, the triple whose MACs are nearest the cut); nothing is left at dense
width, so what does not speed up there is the runtime's, not the pruning's. Each network is built with those inner widths (random weights: latency
does not depend on the values), exported to MINDIR at batch 1 and 32 and timed in one process
with the dense export (``ms.load`` + ``nn.GraphCell``, median of repeated calls, models
interleaved in rounds; see ``psap_benchmark.measure_latency``). The latency/FLOPs speed-up is
(dense latency / model latency) / (dense MACs / model MACs): 1.0 means latency follows FLOPs.
--fold_bn folds every BatchNorm into its conv before export (``src.models.fold``, as
``export.py --fold_bn true``), the dense network included; the unfolded dense export is timed
beside them as a reference row (not part of the fit).

Results: benchmarks/results/psap_width_latency[_NET][_folded].{json,md}.
"""
import argparse
import json
import itertools
import os
import sys
import tempfile

import numpy as np
import mindspore as ms

from benchmarks.common import ROOT, machine_info, result_name, write_results
from benchmarks.latency import measure_latency
from benchmarks.runs import BenchmarkError, main_guard
from src.cli import OneLineParser
from src.config import build_config
from src.models import build_network, default_inner_widths
from src.models.flops import count_macs_params, layer_records
from src.models.fold import fold_batchnorm
from src.models.resnet import ARCHITECTURES, is_cifar_style
from src.pruning.filters.allocation import count_bounds, flops_layer_counts, removed_macs
from src.pruning.filters.surgery import prunable_layers
from src.pruning.filters.widths import round_pruned_counts

SHAPE = (1, 1, 28, 28)   # Fashion-MNIST
UNFOLDED = "dense, BN unfolded"   # the reference row of a --fold_bn run
ALL = "all"   # the profile in which every width shrinks, residual streams included


def layer_widths(cfg, dense_net, cut, sparsities, multiple):
    """inner_widths of the compact network: PSAP's allocation for ``cut`` of the MACs, rounded."""
    layers = prunable_layers(dense_net)
    records = layer_records(dense_net, SHAPE)
    n = np.array([{r["name"]: r["c_out"] for r in records}[l["conv"]] for l in layers])
    counts = flops_layer_counts(sparsities, n, cut, 0.8, records, layers)
    _, lower, caps = count_bounds(n, 0.8, None, None)
    dense = sum(r["macs"] for r in records)
    counts, _ = round_pruned_counts(counts, n, multiple, lower, caps,
                                    lambda c: removed_macs(records, layers, c), cut * dense,
                                    tolerance=0.005 * dense)   # as PSAPPruner does
    widths = default_inner_widths(cfg.net)
    for layer, c in zip(layers, counts):
        widths[layer["block"]][layer["inner"]] -= int(c)
    return widths


def all_widths_network(cfg, dense_net, cut, multiple):
    """The CIFAR ResNet with every width cut (stage channels and inner widths alike): of the stage
    channel triples made of the multiples of ``multiple`` next to dense x sqrt(1 - cut), the one
    whose MACs are nearest the cut (ties: the most even scaling)."""
    base = [int(getattr(dense_net, stage)[0].conv2.weight.shape[0]) for stage in dense_net.stage_names]
    dense_macs = count_macs_params(dense_net, SHAPE)[0]
    scale = np.sqrt(1.0 - cut)
    options = []
    for c in base:
        low = max(multiple, int(c * scale) // multiple * multiple)
        options.append(sorted({low, min(c, low + multiple)}))
    best = None
    for channels in itertools.product(*options):
        net = build_network(cfg, stage_widths=list(channels))
        achieved = 1.0 - count_macs_params(net, SHAPE)[0] / dense_macs
        unevenness = float(np.ptp(np.array(channels) / np.array(base)))
        key = (round(abs(achieved - cut), 4), unevenness)
        if best is None or key < best[0]:
            best = (key, net)
    return best[1]


def export(net, batch, path):
    net.set_train(False)
    sample = ms.Tensor(np.zeros((batch,) + SHAPE[1:], np.float32))
    ms.export(net, sample, file_name=path, file_format="MINDIR")
    return path + ".mindir"


def build_models(args, work):
    cfg = build_config({"net": args.net, "in_channels": 1, "num_classes": 10,
                        "dataset": "fashion_mnist"}, {})
    ms.set_seed(args.seed)
    dense = build_network(cfg)
    rng = np.random.default_rng(args.seed)
    profiles = {"uniform": np.ones(len(prunable_layers(dense))),
                "adaptive": rng.uniform(0.05, 0.6, len(prunable_layers(dense)))}
    models = [("dense", None, None, None, dense)]
    for cut in args.cuts:
        for profile in args.profiles:
            for multiple in args.multiples:
                if profile == ALL:
                    net = all_widths_network(cfg, dense, cut, multiple)
                else:
                    net = build_network(cfg, layer_widths(cfg, dense, cut, profiles[profile],
                                                          multiple))
                models.append((f"{int(100 * cut)}% {profile} N={multiple}", cut, profile,
                               multiple, net))
    if args.fold_bn:
        models.append((UNFOLDED, None, None, None, dense))
    records = []
    for k, (label, cut, profile, multiple, net) in enumerate(models):
        macs, params = count_macs_params(net, SHAPE)
        widths = [int(layer.weight.shape[0]) for layer in
                  (getattr(b, "conv1") for s in net.stage_names for b in getattr(net, s))]
        streams = [int(getattr(net, s)[0].conv2.weight.shape[0]) for s in net.stage_names]
        deployed = fold_batchnorm(net) if args.fold_bn and label != UNFOLDED else net
        records.append({"label": label, "cut": cut, "profile": profile, "multiple": multiple,
                        "flops": macs, "params": params, "inner_widths_conv1": widths,
                        "stream_widths": streams,
                        "mindir": {str(b): export(deployed, b, os.path.join(work, f"m{k}_b{b}"))
                                   for b in (1, 32)}})
    return records


def speedups(records, latency):
    """Latency and latency/FLOPs speed-ups over dense (records[0]), from the median and from the
    fastest call (the latter is less sensitive to other jobs on a shared machine)."""
    dense = records[0]
    for r in records:
        r["latency"] = latency[r["label"]]
        r["flops_speedup"] = dense["flops"] / r["flops"]
        for stat in ("median", "min"):
            speed = {b: dense["latency"][b][f"{stat}_ms"] / r["latency"][b][f"{stat}_ms"]
                     for b in r["latency"]}
            r[f"latency_speedup_{stat}"] = speed
            r[f"latency_over_flops_{stat}"] = {b: v / r["flops_speedup"] for b, v in speed.items()}
        del r["mindir"]


def fixed_cost(runs, batch="32", stat="median", every_width=False):
    """Least-squares fit latency = fixed + per_mmac * MMACs over dense and the models that shrink
    the inner widths only (``every_width``: dense and the ``all`` profile), ``stat`` latency: the
    part of the time that does not shrink with those widths."""
    runs = [r for r in runs if r["label"] != UNFOLDED
            and (r["profile"] is None or (r["profile"] == ALL) == every_width)]
    macs = np.array([r["flops"] / 1e6 for r in runs])
    times = np.array([r["latency"][batch][f"{stat}_ms"] for r in runs])
    per_mmac, fixed = np.polyfit(macs, times, 1)
    return float(fixed), float(per_mmac)


def findings(data):
    """Sentences drawn from the numbers: rounding vs not, and the fixed share of the time."""
    runs = data["runs"]
    dense = runs[0]
    out = []
    for cut in data["args"]["cuts"]:
        group = [r for r in runs if r["cut"] == cut]
        parts = [f"N={r['multiple']} {r['profile']} "
                 f"{r['latency_over_flops_median']['32']:.2f}" for r in group]
        missed = [r["label"] for r in group if abs(1 - r["flops"] / dense["flops"] - cut) > 0.01]
        out.append(f"{round(100 * cut)} % cut, latency/FLOPs speed-up at batch 32 (median): "
                   + ", ".join(parts) + "."
                   + (f" Target missed by more than 1 % (no allowed widths reach it): "
                      f"{', '.join(missed)}." if missed else ""))
    out += _target_sentences(runs)
    if data["args"].get("fold_bn"):
        out.append(_folding_sentence(runs))
    fixed_parts = ("BatchNorm is folded: the convs' work on the residual-stream tensors they "
                   "read or write, which keep their width, ReLU and additions on those streams, "
                   "per-operator overhead" if data["args"].get("fold_bn") else
                   "e.g. BatchNorm, ReLU and additions on the residual streams, which keep their "
                   "width; per-operator overhead")
    inner_only = any(r["profile"] not in (None, ALL) for r in runs)
    for stat in ("median", "min") if inner_only else ():
        fixed, slope = fixed_cost(runs, stat=stat)
        share = fixed / dense["latency"]["32"][f"{stat}_ms"]
        out.append(
            f"A straight line through all models, batch-32 {stat} latency = {fixed:.1f} ms + "
            f"{slope:.3f} ms per MMAC, puts {100 * share:.0f} % of the dense network's time in a "
            f"part that does not shrink with the inner widths ({fixed_parts}). On that line the "
            "latency/FLOPs speed-up of a cut c is (1 - c) * (fixed + k M) / (fixed + k M (1 - c)), "
            "M the dense MMACs: " + ", ".join(
                f"{round(100 * c)} % -> {_line_ratio(fixed, slope, dense['flops'] / 1e6, c):.2f}"
                for c in data["args"]["cuts"]) + ", whatever the widths are rounded to.")
    if any(r["profile"] == ALL for r in runs):
        out += _all_widths_sentences(runs, data["args"]["cuts"])
    return out


def _all_widths_sentences(runs, cuts):
    """What the bound says: the best latency/FLOPs any channel pruning gets on this runtime."""
    out = []
    for cut in cuts:
        group = [r for r in runs if r["cut"] == cut and r["profile"] == ALL]
        out.append(f"Every width cut, residual streams included ({round(100 * cut)} % cut; the "
                   "bound for any channel pruning of this network): latency/FLOPs speed-up at "
                   "batch 32, median / min: " + ", ".join(
                       f"N={r['multiple']} (stages {'/'.join(map(str, r['stream_widths']))}, "
                       f"{100 * (1 - r['flops'] / runs[0]['flops']):.1f} %) "
                       f"{r['latency_over_flops_median']['32']:.2f} / "
                       f"{r['latency_over_flops_min']['32']:.2f}" for r in group) + ".")
    for stat in ("median", "min"):
        fixed, slope = fixed_cost(runs, stat=stat, every_width=True)
        share = fixed / runs[0]["latency"]["32"][f"{stat}_ms"]
        out.append(
            f"A straight line through dense and these networks, batch-32 {stat} latency = "
            f"{fixed:.1f} ms + {slope:.3f} ms per MMAC: {100 * share:.0f} % of the dense time does "
            "not shrink even when every width does (per-operator overhead and kernels that run "
            "narrow channels at lower efficiency). On that line: " + ", ".join(
                f"{round(100 * c)} % -> {_line_ratio(fixed, slope, runs[0]['flops'] / 1e6, c):.2f}"
                for c in cuts) + ".")
    return out


def _target_sentences(runs, target=0.85):
    """Which rounded models (multiple > 1) reach ``target`` latency/FLOPs at batch 32."""
    rounded = [r for r in runs if r["multiple"] and r["multiple"] > 1]
    out = []
    for stat in ("median", "min"):
        hits = [f"{r['label']} ({r[f'latency_over_flops_{stat}']['32']:.2f})" for r in rounded
                if r[f"latency_over_flops_{stat}"]["32"] >= target]
        out.append(f"Rounded widths reaching a latency/FLOPs speed-up of {target} at batch 32 "
                   f"({stat}): " + (", ".join(hits) if hits else "none") + ".")
    return out


def _folding_sentence(runs):
    dense = runs[0]
    plain = next(r for r in runs if r["label"] == UNFOLDED)
    parts = [f"{stat} {plain['latency']['32'][f'{stat}_ms']:.1f} -> "
             f"{dense['latency']['32'][f'{stat}_ms']:.1f} ms "
             f"({1 - dense['latency']['32'][f'{stat}_ms'] / plain['latency']['32'][f'{stat}_ms']:.0%} "
             "less)" for stat in ("median", "min")]
    return "Folding BatchNorm, dense network at batch 32: " + ", ".join(parts) + "."


def _line_ratio(fixed, per_mmac, dense_mmacs, cut):
    kept = 1.0 - cut
    return kept * (fixed + per_mmac * dense_mmacs) / (fixed + per_mmac * dense_mmacs * kept)


def markdown(data):
    a = data["args"]
    folded = ", BatchNorm folded" if a.get("fold_bn") else ""
    lines = [f"# Width rounding and latency: compact {a['net']} vs dense (MINDIR{folded}, this CPU)",
             "",
             f"Command: `{data['command']}`", "",
             f"{data['machine']['cpu_count']} cores shared with other jobs, MindSpore "
             f"{data['machine']['mindspore']}; 1-min load {data['load_before'][0]:.2f} before "
             f"timing, {data['load_after'][0]:.2f} after. Median of {a['repeats_b1']} calls at "
             f"batch 1 and {a['repeats_b32']} at batch 32, models interleaved in {a['rounds']} "
             "rounds, all in one process. Speed-ups are dense / model, from the median call "
             "and from the fastest call (min; less sensitive to the other jobs on the machine).",
             "", "| model | MACs | achieved cut | FLOPs speed-up | latency b1 / b32, median (ms) | "
             "latency b1 / b32, min (ms) | latency/FLOPs speed-up b1 / b32, median | "
             "latency/FLOPs speed-up b1 / b32, min |", "|---|---|---|---|---|---|---|---|"]
    dense = data["runs"][0]
    for r in data["runs"]:
        lat, med, low = r["latency"], r["latency_over_flops_median"], r["latency_over_flops_min"]
        lines.append(
            f"| {r['label']} | {r['flops'] / 1e6:.2f} M | "
            f"{100 * (1 - r['flops'] / dense['flops']):.2f} % | {r['flops_speedup']:.2f}x | "
            f"{lat['1']['median_ms']:.3f} / {lat['32']['median_ms']:.2f} | "
            f"{lat['1']['min_ms']:.3f} / {lat['32']['min_ms']:.2f} | "
            f"{med['1']:.2f} / {med['32']:.2f} | {low['1']:.2f} / {low['32']:.2f} |")
    lines += ["", *findings(data)]
    lines += ["", "Kept widths of the first inner conv of every block:", ""]
    lines += [f"- {r['label']}: " + " ".join(map(str, r["inner_widths_conv1"]))
              + (f" (residual streams {'/'.join(map(str, r['stream_widths']))})"
                 if r.get("profile") == ALL else "")
              for r in data["runs"]]
    return "\n".join(lines)


def parse_args():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="resnet56", choices=ARCHITECTURES,
                        help="default resnet56")
    parser.add_argument("--cuts", type=float, nargs="+", default=[0.4, 0.6],
                        help="MACs cuts, each in (0, 1); default 0.4 0.6")
    parser.add_argument("--multiples", type=int, nargs="+", default=[1, 4, 8],
                        help="width multiples N >= 1 (1 = unrounded); default 1 4 8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats_b1", type=int, default=50)
    parser.add_argument("--repeats_b32", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profiles", nargs="+", default=["uniform", "adaptive", ALL],
                        choices=["uniform", "adaptive", ALL],
                        help="width profiles: inner widths only (uniform, adaptive) or every "
                             "width, residual streams included (all; CIFAR ResNets only); "
                             "default all three")
    parser.add_argument("--fold_bn", action="store_true",
                        help="fold every BatchNorm into its conv before export (dense included)")
    parser.add_argument("--name", default=None, type=result_name,
                        help="results file name under benchmarks/results (default "
                             "psap_width_latency[_NET][_folded]: the committed results)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite the markdown from the stored JSON (no timing)")
    args = parser.parse_args()
    if any(not 0 < c < 1 for c in args.cuts):
        parser.error(f"--cuts: each cut must be in (0, 1), got {args.cuts}")
    if any(m < 1 for m in args.multiples):
        parser.error(f"--multiples: each must be >= 1, got {args.multiples}")
    if min(args.repeats_b1, args.repeats_b32) < args.rounds or args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and at most --repeats_b1 and --repeats_b32, "
                     "--warmup >= 0")
    if ALL in args.profiles and not is_cifar_style(args.net) and not args.report_only:
        parser.error(f"--profiles {ALL} builds CIFAR-style ResNets only, not {args.net} (pass "
                     "--profiles uniform adaptive)")
    suffix = ("" if args.net == "resnet56" else f"_{args.net}") + ("_folded" if args.fold_bn else "")
    args.name = args.name or f"psap_width_latency{suffix}"
    return args


def main():
    args = parse_args()
    if args.report_only:
        path = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.json")
        if not os.path.exists(path):
            raise BenchmarkError(f"no results file {os.path.relpath(path, ROOT)}: run the "
                                 "benchmark first, or name an existing one with --name")
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        write_results(args.name, data, markdown(data))
        return
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    with tempfile.TemporaryDirectory() as work:
        try:
            records = build_models(args, work)
        except ValueError as err:   # e.g. a cut the allocation cannot reach within its caps
            raise BenchmarkError(str(err)) from None
        load_before = os.getloadavg()
        latency = measure_latency(records, {1: args.repeats_b1, 32: args.repeats_b32},
                                  args.warmup, args.rounds, args.seed)
        load_after = os.getloadavg()
    speedups(records, latency)
    command = "python -m benchmarks.psap_width_latency " + " ".join(sys.argv[1:])
    data = {"machine": machine_info(), "command": command.strip(), "args": vars(args),
            "load_before": list(load_before), "load_after": list(load_after), "runs": records}
    write_results(args.name, data, markdown(data))


if __name__ == "__main__":
    main_guard(main)
