"""Export a checkpoint for deployment.

    python export.py --config_path CONFIG --ckpt FILE --file_format MINDIR|ONNX|AIR|SPARSE --file_name NAME
                     [--export_batch 1] [--overwrite true] [--fold_bn true|false]

The format's suffix (.mindir, .onnx, .air, .sparse.npz) is appended to NAME unless NAME already
ends with it. An existing output file is never replaced unless --overwrite true is given, and then
only by a file that passed its check (MINDIR: outputs compared with the checkpoint network; SPARSE:
read back bit-exact). NAME may be any path, spaces and non-ASCII letters included: MindSpore's
export, which refuses such names, writes into a temporary folder and the file is copied into place.
MINDIR is reloaded after writing and its output compared with the checkpoint network on a random
batch (fails above 1e-4 max abs difference). AIR needs an Ascend device. SPARSE writes the pruned
weights as values + Elias-Fano coded positions (``NAME.sparse.npz``), reads it back and checks it
bit-exact.
A compact PSAP checkpoint exports the genuinely smaller network.
--fold_bn true (MINDIR, ONNX, AIR; default false) folds every BatchNorm into the conv before it
(one conv with bias per pair, src/models/fold.py); the MINDIR check then compares the folded file
with the unfolded checkpoint network. SPARSE stores the checkpoint itself and is never folded.
"""
import os

from src.interrupt import STOP

STOP.install()  # first thing: a Ctrl-C during the imports below (MindSpore's) is one line, exit 130

import mindspore as ms  # noqa: E402

from src.cli import run  # noqa: E402
from src.config import check_output_path, parse_args, parse_bool_flag  # noqa: E402
from src.device import set_up_device  # noqa: E402
from src.errors import ConfigError  # noqa: E402
from src.export_model import FORMATS, base_name, export_checkpoint_network  # noqa: E402
from src.models import network_from_checkpoint  # noqa: E402
from src.run_lock import hold  # noqa: E402

FLAGS = {"ckpt": "", "file_format": "MINDIR", "file_name": "", "export_batch": "1", "overwrite": "false",
         "fold_bn": "false"}


def main():
    cfg, flags = parse_args(extra_flags=FLAGS, description=__doc__)
    file_format = flags["file_format"].upper()
    if file_format not in FORMATS:
        raise ConfigError(f"--file_format: got '{flags['file_format']}', expected one of "
                          f"{', '.join(FORMATS)}")
    if not flags["ckpt"]:
        raise ConfigError("--ckpt FILE is required")
    given = flags["file_name"]
    if given and (given.endswith(("/", os.sep)) or os.path.isdir(given)):
        raise ConfigError(f"--file_name {given} is a folder: give a file name in it, e.g. "
                          f"{os.path.join(given, f'{cfg.net}_{cfg.prune_method}')}")
    other = next((f for f, suffix in FORMATS.items() if f != file_format and given.lower().endswith(suffix)), None)
    if other:   # net.onnx with MINDIR would write net.onnx.mindir
        raise ConfigError(f"--file_name {given} ends with {FORMATS[other]}, the suffix of {other}: give "
                          f"--file_format {other} or a name without it")
    file_name = base_name(given or f"{cfg.net}_{cfg.prune_method}", file_format)
    try:
        batch = int(flags["export_batch"])
    except ValueError:
        batch = 0
    if batch < 1:
        raise ConfigError(f"--export_batch: got '{flags['export_batch']}', expected a positive integer")
    if file_format == "AIR" and cfg.device_target != "Ascend":
        raise ConfigError("AIR export needs an Ascend device (device_target Ascend); "
                          "use MINDIR or ONNX on CPU/GPU")
    fold_bn = parse_bool_flag("fold_bn", flags["fold_bn"])
    if fold_bn and file_format == "SPARSE":
        raise ConfigError("--fold_bn true: SPARSE stores the checkpoint's own weights and is never "
                          "folded; fold a graph format (MINDIR, ONNX, AIR)")
    overwrite = parse_bool_flag("overwrite", flags["overwrite"])
    check_output_path("--file_name", file_name + FORMATS[file_format],
                      overwrite=overwrite)
    # not into a folder a training run holds (src/run_lock.py)
    hold(os.path.dirname(os.path.abspath(file_name)), exclusive=False, label="--file_name folder",
         create=False)
    set_up_device(cfg)
    STOP.restore_default()  # imports are done: from here Ctrl-C interrupts at once
    ms.set_context(mode=ms.GRAPH_MODE)  # export traces the graph whatever the recipe's mode
    net, meta = network_from_checkpoint(cfg, flags["ckpt"])
    export_checkpoint_network(cfg, net, meta, file_format, file_name, flags["ckpt"], batch,
                              fold_bn, overwrite)


if __name__ == "__main__":
    run(main)
