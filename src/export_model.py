"""Export a network for deployment (MINDIR, ONNX, AIR, or the SPARSE file of src/sparse_format.py)
and check what was written: a MINDIR is reloaded and compared with the network, a SPARSE file is
read back bit-exact. Only a file that passed its check replaces an earlier one.
"""
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from src.dataset import input_shape
from src.errors import ExportError
from src.models.fold import fold_batchnorm
from src.outputs import atomic_output, failure_reason
from src.pruning.core.base import prunable_weight_names
from src.sparse_format import canonical_zeros, ideal_size_bytes, read_sparse, write_sparse

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air", "SPARSE": ".sparse.npz"}
TOLERANCE = 1e-4  # max abs difference between a reloaded MINDIR and the checkpoint network


def base_name(file_name, file_format):
    """``file_name`` without the format's suffix, which the writers append: ``--file_name
    net.mindir`` writes net.mindir (and is refused if it exists), not net.mindir.mindir."""
    suffix = FORMATS[file_format]
    stem = file_name[:-len(suffix)] if file_name.lower().endswith(suffix) else file_name
    return stem if os.path.basename(stem) else file_name


def export_graph(net, sample, file_name, file_format, verify=None):
    """ms.export to a temporary name, ``verify(temporary path)``, then rename: an earlier file is
    never half-overwritten, nor replaced by a file that fails its check. Returns the path written."""
    suffix = FORMATS[file_format]
    final = file_name + suffix
    directory = os.path.dirname(os.path.abspath(final))
    mode = os.stat(directory).st_mode
    try:
        with atomic_output(final, suffix) as tmp:
            try:  # MindSpore appends the suffix to the base name itself
                ms.export(net, sample, file_name=tmp[:-len(suffix)], file_format=file_format)
            except (ValueError, TypeError, RuntimeError) as err:  # e.g. it refuses a '+' in a name
                raise ExportError(f"MindSpore could not export to {final}: "
                                  f"{failure_reason(err)[:200]}") from None
            if verify is not None:
                verify(tmp)
    finally:
        os.chmod(directory, mode)  # MindSpore's ONNX export narrows the folder to 0700
    return final


def verify_mindir(path, net, sample, shown=None):
    """Reload the MINDIR at ``path`` and compare its output on ``sample`` with ``net``'s."""
    graph = nn.GraphCell(ms.load(path))
    expected = net(sample).asnumpy()
    got = graph(sample).asnumpy()
    diff = float(np.max(np.abs(expected - got)))
    print(f"reloaded {shown or path}: max abs difference to the checkpoint network {diff:.3e}")
    if not diff <= TOLERANCE:
        raise ExportError(f"exported MINDIR differs from the checkpoint network by {diff:.3e} "
                          f"(> {TOLERANCE})")


def export_sparse(net, file_name, ckpt, meta):
    """Write the SPARSE file, read it back bit-exact and print its size against the checkpoint's."""
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    path = file_name + FORMATS["SPARSE"]
    keep_meta = {k: meta[k] for k in ("net", "inner_widths", "stage_widths") if k in meta}
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


def export_checkpoint_network(cfg, net, meta, file_format, file_name, ckpt, batch, fold_bn=False):
    """Export ``net`` (read from ``ckpt``) as ``file_format``; a graph format is traced on a random
    batch of ``batch`` images (seed ``cfg.seed``), which also serves the MINDIR check. ``fold_bn``
    exports the graph with every BatchNorm folded into its conv; the MINDIR check still compares
    with ``net`` itself, so the folding is checked too. SPARSE stores the checkpoint: never folded."""
    if file_format == "SPARSE":
        export_sparse(net, file_name, ckpt, meta)
        return
    rng = np.random.default_rng(cfg.seed)
    shape = input_shape(cfg, batch)
    sample = Tensor(rng.standard_normal(shape).astype(np.float32))
    final = file_name + FORMATS[file_format]
    verify = (lambda tmp: verify_mindir(tmp, net, sample, shown=final)) \
        if file_format == "MINDIR" else None
    exported = fold_batchnorm(net) if fold_bn else net
    path = export_graph(exported, sample, file_name, file_format, verify)
    notes = [note for note, on in (("compact widths", meta.get("inner_widths")),
                                   ("BatchNorm folded into the convs", fold_bn)) if on]
    shown = f" ({', '.join(notes)})" if notes else ""
    print(f"wrote {path}{shown}: input {tuple(sample.shape)}")
