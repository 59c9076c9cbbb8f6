"""RPG through ms.Model.train (PruningAlgorithm) against the exact loop (train.py, SparseTraining):
Fashion-MNIST ResNet-20 at 90 % and 98 % sparsity, several seeds.

    python -m benchmarks.model_train_vs_loop --data_path DIR [--sparsities 90 98] [--seeds 1 2 3]
        [--train_samples 8000 --epochs 4 --delta 16] [--eval_samples 0]
        [--work_dir output/bench_model_train] [--results_dir benchmarks/results]

Both paths train config/rpg_resnet20_fashion_mnist_s<S>.yaml with the budget's overrides: the same
initialisation (the seed), optimizer (Momentum, weight decay on conv/FC weights, per-step learning
rates), loss and data pipeline.
- loop: `train.py`, then `eval.py --json_out` on its last.ckpt;
- model: this script in a subprocess (``--model_run OUT TRAIN_ARGS``) builds the same pieces and
  trains them with ``ms.Model.train`` + ``PruningAlgorithm``, then evaluates the converted network
  on the same test images with the same function as eval.py (``src.metrics.evaluate``).
What differs is the path itself (docs/RPG.md, "Under ms.Model.train": the update iteration's step
is taken, the regrowth gradient uses the callback's own batch) and the data order (train.py builds
each epoch's pipeline with seed + epoch, Model.train reshuffles its one pipeline every epoch).

Resumable: each run's folder under --work_dir holds run.json (the recipe) and result.json; a
finished run is reused when the same command is started again (a folder holding another recipe
is refused with one line), an interrupted loop run continues from its checkpoint, an interrupted
Model run starts again. Results: model_train_vs_loop.{json,md,png} in --results_dir.
"""
import json
import logging
import os
import sys
import time

import numpy as np
import mindspore as ms
from mindspore import nn, Tensor
from mindspore.train import LossMonitor

from benchmarks.common import ROOT, machine_info
from benchmarks.runs import call, cached_result, main_guard, train
from src.cli import OneLineParser
from src.config import parse_args
from src.dataset import create_dataset, input_shape, split_path
from src.lr_schedule import learning_rates
from src.metrics import evaluate
from src.models import build_network
from src.outputs import write_json_atomic, write_text_atomic
from src.pruning.api import PruningAlgorithm
from src.pruning.core.base import sparsity_of
from src.run_record import new_run_id, recipe_of, write_run
from src.trainer import init_context
from src.training_graph import weight_decay_groups

PATHS = ("loop", "model")
NAME = "model_train_vs_loop"


def recipe(sparsity):
    return os.path.join(ROOT, "config", f"rpg_resnet20_fashion_mnist_s{sparsity:g}.yaml")


def train_args(args, sparsity, seed, out):
    return ["--config_path", recipe(sparsity), "--data_path", args.data_path, "--output_dir", out,
            "--epoch_size", str(args.epochs), "--train_samples", str(args.train_samples),
            "--seed", str(seed), "--delta", str(args.delta), "--eval_samples", str(args.eval_samples),
            "--log_interval", "50", "--eval_interval", "0"]


def run(args, path, sparsity, seed):
    """One run (cached in result.json, reused only for a folder of the same recipe)."""
    out = os.path.join(args.work_dir, f"s{sparsity:g}_{path}_seed{seed}")
    targs = train_args(args, sparsity, seed, out)
    cached = cached_result(out, targs)
    if cached is not None:
        return cached
    result_path = os.path.join(out, "result.json")
    start = time.time()
    if path == "loop":
        train(targs)
        evaluation = loop_evaluation(args, sparsity, out)
    else:
        os.makedirs(out, exist_ok=True)
        call([sys.executable, "-m", f"benchmarks.{NAME}", "--model_run", out, *targs],
             os.path.join(out, "model_train.log"))
        with open(os.path.join(out, "model_eval.json"), encoding="utf-8") as handle:
            evaluation = json.load(handle)
    result = {"path": path, "sparsity_target": sparsity / 100, "seed": seed,
              "top1": evaluation["top1"], "top5": evaluation["top5"],
              "sparsity": evaluation["sparsity"], "seconds": time.time() - start}
    write_json_atomic(result, result_path)
    print(f"{sparsity:g} % {path} seed {seed}: top1 {result['top1']:.4f} sparsity "
          f"{result['sparsity']:.4f} ({result['seconds']:.0f} s)", flush=True)
    return result


