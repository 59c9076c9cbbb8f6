"""Accuracy and rank against sparsity on Fashion-MNIST with ResNet-20: dense, GMP, RPG without
the rank loss (lamb 0) and RPG, same epochs, data, seed and mask-update interval for all.

    python -m benchmarks.accuracy_sparsity --data_path DIR [--train_samples 10000 --epochs 6]

Each run is `train.py` then `eval.py --json_out` (the full 10,000-image test set); results replace
benchmarks/results/accuracy_sparsity.{json,md,png}. Finished runs are kept under --work_dir and
reused when the script is started again, only if made with the same recipe, seed and budget (else
one error line: use another --work_dir); an interrupted run continues from its newest checkpoint.
"""
import json
import os
import sys
import time

from benchmarks.common import ROOT, machine_info, save_figure, write_results
from benchmarks.runs import call, check_same_recipe, main_guard, train
from src.cli import OneLineParser
from src.config import parse_args
from src.models import network_from_checkpoint
from src.outputs import write_json_atomic
from src.pruning.core.base import prunable_weight_names
from src.report import layer_rows, mean_relative_rank

METHODS = [  # (label, recipe prefix, extra overrides)
    ("GMP", "gmp", []),
    ("RPG lamb=0", "rpg", ["--lamb", "0"]),
    ("RPG", "rpg", []),
]


def run_dir(work_dir, label):
    return os.path.join(work_dir, label.replace(" ", "_").replace("=", ""))


def run(args, label, recipe, extra, work_dir):
    """Train + evaluate one setting; returns the eval JSON (cached, reused only for a run of the
    same recipe and budget) with rank statistics."""
    out = run_dir(work_dir, label)
    train_args = ["--config_path", recipe, "--data_path", args.data_path, "--output_dir", out,
                  "--epoch_size", str(args.epochs), "--train_samples", str(args.train_samples),
                  "--seed", str(args.seed), "--log_interval", "50", "--eval_interval", "0", *extra]
    check_same_recipe(out, train_args)
    result_path = os.path.join(out, "eval.json")
    if os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
        if "mean_relative_effective_rank" not in result:  # cached before the statistic existed
            result["mean_relative_rank"], result["mean_relative_effective_rank"] = \
                rank_summary(out, recipe)
        return result
    start = time.time()
    train(train_args)
    seconds = time.time() - start
    partial = os.path.join(out, "eval_partial.json")   # eval.json appears only with the ranks
    call([sys.executable, "eval.py", "--config_path", recipe, "--data_path", args.data_path,
          "--ckpt", os.path.join(out, "last.ckpt"), "--json_out", partial, "--overwrite", "true"])
    with open(partial, encoding="utf-8") as handle:
        result = json.load(handle)
    result["train_seconds"] = seconds
    result["mean_relative_rank"], result["mean_relative_effective_rank"] = rank_summary(out, recipe)
    write_json_atomic(result, result_path)
    print(f"{label}: top1 {result['top1']:.4f} sparsity {result['sparsity']:.4f} "
          f"({seconds:.0f} s)", flush=True)
    return result


def rank_summary(ckpt_dir, recipe):
    """Mean relative numerical and effective rank of the convs of a run's last.ckpt."""
    cfg, _ = parse_args(["--config_path", recipe])
    net, _ = network_from_checkpoint(cfg, os.path.join(ckpt_dir, "last.ckpt"))
    rows = layer_rows(net, prunable_weight_names(net))
    return mean_relative_rank(rows), mean_relative_rank(rows, key="relative_effective_rank")


