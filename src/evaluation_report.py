"""What eval.py reports about a checkpoint: top-1, top-5, loss, sparsity, parameters and FLOPs
(MACs) of the evaluated and the dense network, and what pruning did to it: the kept widths of a
compact PSAP network, or the per-layer density and rank of a sparse one (table, optional plot).
A network whose output no longer depends on its input is evaluated all the same (its accuracy is
the measurement asked for) with a warning on stderr naming its emptied layers."""
import sys

import numpy as np

from src.dataset import input_shape
from src.metrics import evaluate
from src.models import build_network, default_inner_widths
from src.models.flops import count_macs_params
from src.models.resnet import cifar_stage_widths
from src.pruning.core.base import prunable_weight_names, sparsity_of
from src.pruning.core.liveness import checkpoint_network_message
from src.pruning.core.registry import pruned_weight_names
from src.report import format_layer_table, layer_rows, mean_relative_rank, plot_layers, plot_widths


def evaluation_report(cfg, net, meta, data, ckpt, report_png="", log=print):
    """Evaluate ``net`` (read from ``ckpt``, with its metadata ``meta``) on ``data``; ``log`` the
    summary lines as they are known, plot to ``report_png`` if given; returns the result dict."""
    result = evaluate(net, data, cfg.label_smoothing)
    params = {p.name: p.asnumpy() for p in net.trainable_params()}
    # sparsity as train.py reports it (and the target means it): over the weights the run pruned
    # (its recorded prune_include / prune_exclude); over every conv/FC weight beside it if different
    selected = pruned_weight_names(net, meta.get("recipe") or cfg)   # the run's own selection
    result["sparsity"] = sparsity_of([params[n] for n in selected])
    everything = prunable_weight_names(net)
    if selected != everything:
        result["sparsity_all_conv_fc"] = sparsity_of([params[n] for n in everything])
    shape = input_shape(cfg)
    batch = cfg.eval_batch_size or cfg.batch_size   # the first evaluation batch's shape (compiled already)
    dead = checkpoint_network_message(net, input_shape(cfg, min(batch, cfg.eval_samples or batch)), everything)
    result["output_depends_on_input"] = dead is None
    if dead:
        print(f"warning: {ckpt}: {dead}", file=sys.stderr)
    result["flops"], result["params"] = count_macs_params(net, shape)
    result["dense_flops"], result["dense_params"] = count_macs_params(build_network(cfg), shape)
    # params/MACs are of the shapes: an unstructured-sparse network stores and multiplies its zeros
    result["nonzero_params"] = int(sum(np.count_nonzero(value) for value in params.values()))

    log(f"checkpoint {ckpt}  ({cfg.net}, {result['samples']} images)")
    log(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  loss {result['loss']:.4f}  "
        f"sparsity {result['sparsity']:.4f}" + (
            f" (of the {len(selected)} pruned weights; {result['sparsity_all_conv_fc']:.4f} of all "
            f"{len(everything)} conv/FC weights)" if "sparsity_all_conv_fc" in result else ""))
    sparse = result["sparsity"] > 0 and not meta.get("inner_widths")
    log(f"params {result['params']:,} (dense {result['dense_params']:,})  "
        f"MACs {result['flops']:,} (dense {result['dense_flops']:,})" + (
            f"  nonzero params {result['nonzero_params']:,} (params/MACs count the masks' zeros)"
            if sparse else ""))
    if meta.get("inner_widths"):
        _report_widths(cfg, meta, result, report_png, log)
    elif result["sparsity"] > 0:
        _report_layers(cfg, net, result, report_png, log)
    return result


def _report_widths(cfg, meta, result, report_png, log):
    """A compact PSAP network: the kept inner conv widths against the dense ones."""
    dense = default_inner_widths(cfg.net, cfg.width_multiplier)
    kept = [w for block in meta["inner_widths"] for w in block]
    full = [w for block in dense for w in block]
    result["inner_widths"] = meta["inner_widths"]
    log("inner conv widths (kept/dense): " + " ".join(f"{k}/{f}" for k, f in zip(kept, full)))
    if meta.get("stage_widths"):
        result["stage_widths"] = meta["stage_widths"]
        dense_streams = cifar_stage_widths(cfg.width_multiplier)
        log("residual-stream widths (kept/dense): " + " ".join(
            f"{k}/{f}" for k, f in zip(meta["stage_widths"], dense_streams)))
    if report_png:
        labels = [f"b{i}.c{j + 1}" for i, block in enumerate(dense) for j in range(len(block))]
        plot_widths(labels, full, kept, report_png, f"{cfg.net}: kept filters per layer")


def _report_layers(cfg, net, result, report_png, log):
    """A sparse network: per-layer density and numerical / effective rank."""
    rows = layer_rows(net, prunable_weight_names(net))
    result["mean_relative_rank"] = mean_relative_rank(rows)
    result["mean_relative_effective_rank"] = mean_relative_rank(rows, key="relative_effective_rank")
    result["layers"] = rows
    log(format_layer_table(rows))
    log(f"mean relative rank of conv layers: numerical {result['mean_relative_rank']:.4f}, "
        f"effective {result['mean_relative_effective_rank']:.4f}")
    if report_png:
        plot_layers(rows, report_png, f"{cfg.net}: sparsity {result['sparsity']:.2%}")
