"""Where the rank loss pays: GMP, RigL-ERK, RPG without the rank loss (lamb 0) and RPG at extreme
sparsity on Fashion-MNIST, several seeds, with the rank evidence per layer group.

    python -m benchmarks.extreme_sparsity --data_path DIR [--nets resnet20 resnet32x2]
        [--sparsities 98 99.5] [--seeds 1 2 3] [--train_samples 8000 --epochs 4 --delta 16]

Each run is `train.py` + `eval.py --json_out` (the full 10,000-image test set) + statistics of
its last.ckpt per layer group (stem, 3x3 convs, 1x1 / downsample convs, FC): numerical and
effective rank relative to full rank, and the fraction of all-zero rows (dead output channels)
and all-zero columns (inputs no weight reads), the mechanism of rank collapse.

Runs are kept under --work_dir and reused when the script is started again, only if made with
the same recipe and budget (else one error line: use another --work_dir); an interrupted run
continues from its newest checkpoint. The report covers the settings of this command, so to add
seeds later give all of them (the finished ones are reused). Results replace
benchmarks/results/NAME.{json,md,png} (--name, default extreme_sparsity; git restores the
committed ones); --recipes shipped trains a recipe shipped for the net and sparsity where there
is one (the ResNet-32x2 RPG recipes); --checkpoint_every N keeps a checkpoint every N iterations
(the masks after every update, read by benchmarks/collapse_analysis.py);
--report_only rewrites them from the finished runs, or, when --work_dir has none, from the
committed JSON if it was made with the same budget.
"""
import json
import os
import sys
import time

import numpy as np

from benchmarks.common import ROOT, machine_info, result_name, save_figure, write_results
from benchmarks.runs import BenchmarkError, call, cached_result, main_guard, train
from src import checkpoint
from src.cli import OneLineParser
from src.outputs import write_json_atomic
from src.pruning.masks.rpg.pruner import RPGPruner
from src.report import effective_rank, numerical_rank

METHODS = {  # label: (recipe prefix, extra overrides)
    "GMP": ("gmp", []),
    "RigL-ERK": ("rigl_erk", []),
    "RPG lamb=0": ("rpg", ["--lamb", "0"]),
    "RPG": ("rpg", []),
    # RPG's global magnitude allocation replaced by ERK's (needs the density_distribution key of
    # RPG/GMP: these labels fail with one config error line on code without it)
    "RPG-ERK": ("rpg", ["--density_distribution", "erk"]),
    "RPG lamb=0 ERK": ("rpg", ["--lamb", "0", "--density_distribution", "erk"]),
}
NETS = {"resnet20": [], "resnet32x2": ["--net", "resnet32", "--width_multiplier", "2"]}
GROUPS = ("stem", "3x3", "1x1/downsample", "FC")
NOT_NETWORK = ("pruning_mask.", "moments.", "rpg_rank.", "grad_energy.")


def recipe_for(prefix, net="resnet20", sparsity=98.0, recipes="s98"):
    """Every method's Fashion-MNIST recipe at 98 % (RigL's at 90 %); --sparsity sets the target.
    ``recipes="shipped"``: the recipe shipped for this net and sparsity when there is one
    (config/rpg_resnet32x2_fashion_mnist_s995.yaml: lamb 0.5, partial_k 0.1, T_end 0.8), else
    the same fallback."""
    shipped = f"{prefix}_{net}_fashion_mnist_s{sparsity:g}".replace(".", "") + ".yaml"
    if recipes == "shipped" and os.path.exists(os.path.join(ROOT, "config", shipped)):
        return os.path.join(ROOT, "config", shipped)
    name = f"{prefix}_resnet20_fashion_mnist_s98.yaml"
    if not os.path.exists(os.path.join(ROOT, "config", name)):
        name = f"{prefix}_resnet20_fashion_mnist_s90.yaml"
    return os.path.join(ROOT, "config", name)


def run_dir(args, net, sparsity, label, seed):
    tag = f"{net}_s{sparsity:g}_{label.replace(' ', '_').replace('=', '')}_seed{seed}"
    return os.path.join(args.work_dir, tag)


