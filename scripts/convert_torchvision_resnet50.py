"""Convert torchvision ResNet weights (ResNet-50 by default, also 18/34) to a MindSpore checkpoint.

    python scripts/convert_torchvision_resnet50.py --input FILE --output OUT.ckpt \
        [--num_classes 1000] [--arch resnet50] [--tolerance 1e-3] [--no_check] [--overwrite true]

Inputs (chosen by the file extension):
- ``.pth`` / ``.pt``: a torch state dict, bare or under ``"state_dict"`` / ``"model"``; a
  ``module.`` prefix (DataParallel) is stripped. Read with ``torch.load(weights_only=True)`` when
  torch is importable, else with a small built-in reader of torch's zip format (tensors only, no
  code is run); the legacy pre-1.6 format needs torch.
- ``.safetensors``: read with the ``safetensors`` package's numpy API, or with a built-in parser
  (src/conversion/weight_files.py says when and why).
- ``.npz``: name -> array.

Names map one to one: conv/FC weights keep their names, BatchNorm ``weight/bias/running_mean/
running_var`` become ``gamma/beta/moving_mean/moving_variance``, ``num_batches_tracked`` is dropped.
Every parameter of the network must get exactly one tensor of its shape, and every other key of the
file is an error. When torch is importable, the logits of a torch ResNet (src/conversion/
torch_resnet.py, with torchvision's module names) and of the converted MindSpore network are
compared on one random batch. The output is written atomically, and only after every check
passed; an existing OUT.ckpt is refused (exit 2) unless --overwrite true (or bare --overwrite) is
given.

Errors are one line on stderr; exit code 1 (input, conversion, check), 2 (bad arguments).
"""
import argparse
import os
import sys
from collections import OrderedDict

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src import checkpoint  # noqa: E402
from src.conversion.torch_resnet import ARCHS, torch_logits  # noqa: E402
from src.conversion.weight_files import (ConversionError, first_line, read_input,  # noqa: E402
                                         torch_available)
from src.errors import CheckpointError  # noqa: E402
from src.models.resnet import build_resnet  # noqa: E402
from src.outputs import OutputError, OutputExists, add_overwrite_option, refuse_existing  # noqa: E402

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


class ArgumentError(Exception):
    """Bad command line (exit code 2)."""


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
        print(f"error: unexpected {type(err).__name__}: {first_line(err)} "
              "(CONVERT_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
