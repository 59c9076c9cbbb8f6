"""Convert a MindSpore model-zoo / MindSpore Hub ResNet-50 checkpoint to this project's ResNet-50.

    python scripts/convert_zoo_resnet50.py --input resnet50_zoo.ckpt --output resnet50.ckpt \
        [--num_classes 1000] [--tolerance 1e-3] [--no_check] [--overwrite true]

The zoo's ResNet-50 (mindspore-ai/models, official/cv/ResNet/src/resnet.py) is the same v1.5
network (stride on the 3x3 conv) under other names: ``down_sample_layer.0/1`` for the projection
shortcut, ``end_point`` for the classifier, BatchNorm ``gamma/beta/moving_mean/moving_variance``
as here. It differs in three ways, handled as follows:

- ``end_point`` has 1001 rows (``class_num: 1001`` in the zoo's ImageNet yaml) while its
  ImageNet pipeline (``ImageFolderDataset``, no class map) labels the 1000 class folders 0..999:
  the last row, 1000, is never a label. It is dropped; rows 0..999 keep the folder (synset) order,
  the same order torchvision's ImageFolder gives.
- BatchNorm eps is 1e-4 there, 1e-5 here. In eval mode ``(x - mean) / sqrt(var + eps)`` is kept
  exactly by adding 1e-4 - 1e-5 to every ``moving_variance`` (in training mode batch statistics
  are used and the eps difference is negligible).
- Every zoo conv and the max-pool use ``pad_mode='same'``, which pads strided layers
  asymmetrically (0 before, 1 after for the 3x3 stride-2 convs and the pool, 2 / 3 for the 7x7
  stem); this network pads symmetrically like torchvision. Stride-1 layers agree; the stem, the
  pool and the three strided 3x3 convs see shifted windows. This cannot be mapped away: the
  converted network needs a short fine-tune (the README says how much the outputs move).

Optimizer and bookkeeping entries of the file (``moments.*``, ``learning_rate``, ``global_step``,
``momentum``, ``epoch_num``, ``step_num``, loss-scale state, ...) are ignored. Check (on by default,
no torch needed): the file is loaded into a zoo-layout MindSpore ResNet-50 with symmetric padding,
whose logits must equal the converted network's (names, class row and eps fold); the difference to
the zoo's own ``'same'`` padding is reported. The output is written atomically after the check;
an existing one is refused unless --overwrite true. Errors are one line on stderr; exit code 1
(input, conversion, check), 2 (bad arguments, an existing --output without --overwrite).
"""
import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from src.conversion.weight_files import first_line  # noqa: E402
from src.models.resnet import build_resnet  # noqa: E402


_spec = importlib.util.spec_from_file_location(
    "convert_torchvision_resnet50", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "convert_torchvision_resnet50.py"))
tv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tv)
ConversionError, ArgumentError = tv.ConversionError, tv.ArgumentError

from src.outputs import refuse_existing  # noqa: E402

ARCH = "resnet50"
ZOO_BN_EPS = 1e-4
OUR_BN_EPS = 1e-5
# first name component of every network parameter of the zoo's ResNet-50; anything else in the
# file is optimizer state or bookkeeping
ZOO_ROOTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "end_point")
CHECK_SHAPE = (2, 3, 224, 224)


def zoo_to_ours(name):
    """Zoo parameter name -> this project's."""
    name = name.replace(".down_sample_layer.", ".downsample.")
    return "fc." + name[len("end_point."):] if name.startswith("end_point.") else name


def ours_to_zoo(name):
    """This project's parameter name -> the zoo's (the inverse of zoo_to_ours)."""
    name = name.replace(".downsample.", ".down_sample_layer.")
    return "end_point." + name[len("fc."):] if name.startswith("fc.") else name


def read_zoo_checkpoint(path):
    """name -> float array of the network entries, and the number of ignored entries."""
    import mindspore as ms
    if not os.path.isfile(path):
        raise ConversionError(f"input not found: {path}")
    try:
        raw = ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError with long texts
        raise ConversionError(f"cannot read {path} as a MindSpore checkpoint: "
                              f"{first_line(err)}") from None
    network = {k: v for k, v in raw.items() if k.split(".")[0] in ZOO_ROOTS}
    if "end_point.weight" not in network or not any(".down_sample_layer." in k for k in network):
        if "fc.weight" in raw:
            hint = ("it has 'fc.weight': this project's or torchvision's layout (use it as "
                    "pre_trained directly, or scripts/convert_torchvision_resnet50.py)")
        else:
            hint = "found " + tv._listed(sorted(raw)) if raw else "it holds no parameters"
        raise ConversionError(f"{path} is not a model-zoo ResNet-50 checkpoint (no 'end_point' "
                              f"classifier and 'down_sample_layer' shortcuts): {hint}")
    arrays = {k: v.asnumpy() for k, v in network.items()}
    return arrays, len(raw) - len(network)


