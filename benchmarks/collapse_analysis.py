"""Why a pruned run ends at chance: the masks and losses of a run, update by update, from its own
records (no re-training).

    python -m benchmarks.collapse_analysis RUN_DIR [RUN_DIR ...] [--data_path DIR]
        [--eval_samples 1000] [--name collapse_analysis]

RUN_DIR is a train.py output folder of a hard-mask method (RPG, GMP, RigL), best one of
benchmarks/extreme_sparsity.py with --checkpoint_every DELTA (a checkpoint after every mask
update). Per checkpoint (``*_step<N>.ckpt`` and last.ckpt; the masks of the updates before step
N): the layers whose mask keeps no weight, the FC's density, its rows with no weight (classes
scored by the bias alone) and the inputs it still reads, the stem's density; with --data_path,
the network of that checkpoint on the first --eval_samples test images: top-1, the share of the
most predicted class and the spread of the logits over images (about 0: the output no longer
depends on the input, the network is dead). From metrics.jsonl: every mask_update event (target
density, empty layers, task / rank loss) and the training loss. Writes
benchmarks/results/NAME.{json,md,png}.
"""
import argparse
import glob
import json
import os
import re

import numpy as np

from benchmarks.common import ROOT, result_name, write_results
from benchmarks.runs import BenchmarkError, main_guard
from src import checkpoint
from src.cli import OneLineParser
from src.config import parse_args
from src.dataset import batches, create_dataset, split_path
from src.errors import ConfigError
from src.logs import read_metrics
from src.models import network_from_checkpoint
from src.run_record import read_run

MASK_PREFIX = "pruning_mask."
STEP = re.compile(r"_step(\d+)\.ckpt$")
# the network keys of run.json's recipe a checkpoint's network is rebuilt from
NET_KEYS = ("dataset", "image_size", "net", "num_classes", "in_channels", "width_multiplier",
            "shortcut", "zero_init_residual")


def checkpoints(run_dir):
    """[(step, path)] of the run's step checkpoints and last.ckpt (step None), in step order."""
    found = [(int(STEP.search(p).group(1)), p) for p in glob.glob(os.path.join(run_dir, "*.ckpt"))
             if STEP.search(p)]
    last = os.path.join(run_dir, "last.ckpt")
    return sorted(found) + ([(None, last)] if os.path.exists(last) else [])


def mask_state(params):
    """Per masked layer: density of its mask; the FC's rows / columns with no weight left."""
    masks = {n[len(MASK_PREFIX):]: np.asarray(v.asnumpy() if hasattr(v, "asnumpy") else v)
             for n, v in params.items() if n.startswith(MASK_PREFIX)}
    if not masks:
        raise BenchmarkError("a checkpoint holds no pruning masks (pruning_mask.*): not a "
                             "hard-mask run (RPG, GMP, RigL)")
    density = {n: float(m.mean()) for n, m in masks.items()}
    fc_name = next((n for n, m in masks.items() if m.ndim == 2), None)
    state = {"layer_density": density, "empty_layers": [n for n, d in density.items() if d == 0.0],
             "weights_left": int(sum(m.sum() for m in masks.values()))}
    if fc_name:
        fc = masks[fc_name] != 0
        state.update(fc=fc_name, fc_density=density[fc_name], fc_weights=int(fc.sum()),
                     fc_classes_without_weight=int((~fc.any(axis=1)).sum()),
                     fc_inputs_read=int(fc.any(axis=0).sum()), fc_inputs=int(fc.shape[1]))
    stem = next((n for n, m in masks.items() if m.ndim == 4), None)
    if stem:
        state.update(stem=stem, stem_density=density[stem])
    return state


def events(run_dir):
    """(mask_update events, train events) of the run's metrics.jsonl."""
    if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        raise BenchmarkError(f"{run_dir}: no metrics.jsonl (not a train.py output folder)")
    return read_metrics(run_dir, "mask_update"), read_metrics(run_dir, "train")


def network_config(run_dir, data_path):
    """The config eval.py would build this run's network with (from its run.json recipe)."""
    record = read_run(run_dir)
    if record is None:
        raise BenchmarkError(f"{run_dir}: no run.json (not a train.py output folder)")
    recipe = record["recipe"]
    argv = ["--config_path", os.path.join(ROOT, "config", "resnet20_fashion_mnist.yaml"),
            "--data_path", data_path, "--device_target", "CPU"]
    for key in NET_KEYS:
        if recipe.get(key) is not None:
            argv += [f"--{key}", str(recipe[key])]
    try:
        cfg, _ = parse_args(argv)
    except ConfigError as err:
        raise BenchmarkError(str(err)) from None
    return cfg


def test_batches(cfg, samples):
    """The first ``samples`` test images and labels, as arrays (read once, used per checkpoint)."""
    path, key = split_path(cfg, training=False)
    data = create_dataset(cfg.dataset, path, False, 250, path_key=key,
                          image_size=cfg.image_size or None, num_samples=samples)
    return [(image, label.asnumpy()) for image, label in batches(data)]


def behaviour(cfg, ckpt, data):
    """``network_behaviour`` of the network a checkpoint holds."""
    return network_behaviour(network_from_checkpoint(cfg, ckpt)[0], data)


def network_behaviour(net, data):
    """top-1, share of the most predicted class, mean over classes of the logits' std over images
    (``net`` in eval mode on ``data``, ``test_batches``)."""
    net.set_train(False)
    logits = np.concatenate([net(image).asnumpy() for image, _ in data])
    labels = np.concatenate([label for _, label in data])
    predicted = logits.argmax(axis=1)
    return {"top1": float((predicted == labels).mean()),
            "top_class_share": float(np.bincount(predicted, minlength=logits.shape[1]).max()
                                     / len(predicted)),
            "logit_spread": float(logits.std(axis=0).mean())}


