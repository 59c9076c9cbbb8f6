"""Foreign weight files as name -> NumPy array: ``.npz``, ``.safetensors``, torch ``.pth``/``.pt``
(what scripts/convert_torchvision_resnet50.py converts).

Where a well-kept library reads the format it is used when installed, and this module's own
reader takes over only where the library cannot serve, each for a stated reason:
- ``.safetensors``: the ``safetensors`` package's NumPy loader (``safetensors.numpy.load_file``)
  when it is importable; the built-in reader (the format is a u64 header size, a JSON header and
  raw little-endian data) when it is not - it is not a requirement of this project - and for
  BF16 tensors, which the NumPy loader refuses because NumPy has no bfloat16 (here they widen to
  float32 exactly);
- torch files: ``torch.load(weights_only=True)`` when torch is importable; without it (a ~800 MB
  dependency, needed otherwise only for the optional logits check) a restricted unpickler of
  torch's zip format that builds NumPy arrays from the tensor records and refuses every other
  object, so no code of the file runs. The legacy pre-1.6 format needs torch.
Every failure is a ``ConversionError`` with one line.
"""
import argparse
import importlib.util
import json
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from src.errors import CheckpointError


class ConversionError(CheckpointError):
    """The input cannot be converted (one-line message, exit code 1)."""


