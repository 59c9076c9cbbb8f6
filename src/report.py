"""Per-layer reports of a pruned network: density and numerical rank, tables and plots."""
import os

import numpy as np

from src.errors import ConfigError
from src.outputs import atomic_output


def numerical_rank(matrix, rtol=None):
    """Numerical rank (numpy.linalg.matrix_rank semantics) of a weight matrix, for reports.

    A conv weight (C_out, C_in, kh, kw) is reshaped to (C_out, C_in*kh*kw). Singular values
    above tol count; tol = S.max() * max(M, N) * eps(dtype) by default, or rtol * S.max().
    """
    m = np.asarray(matrix)
    if m.ndim < 2:
        raise ValueError(f"matrix must have at least 2 dimensions, got shape {m.shape}")
    m = m.reshape(m.shape[0], -1)
    if not np.issubdtype(m.dtype, np.inexact):
        m = m.astype(np.float64)
    if m.size == 0:
        return 0
    s = np.linalg.svd(m, compute_uv=False)
    smax = s.max()
    if rtol is None:
        tol = smax * max(m.shape) * np.finfo(s.dtype).eps
    else:
        if rtol < 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        tol = smax * rtol
    return int(np.count_nonzero(s > tol))


def effective_rank(matrix):
    """Effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised singular values.

    Unlike the numerical rank, which counts every singular value above round-off and so calls
    most sparse matrices full rank, it shrinks when the energy concentrates in a few directions:
    the collapse RPG's rank loss fights.
    """
    singular = np.linalg.svd(matrix, compute_uv=False)
    total = singular.sum()
    if total == 0:
        return 0.0
    p = singular[singular > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def layer_rows(net, names):
    """One row per weight in ``names`` (e.g. the prunable ones): name, shape, density, numerical
    and effective rank of the (C_out, C_in*kh*kw) matrix, each also relative to full rank
    min(C_out, C_in*kh*kw)."""
    params = {p.name: p for p in net.trainable_params()}
    rows = []
    for name in names:
        weight = params[name].asnumpy()
        matrix = weight.reshape(weight.shape[0], -1).astype(np.float64)
        full = min(matrix.shape)
        rank = numerical_rank(matrix) if np.any(matrix) else 0
        erank = effective_rank(matrix)
        rows.append({"name": name, "shape": list(weight.shape),
                     "density": float(np.count_nonzero(weight) / weight.size),
                     "rank": int(rank), "full_rank": int(full), "relative_rank": rank / full,
                     "effective_rank": erank, "relative_effective_rank": erank / full})
    return rows


def mean_relative_rank(rows, convs_only=True, key="relative_rank"):
    """Mean of ``key`` (relative_rank or relative_effective_rank) over the conv layers."""
    selected = [r for r in rows if len(r["shape"]) == 4] if convs_only else rows
    return float(np.mean([r[key] for r in selected])) if selected else float("nan")


def format_layer_table(rows):
    lines = [f"{'layer':<32} {'shape':<16} {'density':>8} {'rank':>6} {'full':>6} {'rel.rank':>8} "
             f"{'eff.rank':>8} {'rel.eff':>7}"]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['name']:<32} {shape:<16} {r['density']:>8.4f} {r['rank']:>6d} "
                     f"{r['full_rank']:>6d} {r['relative_rank']:>8.3f} {r['effective_rank']:>8.1f} "
                     f"{r['relative_effective_rank']:>7.3f}")
    return "\n".join(lines)


# formats a figure is written in, by the file's extension (matplotlib's Agg writers)
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def figure_suffix(path, key):
    """The format of the figure ``path`` names, as the extension matplotlib writes it by: the
    file's own (.png, .pdf, .svg, .jpg), .png for a name without one; ConfigError naming ``key``
    for another (a .pdf used to get PNG bytes)."""
    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        return ".png"
    if suffix not in FIGURE_SUFFIXES:
        raise ConfigError(f"{key} {path}: a figure is written as {', '.join(FIGURE_SUFFIXES)} (by the "
                          f"file's extension), not {suffix}")
    return suffix


def _save_figure(fig, path):
    with atomic_output(path, figure_suffix(path, "figure")) as tmp:  # the extension: the format
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


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
    axes[1].bar(x - 0.2, [r["relative_rank"] for r in rows], width=0.4, color="tab:orange",
                label="numerical rank")
    axes[1].bar(x + 0.2, [r["relative_effective_rank"] for r in rows], width=0.4, color="tab:red",
                label="effective rank")
    axes[1].set_ylabel("rank / full rank")
    axes[1].legend(fontsize=8)
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