def loop_evaluation(args, sparsity, out):
    eval_path = os.path.join(out, "eval.json")
    call([sys.executable, "eval.py", "--config_path", recipe(sparsity), "--data_path", args.data_path,
          "--ckpt", os.path.join(out, "last.ckpt"), "--json_out", eval_path, "--overwrite", "true",
          "--eval_samples", str(args.eval_samples)])
    with open(eval_path, encoding="utf-8") as handle:
        return json.load(handle)


# --- the Model.train run (a subprocess) ---------------------------------------------------------
def model_run(out, targs):
    """Train the recipe of ``targs`` with ms.Model.train + PruningAlgorithm; write
    OUT/model_eval.json (top-1, top-5, sparsity of the pruned weights)."""

    cfg, _ = parse_args(targs)
    write_run(out, new_run_id(), recipe_of(cfg))
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    init_context(cfg)   # device, graph mode, seed: as train.py
    data = {training: recipe_dataset(cfg, training) for training in (True, False)}
    steps = data[True].get_dataset_size()
    ms.set_seed(cfg.seed)   # the network's initialisation, as train.py
    net = build_network(cfg)
    # the optimizer of src/training_graph.py's build_training_graph
    lrs = learning_rates(cfg.lr_schedule, cfg.lr_max, steps * cfg.epoch_size, steps, cfg.warmup_epochs,
                         cfg.lr_end, cfg.lr_decay_epochs, cfg.lr_decay_rate, cfg.poly_power)
    optimizer = nn.Momentum(weight_decay_groups(net, cfg.weight_decay), learning_rate=Tensor(lrs),
                            momentum=cfg.momentum, loss_scale=cfg.loss_scale)
    algo = PruningAlgorithm(settings=cfg, steps_per_epoch=steps, input_shape=input_shape(cfg))
    net = algo.apply(net)
    model = ms.Model(net, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                     algo.optimizer(optimizer))
    model.train(cfg.epoch_size, data[True], dataset_sink_mode=False,
                callbacks=algo.callbacks(data[True]) + [LossMonitor(cfg.log_interval)])
    net = algo.convert(net)
    result = evaluate(net, data[False])
    result["sparsity"] = sparsity_of([p.asnumpy() for p in net.trainable_params()
                                      if p.name in algo.masks()])
    write_json_atomic(result, os.path.join(out, "model_eval.json"))


def recipe_dataset(cfg, training):
    """The recipe's training or test pipeline, as the Trainer builds it (one pipeline for all
    epochs: Model.train reshuffles it every epoch)."""
    path, key = split_path(cfg, training)
    batch = cfg.batch_size if training else (cfg.eval_batch_size or cfg.batch_size)
    return create_dataset(cfg.dataset, path, training, batch, path_key=key,
                          image_size=cfg.image_size or None, eval_resize=cfg.eval_resize,
                          num_samples=cfg.train_samples if training else cfg.eval_samples,
                          num_parallel_workers=cfg.num_parallel_workers,
                          crop_padding=cfg.crop_padding, seed=cfg.seed, drop_remainder=training)