def first_line(err):
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # no terminal colour codes
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _bf16_to_f32(raw_u16):
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def read_npz(path):
    if not zipfile.is_zipfile(path):
        raise ConversionError(f"cannot read {path} as .npz: not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except Exception as err:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise ConversionError(f"cannot read {path} as .npz: {first_line(err)}") from None


SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                      "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors_builtin(path):
    """safetensors by hand: u64 little-endian header size, JSON header, raw little-endian data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConversionError(f"cannot read {path} as .safetensors: file too short")
        header_len = struct.unpack("<Q", head)[0]
        if header_len > size - 8:
            raise ConversionError(f"cannot read {path} as .safetensors: header size {header_len} "
                                  f"exceeds the file ({size} bytes)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConversionError(f"cannot read {path} as .safetensors: bad header: "
                                  f"{first_line(err)}") from None
        if not isinstance(header, dict):
            raise ConversionError(f"cannot read {path} as .safetensors: the header is not a "
                                  "JSON object")
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"cannot read {path} as .safetensors: tensor '{name}' has an "
                                  f"unsupported dtype or a malformed header entry") from None
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != int(np.prod(shape)) * itemsize:
            raise ConversionError(f"cannot read {path} as .safetensors: tensor '{name}' has data "
                                  f"offsets that do not fit its shape or the file")
        raw = np.frombuffer(data[begin:end], dtype="<u2" if dtype == "bf16"
                            else np.dtype(dtype).newbyteorder("<"))
        array = _bf16_to_f32(raw) if dtype == "bf16" else raw.astype(raw.dtype.newbyteorder("="))
        tensors[name] = array.reshape(shape)
    return tensors


def read_safetensors(path):
    if importlib.util.find_spec("safetensors") is not None:
        try:
            from safetensors.numpy import load_file
            return {k: np.asarray(v) for k, v in load_file(path).items()}
        except Exception:  # e.g. BF16 (numpy has no bfloat16): the built-in reader handles it
            pass
    return read_safetensors_builtin(path)


TORCH_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                        "HalfStorage": np.float16, "BFloat16Storage": "bf16",
                        "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                        "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Namespace:
    """Stand-in for argparse.Namespace (torchvision's reference scripts store their args)."""

    def __setstate__(self, state):
        self.__dict__.update(state)


def _rebuild_tensor(storage, offset, size, stride, *_):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return storage[offset].copy()
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return view.copy()


def _rebuild_parameter(data, *_):
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    """Unpickles torch's zip format into numpy arrays; only tensor-building globals are allowed."""

    GLOBALS = {("collections", "OrderedDict"): OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
               ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
               ("torch", "Size"): tuple,
               ("argparse", "Namespace"): _Namespace}

    def __init__(self, file, archive, prefix, little_endian):
        super().__init__(file)
        self.archive, self.prefix, self.little = archive, prefix, little_endian
        self.storages = {}

    def find_class(self, module, name):
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return TORCH_STORAGE_DTYPES[name]
        if (module, name) in self.GLOBALS:
            return self.GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} (only tensors can be "
                                     "read without torch)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            order = "<" if self.little else ">"
            if dtype == "bf16":
                self.storages[key] = _bf16_to_f32(np.frombuffer(raw, dtype=order + "u2"))
            else:
                self.storages[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order))
        return self.storages[key]


def read_torch_zip_builtin(path):
    """Read a torch zip-format file (torch >= 1.6) without torch: tensors become numpy arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")
                       and n.count("/") == 1]
            if not pickles:
                raise ConversionError(f"cannot read {path}: no data.pkl in the archive")
            prefix = pickles[0][:-len("data.pkl")]
            little = True
            if f"{prefix}byteorder" in archive.namelist():
                little = archive.read(f"{prefix}byteorder").strip() != b"big"
            with archive.open(pickles[0]) as f:
                return _TorchZipUnpickler(f, archive, prefix, little).load()
    except ConversionError:
        raise
    except zipfile.BadZipFile:
        raise ConversionError(f"cannot read {path} without torch: not a torch zip-format file "
                              "(the legacy pre-1.6 format needs torch; or convert the weights "
                              "to .npz/.safetensors)") from None
    except Exception as err:
        raise ConversionError(f"cannot read {path} without torch: {first_line(err)}") from None


def torch_available():
    try:
        if importlib.util.find_spec("torch") is None:
            return False
        import torch  # noqa: F401
        return True
    except Exception:  # a broken install counts as absent
        return False


def read_torch(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if not zipfile.is_zipfile(path) and magic[:1] != b"\x80":  # zip format, or a legacy pickle
        raise ConversionError(f"cannot read {path}: not a torch file (neither a zip archive nor "
                              "a pickle)")
    if not torch_available():
        return read_torch_zip_builtin(path)
    import torch
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "weights only" in str(err).lower():
            raise ConversionError(f"cannot read {path}: it holds objects other than tensors (a "
                                  "whole model?), which torch.load(weights_only=True) refuses to "
                                  "run; save model.state_dict() instead") from None
        raise ConversionError(f"cannot read {path} with torch.load: {first_line(err)}") from None
    return obj


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value
    if np.isscalar(value):
        return np.asarray(value)
    if type(value).__module__.startswith("torch"):
        import torch
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            return tensor.numpy()
    return None


def find_state_dict(obj, path):
    """The name -> array dict of a loaded .pth object (bare, or under 'state_dict' / 'model')."""
    def is_state_dict(d):
        return isinstance(d, dict) and d and all(isinstance(k, str) for k in d) and \
            all(_to_numpy(v) is not None for v in d.values())

    if is_state_dict(obj):
        found = obj
    elif isinstance(obj, dict) and any(is_state_dict(obj.get(k)) for k in ("state_dict", "model")):
        found = next(obj[k] for k in ("state_dict", "model") if is_state_dict(obj.get(k)))
    else:
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path} holds no state dict of tensors, neither bare nor under "
                              f"'state_dict' or 'model' (found: {keys})")
    return {k: _to_numpy(v) for k, v in found.items()}


def read_input(path):
    """name -> numpy array, with a 'module.' prefix stripped; returns (tensors, format name)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise ConversionError(f"input not found: {path}")
    if ext == ".npz":
        raw, fmt = read_npz(path), "npz"
    elif ext == ".safetensors":
        raw, fmt = read_safetensors(path), "safetensors"
    else:
        raw, fmt = find_state_dict(read_torch(path), path), "torch"
    if not raw:
        raise ConversionError(f"{path} holds no tensors")
    tensors = {}
    for name, value in raw.items():
        short = name[len("module."):] if name.startswith("module.") else name
        if short in tensors:
            raise ConversionError(f"{path} holds '{short}' twice (with and without the 'module.' "
                                  "prefix)")
        tensors[short] = value
    return tensors, fmt

