"""The PSAP benchmark's report (``psap_benchmark``): rows aggregated over seeds, verdicts, the
Markdown and the plot, from the records of its runs."""
import json
import os

import numpy as np

from benchmarks.common import ROOT, save_figure, write_results
from benchmarks.runs import BenchmarkError

NET_NAMES = {"resnet20": "ResNet-20", "resnet56": "ResNet-56"}


def _stats(values):
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "min": float(values.min()),
            "max": float(values.max()), "n": int(values.size)}


def cell_key(r):
    return f"{r['net']}/{r['start'] if r['method'] != 'dense' else 'dense'}/" \
           f"{round(100 * r['cut'])}/{r['label']}"


def aggregate(records, latency):
    """One row per (net, start, cut, method, rounding): top-1 over seeds, size, latency."""
    cells = {}
    for r in records:
        cells.setdefault(cell_key(r), []).append(r)
    rows = []
    for key, group in cells.items():
        first = group[0]
        row = {k: first[k] for k in ("net", "start", "cut", "method", "multiple", "label")}
        if any(r.get("committed") for r in group):
            row["committed"] = sorted({r.get("committed") or "this run" for r in group})
        row.update(key=key, top1_by_seed={str(r["seed"]): r["top1"] for r in group},
                   top1=_stats([100 * r["top1"] for r in group]),
                   params=int(round(sum(r["params"] for r in group) / len(group))),
                   flops=int(round(sum(r["flops"] for r in group) / len(group))),
                   dense_flops=first.get("dense_flops", first["flops"]),
                   inner_widths=first.get("inner_widths"),
                   stage_widths=first.get("stage_widths"), regrowth=[r.get("regrowth")
                                                                     for r in group],
                   protection=[_protection_totals(r) for r in group])
        if key in latency:
            row["latency"] = latency[key]
        rows.append(row)
    _speedups(rows)
    return rows


def _protection_totals(record):
    """Summed over the pruning steps of one run: filters protected at a step, kept at the next,
    of those competed on score, won."""
    steps = record.get("pruning_steps") or []
    return {k: sum(st[k] for st in steps) for k in ("protected_before", "kept", "competed",
                                                   "won", "regrew")} if steps else None


def _speedups(rows):
    dense = {r["net"]: r for r in rows if r["method"] == "dense"}
    for r in rows:
        base = dense.get(r["net"])
        r["flops_speedup"] = (base["flops"] / r["flops"]) if base else None
        if base and "latency" in r and "latency" in base:
            r["latency_speedup"] = {b: base["latency"][b]["median_ms"]
                                    / r["latency"][b]["median_ms"] for b in r["latency"]}
            r["latency_over_flops"] = {b: s / r["flops_speedup"]
                                       for b, s in r["latency_speedup"].items()}


def _row_line(r):
    t = r["top1"]
    lat = r.get("latency")
    latency = f"{lat['1']['median_ms']:.3f} / {lat['32']['median_ms']:.2f}" if lat else "-"
    ratio = (f"{r['latency_over_flops']['1']:.2f} / {r['latency_over_flops']['32']:.2f}"
             if "latency_over_flops" in r else "-")
    cut = "-" if r["method"] == "dense" else f"{round(100 * r['cut'])} %"
    speedup = "-" if r["flops_speedup"] is None else f"{r['flops_speedup']:.2f}x"
    label = r["label"] + (" (committed)" if r.get("committed") else "")
    return (f"| {cut} | {label} | {t['mean']:.2f} ± {t['std']:.2f} | {t['min']:.2f}-"
            f"{t['max']:.2f} | {t['n']} | {r['params']:,} | {r['flops'] / 1e6:.2f} M | "
            f"{speedup} | {latency} | {ratio} |")