# --- report -------------------------------------------------------------------------------------
def aggregate(results):
    rows = []
    for sparsity in sorted({r["sparsity_target"] for r in results}):
        for path in PATHS:
            runs = sorted((r for r in results if r["sparsity_target"] == sparsity and r["path"] == path),
                          key=lambda r: r["seed"])
            if not runs:
                continue
            top1 = np.array([r["top1"] for r in runs])
            rows.append({"sparsity_target": sparsity, "path": path, "seeds": [r["seed"] for r in runs],
                         "top1_mean": float(top1.mean()),
                         "top1_std": float(top1.std(ddof=1)) if len(runs) > 1 else 0.0,
                         "top1_min": float(top1.min()), "top1_max": float(top1.max()),
                         "top1_runs": [float(t) for t in top1],
                         "seconds_mean": float(np.mean([r["seconds"] for r in runs]))})
    return rows


def markdown(rows, command, args):
    lines = ["# RPG through ms.Model.train (PruningAlgorithm) vs the exact loop (train.py)", "",
             f"Command: `{command}`", "",
             f"Fashion-MNIST ResNet-20, the first {args.train_samples} training images, {args.epochs} "
             f"epochs, mask update every {args.delta} iterations, evaluated on "
             f"{args.eval_samples or 'all 10,000'} test images. loop = train.py (a mask update "
             "replaces that iteration's optimizer step, as the reference); model = ms.Model.train "
             "with PruningAlgorithm (the update runs between two steps, on the callback's own "
             "batch; docs/RPG.md). top-1 as mean +- sample std over seeds (min..max).", "",
             "| sparsity | path | seeds | top-1 (%) | per seed (%) | s per run |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {100 * r['sparsity_target']:g} % | {r['path']} | {len(r['seeds'])} | "
                     f"{100 * r['top1_mean']:.2f} +- {100 * r['top1_std']:.2f} "
                     f"({100 * r['top1_min']:.1f}..{100 * r['top1_max']:.1f}) | "
                     + ", ".join(f"{100 * t:.1f}" for t in r["top1_runs"])
                     + f" | {r['seconds_mean']:.0f} |")
    lines += ["", f"![top-1 per seed, both paths]({NAME}.png)"]
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    sparsities = sorted({r["sparsity_target"] for r in rows})
    for offset, name in ((-0.12, "loop"), (0.12, "model")):
        for i, sparsity in enumerate(sparsities):
            row = next((r for r in rows if r["sparsity_target"] == sparsity and r["path"] == name), None)
            if row is None:
                continue
            ax.scatter([i + offset] * len(row["top1_runs"]), [100 * t for t in row["top1_runs"]],
                       color="C0" if name == "loop" else "C1", alpha=0.6,
                       label=name if i == 0 else None)
            ax.hlines(100 * row["top1_mean"], i + offset - 0.08, i + offset + 0.08,
                      color="C0" if name == "loop" else "C1")
    ax.set_xticks(range(len(sparsities)), [f"{100 * s:g} %" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 (%): seeds and mean")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[90, 98], choices=[90, 98])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train_samples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--delta", type=int, default=16)
    parser.add_argument("--eval_samples", type=int, default=0, help="0 = the whole test set")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "output", "bench_model_train"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    results = [run(args, path, sparsity, seed) for sparsity in args.sparsities
               for seed in args.seeds for path in PATHS]
    rows = aggregate(results)
    command = (f"python -m benchmarks.{NAME} --data_path DIR --sparsities "
               f"{' '.join(f'{s:g}' for s in args.sparsities)} --seeds {' '.join(map(str, args.seeds))} "
               f"--train_samples {args.train_samples} --epochs {args.epochs} --delta {args.delta} "
               f"--eval_samples {args.eval_samples}")
    os.makedirs(args.results_dir, exist_ok=True)
    plot(rows, os.path.join(args.results_dir, f"{NAME}.png"))
    write_json_atomic({"machine": machine_info(), "command": command, "rows": rows, "runs": results},
                      os.path.join(args.results_dir, f"{NAME}.json"))
    text = markdown(rows, command, args)
    write_text_atomic(text + "\n", os.path.join(args.results_dir, f"{NAME}.md"))
    print(text)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--model_run":   # its traceback goes to the run's log
        model_run(sys.argv[2], sys.argv[3:])
    else:
        main_guard(main)
