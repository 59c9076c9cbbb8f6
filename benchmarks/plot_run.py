"""One picture of a training run, drawn from its metrics.jsonl (not from the log text).

    python -m benchmarks.plot_run OUTPUT_DIR [--out PNG] [--overwrite true]   # default OUTPUT_DIR/run.png

Three panels against the training step: the training loss and the learning rate; the pruned
fraction (weight sparsity for RPG and the other unstructured methods, the fraction of zeroed
filters for PSAP) with the mask updates or PSAP pruning steps marked and their targets; the
evaluation top-1. Bad input (no such folder, no metrics.jsonl, an empty or unreadable one, an
existing PNG without --overwrite): one error line, exit 2; the earlier PNG is left as it was.
"""
import os
import sys

from src.cli import OneLineParser
from src.errors import ConfigError
from src.logs import MetricsFile, read_metrics
from src.outputs import (OutputError, OutputExists, add_overwrite_option, atomic_output,
                         refuse_existing)
from src.report import figure_suffix


class BadRun(ValueError):
    """The run's folder or metrics file cannot be plotted (a one-line message)."""


def load_events(output_dir):
    """The run's events; BadRun when there are none to plot."""
    path = os.path.join(output_dir, MetricsFile.NAME)
    if not os.path.isdir(output_dir):
        raise BadRun(f"no such run folder: {output_dir}")
    if not os.path.isfile(path):
        raise BadRun(f"no {MetricsFile.NAME} in {output_dir} (is it a train.py output folder?)")
    try:
        events = read_metrics(output_dir)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRun(f"{path} is not one JSON object per line: {err}") from None
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise BadRun(f"{path} is not one JSON object per line")
    if not events:
        raise BadRun(f"{path} is empty: the run has logged nothing yet")
    return events


def series(events, names, key):
    """(steps, values) of ``key`` over the events called ``names`` (one name or a tuple) that
    have it, in the file's order."""
    names = (names,) if isinstance(names, str) else names
    rows = [(e["step"], e[key]) for e in events
            if e.get("event") in names and isinstance(e.get(key), (int, float)) and "step" in e]
    return [r[0] for r in rows], [r[1] for r in rows]


def _marker(steps):
    """Dots on a line of few points (a single point draws no line at all)."""
    return "." if len(steps) < 50 else None


def _no_data(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def draw_loss(ax, events):
    steps, loss = series(events, "train", "loss")
    if not steps:
        return _no_data(ax, "no training events")
    ax.plot(steps, loss, marker=_marker(steps), color="tab:blue", label="training loss")
    ax.set_ylabel("loss", color="tab:blue")
    lr_axis = ax.twinx()
    lr_steps, lr = series(events, "train", "lr")
    lr_axis.plot(lr_steps, lr, marker=_marker(lr_steps), color="tab:orange", label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    return None


def draw_pruning(ax, events):
    """Sparsity (or PSAP's zeroed-filter fraction) with the updates and their targets."""
    drawn = False
    # a mask update's event comes after the train event of its step: as steps, the line jumps
    # at the update instead of sloping from one logged step to the next
    for names, key, label in ((("train", "mask_update"), "sparsity", "sparsity (prunable weights)"),
                              ("train", "filters_zeroed", "filters zeroed (fraction)")):
        steps, values = series(events, names, key)
        if steps:
            ax.step(steps, values, where="post", marker=_marker(steps), color="tab:green",
                    label=label)
            drawn = True
    steps, density = series(events, "mask_update", "target_density")
    if steps:
        ax.step(steps, [1.0 - d for d in density], where="post", color="grey", linestyle="--",
                label="target (1 - target density)")
        ax.plot(*series(events, "mask_update", "sparsity"), "x", color="tab:red",
                label=f"mask update ({len(steps)})")
        drawn = True
    steps, target = series(events, "psap_step", "target")
    if steps:
        ax.plot(steps, target, "o", color="grey", label="PSAP step target")
        ax.plot(*series(events, "psap_step", "macs_removed"), "x", color="tab:red",
                label=f"PSAP step: MACs removed ({len(steps)})")
        drawn = True
    if not drawn:
        return _no_data(ax, "no pruning events (a dense run)")
    ax.set_ylabel("pruned fraction")
    ax.legend(fontsize=7, loc="lower right")
    return None


def draw_eval(ax, events):
    steps, top1 = series(events, "eval", "top1")
    if not steps:
        return _no_data(ax, "no evaluation events")
    ax.plot(steps, [100 * t for t in top1], "o-", color="tab:purple", label="eval top-1")
    ax.set_ylabel("top-1 (%)")
    return None


def title_of(output_dir, events):
    """The run folder's name and the pruning method (no machine-specific path in the picture)."""
    name = os.path.basename(os.path.abspath(output_dir))
    methods = {e.get("method") for e in events if e.get("event") == "mask_update"}
    methods |= {"psap" for e in events if e.get("event") == "psap_step"}
    methods.discard(None)
    return f"{name}: {', '.join(sorted(methods))}" if methods else name


def plot_run(events, path, title, overwrite=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for ax, draw in zip(axes, (draw_loss, draw_pruning, draw_eval)):
        draw(ax, events)
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    with atomic_output(path, figure_suffix(path, "--out"), overwrite=overwrite) as tmp:  # the format
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="a train.py output folder (with metrics.jsonl)")
    parser.add_argument("--out", help="the figure to write: .png, .pdf, .svg or .jpg by its extension (default OUTPUT_DIR/run.png)")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.output_dir, "run.png")
    try:
        refuse_existing(out, args.overwrite, "--out" if args.out else "")
        figure_suffix(out, "--out")
        events = load_events(args.output_dir)
    except (BadRun, OutputExists, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return write_reported(lambda: plot_run(events, out, title_of(args.output_dir, events),
                                           args.overwrite), out)


def write_reported(write, out):
    """Run ``write()``, which writes ``out``: "wrote OUT" and 0, or one error line and 2 (``out``
    appeared meanwhile and --overwrite was not given) or 1 (it could not be written)."""
    try:
        write()
    except OutputExists as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OutputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