def verdicts(rows):
    """Best PSAP configuration vs SFP per (net, start, cut): difference of mean top-1, called a
    win/loss only when it exceeds both spreads (sample std over seeds)."""
    out = []
    cells = sorted({(r["net"], r["start"], r["cut"]) for r in rows if r["method"] != "dense"})
    for net, start, cut in cells:
        group = [r for r in rows if (r["net"], r["start"], r["cut"]) == (net, start, cut)]
        sfp = next((r for r in group if r["label"] == "SFP"), None)
        psap = [r for r in group if r["method"].startswith("PSAP")]
        if not sfp or not psap:
            continue
        best = max(psap, key=lambda r: r["top1"]["mean"])
        diff = best["top1"]["mean"] - sfp["top1"]["mean"]
        spread = max(best["top1"]["std"], sfp["top1"]["std"])
        if min(best["top1"]["n"], sfp["top1"]["n"]) < 2:
            word = "no verdict from one seed"
        else:
            word = "wins" if diff > spread and diff > 0 else \
                "loses" if -diff > spread and diff < 0 else "ties"
        out.append(f"- {NET_NAMES.get(net, net)}, {start}, {round(100 * cut)} % MACs cut: best "
                   f"PSAP ({best['label']}) {best['top1']['mean']:.2f} % vs SFP "
                   f"{sfp['top1']['mean']:.2f} %: {diff:+.2f} points over {best['top1']['n']} "
                   f"seed(s), spread (std) {spread:.2f}: {word if word.startswith('no') else 'PSAP ' + word}"
                   + ("; the acceptance asks for +1.00" if round(100 * cut) == 60 else "") + ".")
    return out


ABLATIONS = {"PSAP-L2": "without the BN-aware score (L2)", "PSAP-BN-NP": "without protection",
             "PSAP-BN-NA": "without adaptive per-layer ratios", "SFP": "without all three"}


def ablation_lines(rows):
    """Per (net, start, cut) with PSAP-BN and an ablation: mean top-1 difference to PSAP-BN."""
    out = []
    for full in (r for r in rows if r["label"] == "PSAP-BN"):
        same = [r for r in rows if (r["net"], r["start"], r["cut"]) == (full["net"], full["start"],
                                                                        full["cut"])]
        for r in (r for r in same if r["label"] in ABLATIONS):
            if r["label"] == "SFP" and len(same) < 4:
                continue            # PSAP vs SFP alone: the verdict above says it
            diff = r["top1"]["mean"] - full["top1"]["mean"]
            spread = max(r["top1"]["std"], full["top1"]["std"])
            out.append(f"- {NET_NAMES.get(r['net'], r['net'])}, {r['start']}, "
                       f"{round(100 * r['cut'])} %: PSAP-BN {ABLATIONS[r['label']]} ({r['label']}) "
                       f"{r['top1']['mean']:.2f} % vs {full['top1']['mean']:.2f} %: {diff:+.2f} "
                       f"points over {r['top1']['n']} seed(s), spread (std) {spread:.2f}"
                       + (" (outside the spread)" if abs(diff) > spread else " (inside the spread)")
                       + ".")
    return out


def committed_note(rows):
    """The report's line naming the results files committed runs were taken from (none: [])."""
    if not any(r.get("committed") for r in rows):
        return []
    names = sorted({n for r in rows for n in r.get("committed", []) if n != "this run"})
    return ["(committed): runs taken from " + ", ".join(f"benchmarks/results/{n}.json"
                                                        for n in names)
            + " (--keep_committed), trained by an earlier commit of the code with the same "
            "settings and budget; not re-run, not timed.", ""]


