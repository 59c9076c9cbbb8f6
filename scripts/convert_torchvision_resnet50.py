"""Convert torchvision ResNet weights (ResNet-50 by default, also 18/34) to a MindSpore checkpoint.

    python scripts/convert_torchvision_resnet50.py --input FILE --output OUT.ckpt \
        [--num_classes 1000] [--arch resnet50] [--tolerance 1e-3] [--no_check] [--overwrite true]

Inputs (chosen by the file extension):
- ``.pth`` / ``.pt``: a torch state dict, bare or under ``"state_dict"`` / ``"model"``; a
  ``module.`` prefix (DataParallel) is stripped. Read with ``torch.load(weights_only=True)`` when
  torch is importable, else with a small built-in reader of torch's zip format (tensors only, no
  code is run); the legacy pre-1.6 format needs torch.
- ``.safetensors``: read with the ``safetensors`` package's numpy API, or with a built-in parser.
- ``.npz``: name -> array.

Names map one to one: conv/FC weights keep their names, BatchNorm ``weight/bias/running_mean/
running_var`` become ``gamma/beta/moving_mean/moving_variance``, ``num_batches_tracked`` is dropped.
Every parameter of the network must get exactly one tensor of its shape, and every other key of the
file is an error. When torch is importable, the logits of a torch ResNet (defined below with
torchvision's module names) and of the converted MindSpore network are compared on one random
batch. The output is written atomically, and only after every check passed; an existing OUT.ckpt
is refused (exit 2) unless --overwrite true (or bare --overwrite) is given.

Errors are one line on stderr; exit code 1 (input, conversion, check), 2 (bad arguments).
"""
import argparse
import importlib.util
import json
import os
import pickle
import re
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.checkpoint import CheckpointError  # noqa: E402
from src.outputs import OutputError, OutputExists, add_overwrite_option, refuse_existing  # noqa: E402

ARCHS = {"resnet18": ("basic", [2, 2, 2, 2]),
         "resnet34": ("basic", [3, 4, 6, 3]),
         "resnet50": ("bottleneck", [3, 4, 6, 3])}
EXTENSIONS = (".pth", ".pt", ".safetensors", ".npz")
# torchvision BatchNorm name -> MindSpore BatchNorm name
BN_SUFFIXES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
               "running_var": "moving_variance"}
MS_TO_TV_SUFFIX = {v: k for k, v in BN_SUFFIXES.items()}
# Logits tolerance, relative: the check allows tolerance * max(1, max|logit|). Both frameworks compute in float32
# (eps 1.2e-7) with different convolution kernels (summation order, im2col vs. direct), and the
# rounding differences grow through ~50 layers roughly in proportion to the logits: measured on
# BN-calibrated synthetic ResNet-50 weights, torch's own float32 logits differ from a float64 run by
# ~2e-5 of max|logit| (4e-4 at logits of magnitude 20, 3e-3 at 150), and MindSpore's by the same.
# Scaling by max|logit| keeps float32 rounding ~50x inside the bound at any logit size, while
# every real mapping error (gamma/beta or mean/var swapped in a single layer, a stride on the
# wrong conv, asymmetric padding) moves the logits by 1 or more (measured 6 to 16). A failing check
# also runs torch in float64 and says whether the difference is rounding (then raise --tolerance)
# or a conversion error.
LOGITS_TOLERANCE = 1e-3
CHECK_SHAPE = (2, 3, 224, 224)
MAX_NAMES = 3  # names quoted per kind of mismatch in an error line


class ConversionError(CheckpointError):
    """The input cannot be converted (one-line message, exit code 1)."""


class ArgumentError(Exception):
    """Bad command line (exit code 2)."""


# --- reading the input --------------------------------------------------------------------------

