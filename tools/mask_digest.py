"""Digest of the masks (and pruned-weight pattern) of short fixed-seed pruning runs.

A refactor of the pruning engine must not change what it computes: run this before and after,
the digests must be identical (issue 9's acceptance). Each run trains ResNet-20 on 512
Fashion-MNIST images for one epoch (16 iterations) with a mask update every 2 iterations.

    python -m tools.mask_digest --data_path data/fashion_mnist [--methods rpg gmp]
"""
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np

from src import checkpoint
from src.cli import OneLineParser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "rpg": ["--config_path", "config/rpg_resnet20_fashion_mnist_s90.yaml", "--delta", "2"],
    "gmp": ["--config_path", "config/gmp_resnet20_fashion_mnist_s90.yaml", "--gmp_frequency", "2",
            "--gmp_end_step", "12"],
}
# crop_padding 2: the recipes' value when the reference digests were taken (the recipes dropped
# the crop later), so the digests stay comparable across recipe changes
COMMON = ["--epoch_size", "1", "--train_samples", "512", "--batch_size", "32", "--seed", "1",
          "--eval_samples", "64", "--crop_padding", "2"]


def digest_checkpoint(path):
    """(mask digest, weight digest, count): sha256 over the masks, and over the masked weights'
    values, by name. The masks are what the acceptance asks to be bit-identical; the weights
    are a stricter check (any change in the order of floating-point work shows there)."""
    params, _, _ = checkpoint.load(path)
    masks, weights = hashlib.sha256(), hashlib.sha256()
    names = sorted(n for n in params if n.startswith("pruning_mask."))
    for name in names:
        weight_name = name[len("pruning_mask."):]
        mask = np.asarray(params[name]) > 0
        weight = np.asarray(params[weight_name], np.float32)
        masks.update(name.encode() + np.packbits(mask).tobytes())
        weights.update(name.encode() + weight.tobytes())
    return masks.hexdigest(), weights.hexdigest(), len(names)


def main():
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--methods", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    for method in args.methods:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "train.py", *RUNS[method], *COMMON, "--data_path", args.data_path,
                   "--output_dir", out]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{method}: train.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            masks, weights, count = digest_checkpoint(os.path.join(out, "last.ckpt"))
            print(f"{method}: {count} masks, mask digest {masks[:16]}, weight digest {weights[:16]}")


if __name__ == "__main__":
    main()
