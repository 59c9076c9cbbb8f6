"""How much a model-zoo ResNet-50 checkpoint's outputs move when converted to this project's network.

    python -m benchmarks.zoo_conversion [--batch 8] [--seed 0]

No zoo weights can be downloaded here, so the network is synthetic: the zoo's ResNet-50 layout
(``scripts/convert_zoo_resnet50.py``'s ``zoo_resnet50``, ``pad_mode='same'``, BN eps 1e-4, 1001
classes) with MindSpore's default initialisation and random BatchNorm affine terms, whose BN
statistics are then calibrated on a random batch layer by layer (each BN's moving mean / variance
set to its input's batch statistics), so activations keep a trained network's scale instead of
growing through 50 layers. That checkpoint is converted with the converter's own check, which
compares the converted network with the zoo layout under symmetric padding (must agree) and
under the zoo's 'same' padding (the difference that needs a fine-tune). Writes
benchmarks/results/zoo_conversion.{json,md}.
"""
import json
import os
import sys
import tempfile

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from benchmarks.common import ROOT
from src.cli import OneLineParser
from scripts import convert_zoo_resnet50 as zoo

RESULTS = os.path.join(ROOT, "benchmarks", "results")


def calibrated_zoo_net(batch, seed):
    """Zoo-layout ResNet-50 whose BN moving statistics are the batch statistics of ``batch``."""
    ms.set_seed(seed)
    rng = np.random.default_rng(seed)
    net = zoo.zoo_resnet50(1001, "same")
    net.set_train(False)

    def calibrate(cell, inputs):  # runs before the BN: its statistics become the input's
        x = inputs[0]
        cell.moving_mean.set_data(ops.mean(x, (0, 2, 3)))
        cell.moving_variance.set_data(ops.var(x, (0, 2, 3)))

    handles = []
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            c = cell.gamma.shape[0]
            cell.gamma.set_data(ms.Tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
            cell.beta.set_data(ms.Tensor(rng.normal(0.0, 0.1, c).astype(np.float32)))
            handles.append(cell.register_forward_pre_hook(calibrate))
    net(ms.Tensor(batch))
    for handle in handles:
        handle.remove()
    return net


def main():
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.default_rng(args.seed + 1)
    calibration = rng.standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    net = calibrated_zoo_net(calibration, args.seed)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "zoo_resnet50.ckpt")
        ms.save_checkpoint(net, source)
        symmetric, same, scale = zoo.convert(source, os.path.join(tmp, "converted.ckpt"),
                                             log=lines.append,
                                             check_shape=(args.batch, 3, 224, 224))
    check_line = next(line for line in lines if line.startswith("logits check"))
    agreement = check_line.split("top-1 agreement ")[1].split(")")[0]
    result = {"command": "python -m benchmarks.zoo_conversion " + " ".join(sys.argv[1:]),
              "batch": args.batch, "seed": args.seed, "max_abs_logit": scale,
              "diff_symmetric_padding": symmetric, "diff_same_padding": same,
              "diff_same_relative": same / scale, "top1_agreement_same": agreement,
              "converter_log": lines}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "zoo_conversion.json.tmp"), "w") as f:
        json.dump(result, f, indent=2)
    os.replace(os.path.join(RESULTS, "zoo_conversion.json.tmp"),
               os.path.join(RESULTS, "zoo_conversion.json"))
    text = (f"# Model-zoo ResNet-50 -> this project's ResNet-50: output difference\n\n"
            f"Command: `{result['command']}`\n\n"
            "Synthetic zoo-layout ResNet-50 (MindSpore default init, random BN affine terms, BN "
            "statistics calibrated on a random batch), converted by "
            "`scripts/convert_zoo_resnet50.py`; logits on a different random batch of "
            f"{args.batch} images 3x224x224, eval mode.\n\n"
            "| compared with | max abs logit difference | relative to max abs logit | top-1 agreement |\n"
            "|---|---|---|---|\n"
            f"| zoo layout, symmetric padding (mapping, class row, eps fold) | {symmetric:.3g} | "
            f"{symmetric / scale:.2e} | - |\n"
            f"| zoo layout, the zoo's `pad_mode='same'` | {same:.3g} | {same / scale:.1%} | "
            f"{agreement} |\n\n"
            f"max abs logit: {scale:.3g}\n")
    with open(os.path.join(RESULTS, "zoo_conversion.md.tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(RESULTS, "zoo_conversion.md.tmp"),
               os.path.join(RESULTS, "zoo_conversion.md"))
    print(text)


if __name__ == "__main__":
    main()