def drop_background_row(arrays, num_classes, path):
    """Keep ``num_classes`` rows of end_point: a file with one more drops its last row (1000)."""
    rows = arrays["end_point.weight"].shape[0]
    if rows == num_classes:
        return arrays, None
    if rows != num_classes + 1:
        raise ConversionError(f"{path}: end_point has {rows} classes; --num_classes "
                              f"{num_classes} accepts {num_classes} or {num_classes + 1} "
                              "(the zoo's extra class)")
    out = dict(arrays)
    for key in ("end_point.weight", "end_point.bias"):
        if key in out:
            out[key] = out[key][:num_classes]
    return out, rows - 1


def fold_bn_eps(arrays):
    """moving_variance + (1e-4 - 1e-5): eval-mode BatchNorm with eps 1e-5 then equals the zoo's."""
    return {k: (v.astype(np.float32) + np.float32(ZOO_BN_EPS - OUR_BN_EPS)
                if k.endswith(".moving_variance") else v) for k, v in arrays.items()}


def _zoo_layers(pad_mode):
    """The zoo's conv and BatchNorm (eps 1e-4) constructors, with ``pad_mode`` padding."""
    from mindspore import nn

    def conv(cin, cout, k, stride=1):
        if pad_mode == "same":
            return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="same", has_bias=False)
        return nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=k // 2,
                         has_bias=False)

    def bn(c):
        return nn.BatchNorm2d(c, eps=ZOO_BN_EPS, momentum=0.9)
    return conv, bn


