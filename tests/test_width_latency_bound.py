"""The every-width bound of benchmarks/psap_width_latency.py (profile ``all``): the network it
times really has every width cut, on multiples of N, at the requested MACs cut."""
import sys

import numpy as np
import pytest

from benchmarks import psap_benchmark, psap_width_latency
from benchmarks.psap_width_latency import SHAPE, all_widths_network
from src.config import build_config
from src.models import build_network
from src.models.flops import count_macs_params


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


@pytest.mark.parametrize("argv, message", [
    (["--cuts", "1.5"], "each cut must be in (0, 1)"),
    (["--cuts", "0"], "each cut must be in (0, 1)"),
    (["--multiples", "0"], "each must be >= 1"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--repeats_b1", "1", "--rounds", "2"], "at most --repeats_b1"),
    (["--net", "foo"], "invalid choice"),
    (["--net", "resnet50", "--profiles", "all"], "CIFAR-style ResNets only")])
def test_bad_width_latency_arguments_are_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["psap_width_latency.py", *argv])
    with pytest.raises(SystemExit) as stop:
        psap_width_latency.parse_args()
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["--methods", "PSAP-XX"], "unknown method 'PSAP-XX'"),
    (["--methods", "PSAP-BN-S", "--stream_ratios", "1", "0", "0"], "three fractions"),
    (["--methods", "PSAP-BN-S", "--stream_ratios", "0", "0.75", "0"], "16/8/64"),
    (["--nets", "resnet50", "--methods", "PSAP-BN-S"], "CIFAR-style"),
    (["--bn_score", "nope"], "filter_score")])
def test_bad_psap_benchmark_settings_are_refused_before_any_run(argv, message, monkeypatch,
                                                                 capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["psap_benchmark.py", "--data_path", str(tmp_path),
                                      "--work_dir", str(tmp_path / "work"), *argv])
    with pytest.raises(SystemExit) as stop:
        psap_benchmark.parse_args()
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "work").exists()
