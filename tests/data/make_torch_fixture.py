"""Writes tests/data/torch_state.pth (torch.save's zip format) and the values it holds as
tests/data/torch_state_expected.npz. Run once with torch installed (the suite never needs torch):

    python tests/data/make_torch_fixture.py
"""
import argparse
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    torch.manual_seed(0)
    state = {
        # torchvision ResNet-50 names, small shapes: what a training script's checkpoint holds
        "conv1.weight": torch.randn(4, 3, 7, 7),
        "bn1.weight": torch.rand(4) + 0.5, "bn1.bias": torch.randn(4),
        "bn1.running_mean": torch.randn(4), "bn1.running_var": torch.rand(4) + 0.5,
        "bn1.num_batches_tracked": torch.tensor(100),
        "layer1.0.downsample.0.weight": torch.randn(8, 4, 1, 1),
        "fc.weight": torch.randn(10, 8), "fc.bias": torch.randn(10),
        # storage layouts the reader must handle
        "t.non_contiguous": torch.arange(12.0).reshape(3, 4).t(),
        "t.offset": torch.arange(10.0)[2:7],
        "t.half": torch.randn(3, 2).half(),
        "t.bfloat16": torch.randn(5).bfloat16(),
        "t.double": torch.randn(2, 2, dtype=torch.float64),
        "t.parameter": torch.nn.Parameter(torch.full((2,), -0.0)),
    }
    # shared storage: two views of one tensor
    base = torch.randn(6)
    state["t.view_a"], state["t.view_b"] = base[:3], base[3:]
    path = os.path.join(HERE, "torch_state.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3,
                "args": argparse.Namespace(lr=0.1)}, path)
    expected = {}
    for key, value in state.items():
        value = value.detach()
        expected[key] = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    np.savez(os.path.join(HERE, "torch_state_expected.npz"), **expected)
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
