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

from src.interrupt import STOP

STOP.install()  # first thing: a Ctrl-C during the imports below (MindSpore's) is one line, exit 130

from src.cli import run  # noqa: E402
from src.config import check_output_path, parse_args, parse_bool_flag  # noqa: E402
from src.dataset import create_dataset, split_path  # noqa: E402
from src.device import set_up_device  # noqa: E402
from src.errors import ConfigError  # noqa: E402
from src.evaluation_report import evaluation_report  # noqa: E402
from src.models import network_from_checkpoint  # noqa: E402
from src.outputs import write_json_atomic  # noqa: E402
from src.report import figure_suffix  # noqa: E402
from src.run_lock import hold  # noqa: E402

FLAGS = {"ckpt": "", "json_out": "", "report_png": "", "overwrite": "false"}


def main():
    cfg, flags = parse_args(extra_flags=FLAGS, description=__doc__)
    if not flags["ckpt"]:
        raise ConfigError("--ckpt FILE is required")
    overwrite = parse_bool_flag("overwrite", flags["overwrite"])
    check_output_path("--json_out", flags["json_out"], overwrite=overwrite)
    check_output_path("--report_png", flags["report_png"], overwrite=overwrite)
    if flags["json_out"] and os.path.abspath(flags["json_out"]) == os.path.abspath(flags["report_png"] or "/"):
        raise ConfigError("--json_out and --report_png name the same file")
    if flags["report_png"]:
        figure_suffix(flags["report_png"], "--report_png")
    for key in ("json_out", "report_png"):  # not into a folder a training run holds (src/run_lock.py)
        if flags[key]:
            hold(os.path.dirname(os.path.abspath(flags[key])), exclusive=False, label=f"--{key} folder",
                 create=False)
    set_up_device(cfg)
    STOP.restore_default()  # imports are done: from here Ctrl-C interrupts at once
    net, meta = network_from_checkpoint(cfg, flags["ckpt"])
    path, key = split_path(cfg, training=False)
    data = create_dataset(cfg.dataset, path, False, cfg.eval_batch_size or cfg.batch_size, path_key=key,
                          image_size=cfg.image_size or None, eval_resize=cfg.eval_resize,
                          num_samples=cfg.eval_samples, num_parallel_workers=cfg.num_parallel_workers)
    result = evaluation_report(cfg, net, meta, data, flags["ckpt"], flags["report_png"])
    if flags["json_out"]:
        # a result another evaluation wrote meanwhile is kept (this one fails with one line)
        write_json_atomic(result, flags["json_out"], overwrite)
        print(f"wrote {flags['json_out']}")


if __name__ == "__main__":
    run(main)
