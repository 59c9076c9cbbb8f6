"""Does re-estimating the BatchNorm statistics rescue a collapsed high-sparsity run? No
re-training: each run's last.ckpt evaluated as saved, after N forward passes in training mode
(moving-average updates: what re-estimation by forward passes alone gives), and after the exact
re-estimation of ``bn_recalibration`` (the average of N batches' statistics,
src/models/batchnorm.py), on the full test set.

    python -m benchmarks.bn_recalibration RUN_DIR [RUN_DIR ...] --data_path DIR [--batches 40]
        [--name bn_recalibration]

RUN_DIR is a train.py output folder (run.json, last.ckpt). The training batches follow the run's
recorded recipe (batch_size, train_samples, crop_padding; seed + epoch_size, as train.py's own
re-estimation draws them). Writes benchmarks/results/NAME.{json,md,png}.
"""
import argparse
import os

import numpy as np
import mindspore as ms

from benchmarks.collapse_analysis import network_behaviour, network_config, test_batches
from benchmarks.common import result_name, save_figure, write_results
from benchmarks.runs import BenchmarkError, main_guard
from src.cli import OneLineParser
from src.dataset import batches, create_dataset, split_path
from src.models import network_from_checkpoint
from src.models.batchnorm import reestimate_batchnorm
from src.run_record import read_run

CONDITIONS = ("as saved", "moving-average updates", "exact re-estimation")


def training_batches(cfg, recipe, count):
    """The first ``count`` training batches as train.py's end-of-run pass draws them."""
    path, key = split_path(cfg, training=True)
    data = create_dataset(cfg.dataset, path, True, int(recipe.get("batch_size", 128)), path_key=key,
                          image_size=cfg.image_size or None, num_samples=int(recipe.get("train_samples") or 0),
                          crop_padding=int(recipe.get("crop_padding", cfg.crop_padding)),
                          seed=int(recipe.get("seed", 42)) + int(recipe.get("epoch_size", 1)),
                          drop_remainder=True, num_classes=cfg.num_classes)
    return [image for (image, _), _ in zip(batches(data), range(count))]


def measure(run_dir, data_path, count):
    record = read_run(run_dir)
    ckpt = os.path.join(run_dir, "last.ckpt")
    if record is None or not os.path.exists(ckpt):
        raise BenchmarkError(f"{run_dir}: not a finished train.py run (run.json and last.ckpt)")
    cfg = network_config(run_dir, data_path)
    test = test_batches(cfg, 0)
    train = [(image, None) for image in training_batches(cfg, record["recipe"], count)]
    row = {"run": os.path.basename(os.path.normpath(run_dir)), "batches": len(train)}
    if len(train) < count:
        print(f"{row['run']}: {len(train)} training batches (all the data gives; {count} asked)", flush=True)
    for condition in CONDITIONS:
        net, _ = network_from_checkpoint(cfg, ckpt)
        if condition == "moving-average updates":
            net.set_train(True)
            for image, _ in train:
                net(image)
        elif condition == "exact re-estimation":
            reestimate_batchnorm(net, train, count)
        row[condition] = network_behaviour(net, test)
        print(f"{row['run']}: {condition}: top1 {row[condition]['top1']:.4f}", flush=True)
    return row


def markdown(rows, command, png):
    lines = ["# BatchNorm re-estimation on finished runs", "", f"Command: `{command}`", "",
             "top-1 (%) on the 10,000 test images; in brackets the share of the most predicted class "
             "(1.00: every image gets the same class).", "",
             "| run | batches used | " + " | ".join(CONDITIONS) + " |", "|---|---|" + "---|" * len(CONDITIONS)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['batches']} | " + " | ".join(
            f"{100 * r[c]['top1']:.2f} ({r[c]['top_class_share']:.2f})" for c in CONDITIONS) + " |")
    return "\n".join(lines + ["", f"![top-1 per condition]({png})"])


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    width = 0.8 / len(CONDITIONS)
    for i, condition in enumerate(CONDITIONS):
        ax.bar(np.arange(len(rows)) + i * width, [100 * r[condition]["top1"] for r in rows], width,
               label=condition)
    ax.set_xticks(np.arange(len(rows)) + width, [r["run"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", ncol=3, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main():
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--name", default="bn_recalibration", type=result_name)
    args = parser.parse_args()
    if args.batches < 1:
        raise BenchmarkError(f"--batches: got {args.batches}, expected at least 1")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rows = [measure(run, args.data_path, args.batches) for run in args.runs]
    png = f"{args.name}.png"
    plot(rows, os.path.join(os.path.dirname(__file__), "results", png))
    command = (f"python -m benchmarks.bn_recalibration RUN_DIR ({len(rows)} runs) --data_path DIR "
               f"--batches {args.batches}")
    write_results(args.name, {"command": command, "batches": args.batches, "rows": rows},
                  markdown(rows, command, png))


if __name__ == "__main__":
    main_guard(main)