def _zoo_block(conv, bn):
    """The zoo's bottleneck block (its names: ``down_sample_layer`` for the projection)."""
    from mindspore import nn

    class Block(nn.Cell):
        def __init__(self, cin, cout, stride):
            super().__init__()
            mid = cout // 4
            self.conv1, self.bn1 = conv(cin, mid, 1), bn(mid)
            self.conv2, self.bn2 = conv(mid, mid, 3, stride), bn(mid)
            self.conv3, self.bn3 = conv(mid, cout, 1), bn(cout)
            self.relu = nn.ReLU()
            self.down_sample = stride != 1 or cin != cout
            self.down_sample_layer = (nn.SequentialCell([conv(cin, cout, 1, stride), bn(cout)])
                                      if self.down_sample else None)

        def construct(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            identity = self.down_sample_layer(x) if self.down_sample else x
            return self.relu(out + identity)
    return Block


def zoo_resnet50(num_classes, pad_mode="same"):
    """The zoo's ResNet-50 layout in MindSpore (its parameter names, BN eps 1e-4), with the zoo's
    ``'same'`` padding or symmetric padding (``'pad'``, as this project's network)."""
    from mindspore import nn, ops
    conv, bn = _zoo_layers(pad_mode)
    block = _zoo_block(conv, bn)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1, self.relu = conv(3, 64, 7, 2), bn(64), nn.ReLU()
            self.maxpool = (nn.MaxPool2d(3, 2, pad_mode="same") if pad_mode == "same"
                            else nn.MaxPool2d(3, 2, pad_mode="pad", padding=1))
            cin = 64
            for stage, (count, cout) in enumerate(zip([3, 4, 6, 3], [256, 512, 1024, 2048])):
                blocks = []
                for i in range(count):
                    blocks.append(block(cin, cout, 2 if stage > 0 and i == 0 else 1))
                    cin = cout
                setattr(self, f"layer{stage + 1}", nn.SequentialCell(blocks))
            self.mean = ops.ReduceMean(keep_dims=False)
            self.end_point = nn.Dense(2048, num_classes)

        def construct(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.end_point(self.mean(x, (2, 3)))

    return Net()


def check_logits(net, zoo_arrays, num_classes, tolerance, check_shape, log):
    """Converted net vs the zoo layout with symmetric padding (must agree) and with 'same' padding
    (reported). Returns (difference to symmetric, difference to 'same', max |logit|)."""
    import mindspore as ms
    batch = np.random.default_rng(0).standard_normal(check_shape).astype(np.float32)
    ours = net(ms.Tensor(batch)).asnumpy().astype(np.float64)
    logits = {}
    for pad_mode in ("pad", "same"):
        zoo = zoo_resnet50(zoo_arrays["end_point.weight"].shape[0], pad_mode)
        tv.load_exactly(zoo, {k: np.ascontiguousarray(v, np.float32) for k, v in zoo_arrays.items()})
        logits[pad_mode] = zoo(ms.Tensor(batch)).asnumpy().astype(np.float64)[:, :num_classes]
    scale = float(np.max(np.abs(logits["pad"])))
    symmetric = float(np.max(np.abs(ours - logits["pad"])))
    same = float(np.max(np.abs(ours - logits["same"])))
    agree = float(np.mean(np.argmax(ours, 1) == np.argmax(logits["same"], 1)))
    shape = "x".join(map(str, check_shape))
    log(f"logits check ({shape} random batch, eval mode): vs the zoo layout with symmetric "
        f"padding max abs diff {symmetric:.3g} (max |logit| {scale:.3g}, allowed "
        f"{tolerance * max(1.0, scale):.3g}); vs the zoo's 'same' padding {same:.3g} "
        f"({same / max(scale, 1e-12):.1%} of max |logit|, top-1 agreement {agree:.0%}): "
        "expected, fine-tune briefly")
    if not symmetric <= tolerance * max(1.0, scale):
        raise ConversionError(f"converted logits differ from the zoo layout's by {symmetric:.3g} "
                              f"> {tolerance * max(1.0, scale):.3g}: the weights do not act the "
                              "same")
    return symmetric, same, scale


def convert(input_path, output_path, num_classes=1000, check="auto",
            tolerance=tv.LOGITS_TOLERANCE, log=print, check_shape=CHECK_SHAPE, overwrite=False):
    """Convert ``input_path`` to ``output_path``; nothing is written unless every check passed,
    and an existing ``output_path`` is refused first thing unless ``overwrite``.
    Returns check_logits's (symmetric, same, max |logit|), or None with ``check='off'``."""
    import mindspore as ms

    refuse_existing(output_path, overwrite, "--output")
    zoo_arrays, ignored = read_zoo_checkpoint(input_path)
    arrays, dropped = drop_background_row(zoo_arrays, num_classes, input_path)
    arrays = fold_bn_eps(arrays)
    previous_mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = build_resnet(ARCH, num_classes=num_classes, in_channels=3)
        ours = tv.map_tensors(arrays, tv.expected_shapes(net), ARCH, input_path,
                              file_name_of=ours_to_zoo)
        tv.load_exactly(net, ours)
        log(f"mapped {len(ours)} tensors of {input_path} onto {ARCH} ({num_classes} classes); "
            f"ignored {ignored} optimizer/bookkeeping entries"
            + (f"; dropped end_point row {dropped} (the zoo's unused extra class)"
               if dropped is not None else "")
            + f"; moving_variance + {ZOO_BN_EPS - OUR_BN_EPS:g} (BN eps 1e-4 -> 1e-5)")
        result = None
        if check == "auto":
            result = check_logits(net, zoo_arrays, num_classes, tolerance, check_shape, log)
        else:
            log("logits check skipped (disabled)")
        tv.save_converted(net, output_path, ARCH, num_classes, input_path, overwrite)
    finally:
        ms.set_context(mode=previous_mode)
    log(f"wrote {output_path}")
    return result


def parse_args(argv):
    parser = tv._Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="model-zoo / Hub ResNet-50 .ckpt")
    parser.add_argument("--output", required=True, help="checkpoint to write (.ckpt)")
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=tv.LOGITS_TOLERANCE,
                        help="max abs logits difference to the symmetric-padding zoo layout, "
                             "relative to max |logit| (default %(default)g)")
    parser.add_argument("--no_check", action="store_true", help="skip the logits check")
    tv.add_overwrite_option(parser)
    return tv.check_common_args(parser.parse_args(argv))


def main(argv=None):
    return tv.run_cli(argv, parse_args, lambda args: convert(
        args.input, args.output, args.num_classes,
        check="off" if args.no_check else "auto", tolerance=args.tolerance,
        overwrite=args.overwrite))


if __name__ == "__main__":
    sys.exit(main())
