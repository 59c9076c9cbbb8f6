"""Export a checkpoint for deployment.

    python export.py --config_path CONFIG --ckpt FILE --file_format MINDIR|ONNX|AIR|SPARSE --file_name NAME
                     [--export_batch 1] [--overwrite true]

An existing output file is never replaced unless --overwrite true is given, and then only by a
file that passed its check (MINDIR: outputs compared with the checkpoint network).
MINDIR is reloaded after writing and its output compared with the checkpoint network on a random
batch (fails above 1e-4 max abs difference). AIR needs an Ascend device. SPARSE writes the pruned
weights as values + Elias-Fano coded positions (``NAME.sparse.npz``), reads it back and checks it
bit-exact.
A compact PSAP checkpoint exports the genuinely smaller network.
"""
import os

from src.cli import run
from src.config import ConfigError, check_output_path, parse_args, parse_bool_flag

FLAGS = {"ckpt": "", "file_format": "MINDIR", "file_name": "", "export_batch": "1", "overwrite": "false"}
FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air", "SPARSE": ".sparse.npz"}
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """Export failed or its result does not match the checkpoint."""


def _export_graph(net, sample, file_name, file_format, verify=None):
    """ms.export to a temporary name, ``verify(temporary path)``, then rename: an earlier file is
    never half-overwritten, nor replaced by a file that fails its check."""
    import mindspore as ms
    directory = os.path.dirname(os.path.abspath(file_name))
    mode = os.stat(directory).st_mode
    tmp_base = os.path.join(directory, f".{os.path.basename(file_name)}.tmp{os.getpid()}")
    suffix = FORMATS[file_format]
    try:
        try:
            ms.export(net, sample, file_name=tmp_base, file_format=file_format)
        except (ValueError, TypeError, RuntimeError) as err:  # e.g. MindSpore refuses a '+' in a name
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"MindSpore could not export to {file_name}{suffix}: {first[:200]}") from None
        if verify is not None:
            verify(tmp_base + suffix)
        os.replace(tmp_base + suffix, file_name + suffix)
    finally:
        if os.path.exists(tmp_base + suffix):
            os.remove(tmp_base + suffix)
        os.chmod(directory, mode)  # MindSpore's ONNX export narrows the folder to 0700
    return file_name + suffix


def _verify_mindir(path, net, sample, shown=None):
    import numpy as np
    import mindspore as ms
    from mindspore import nn
    graph = nn.GraphCell(ms.load(path))
    expected = net(sample).asnumpy()
    got = graph(sample).asnumpy()
    diff = float(np.max(np.abs(expected - got)))
    print(f"reloaded {shown or path}: max abs difference to the checkpoint network {diff:.3e}")
    if not diff <= TOLERANCE:
        raise ExportError(f"exported MINDIR differs from the checkpoint network by {diff:.3e} "
                          f"(> {TOLERANCE})")


def _export_sparse(net, file_name, ckpt, meta):
    import numpy as np
    from src.pruning.base import prunable_weight_names
    from src.sparse_format import canonical_zeros, ideal_size_bytes, read_sparse, write_sparse
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    path = file_name + FORMATS["SPARSE"]
    keep_meta = {k: meta[k] for k in ("net", "inner_widths") if k in meta}
    size = write_sparse(arrays, path, keep_meta)
    restored, _ = read_sparse(path)
    for name, array in arrays.items():
        if not np.array_equal(restored[name].view(np.uint32), canonical_zeros(array).view(np.uint32)):
            raise ExportError(f"sparse file {path} does not read back bit-exact ({name})")
    dense_size = os.path.getsize(ckpt)
    ideal = ideal_size_bytes(arrays)
    prunable = prunable_weight_names(net)
    nnz = sum(int(np.count_nonzero(arrays[n])) for n in prunable)
    total = sum(arrays[n].size for n in prunable)
    print(f"wrote {path}: {size:,} bytes, read back bit-exact; prunable weights {nnz:,}/{total:,} "
          f"non-zero; dense checkpoint {dense_size:,} bytes ({size / dense_size:.1%}); "
          f"ideal {ideal:,.0f} bytes (file is {size / ideal:.2f}x the ideal)")
    return path


def main():
    import src.pruning.registry  # noqa: F401  (declares the pruners' config keys)
    cfg, flags = parse_args(extra_flags=FLAGS, description=__doc__)
    file_format = flags["file_format"].upper()
    if file_format not in FORMATS:
        raise ConfigError(f"--file_format: got '{flags['file_format']}', expected one of "
                          f"{', '.join(FORMATS)}")
    if not flags["ckpt"]:
        raise ConfigError("--ckpt FILE is required")
    file_name = flags["file_name"] or f"{cfg.net}_{cfg.prune_method}"
    try:
        batch = int(flags["export_batch"])
    except ValueError:
        batch = 0
    if batch < 1:
        raise ConfigError(f"--export_batch: got '{flags['export_batch']}', expected a positive integer")
    if file_format == "AIR" and cfg.device_target != "Ascend":
        raise ConfigError("AIR export needs an Ascend device (device_target Ascend); "
                          "use MINDIR or ONNX on CPU/GPU")
    check_output_path("--file_name", file_name + FORMATS[file_format],
                      overwrite=parse_bool_flag("overwrite", flags["overwrite"]))
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor
    from src.device import set_up_device
    from src.interrupt import STOP
    from src.models import network_from_checkpoint

    set_up_device(cfg)
    STOP.restore_default()  # imports are done: from here Ctrl-C interrupts at once
    ms.set_context(mode=ms.GRAPH_MODE)  # export traces the graph whatever the recipe's mode
    net, meta = network_from_checkpoint(cfg, flags["ckpt"])
    if file_format == "SPARSE":
        _export_sparse(net, file_name, flags["ckpt"], meta)
        return
    from src.dataset import dataset_info
    size = cfg.image_size or dataset_info(cfg.dataset)["image_size"]
    rng = np.random.default_rng(cfg.seed)
    shape = (batch, cfg.in_channels, size, size)
    sample = Tensor(rng.standard_normal(shape).astype(np.float32))
    final = file_name + FORMATS[file_format]
    verify = (lambda tmp: _verify_mindir(tmp, net, sample, shown=final)) \
        if file_format == "MINDIR" else None
    path = _export_graph(net, sample, file_name, file_format, verify)
    widths = " (compact widths)" if meta.get("inner_widths") else ""
    print(f"wrote {path}{widths}: input {tuple(sample.shape)}")


if __name__ == "__main__":
    run(main, extra_errors=(ExportError,))