def check_density_distribution(label, extra):
    """BenchmarkError unless RPG reads ``density_distribution``: the recipe parser accepts the key
    for every method (it is RigL's), so on code without it an ERK label would train plain RPG."""
    if "--density_distribution" not in extra:
        return
    if not any("density_distribution" in getattr(c, "keys", {}) for c in RPGPruner.__mro__):
        raise BenchmarkError(f"{label} needs RPG's density_distribution key (branch density), "
                             "which this code's RPG does not read: it would train plain RPG")


def run(args, net, sparsity, label, seed):
    """Train + evaluate + layer-group statistics of one setting (cached in result.json, reused
    only if the run folder holds a run of the same recipe and budget)."""
    out = run_dir(args, net, sparsity, label, seed)
    prefix, extra = METHODS[label]
    check_density_distribution(label, extra)
    recipe = recipe_for(prefix, net, sparsity, args.recipes)
    interval = ["--gmp_frequency" if prefix == "gmp" else "--delta", str(args.delta)]
    train_args = ["--config_path", recipe, "--data_path", args.data_path, "--output_dir", out,
                  "--epoch_size", str(args.epochs), "--train_samples", str(args.train_samples),
                  "--seed", str(seed), "--sparsity", str(sparsity / 100), "--log_interval", "50",
                  "--eval_interval", "0", *extra, *interval, *NETS[net]]
    if args.checkpoint_every:   # operational keys: the same recipe, more checkpoints kept
        train_args += ["--save_checkpoint_steps", str(args.checkpoint_every),
                       "--keep_checkpoint_max", "100000"]
    cached = cached_result(out, train_args)
    if cached is not None:
        return cached
    result_path = os.path.join(out, "result.json")
    start = time.time()
    train(train_args)
    seconds = time.time() - start
    eval_path = os.path.join(out, "eval.json")
    call([sys.executable, "eval.py", "--config_path", recipe, "--data_path", args.data_path,
          "--ckpt", os.path.join(out, "last.ckpt"), "--json_out", eval_path, "--overwrite", "true",
          *NETS[net]])
    with open(eval_path, encoding="utf-8") as handle:
        evaluation = json.load(handle)
    result = {"net": net, "sparsity_target": sparsity / 100, "method": label, "seed": seed,
              "top1": evaluation["top1"], "top5": evaluation["top5"],
              "sparsity": evaluation["sparsity"], "train_seconds": seconds,
              "recipe": os.path.relpath(recipe, ROOT),
              "groups": group_statistics(os.path.join(out, "last.ckpt"))}
    write_json_atomic(result, result_path)
    print(f"{net} {sparsity:g} % {label} seed {seed}: top1 {result['top1']:.4f} "
          f"sparsity {result['sparsity']:.4f} ({seconds:.0f} s)", flush=True)
    return result


def group_of(name, shape):
    if len(shape) == 2:
        return "FC"
    if name == "conv1.weight":
        return "stem"
    return "1x1/downsample" if shape[2] == 1 and shape[3] == 1 else "3x3"


def layer_statistics(weight):
    """Relative numerical and effective rank of the (C_out, C_in*k*k) matrix, zero rows/columns."""
    matrix = weight.reshape(weight.shape[0], -1).astype(np.float64)
    full = min(matrix.shape)
    rank = numerical_rank(matrix) if np.any(matrix) else 0
    return {"relative_rank": rank / full, "relative_effective_rank": effective_rank(matrix) / full,
            "zero_rows": float(np.mean(~matrix.any(axis=1))),
            "zero_columns": float(np.mean(~matrix.any(axis=0))), "size": int(matrix.size)}


def group_statistics(ckpt):
    """Per layer group: the statistics averaged over its layers (unweighted), and the layer count."""
    params, _, _ = checkpoint.load(ckpt)
    per_group = {g: [] for g in GROUPS}
    for name, value in params.items():
        array = np.asarray(value)
        # the training state beside the network's weights: masks, momentum, rank-loss targets
        if name.startswith(NOT_NETWORK) or not name.endswith("weight") or array.ndim not in (2, 4):
            continue
        per_group[group_of(name, array.shape)].append(layer_statistics(array))
    summary = {}
    for group, layers in per_group.items():
        if layers:
            summary[group] = {key: float(np.mean([layer[key] for layer in layers]))
                              for key in ("relative_rank", "relative_effective_rank", "zero_rows",
                                          "zero_columns")}
            summary[group]["layers"] = len(layers)
    return summary


