"""The end of a PSAP run: the physically smaller network, its metadata and the target check."""
from src.errors import TrainingError
from src.models.flops import count_macs_params
from src.pruning.filters.surgery import compact_network, plan_removal, plan_stream_removal

TARGET_TOLERANCE = 0.01


class PruningTargetError(TrainingError, ValueError):
    """The compact network misses the configured pruning ratio (a one-line error for the CLI)."""


def _plans(pruner, arrays):
    plans = plan_removal(arrays, pruner.layout.layers)
    kept_constant = sum(len(p["kept_constant"]) for p in plans)
    if kept_constant:
        pruner.logger.warning("psap: %d zero filters kept: their constant output cannot be "
                              "folded exactly", kept_constant)
    return plans


COMPACT_FILE = "last_compact.ckpt"


def finish_compact(pruner, ctx):
    """Remove the zeroed filters and log the summary; raise PruningTargetError when the achieved
    ratio misses ``psap_ratio`` by more than TARGET_TOLERANCE. Returns the output for the caller
    to save: {"last_compact.ckpt": (compact network, metadata: inner widths, MACs, params and the
    protection outcome)}."""
    cfg = pruner.cfg
    shape = pruner.input_shape
    arrays = {p.name: p.asnumpy() for p in ctx.net.get_parameters()}
    plans = _plans(pruner, arrays)
    stream_plans = plan_stream_removal(arrays, pruner.stream.streams) if pruner.stream else None
    compact, widths, stage_widths = compact_network(ctx.net, plans, stream_plans)
    dense_macs, dense_params = count_macs_params(ctx.net, shape)
    compact_macs, compact_params = count_macs_params(compact, shape)
    kept_filters = sum(len(p["keep"]) for p in plans)
    total_filters = pruner.layout.total
    filter_ratio = 1.0 - kept_filters / total_filters
    flops_ratio = 1.0 - compact_macs / dense_macs
    achieved = flops_ratio if cfg.psap_target == "flops" else filter_ratio
    regrowth = pruner.regrowth_summary()
    meta = {"inner_widths": widths, "net": ctx.net.arch or cfg.net, "prune_method": "psap",
            "dense_macs": int(dense_macs), "compact_macs": int(compact_macs),
            "dense_params": int(dense_params), "compact_params": int(compact_params),
            "psap_target": cfg.psap_target, "psap_ratio": float(cfg.psap_ratio),
            "achieved_ratio": float(achieved), "input_shape": list(shape),
            "filter_score": cfg.filter_score, "psap_width_multiple": int(cfg.psap_width_multiple),
            "regrown_filters": regrowth["regrown"], "regrown_survived": regrowth["survived"]}
    if stage_widths is not None:
        meta["stage_widths"] = stage_widths
        pruner.logger.info("psap: residual-stream widths %s", "/".join(map(str, stage_widths)))
    pruner.logger.info(
        "psap: compact network: MACs %d -> %d (-%.2f%%), params %d -> %d "
        "(-%.2f%%), prunable filters %d -> %d (-%.2f%%); regrown filters %d, kept to the end %d",
        dense_macs, compact_macs, 100 * flops_ratio, dense_params, compact_params,
        100 * (1 - compact_params / dense_params), total_filters, kept_filters,
        100 * filter_ratio, regrowth["regrown"], regrowth["survived"])
    if abs(achieved - cfg.psap_ratio) > TARGET_TOLERANCE:
        raise PruningTargetError(f"psap: achieved {cfg.psap_target} ratio {achieved:.4f} "
                                 f"misses the target {cfg.psap_ratio:.4f} by more than "
                                 f"{TARGET_TOLERANCE}")
    return {COMPACT_FILE: (compact, meta)}