def update_of(step, updates):
    """The last mask update a checkpoint of ``step`` holds (an update "at step t" runs before
    iteration t + 1, after the checkpoint of step t), or None before the first."""
    done = [u for u in updates if step is None or u["step"] < step]
    return done[-1] if done else None


def loss_near(step, train_events):
    """The logged training loss at or just before ``step`` (None before the first log)."""
    logged = [e for e in train_events if step is None or e["step"] <= step]
    return float(logged[-1]["loss"]) if logged else None


def analyse_run(run_dir, cfg=None, data=None):
    """One row per checkpoint: its step, the update it holds, mask state, losses, behaviour."""
    updates, train_events = events(run_dir)
    found = checkpoints(run_dir)
    if not found:
        raise BenchmarkError(f"{run_dir}: no checkpoint (*_step<N>.ckpt or last.ckpt)")
    rows = []
    for step, path in found:
        params, meta, _ = checkpoint.load(path)
        update = update_of(step if step is not None else meta.get("step"), updates)
        row = {"checkpoint": os.path.basename(path), "step": step if step is not None
               else meta.get("step"), "update": update["update"] if update else 0,
               "target_density": update["target_density"] if update else 1.0,
               "empty_layers_at_update": update.get("empty_layers") if update else 0,
               "task_loss_at_update": update.get("task_loss") if update else None,
               "rank_loss_at_update": update.get("rank_loss") if update else None,
               "train_loss": loss_near(step, train_events), **mask_state(params)}
        if cfg is not None:
            row.update(behaviour(cfg, path, data))
        rows.append(row)
    return {"run": os.path.abspath(run_dir), "rows": rows, "first_empty": first_empty(rows)}


def first_empty(rows):
    """(step, update, layer names) of the first checkpoint with an emptied layer, or None."""
    for r in rows:
        if r["empty_layers"]:
            return {"step": r["step"], "update": r["update"], "layers": r["empty_layers"]}
    return None


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def run_markdown(result):
    rows = result["rows"]
    lines = [f"### {os.path.basename(result['run'])}", ""]
    empty = result["first_empty"]
    lines.append("First emptied layer: " + ("none" if empty is None else
                 f"step {empty['step']} (after update {empty['update']}): "
                 + ", ".join(empty["layers"])) + ".")
    lines += ["", "| checkpoint | update | target density | weights left | empty layers | FC "
              "density / weights / classes with none / inputs read | stem density | task loss "
              "at update | train loss | top-1 | top class share | logit spread |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fc = (f"{r['fc_density']:.4f} / {r['fc_weights']} / {r['fc_classes_without_weight']} / "
              f"{r['fc_inputs_read']} of {r['fc_inputs']}") if "fc" in r else "-"
        lines.append(f"| {r['checkpoint']} | {r['update']} | {r['target_density']:.5f} | "
                     f"{r['weights_left']} | {', '.join(r['empty_layers']) or '-'} | {fc} | "
                     f"{fmt(r.get('stem_density'), '.4f')} | "
                     f"{fmt(r['task_loss_at_update'], '.3f')} | {fmt(r['train_loss'], '.3f')} | "
                     f"{fmt(r.get('top1'), '.3f')} | {fmt(r.get('top_class_share'), '.2f')} | "
                     f"{fmt(r.get('logit_spread'), '.3f')} |")
    return lines + [""]


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for result in results:
        label = os.path.basename(result["run"])
        rows = [r for r in result["rows"] if r["step"] is not None]
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [len(r["empty_layers"]) for r in rows], marker="o", label=label)
        axes[1].plot(steps, [r.get("fc_weights", np.nan) for r in rows], marker="o", label=label)
        axes[2].plot(steps, [r.get("top1", np.nan) for r in rows], marker="o", label=label)
    for ax, title in zip(axes, ("layers with no weight", "FC weights left",
                                "top-1 on the test subset")):
        ax.set_title(title)
        ax.set_xlabel("step (checkpoint)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main():
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--data_path", default="", help="evaluate every checkpoint (optional)")
    parser.add_argument("--eval_samples", type=int, default=1000)
    parser.add_argument("--name", default="collapse_analysis", type=result_name)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        if not os.path.isdir(run_dir):
            raise BenchmarkError(f"no run folder {run_dir}")
    results = []
    for run_dir in args.run_dirs:
        cfg = network_config(run_dir, args.data_path) if args.data_path else None
        data = test_batches(cfg, args.eval_samples) if cfg is not None else None
        results.append(analyse_run(run_dir, cfg, data))
    command = ("python -m benchmarks.collapse_analysis " + " ".join(args.run_dirs)
               + (f" --data_path DIR --eval_samples {args.eval_samples}" if args.data_path else ""))
    lines = ["# Collapse analysis: masks, losses and behaviour per mask update", "",
             f"Command: `{command}`", "",
             "A checkpoint of step N holds the masks of the updates before step N. Classes with "
             "none: FC rows with no weight (scored by the bias alone). Logit spread: mean over "
             "classes of the logits' std over the test images (about 0: the output no longer "
             "depends on the input).", ""]
    for result in results:
        lines += run_markdown(result)
    png = os.path.join(ROOT, "benchmarks", "results", f"{args.name}.png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    plot(results, png)
    lines.append(f"![empty layers, FC weights and top-1 per checkpoint]({args.name}.png)")
    write_results(args.name, {"command": command, "runs": results}, "\n".join(lines))


if __name__ == "__main__":
    main_guard(main)
