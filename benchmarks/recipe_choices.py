"""Which recipe choices cost what at the small budgets the README and the benchmarks use:
shortcut option A (zero-padded identity) vs B (1x1 conv), random-crop padding 2 vs 0 (no crop),
warm-up 0.5 vs 0 epochs, for RPG at 98 % on ResNet-20 / Fashion-MNIST, several seeds.

    python -m benchmarks.recipe_choices --data_path DIR [--seeds 7 8] [--train_samples 12000 --epochs 4]

Each run is `train.py` + `eval.py --json_out` (full 10,000-image test set); runs are kept under
--work_dir and reused when started again, only if made with the same settings (else one error
line); an interrupted run continues from its newest checkpoint. Results: benchmarks/results/recipe_choices.{json,md}.
"""
import itertools
import json
import os
import sys

import numpy as np

from benchmarks.common import ROOT, machine_info, write_results
from benchmarks.runs import call, check_same_recipe, main_guard, train
from src.cli import OneLineParser

RECIPE = os.path.join(ROOT, "config", "rpg_resnet20_fashion_mnist_s98.yaml")
FACTORS = {"shortcut": ("A", "B"), "crop_padding": (2, 0), "warmup_epochs": (0.5, 0)}


def run(args, choice, seed):
    tag = "_".join(f"{k}{v}" for k, v in choice.items()) + f"_seed{seed}"
    out = os.path.join(args.work_dir, tag)
    path = os.path.join(out, "eval.json")
    overrides = [x for k, v in choice.items() for x in (f"--{k}", str(v))]
    train_args = ["--config_path", RECIPE, "--data_path", args.data_path, "--output_dir", out,
                  "--epoch_size", str(args.epochs), "--train_samples", str(args.train_samples),
                  "--seed", str(seed), "--delta", str(args.delta), "--log_interval", "50",
                  "--eval_interval", "0", *overrides]
    check_same_recipe(out, train_args)   # a cached run is reused only with the same settings
    if not os.path.exists(path):
        train(train_args)
        call([sys.executable, "eval.py", "--config_path", RECIPE, "--data_path", args.data_path,
              "--ckpt", os.path.join(out, "last.ckpt"), "--json_out", path,
              "--shortcut", choice["shortcut"]])
    with open(path, encoding="utf-8") as handle:
        top1 = json.load(handle)["top1"]
    print(f"{tag}: top1 {top1:.4f}", flush=True)
    return top1


def main():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8])
    parser.add_argument("--train_samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_recipe"))
    args = parser.parse_args()
    rows = []
    for values in itertools.product(*FACTORS.values()):
        choice = dict(zip(FACTORS, values))
        tops = [run(args, choice, seed) for seed in args.seeds]
        rows.append({**choice, "top1_runs": tops, "top1_mean": float(np.mean(tops))})
    effects = {}
    for factor, (first, second) in FACTORS.items():
        a = np.mean([r["top1_mean"] for r in rows if r[factor] == first])
        b = np.mean([r["top1_mean"] for r in rows if r[factor] == second])
        effects[factor] = {"first": first, "second": second, "mean_first": float(a),
                           "mean_second": float(b), "effect_of_second": float(b - a)}
    command = (f"python -m benchmarks.recipe_choices --data_path DIR --seeds "
               f"{' '.join(map(str, args.seeds))} --train_samples {args.train_samples} "
               f"--epochs {args.epochs} --delta {args.delta}")
    lines = ["# Recipe choices at the small budget: RPG 98 %, ResNet-20, Fashion-MNIST", "",
             f"Command: `{command}`", "",
             f"{args.train_samples} training images, {args.epochs} epochs, mask update every "
             f"{args.delta} iterations, full test set; top-1 per seed and mean.", "",
             "| shortcut | crop padding | warm-up epochs | top-1 per seed (%) | mean (%) |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["top1_mean"]):
        lines.append(f"| {r['shortcut']} | {r['crop_padding']} | {r['warmup_epochs']} | "
                     f"{' / '.join(f'{100 * t:.2f}' for t in r['top1_runs'])} | {100 * r['top1_mean']:.2f} |")
    lines += ["", "Main effects (mean over the other factors' settings):", "",
              "| factor | from | to | mean top-1 from -> to (%) | change (points) |", "|---|---|---|---|---|"]
    for factor, e in effects.items():
        lines.append(f"| {factor} | {e['first']} | {e['second']} | {100 * e['mean_first']:.2f} -> "
                     f"{100 * e['mean_second']:.2f} | {100 * e['effect_of_second']:+.2f} |")
    write_results("recipe_choices", {"machine": machine_info(), "command": command, "rows": rows,
                                     "effects": effects}, "\n".join(lines))


if __name__ == "__main__":
    main_guard(main)
