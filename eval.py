"""Evaluate a checkpoint: top-1, top-5, loss, and what pruning did to the network.

    python eval.py --config_path CONFIG --ckpt FILE [--data_path DIR] [--json_out R.json] [--report_png P.png]
                   [--overwrite true]   (an existing --json_out / --report_png is refused without it)

--checkpoint_file_path and --ckpt_file (the model zoo's names) are aliases of --ckpt. The images
come from eval_data_path when set, else from data_path (val/, the zoo's validation_preprocess/, or
the folder itself for ImageNet; the test files for Fashion-MNIST and CIFAR-10).

Prints a per-layer table (density, numerical rank of the weight matrix and its rank relative to
full) for pruned checkpoints, and parameters / FLOPs (MACs) of the dense and the evaluated
network (smaller for a compact PSAP checkpoint, whose widths are stored in the file).
"""
import os

from src.cli import run
from src.config import ConfigError, check_output_path, parse_args, parse_bool_flag

FLAGS = {"ckpt": "", "json_out": "", "report_png": "", "overwrite": "false"}


def main():
    import src.pruning.registry  # noqa: F401  (declares the pruners' config keys)
    cfg, flags = parse_args(extra_flags=FLAGS, description=__doc__)
    if not flags["ckpt"]:
        raise ConfigError("--ckpt FILE is required")
    overwrite = parse_bool_flag("overwrite", flags["overwrite"])
    check_output_path("--json_out", flags["json_out"], overwrite=overwrite)
    check_output_path("--report_png", flags["report_png"], overwrite=overwrite)
    if flags["json_out"] and os.path.abspath(flags["json_out"]) == os.path.abspath(flags["report_png"] or "/"):
        raise ConfigError("--json_out and --report_png name the same file")
    from src.dataset import batches, create_dataset, split_path
    from src.device import set_up_device
    from src.interrupt import STOP
    from src.metrics import evaluate
    from src.models import build_network, default_inner_widths, network_from_checkpoint
    from src.models.flops import count_macs_params
    from src.outputs import write_json_atomic
    from src.pruning.base import prunable_weight_names, sparsity_of
    from src.report import format_layer_table, layer_rows, mean_relative_rank, plot_layers, plot_widths

    set_up_device(cfg)
    STOP.restore_default()  # imports are done: from here Ctrl-C interrupts at once
    net, meta = network_from_checkpoint(cfg, flags["ckpt"])
    path, key = split_path(cfg, training=False)
    data = create_dataset(cfg.dataset, path, False, cfg.eval_batch_size or cfg.batch_size, path_key=key,
                          image_size=cfg.image_size or None, eval_resize=cfg.eval_resize,
                          num_samples=cfg.eval_samples, num_parallel_workers=cfg.num_parallel_workers)
    result = evaluate(net, data, cfg.label_smoothing)
    params = {p.name: p.asnumpy() for p in net.trainable_params()}
    result["sparsity"] = sparsity_of([params[n] for n in prunable_weight_names(net)])

    image_shape = next(batches(data))[0].shape
    input_shape = (1,) + tuple(image_shape[1:])
    result["flops"], result["params"] = count_macs_params(net, input_shape)
    result["dense_flops"], result["dense_params"] = count_macs_params(build_network(cfg), input_shape)

    print(f"checkpoint {flags['ckpt']}  ({cfg.net}, {result['samples']} images)")
    print(f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  loss {result['loss']:.4f}  "
          f"sparsity {result['sparsity']:.4f}")
    print(f"params {result['params']:,} (dense {result['dense_params']:,})  "
          f"MACs {result['flops']:,} (dense {result['dense_flops']:,})")
    if meta.get("inner_widths"):
        dense = default_inner_widths(cfg.net, cfg.width_multiplier)
        kept = [w for block in meta["inner_widths"] for w in block]
        full = [w for block in dense for w in block]
        result["inner_widths"] = meta["inner_widths"]
        print("inner conv widths (kept/dense): " + " ".join(f"{k}/{f}" for k, f in zip(kept, full)))
        if flags["report_png"]:
            labels = [f"b{i}.c{j + 1}" for i, block in enumerate(dense) for j in range(len(block))]
            plot_widths(labels, full, kept, flags["report_png"], f"{cfg.net}: kept filters per layer")
    elif result["sparsity"] > 0:
        rows = layer_rows(net)
        result["mean_relative_rank"] = mean_relative_rank(rows)
        result["mean_relative_effective_rank"] = mean_relative_rank(rows, key="relative_effective_rank")
        result["layers"] = rows
        print(format_layer_table(rows))
        print(f"mean relative rank of conv layers: numerical {result['mean_relative_rank']:.4f}, "
              f"effective {result['mean_relative_effective_rank']:.4f}")
        if flags["report_png"]:
            plot_layers(rows, flags["report_png"], f"{cfg.net}: sparsity {result['sparsity']:.2%}")
    if flags["json_out"]:
        write_json_atomic(result, flags["json_out"])
        print(f"wrote {flags['json_out']}")


if __name__ == "__main__":
    run(main)