def aggregate(results):
    """{(net, sparsity, method): mean / std / min / max of top-1 and the group statistics}."""
    table = {}
    for r in results:
        table.setdefault((r["net"], r["sparsity_target"], r["method"]), []).append(r)
    rows = []
    for (net, sparsity, method), runs in sorted(table.items()):
        top1 = np.array([r["top1"] for r in runs])
        groups = {}
        for group in GROUPS:
            present = [r["groups"][group] for r in runs if group in r["groups"]]
            if present:
                groups[group] = {k: float(np.mean([p[k] for p in present])) for k in present[0]}
        rows.append({"net": net, "sparsity_target": sparsity, "method": method, "seeds": len(runs),
                     "top1_mean": float(top1.mean()), "top1_std": float(top1.std(ddof=1)) if len(runs) > 1 else 0.0,
                     "top1_min": float(top1.min()), "top1_max": float(top1.max()),
                     "top1_runs": [float(t) for t in top1], "groups": groups})
    return rows


def markdown(rows, command, args, partial):
    lines = ["# Extreme sparsity on Fashion-MNIST: GMP, RigL-ERK, RPG lamb=0, RPG", "",
             f"Command: `{command}`", ""]
    if partial:
        lines += ["**Partial**: only the runs finished so far are reported (see the seeds column); "
                  "the same command without --report_only runs the rest of the matrix.", ""]
    lines += [f"Every run: the first {args.train_samples} training images, {args.epochs} epochs, mask "
             f"update every {args.delta} iterations (GMP: same frequency), evaluated on the full "
             "10,000-image test set; seeds as listed. top-1 as mean +- sample std over seeds "
             "(min..max). Ranks are of the (C_out, C_in*k*k) matrix relative to full rank, "
             "averaged over the layers of the group; zero rows = output channels with no weight "
             "left, zero columns = inputs no weight reads."
             + (" Recipes: the one shipped for the net and sparsity where it exists, else the "
                "ResNet-20 98 % one (RigL: 90 %) with --net/--sparsity; each run's file is in the "
                "JSON's runs[].recipe." if args.recipes == "shipped" else ""), ""]
    for net in dict.fromkeys(r["net"] for r in rows):
        lines += [f"## {net}", "", "| sparsity | method | seeds | top-1 (%) | " +
                  " | ".join(f"{g}: eff. rank / num. rank / zero rows / zero cols" for g in GROUPS) + " |",
                  "|---|---|---|---|" + "---|" * len(GROUPS)]
        for r in (r for r in rows if r["net"] == net):
            cells = []
            for group in GROUPS:
                g = r["groups"].get(group)
                cells.append("-" if g is None else f"{g['relative_effective_rank']:.3f} / "
                             f"{g['relative_rank']:.3f} / {g['zero_rows']:.2f} / {g['zero_columns']:.2f}")
            lines.append(f"| {100 * r['sparsity_target']:g} % | {r['method']} | {r['seeds']} | "
                         f"{100 * r['top1_mean']:.2f} +- {100 * r['top1_std']:.2f} "
                         f"({100 * r['top1_min']:.1f}..{100 * r['top1_max']:.1f}) | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"![top-1 and 3x3 effective rank against sparsity]({args.name}.png)")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nets = list(dict.fromkeys(r["net"] for r in rows))
    fig, axes = plt.subplots(len(nets), 2, figsize=(12, 4 * len(nets)), squeeze=False)
    for row_axes, net in zip(axes, nets):
        for method in METHODS:
            points = sorted((r["sparsity_target"], r) for r in rows if r["net"] == net and r["method"] == method)
            if not points:
                continue
            xs = [100 * s for s, _ in points]
            row_axes[0].errorbar(xs, [100 * r["top1_mean"] for _, r in points],
                                 yerr=[100 * r["top1_std"] for _, r in points], marker="o",
                                 capsize=3, label=method)
            row_axes[1].plot(xs, [r["groups"].get("3x3", {}).get("relative_effective_rank", np.nan)
                                  for _, r in points], marker="o", label=method)
        row_axes[0].set_ylabel(f"{net}: top-1 (%), mean +- std")
        row_axes[1].set_ylabel(f"{net}: 3x3 convs, relative effective rank")
        for ax in row_axes:
            ax.set_xlabel("sparsity (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--data_path", default="", help="required unless --report_only")
    parser.add_argument("--nets", nargs="+", default=["resnet20"], choices=list(NETS))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[98, 99.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--train_samples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_extreme"))
    parser.add_argument("--recipes", choices=["s98", "shipped"], default="s98",
                        help="s98: every net and sparsity trains the ResNet-20 98 %% recipes (RigL: "
                             "90 %%); shipped: a recipe shipped for the net and sparsity where one "
                             "exists (config/rpg_resnet32x2_fashion_mnist_s995.yaml)")
    parser.add_argument("--checkpoint_every", type=int, default=0,
                        help="also keep a checkpoint every N iterations (e.g. --delta: the masks "
                             "after every update, for benchmarks/collapse_analysis.py)")
    parser.add_argument("--name", default="extreme_sparsity", type=result_name,
                        help="results file name under benchmarks/results/")
    parser.add_argument("--report_only", action="store_true",
                        help="report the runs finished so far (no training); the Markdown says so")
    args = parser.parse_args()
    if not args.data_path and not args.report_only:
        parser.error("--data_path is required (unless --report_only)")
    args.data_path = args.data_path or os.path.join(ROOT, "data", "fashion_mnist")
    settings = [(net, sparsity, method, seed) for net in args.nets for sparsity in args.sparsities
                for method in args.methods for seed in args.seeds]
    results = finished_runs(args, settings) if args.report_only else [run(args, *s) for s in settings]
    rows = aggregate(results)
    command = (f"python -m benchmarks.extreme_sparsity --data_path DIR --nets {' '.join(args.nets)} "
               f"--sparsities {' '.join(f'{s:g}' for s in args.sparsities)} --seeds "
               f"{' '.join(map(str, args.seeds))} --methods {' '.join(repr(m) if ' ' in m else m for m in args.methods)} "
               f"--train_samples {args.train_samples} --epochs {args.epochs} --delta {args.delta}"
               + (f" --recipes {args.recipes}" if args.recipes != "s98" else "")
               + (f" --name {args.name}" if args.name != "extreme_sparsity" else ""))
    png = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.png")
    plot(rows, png)
    write_results(args.name, {"machine": machine_info(), "command": command,
                                       "budget": budget_of(args), "rows": rows, "runs": results},
                  markdown(rows, command, args, partial=len(results) < len(settings)))


def budget_of(args):
    budget = {"train_samples": args.train_samples, "epochs": args.epochs, "delta": args.delta}
    return budget if args.recipes == "s98" else dict(budget, recipes=args.recipes)


def committed_path(name):
    return os.path.join(ROOT, "benchmarks", "results", f"{name}.json")


def committed_results(name="extreme_sparsity"):
    """The committed results JSON (what --report_only rewrites), or {} if there is none."""
    if not os.path.exists(committed_path(name)):
        return {}
    with open(committed_path(name), encoding="utf-8") as handle:
        return json.load(handle)


def run_key(result):
    return result["net"], result["sparsity_target"], result["method"], result["seed"]


def keep_committed_runs(wanted, committed):
    """--report_only rewrites the committed results: refuse a selection (``wanted``: run keys)
    that would drop runs."""
    dropped = [r for r in committed.get("runs", []) if run_key(r) not in wanted]
    if dropped:
        r = dropped[0]
        raise BenchmarkError(f"--report_only would drop {len(dropped)} run(s) of the committed "
                             f"results (e.g. {r['net']} {100 * r['sparsity_target']:g} % "
                             f"{r['method']} seed {r['seed']}): select them too (the committed "
                             f"command: {committed.get('command', '?')})")


def finished_runs(args, settings):
    """--report_only: the finished runs of ``settings`` in --work_dir; if there are none, those in
    the committed results JSON when it was made with the same budget (rewrites the report)."""
    committed = committed_results(args.name)
    wanted = {(net, sparsity / 100, method, seed) for net, sparsity, method, seed in settings}
    keep_committed_runs(wanted, committed)
    found = [run(args, *s) for s in settings
             if os.path.exists(os.path.join(run_dir(args, *s), "result.json"))]
    if not found and committed.get("budget") == budget_of(args):
        found = [r for r in committed["runs"] if run_key(r) in wanted]
    if not found:
        raise BenchmarkError(f"no finished run in {args.work_dir}, and none of this budget in "
                             f"benchmarks/results/{args.name}.json")
    return found


if __name__ == "__main__":
    main_guard(main)
