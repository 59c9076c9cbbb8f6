"""Per-layer reports of a pruned network: density and numerical rank, tables and plots."""
import numpy as np

from src.pruning.base import prunable_weight_names
from src.pruning.rank_loss import numerical_rank


def layer_rows(net):
    """One row per prunable weight: name, shape, density, rank of the (C_out, -1) matrix, full rank."""
    params = {p.name: p for p in net.trainable_params()}
    rows = []
    for name in prunable_weight_names(net):
        weight = params[name].asnumpy()
        matrix = weight.reshape(weight.shape[0], -1).astype(np.float64)
        full = min(matrix.shape)
        rank = numerical_rank(matrix) if np.any(matrix) else 0
        rows.append({"name": name, "shape": list(weight.shape),
                     "density": float(np.count_nonzero(weight) / weight.size),
                     "rank": int(rank), "full_rank": int(full), "relative_rank": rank / full})
    return rows


def mean_relative_rank(rows, convs_only=True):
    selected = [r for r in rows if len(r["shape"]) == 4] if convs_only else rows
    return float(np.mean([r["relative_rank"] for r in selected])) if selected else float("nan")


def format_layer_table(rows):
    lines = [f"{'layer':<32} {'shape':<20} {'density':>8} {'rank':>6} {'full':>6} {'rel.rank':>8}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['name']:<32} {shape:<20} {r['density']:>8.4f} {r['rank']:>6d} "
                     f"{r['full_rank']:>6d} {r['relative_rank']:>8.3f}")
    return "\n".join(lines)


def _save_figure(fig, path):
    import os
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_layers(rows, path, title=""):
    """Bar chart of per-layer density and relative rank."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.25), 6), sharex=True)
    axes[0].bar(x, [r["density"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("density")
    axes[0].set_title(title or "per-layer density and relative rank")
    axes[1].bar(x, [r["relative_rank"] for r in rows], color="tab:orange")
    axes[1].set_ylabel("rank / full rank")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([r["name"].replace(".weight", "") for r in rows], rotation=90, fontsize=7)
    _save_figure(fig, path)
    plt.close(fig)


def plot_widths(names, dense_widths, kept_widths, path, title=""):
    """Bar chart of kept filters against the dense width for each filter-pruned conv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.3), 4))
    ax.bar(x, dense_widths, color="lightgrey", label="dense")
    ax.bar(x, kept_widths, color="tab:green", label="kept")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("filters")
    ax.set_title(title or "kept filters per layer")
    ax.legend()
    _save_figure(fig, path)
    plt.close(fig)