def protection_lines(rows):
    lines = ["| net | start | cut | method | protected (sum over steps) | kept at the next step | "
             "competed on score | won | regrown | regrown kept to the end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        totals = [p for p in r["protection"] if p]
        regrowth = [g for g in r["regrowth"] if g]
        if not totals or not r["method"].startswith("PSAP"):
            continue
        mean = {k: sum(p[k] for p in totals) / len(totals) for k in totals[0]}
        survived = sum(g["survived"] for g in regrowth) / len(regrowth) if regrowth else None
        regrown = sum(g["regrown"] for g in regrowth) / len(regrowth) if regrowth else None
        lines.append(f"| {r['net']} | {r['start']} | {round(100 * r['cut'])} % | {r['label']} | "
                     f"{mean['protected_before']:.1f} | {mean['kept']:.1f} | "
                     f"{mean['competed']:.1f} | {mean['won']:.1f} | {regrown or 0:.1f} | "
                     f"{survived or 0:.1f} |")
    return lines


def markdown(data):
    a = data["args"]
    # older versions recorded `python benchmarks/psap_benchmark.py`, which cannot import its package
    command = data["command"].replace("python benchmarks/psap_benchmark.py", "python -m benchmarks.psap_benchmark")
    lines = ["# PSAP benchmark matrix: Fashion-MNIST", "", f"Command: `{command}`", "",
             f"Every run: the first {a['train_samples']} training images, {a['epochs']} epochs, "
             f"the recipes' schedule (pre-trained start: lr_max {a['pretrained_lr']}, no warm-up,"
             f" from the dense run of the same seed); top-1 on "
             f"{a['eval_samples'] or 'all 10,000'} test images of the compact network. Mean ± "
             "sample std, min-max over seeds. Latency: MINDIR of the first seed, `ms.load` + "
             f"`nn.GraphCell`, median of {a['repeats_b1']} calls at batch 1 and "
             f"{a['repeats_b32']} at batch 32, models of a network interleaved; 1-min load "
             + ", ".join(f"{net} {v[0]:.2f}" for net, v in data["load_before_timing"].items())
             + " before timing. FLOPs speed-up = dense MACs / MACs; latency/FLOPs speed-up = "
             "(dense latency / latency) / FLOPs speed-up.", ""]
    header = ["| cut | method | top-1 (%) | min-max | seeds | params | MACs | FLOPs speed-up | "
              "latency b1 / b32 (ms) | latency/FLOPs speed-up b1 / b32 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    rows = data["rows"]
    for net in a["nets"]:
        dense = [r for r in rows if r["net"] == net and r["method"] == "dense"]
        for start in a["starts"]:
            group = [r for r in rows if r["net"] == net and r["start"] == start
                     and r["method"] != "dense"]
            lines += [f"## {NET_NAMES.get(net, net)}, {start}", "", *header,
                      *[_row_line(r) for r in dense + group], ""]
    lines += committed_note(rows)
    verdict = verdicts(rows)
    lines += (["## PSAP vs SFP", "", *verdict, ""] if verdict else [])
    ablation = ablation_lines(rows)
    lines += (["## Ablations of PSAP-BN", "", *ablation, ""] if ablation else [])
    lines += ["## Protection (mean over seeds)", "", *protection_lines(rows), "",
              "## Kept widths (first seed)", "", *width_lines(rows), "",
              f"![top-1 vs MACs cut]({data['png']})", ""]
    return "\n".join(lines)


def width_lines(rows):
    """Inner widths of every block (and residual-stream widths when pruned), per pruned row."""
    out = []
    for r in rows:
        if r["method"] == "dense" or not r.get("inner_widths"):
            continue
        inner = " ".join(str(w[0]) if len(w) == 1 else "/".join(map(str, w))
                         for w in r["inner_widths"])
        streams = r.get("stage_widths")
        out.append(f"- {NET_NAMES.get(r['net'], r['net'])}, {r['start']}, "
                   f"{round(100 * r['cut'])} %, {r['label']}: inner {inner}"
                   + (f"; residual streams {'/'.join(map(str, streams))}" if streams else ""))
    return out


def _plot_methods(ax, group):
    """Methods on the x axis in the order run: each seed a dot, the mean a bar with its std."""
    for x, r in enumerate(group):
        seeds = sorted(r["top1_by_seed"].items())
        ax.scatter([x] * len(seeds), [100 * v for _, v in seeds], s=14, color="grey", zorder=3)
        ax.errorbar([x], [r["top1"]["mean"]], yerr=[r["top1"]["std"]], fmt="_", markersize=18,
                    capsize=5, color="C0", zorder=4)
        ax.annotate(f"{r['top1']['mean']:.2f}", (x, r["top1"]["mean"]), xytext=(8, 0),
                    textcoords="offset points", va="center", fontsize=7)
    ax.set_xticks(range(len(group)))
    ax.set_xticklabels([r["label"] + (" (committed)" if r.get("committed") else "") for r in group],
                       rotation=20, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(group) - 0.4)


def plot(rows, nets, starts, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(nets), len(starts), figsize=(5.5 * len(starts), 3.8 * len(nets)),
                             squeeze=False)
    for i, net in enumerate(nets):
        for j, start in enumerate(starts):
            ax = axes[i][j]
            for r in (r for r in rows if r["net"] == net and r["method"] == "dense"):
                ax.axhline(r["top1"]["mean"], color="grey", linestyle="--", label="dense")
            group = [r for r in rows if r["net"] == net and r["start"] == start and r["method"] != "dense"]
            cuts = sorted({r["cut"] for r in group})
            if len(cuts) == 1:     # one cut (an ablation): the methods side by side, every seed
                _plot_methods(ax, group)
                ax.set_title(f"{NET_NAMES.get(net, net)}, {start}, {round(100 * cuts[0])} % MACs cut")
            else:
                for label in sorted({r["label"] for r in group}):
                    pts = sorted((r["cut"], r["top1"]["mean"], r["top1"]["std"]) for r in group
                                 if r["label"] == label)
                    ax.errorbar([100 * p[0] for p in pts], [p[1] for p in pts],
                                yerr=[p[2] for p in pts], marker="o", capsize=3, label=label)
                ax.set_title(f"{NET_NAMES.get(net, net)}, {start}")
                ax.set_xlabel("MACs cut (%)")
            ax.set_ylabel("top-1 (%)")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def stored_report(path):
    """(data, Markdown) of a results JSON this script wrote (BenchmarkError: one line if not)."""
    if not os.path.exists(path):
        raise BenchmarkError(f"no results file {os.path.relpath(path, ROOT)}: run the benchmark "
                             "first, or name an existing one with --name")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:   # a folder, binary, truncated JSON
        raise BenchmarkError(f"cannot read {os.path.relpath(path, ROOT)} as a results file: {err}") from None
    words = (str(data.get("command", "")) if isinstance(data, dict) else "").split()
    script = " ".join(words[1:3]) if words[1:2] == ["-m"] else (words[1] if len(words) > 1 else "?")
    if not script.endswith(("benchmarks/psap_benchmark.py", "benchmarks.psap_benchmark")):
        raise BenchmarkError(f"{os.path.relpath(path, ROOT)} is not a result of this script "
                             f"(written by {script}); name a psap_benchmark result with --name")
    try:
        return data, markdown(data)
    except KeyError as err:   # an older layout (the committed psap_benchmark.json: commit fff213e)
        raise BenchmarkError(f"{os.path.relpath(path, ROOT)} was written by an older version of "
                             f"this script (no {err} in it); its committed Markdown stays the "
                             "report, this version cannot rebuild it") from None
    except (TypeError, ValueError, AttributeError) as err:   # edited by hand: a value of another kind
        raise BenchmarkError(f"{os.path.relpath(path, ROOT)} holds a value this script did not write "
                             f"({type(err).__name__}: {err}); nothing rewritten") from None


def report_only(results, name):
    """The Markdown and the plot again from ``results``/NAME.json, written as NAME.md / NAME.png
    (the plot's name follows --name, never a path stored in the file); nothing is written unless
    both can be."""
    data, _ = stored_report(os.path.join(results, f"{name}.json"))   # read and checked; the
    # Markdown is made again below, naming the plot this call writes
    for target in (f"{name}.md", f"{name}.png"):
        path = os.path.join(results, target)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise BenchmarkError(f"{os.path.relpath(path, ROOT)} exists and is not a file; nothing rewritten")
    data = dict(data, png=f"{name}.png")
    try:
        plot(data["rows"], data["args"]["nets"], data["args"]["starts"], os.path.join(results, data["png"]))
    except (KeyError, TypeError, ValueError) as err:
        raise BenchmarkError(f"{name}.json cannot be plotted ({type(err).__name__}: {err}); nothing "
                             "rewritten") from None
    write_results(name, data, markdown(data), directory=results)
