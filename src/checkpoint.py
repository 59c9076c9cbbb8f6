"""Checkpoint files: atomic writes, metadata, clear errors on load.

A checkpoint holds the network parameters, optionally the optimizer state and the pruner state,
and string/number metadata under keys starting with ``meta.`` (epoch, step, network widths).
Files are written to a temporary name in the same directory, flushed to disk and renamed, so a
crash never leaves a half-written file under the final name and never damages an earlier
checkpoint. Files carry MindSpore's CRC and are read with the CRC check (files without one, e.g.
converted or older checkpoints, still load), so a truncated or corrupted file is a
``CheckpointError``, not silently wrong weights.
"""
import json
import os

import numpy as np
import mindspore as ms

from src.errors import CheckpointError  # noqa: F401  (raised here, imported from here by callers)
from src.outputs import atomic_output

META_PREFIX = "meta."
PRUNER_PREFIX = "pruner."


def save_atomic(params, path, meta=None, pruner_state=None, overwrite=True):
    """Write ``params`` (a Cell or a list of Parameters / {'name','data'} dicts) to ``path`` atomically.

    ``meta`` values are str/int/float; ``pruner_state`` values are numpy arrays or scalars.
    ``overwrite=False`` refuses an existing ``path`` (src.outputs.OutputExists), for files a user
    named; a run's own checkpoints (last.ckpt, epoch checkpoints) are replaced as it goes.
    """
    append = {}
    for key, value in (meta or {}).items():
        append[META_PREFIX + key] = json.dumps(value)
    items = params if isinstance(params, ms.nn.Cell) else list(params)
    if pruner_state:
        if isinstance(items, ms.nn.Cell):
            items = list(items.get_parameters())
        items = items + [ms.Parameter(ms.Tensor(np.asarray(v)), name=PRUNER_PREFIX + k,
                                      requires_grad=False) for k, v in pruner_state.items()]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps that suffix;
    # it writes "<name>.tmp" first and renames that to "<name>.ckpt" itself
    with atomic_output(path, ".ckpt", leftovers=(".tmp",), catch=(OSError, RuntimeError),
                       overwrite=overwrite, failure=lambda reason: CheckpointError(
                           f"cannot write checkpoint {path}: {reason}; earlier checkpoints are "
                           "left as they were")) as tmp_path:
        ms.save_checkpoint(items, tmp_path, append_dict=append or None, crc_check=True)
        os.chmod(tmp_path, _file_mode())


def _file_mode():
    """The mode a new file gets under the process's umask (0644 under the usual 022): MindSpore
    leaves its checkpoints 0400, which the rest of a group sharing a run folder cannot read and a
    later cp or rsync cannot replace."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def load(path):
    """Read a checkpoint; returns (params: dict name->Parameter, meta: dict, pruner_state: dict)."""
    if not path:
        raise CheckpointError("no checkpoint given")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = ms.load_checkpoint(path, crc_check=True)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt? "
                              f"{os.path.getsize(path)} bytes): {first[:200]}") from None
    if not raw:
        raise CheckpointError(f"checkpoint {path} holds no parameters")
    params, meta, pruner_state = {}, {}, {}
    for name, value in raw.items():
        if name.startswith(META_PREFIX):
            meta[name[len(META_PREFIX):]] = json.loads(value) if isinstance(value, str) else value
        elif name.startswith(PRUNER_PREFIX):
            pruner_state[name[len(PRUNER_PREFIX):]] = value.asnumpy()
        else:
            params[name] = value
    return params, meta, pruner_state


def require_finite(net, path):
    """CheckpointError naming the first parameter of ``net`` (as loaded from ``path``) that holds
    NaN or Inf: such a network answers nothing a report or an export could use."""
    for param in net.get_parameters():
        values = param.asnumpy()
        if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise CheckpointError(f"checkpoint {path} holds non-finite values (NaN or Inf) in "
                                  f"'{param.name}' ({bad} of {values.size}): not a usable network")


def load_into(net, params, path, strict=True, skip=()):
    """Copy ``params`` into ``net``; a missing parameter or a shape mismatch is a CheckpointError."""
    own = {p.name: p for p in net.get_parameters()}
    for name, param in own.items():
        if name in skip:
            continue
        if name not in params:
            if strict:
                raise CheckpointError(f"checkpoint {path} does not fit the network: "
                                      f"parameter '{name}' is missing")
            continue
        if tuple(params[name].shape) != tuple(param.shape):
            raise CheckpointError(f"checkpoint {path} does not fit the network: '{name}' has shape "
                                  f"{tuple(params[name].shape)} in the file, {tuple(param.shape)} in "
                                  "the network (another network or config?)")
    selected = {k: v for k, v in params.items() if k in own and k not in skip}
    ms.load_param_into_net(net, selected, strict_load=False)