def plot(rows, dense, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for label, _, _ in METHODS:
        points = sorted((r["sparsity_target"], r) for r in rows if r["method"] == label)
        xs = [100 * s for s, _ in points]
        axes[0].plot(xs, [100 * r["top1"] for _, r in points], marker="o", label=label)
        axes[1].plot(xs, [r["mean_relative_effective_rank"] for _, r in points], marker="o",
                     label=label)
        axes[2].plot(xs, [r["mean_relative_rank"] for _, r in points], marker="o", label=label)
    axes[0].axhline(100 * dense["top1"], color="grey", linestyle="--", label="dense")
    axes[1].axhline(dense["mean_relative_effective_rank"], color="grey", linestyle="--", label="dense")
    axes[2].axhline(dense["mean_relative_rank"], color="grey", linestyle="--", label="dense")
    axes[0].set_ylabel("top-1 (%)")
    axes[1].set_ylabel("mean relative effective rank (convs)")
    axes[2].set_ylabel("mean relative numerical rank (convs)")
    for ax in axes:
        ax.set_xlabel("sparsity (%)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("ResNet-20 on Fashion-MNIST")
    save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--train_samples", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--delta", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sparsities", type=int, nargs="+", default=[90, 95, 98])
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_accuracy"))
    args = parser.parse_args()

    dense_recipe = os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml")
    dense = run(args, "dense", dense_recipe, [], args.work_dir)
    rows = []
    for pct in args.sparsities:
        for label, prefix, extra in METHODS:
            recipe = os.path.join(ROOT, "config", f"{prefix}_resnet20_fashion_mnist_s{pct}.yaml")
            interval = ["--gmp_frequency" if prefix == "gmp" else "--delta", str(args.delta)]
            result = run(args, f"{label} s{pct}", recipe, extra + interval, args.work_dir)
            rows.append({"method": label, "sparsity_target": pct / 100, "top1": result["top1"],
                         "top5": result["top5"], "sparsity": result["sparsity"],
                         "mean_relative_rank": result["mean_relative_rank"],
                         "mean_relative_effective_rank": result["mean_relative_effective_rank"],
                         "train_seconds": result.get("train_seconds")})
    command = (f"python -m benchmarks.accuracy_sparsity --data_path DIR --train_samples "
               f"{args.train_samples} --epochs {args.epochs} --delta {args.delta} --seed {args.seed} "
               f"--sparsities {' '.join(map(str, args.sparsities))}")
    png = os.path.join(ROOT, "benchmarks", "results", "accuracy_sparsity.png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    plot(rows, dense, png)
    write_results("accuracy_sparsity", {"machine": machine_info(), "command": command,
                                        "dense": {k: dense[k] for k in ("top1", "top5", "mean_relative_rank",
                                                                        "mean_relative_effective_rank")},
                                        "runs": rows}, markdown(args, command, dense, rows))


def markdown(args, command, dense, rows):
    """The results page (the plot beside it as accuracy_sparsity.png)."""
    lines = ["# Accuracy and rank against sparsity: ResNet-20 on Fashion-MNIST", "",
             f"Command: `{command}`", "",
             f"Every run: the first {args.train_samples} training images, {args.epochs} epochs, seed "
             f"{args.seed}, mask update every {args.delta} iterations (GMP: same frequency), "
             "evaluated on the full 10,000-image test set. Ranks are of the (C_out, C_in*k*k) weight "
             "matrix relative to min(C_out, C_in*k*k), averaged over the 19 convs: the numerical "
             "rank counts singular values above round-off; the effective rank (Roy & Vetterli "
             "2007, exp of the entropy of the normalised singular values) also drops when the "
             "energy concentrates in few directions.", "",
             f"Dense: top-1 {100 * dense['top1']:.2f} %, mean relative effective rank "
             f"{dense['mean_relative_effective_rank']:.3f}, numerical {dense['mean_relative_rank']:.3f}.",
             "",
             "| sparsity | method | top-1 (%) | top-5 (%) | achieved sparsity | rel. effective rank | "
             "rel. numerical rank |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {100 * r['sparsity_target']:.0f} % | {r['method']} | {100 * r['top1']:.2f} | "
                     f"{100 * r['top5']:.2f} | {100 * r['sparsity']:.2f} % | "
                     f"{r['mean_relative_effective_rank']:.3f} | {r['mean_relative_rank']:.3f} |")
    lines += ["", "![accuracy and rank against sparsity](accuracy_sparsity.png)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main_guard(main)
