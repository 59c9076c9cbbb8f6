"""The every-width bound of benchmarks/psap_width_latency.py (profile ``all``): the network it
times really has every width cut, on multiples of N, at the requested MACs cut."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from psap_width_latency import SHAPE, all_widths_network  # noqa: E402
from src.config import build_config  # noqa: E402
from src.models import build_network  # noqa: E402
from src.models.flops import count_macs_params  # noqa: E402


@pytest.mark.parametrize("cut, multiple", [(0.4, 8), (0.6, 4), (0.4, 1)])
def test_every_width_is_cut_on_multiples_at_the_target(cut, multiple):
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10,
                        "dataset": "fashion_mnist"}, {})
    dense = build_network(cfg)
    net = all_widths_network(cfg, dense, cut, multiple)
    achieved = 1 - count_macs_params(net, SHAPE)[0] / count_macs_params(dense, SHAPE)[0]
    assert abs(achieved - cut) < 0.02
    for stage, base in zip(net.stage_names, (16, 32, 64)):
        blocks = list(getattr(net, stage))
        widths = {int(b.conv2.weight.shape[0]) for b in blocks} | \
                 {int(b.conv1.weight.shape[0]) for b in blocks}
        assert len(widths) == 1, "stream and inner widths of a stage differ"
        (width,) = widths
        assert width % multiple == 0 and width <= base
    assert int(net.fc.weight.shape[1]) == width
    streams = [int(getattr(net, s)[0].conv2.weight.shape[0]) for s in net.stage_names]
    assert streams != [16, 32, 64] and np.all(np.array(streams) <= [16, 32, 64])


def test_the_bound_refuses_imagenet_networks_in_one_line():
    run = subprocess.run([sys.executable, "benchmarks/psap_width_latency.py", "--net", "resnet50",
                          "--profiles", "all"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert "CIFAR-style ResNets only" in run.stderr.strip().splitlines()[-1]