def _first_line(err):
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
        raise ConversionError(f"cannot read {path} as .npz: {_first_line(err)}") from None


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
                                  f"{_first_line(err)}") from None
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
        raise ConversionError(f"cannot read {path} without torch: {_first_line(err)}") from None


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
    import argparse as _argparse
    import torch
    try:
        with torch.serialization.safe_globals([_argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "weights only" in str(err).lower():
            raise ConversionError(f"cannot read {path}: it holds objects other than tensors (a "
                                  "whole model?), which torch.load(weights_only=True) refuses to "
                                  "run; save model.state_dict() instead") from None
        raise ConversionError(f"cannot read {path} with torch.load: {_first_line(err)}") from None
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


# --- name mapping and checks --------------------------------------------------------------------

def ms_to_tv_name(name):
    """MindSpore parameter name -> torchvision state-dict key."""
    head, _, last = name.rpartition(".")
    return f"{head}.{MS_TO_TV_SUFFIX[last]}" if last in MS_TO_TV_SUFFIX else name


def guess_arch(names):
    """The torchvision ResNet a set of keys looks like, or None."""
    blocks = []
    for stage in range(1, 5):
        indices = {int(n.split(".")[1]) for n in names
                   if n.startswith(f"layer{stage}.") and n.split(".")[1].isdigit()}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if any(".conv3." in n for n in names) else "basic"
    for arch, (arch_kind, stages) in ARCHS.items():
        if arch_kind == kind and stages == blocks:
            return arch
    return None


def _listed(names):
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMES else "")


def map_tensors(tensors, expected, arch, path, file_name_of=ms_to_tv_name):
    """Check the file against the network and return MindSpore name -> float32 array.

    ``expected``: MindSpore parameter name -> shape, in network order. ``file_name_of`` maps a
    MindSpore parameter name to the file's key (torchvision's by default; the model zoo's
    converter passes its own), so error lines quote the file's names.
    """
    tv_to_ms = {file_name_of(n): n for n in expected}
    used = {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}
    missing = [tv for tv in tv_to_ms if tv not in used]
    extra = [k for k in used if k not in tv_to_ms]
    mismatched = [f"{tv} {tuple(used[tv].shape)} in the file, {tuple(expected[ms])} expected"
                  for tv, ms in tv_to_ms.items()
                  if tv in used and tuple(used[tv].shape) != tuple(expected[ms])]
    if missing or extra or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {_listed(missing)}")
        if extra:
            parts.append(f"unexpected {_listed(extra)}")
        if mismatched:
            parts.append(f"shape mismatch {_listed(mismatched)}")
        hint = ""
        guess = guess_arch(list(used))
        if (missing or extra) and guess and guess != arch:
            hint = f" (the file looks like a {guess}: --arch {guess}?)"
        elif any(m.startswith("fc.") for m in mismatched) and "fc.weight" in used:
            hint = f" (the file has {used['fc.weight'].shape[0]} classes: --num_classes?)"
        raise ConversionError(f"{path} does not fit {arch}: " + "; ".join(parts) + hint)
    out = {}
    for tv, ms_name in tv_to_ms.items():
        array = used[tv]
        if not np.issubdtype(array.dtype, np.floating):
            raise ConversionError(f"{path}: '{tv}' has dtype {array.dtype}, a float tensor is "
                                  "expected")
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise ConversionError(f"{path}: '{tv}' holds non-finite values")
        out[ms_name] = array
    return out


# --- torch reference network (only for the logits check) ----------------------------------------

def torch_resnet(arch, num_classes):
    """torchvision's ResNet (v1.5: stride on the 3x3 conv of a bottleneck), same module names."""
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            return self.relu(self.bn3(self.conv3(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self, block, layers):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(block, 64, layers[0])
            self.layer2 = self._make_layer(block, 128, layers[1], 2)
            self.layer3 = self._make_layer(block, 256, layers[2], 2)
            self.layer4 = self._make_layer(block, 512, layers[3], 2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)

        def _make_layer(self, block, planes, blocks, stride=1):
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion))
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    kind, stages = ARCHS[arch]
    return ResNet(BasicBlock if kind == "basic" else Bottleneck, stages)


def torch_logits(arch, num_classes, tv_arrays, batch, double=False):
    """Logits of the torch reference network in eval mode (float32, or float64 if ``double``)."""
    import torch
    model = torch_resnet(arch, num_classes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tv_arrays.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:  # cannot happen after map_tensors; guards the definition above
        raise ConversionError(f"torch reference {arch} does not fit the weights: missing "
                              f"{_listed(missing)}; unexpected {_listed(list(unexpected))}")
    model.eval()
    inputs = torch.from_numpy(batch)
    if double:
        model, inputs = model.double(), inputs.double()
    with torch.no_grad():
        return model(inputs).double().numpy()


# --- conversion ---------------------------------------------------------------------------------

def _diagnose(arch, num_classes, tv_arrays, batch, reference, ours, diff, tolerance):
    """Why the logits differ: float32 rounding (torch's own float32 error is as large) or not."""
    exact = torch_logits(arch, num_classes, tv_arrays, batch, double=True)
    torch_err = float(np.max(np.abs(reference - exact)))
    ms_err = float(np.max(np.abs(ours - exact)))
    scale = float(np.max(np.abs(exact)))
    text = (f"logits differ from torch by {diff:.3g} > {tolerance:g} (max |logit| {scale:.3g}); "
            f"against a float64 torch run, torch float32 is off by {torch_err:.3g} and MindSpore "
            f"by {ms_err:.3g}: ")
    if ms_err <= 3 * torch_err + 1e-6:
        suggestion = float(f"{2 * diff:.1g}")
        return text + ("that is float32 rounding, not a conversion error; rerun with "
                       f"--tolerance {suggestion:g} to accept it")
    return text + "MindSpore is much further off, so the weights do not act the same"


def expected_shapes(net):
    """MindSpore parameter name -> shape, in network order (the target of a conversion)."""
    return OrderedDict((p.name, tuple(p.shape)) for p in net.get_parameters())


def load_exactly(net, arrays):
    """Copy name -> array into ``net`` (eval mode) and check every tensor arrived bit for bit."""
    import mindspore as ms
    net.set_train(False)
    params = {name: ms.Parameter(ms.Tensor(a), name=name) for name, a in arrays.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:
        raise ConversionError(f"MindSpore did not load {_listed(list(not_loaded))}")
    for param in net.get_parameters():  # the copy really happened, bit for bit
        if not np.array_equal(param.asnumpy(), arrays[param.name]):
            raise ConversionError(f"parameter {param.name} differs after loading")


def save_converted(net, output_path, arch, num_classes, input_path, overwrite=False):
    """Write the converted network atomically, with the metadata train.py's pre_trained reads;
    an existing ``output_path`` only with ``overwrite``."""
    from src import checkpoint
    checkpoint.save_atomic(net, output_path, overwrite=overwrite,
                           meta={"net": arch, "num_classes": num_classes,
                                 "converted_from": os.path.basename(input_path)})


def convert(input_path, output_path, arch="resnet50", num_classes=1000, check="auto",
            tolerance=LOGITS_TOLERANCE, log=print, overwrite=False):
    """Convert ``input_path`` to ``output_path``. ``check``: 'auto' (torch logits check when torch
    is importable), 'off'. Returns the max abs logits difference, or None when not checked.
    Nothing is written unless every check passes; an existing ``output_path`` is refused first
    thing (OutputExists) unless ``overwrite``."""
    import mindspore as ms
    from src.models.resnet import build_resnet

    refuse_existing(output_path, overwrite, "--output")
    tensors, fmt = read_input(input_path)
    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = build_resnet(arch, num_classes=num_classes, in_channels=3)
        arrays = map_tensors(tensors, expected_shapes(net), arch, input_path)
        load_exactly(net, arrays)
        log(f"mapped {len(arrays)} tensors of {input_path} ({fmt}) onto {arch} "
            f"({num_classes} classes)")

        diff = None
        if check == "auto" and torch_available():
            batch = np.random.default_rng(0).standard_normal(CHECK_SHAPE).astype(np.float32)
            tv_arrays = {ms_to_tv_name(n): a for n, a in arrays.items()}
            reference = torch_logits(arch, num_classes, tv_arrays, batch)
            ours = net(ms.Tensor(batch)).asnumpy().astype(np.float64)
            diff = float(np.max(np.abs(ours - reference)))
            allowed = tolerance * max(1.0, float(np.max(np.abs(reference))))
            log(f"logits check ({CHECK_SHAPE[0]}x{CHECK_SHAPE[1]}x{CHECK_SHAPE[2]}x"
                f"{CHECK_SHAPE[3]} random batch, eval mode): max abs diff {diff:.3g} "
                f"(max |logit| {np.max(np.abs(reference)):.3g}, allowed {allowed:.3g})")
            if not diff <= allowed:
                reason = _diagnose(arch, num_classes, tv_arrays, batch, reference, ours, diff,
                                   allowed)
                raise ConversionError(f"{reason}; {output_path} not written")
        elif check == "auto":
            log("logits check skipped: torch is not importable")
        else:
            log("logits check skipped (disabled)")

        save_converted(net, output_path, arch, num_classes, input_path, overwrite)
    finally:
        ms.set_context(mode=previous_mode)
    log(f"wrote {output_path}")
    return diff


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ArgumentError(message)


def parse_args(argv):
    parser = _Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help=".pth/.pt, .safetensors or .npz weights")
    parser.add_argument("--output", required=True, help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--arch", default="resnet50", choices=sorted(ARCHS))
    parser.add_argument("--tolerance", type=float, default=LOGITS_TOLERANCE,
                        help="max abs logits difference to torch (default %(default)g)")
    parser.add_argument("--no_check", action="store_true",
                        help="skip the torch logits check even when torch is importable")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    if os.path.splitext(args.input)[1].lower() not in EXTENSIONS:
        raise ArgumentError(f"--input {args.input}: unsupported file type (expected "
                            f"{', '.join(EXTENSIONS)})")
    return check_common_args(args)


def check_common_args(args):
    """Arguments every converter has: --output *.ckpt, --tolerance > 0, --num_classes >= 1."""
    if not args.output.endswith(".ckpt"):
        raise ArgumentError(f"--output {args.output}: the name must end with .ckpt")
    if not args.tolerance > 0:
        raise ArgumentError(f"--tolerance must be positive, got {args.tolerance}")
    if args.num_classes < 1:
        raise ArgumentError(f"--num_classes must be positive, got {args.num_classes}")
    return args


def main(argv=None):
    return run_cli(argv, parse_args, lambda args: convert(
        args.input, args.output, args.arch, args.num_classes,
        check="off" if args.no_check else "auto", tolerance=args.tolerance,
        overwrite=args.overwrite))


def run_cli(argv, parse, convert_args):
    """The converters' command-line behaviour: one error line, exit 2 (arguments, an existing
    --output without --overwrite), 1 (input, writing), 130."""
    try:
        convert_args(parse(sys.argv[1:] if argv is None else argv))
    except (ArgumentError, OutputExists) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (no traceback for the user; CONVERT_DEBUG=1 shows it)
        if os.environ.get("CONVERT_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {_first_line(err)} "
              "(CONVERT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
