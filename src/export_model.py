"""Export a network for deployment (MINDIR, ONNX, AIR, or the SPARSE file of src/sparse_format.py)
and check what was written: a MINDIR is reloaded and compared with the network, a SPARSE file is
read back bit-exact. Only a file that passed its check replaces an earlier one.
"""
import os
import re
import shutil

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from src.dataset import input_shape
from src.errors import ExportError
from src.models.fold import fold_batchnorm
from src.outputs import atomic_output, failure_reason, plain_directory
from src.pruning.core.base import prunable_weight_names
from src.pruning.core.liveness import checkpoint_network_message
from src.sparse_format import (SparseFormatError, canonical_zeros, ideal_size_bytes, read_sparse,
                               write_sparse)

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air", "SPARSE": ".sparse.npz"}
TOLERANCE = 1e-4  # max abs difference between a reloaded MINDIR and the checkpoint network
# The only paths ms.export writes to (mindspore/_checkparam.py check_file_name_by_regular, called
# by ms.export with the absolute path it is given): ASCII letters, digits and @ _ - . : / \
MINDSPORE_PATH = re.compile(r"^[0-9a-zA-Z@_\-.:/\\]+$")
MINDSPORE_RULE = "has only the characters MindSpore's export accepts (ASCII letters, digits, @_-.:/)"


def base_name(file_name, file_format):
    """``file_name`` without the format's suffix, which the writers append: ``--file_name
    net.mindir`` writes net.mindir (and is refused if it exists), not net.mindir.mindir."""
    suffix = FORMATS[file_format]
    stem = file_name[:-len(suffix)] if file_name.lower().endswith(suffix) else file_name
    return stem if os.path.basename(stem) else file_name


def export_graph(net, sample, file_name, file_format, verify=None, overwrite=False):
    """ms.export into a private temporary folder whose path MindSpore accepts (it refuses any name
    outside MINDSPORE_PATH: a space, a non-ASCII letter, '+', ...), copy the file to a temporary
    name beside the output, ``verify(that path)``, then rename: an earlier file is never
    half-overwritten, nor replaced by a file that fails its check, nor replaced at all without
    ``overwrite``. Errors name the user's file. Returns the path written."""
    suffix = FORMATS[file_format]
    final = file_name + suffix
    with atomic_output(final, suffix, overwrite=overwrite) as tmp:
        with plain_directory(MINDSPORE_PATH.match, MINDSPORE_RULE) as folder:
            staged = os.path.join(folder, "export")  # MindSpore appends the suffix itself
            try:
                ms.export(net, sample, file_name=staged, file_format=file_format)
            except (ValueError, TypeError, RuntimeError) as err:
                reason = failure_reason(err).replace(staged + suffix, final).replace(staged, final)
                raise ExportError(f"MindSpore could not export to {final}: {reason[:200]}") from None
            shutil.copyfile(staged + suffix, tmp)  # atomic_output fsyncs and renames it
        if verify is not None:
            verify(tmp)
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


def export_sparse(net, file_name, ckpt, meta, overwrite=False):
    """Write the SPARSE file to a temporary name, read it back bit-exact, only then rename it into
    place (an earlier file is never replaced by one that fails, nor without ``overwrite``); print
    its size against the checkpoint's."""
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    path = file_name + FORMATS["SPARSE"]
    keep_meta = {k: meta[k] for k in ("net", "inner_widths", "stage_widths") if k in meta}
    size = write_sparse(arrays, path, keep_meta, overwrite=overwrite,
                        verify=lambda tmp: check_read_back(tmp, arrays, path))
    dense_size = os.path.getsize(ckpt)
    ideal = ideal_size_bytes(arrays)
    prunable = prunable_weight_names(net)
    nnz = sum(int(np.count_nonzero(arrays[n])) for n in prunable)
    total = sum(arrays[n].size for n in prunable)
    print(f"wrote {path}: {size:,} bytes, read back bit-exact; prunable weights {nnz:,}/{total:,} "
          f"non-zero; dense checkpoint {dense_size:,} bytes ({size / dense_size:.1%}); "
          f"ideal {ideal:,.0f} bytes (file is {size / ideal:.2f}x the ideal)")
    return path


def check_read_back(tmp, arrays, shown):
    """The sparse file at ``tmp`` holds ``arrays`` bit for bit (-0.0 as +0.0); else ExportError
    naming ``shown``, the user's file."""
    try:
        restored, _ = read_sparse(tmp)
    except SparseFormatError as err:
        raise ExportError(f"sparse file {shown} does not read back: "
                          f"{str(err).replace(tmp, shown)}") from None
    for name, array in arrays.items():
        if name not in restored or not np.array_equal(restored[name].view(np.uint32),
                                                      canonical_zeros(array).view(np.uint32)):
            raise ExportError(f"sparse file {shown} does not read back bit-exact ({name}); an "
                              "earlier file is left as it was")


def export_checkpoint_network(cfg, net, meta, file_format, file_name, ckpt, batch, fold_bn=False,
                              overwrite=False):
    """Export ``net`` (read from ``ckpt``) as ``file_format``; a graph format is traced on a random
    batch of ``batch`` images (seed ``cfg.seed``), which also serves the MINDIR check. ``fold_bn``
    exports the graph with every BatchNorm folded into its conv; the MINDIR check still compares
    with ``net`` itself, so the folding is checked too. SPARSE stores the checkpoint: never folded.
    An existing output is replaced only with ``overwrite``, and only by a file that passed. A
    network whose output no longer depends on its input is not exported (ExportError)."""
    dead = checkpoint_network_message(net, input_shape(cfg, batch), prunable_weight_names(net))
    if dead:
        raise ExportError(f"{ckpt}: {dead}; nothing exported")
    if file_format == "SPARSE":
        export_sparse(net, file_name, ckpt, meta, overwrite)
        return
    rng = np.random.default_rng(cfg.seed)
    shape = input_shape(cfg, batch)
    sample = Tensor(rng.standard_normal(shape).astype(np.float32))
    final = file_name + FORMATS[file_format]
    verify = (lambda tmp: verify_mindir(tmp, net, sample, shown=final)) \
        if file_format == "MINDIR" else None
    exported = fold_batchnorm(net) if fold_bn else net
    path = export_graph(exported, sample, file_name, file_format, verify, overwrite)
    notes = [note for note, on in (("compact widths", meta.get("inner_widths")),
                                   ("BatchNorm folded into the convs", fold_bn)) if on]
    shown = f" ({', '.join(notes)})" if notes else ""
    print(f"wrote {path}{shown}: input {tuple(sample.shape)}")
