"""PSAP's residual-stream option (psap_stream_ratios): widths, MACs, scores, the pruning run
end to end on the host, and the recipe checks."""
import os

import numpy as np
import mindspore as ms
import pytest

from src import checkpoint
from src.config import build_config
from src.errors import ConfigError
from src.models import build_network
from src.models.flops import count_macs_params, layer_records
from src.pruning.filters.streams import StreamPruning, kept_stream_widths
from src.pruning.filters.surgery import residual_streams
from tests.test_psap import _setup, finish, finish_and_compare

SHAPE = (1, 1, 28, 28)


def test_kept_widths_round_to_the_nearest_multiple():
    assert kept_stream_widths([16, 32, 64], [0.5, 0.0, 0.25], 1) == [8, 32, 48]
    assert kept_stream_widths([16, 32, 64], [0.3, 0.3, 0.3], 1) == [11, 22, 45]
    assert kept_stream_widths([16, 32, 64], [0.3, 0.3, 0.3], 8) == [8, 24, 48]
    assert kept_stream_widths([16, 32, 64], [0.9, 0.9, 0.9], 8) == [8, 8, 8]   # at least N
    assert kept_stream_widths([4, 32, 64], [0.5, 0, 0], 8) == [2, 32, 64]      # c < N: unrounded


@pytest.mark.parametrize("shortcut, cut", [("A", [8, 0, 16]), ("B", [4, 12, 20])])
def test_stream_cut_macs_equal_those_of_the_network_built_with_the_stage_widths(shortcut, cut):
    """The cost model the allocation uses, against the MAC count of the real smaller network
    (inner convs cut as well, so the bilinear conv1 / conv2 terms are exercised)."""
    from src.pruning.filters.allocation import removed_macs
    from src.pruning.filters.surgery import prunable_layers
    cfg = build_config({"net": "resnet20", "shortcut": shortcut, "prune_method": "psap",
                        "psap_stream_ratios": [0.5, 0.0, 0.25]}, {})
    net = build_network(cfg)
    stream = StreamPruning(cfg, net)
    records = layer_records(net, SHAPE)
    cut_records = stream.records(records, np.array(cut))
    inner = np.array([3, 1, 5, 2, 7, 0, 11, 4, 9])
    layers = prunable_layers(net)
    expected_macs = sum(r["macs"] for r in cut_records) - removed_macs(cut_records, layers, inner)
    widths = [[c - k] for c, k in zip([16] * 3 + [32] * 3 + [64] * 3, inner)]
    stages = [c - k for c, k in zip([16, 32, 64], cut)]
    smaller = build_network(cfg, widths, stages)
    assert count_macs_params(smaller, SHAPE)[0] == expected_macs


def test_stream_scores_are_the_writers_summed_scores():
    cfg = build_config({"net": "resnet20", "prune_method": "psap", "filter_score": "bn_l2",
                        "psap_stream_ratios": [0.5, 0.0, 0.25]}, {})
    net = build_network(cfg)
    stream = StreamPruning(cfg, net)
    rng = np.random.default_rng(0)
    arrays = {}
    for p in net.get_parameters():
        arrays[p.name] = rng.normal(size=p.shape).astype(np.float32)
        if p.name.endswith("moving_variance"):
            arrays[p.name] = rng.uniform(0.5, 2.0, p.shape).astype(np.float32)
    first = stream.streams[0]
    expected = np.zeros(16)
    for writer in first["writers"]:   # |gamma| / sqrt(var + eps) x ||filter||, in float64
        w = arrays[writer["conv"]].astype(np.float64).reshape(16, -1)
        gamma = arrays[writer["bn"]["gamma"]].astype(np.float64)
        var = arrays[writer["bn"]["moving_variance"]].astype(np.float64)
        expected += np.abs(gamma) / np.sqrt(var + writer["bn_eps"]) * np.linalg.norm(w, axis=1)
    np.testing.assert_allclose(stream.scores(arrays, first), expected, rtol=1e-5)


def _train_streams(pruner, ctx, rng):
    names = pruner.energy_names + [w["conv"] for s in pruner.stream.streams for w in s["writers"]]
    for epoch in range(pruner.cfg.epoch_size):
        ctx.train(rng, names)
        pruner.on_epoch_end(epoch, ctx)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_a_stream_pruned_run_meets_the_target_and_its_compact_net_equals_the_masked_one(
        tmp_path, shortcut):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=3,
                                   shortcut=shortcut, psap_stream_ratios=[0.5, 0.0, 0.25],
                                   psap_width_multiple=8, filter_score="bn_l2")
    _train_streams(pruner, ctx, np.random.default_rng(3))
    widths = [e["stream_widths"] for e in ctx.events if e["event"] == "psap_step"]
    assert widths[-1] == [8, 32, 48]
    assert all(a >= b for a, b in zip(widths[0], widths[-1]))   # the streams narrow gradually
    _, inner = finish_and_compare(pruner, ctx, net)
    params, meta, _ = checkpoint.load(os.path.join(str(tmp_path), "last_compact.ckpt"))
    assert meta["stage_widths"] == [8, 32, 48]
    assert abs(1 - meta["compact_macs"] / meta["dense_macs"] - 0.4) <= 0.01
    assert all(w[0] % 8 == 0 for w in inner)
    rebuilt = build_network(cfg, meta["inner_widths"], meta["stage_widths"])
    checkpoint.load_into(rebuilt, params, "last_compact.ckpt", strict=True)


def test_option_a_never_prunes_a_channel_the_previous_stage_keeps(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.5, epoch_size=2,
                                   psap_stream_ratios=[0.5, 0.25, 0.25])
    _train_streams(pruner, ctx, np.random.default_rng(4))
    streams = residual_streams(net)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}

    def zero_rows(stream):
        w = arrays[stream["writers"][-1]["conv"]]
        return ~np.any(w.reshape(w.shape[0], -1) != 0, axis=1)

    for before, after in zip(streams, streams[1:]):
        kept_before = np.flatnonzero(~zero_rows(before))
        assert not np.any(zero_rows(after)[kept_before])


def test_stream_state_survives_a_checkpoint_round_trip(tmp_path):
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=3,
                                   psap_stream_ratios=[0.5, 0.0, 0.25])
    ctx.train(np.random.default_rng(1), pruner.energy_names)
    pruner.on_epoch_end(0, ctx)
    state = pruner.state_dict()
    assert {"psap_stream_zeroed", "psap_stream_counts"} <= set(state)   # what checkpoints hold
    _, _, other, _ = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=3,
                            psap_stream_ratios=[0.5, 0.0, 0.25])
    other.load_state_dict(state)
    assert np.array_equal(other.stream.zeroed, pruner.stream.zeroed)
    _, _, plain, _ = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=3)
    with pytest.raises(ValueError, match="psap_stream_ratios"):
        plain.load_state_dict(state)


BAD = [({"psap_stream_ratios": [0.5, 0.2]}, "three fractions"),
       ({"psap_stream_ratios": [0.5, 1.0, 0.2]}, "three fractions"),
       ({"psap_stream_ratios": [0.5, -0.1, 0.2]}, "three fractions"),
       ({"psap_stream_ratios": ["a", 0, 0]}, "three fractions"),
       ({"psap_stream_ratios": [0.5, 0, 0], "psap_target": "filters"}, "psap_target flops"),
       ({"psap_stream_ratios": [0.5, 0, 0], "net": "resnet50", "in_channels": 3,
         "dataset": "imagenet"}, "CIFAR-style")]


@pytest.mark.parametrize("changes, message", BAD)
def test_bad_stream_recipes_are_refused_naming_the_key(changes, message):
    values = {"net": "resnet20", "prune_method": "psap", **changes}
    with pytest.raises(ConfigError, match=message) as err:
        build_config(values, {})
    assert "psap_stream_ratios" in str(err.value)


def test_a_stage_narrower_than_the_one_before_is_refused_with_option_a_only():
    with pytest.raises(ConfigError, match="16/8/64"):
        build_config({"net": "resnet20", "prune_method": "psap",
                      "psap_stream_ratios": [0.0, 0.75, 0.0]}, {})
    cfg = build_config({"net": "resnet20", "prune_method": "psap", "shortcut": "B",
                        "psap_stream_ratios": [0.0, 0.75, 0.0]}, {})
    assert StreamPruning(cfg, build_network(cfg)).kept_widths([0, 24, 0]) == [16, 8, 64]


def test_a_stream_cut_moved_by_rounding_is_said_in_the_log(tmp_path, caplog):
    """[0.5, 0, 0.25] asks 8/32/48; on multiples of 16 stage 1 keeps 16: a warning, not silence."""
    with caplog.at_level("WARNING"):
        _setup(tmp_path, psap_target="flops", psap_ratio=0.4, psap_width_multiple=16,
               psap_stream_ratios=[0.5, 0.0, 0.25])
    assert any("16/32/48" in r.getMessage() and "8/32/48" in r.getMessage()
               for r in caplog.records)


def test_eval_and_export_rebuild_a_stream_pruned_compact_checkpoint(tmp_path, fashion_dir):
    """eval.py and export.py read the stage widths from the checkpoint (the compact network of a
    host-side run: the training loop itself is the same for every PSAP option)."""
    import json
    from tests.conftest import ROOT, run_script
    cfg, net, pruner, ctx = _setup(tmp_path, psap_target="flops", psap_ratio=0.4, epoch_size=2,
                                   psap_stream_ratios=[0.5, 0.0, 0.25], psap_width_multiple=8)
    _train_streams(pruner, ctx, np.random.default_rng(5))
    finish(pruner, ctx)
    ckpt = tmp_path / "last_compact.ckpt"
    recipe = os.path.join(ROOT, "config", "psap_resnet20_fashion_mnist.yaml")
    run_script("eval.py", "--config_path", recipe, "--ckpt", ckpt, "--data_path", fashion_dir,
               "--eval_samples", "64", "--json_out", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["stage_widths"] == [8, 32, 48]
    assert abs(1 - result["flops"] / result["dense_flops"] - 0.4) <= 0.01
    proc = run_script("export.py", "--config_path", recipe, "--ckpt", ckpt, "--file_format",
                      "MINDIR", "--file_name", tmp_path / "small")
    assert "compact widths" in proc.stdout
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = ms.nn.GraphCell(ms.load(str(tmp_path / "small.mindir")))
    assert graph(ms.Tensor(np.zeros((1, 1, 28, 28), np.float32))).shape == (1, 10)


def test_streams_that_alone_pass_the_target_are_refused_before_training(tmp_path):
    """[0.5, 0.5, 0.5] removes about half of the MACs by the streams alone: more than psap_ratio
    0.4 can ever be met; said when the method is built, not after the run."""
    with pytest.raises(ConfigError, match=r"'psap_stream_ratios': \[0.5, 0.5, 0.5\] alone remove 0\.\d+ of "
                                          r"the MACs, more than psap_ratio 0.4"):
        _setup(tmp_path, psap_target="flops", psap_ratio=0.4, psap_stream_ratios=[0.5, 0.5, 0.5])


def test_the_api_checks_stream_ratios_on_the_users_network():
    """SparseTraining / PruningAlgorithm prune a network the recipe keys do not describe: a stage
    may keep fewer channels than the one before under shortcut B (a 1x1 conv reads the stream),
    and the option-A check uses the network's own stage widths."""
    from src.models.resnet import build_resnet
    from src.pruning.api import PruningAlgorithm
    ms.set_context(mode=ms.GRAPH_MODE)
    keys = dict(steps_per_epoch=4, epochs=2, input_shape=(1, 1, 28, 28), psap_ratio=0.45)
    algo = PruningAlgorithm("psap", **keys, psap_stream_ratios=[0.0, 0.6, 0.0])
    algo.apply(build_resnet("resnet8", 10, 1, shortcut="B"))
    assert algo.pruner.stream.kept_widths(algo.pruner.stream.final_counts) == [16, 13, 64]
    narrow_first = build_resnet("resnet8", 10, 1, stage_widths=[4, 32, 64])   # 4/13/64 widens: allowed
    PruningAlgorithm("psap", **keys, psap_stream_ratios=[0.0, 0.6, 0.0]).apply(narrow_first)
    with pytest.raises(ConfigError, match="16/13/64"):   # option A on the default widths: refused
        PruningAlgorithm("psap", **keys, psap_stream_ratios=[0.0, 0.6, 0.0]).apply(build_resnet("resnet8", 10, 1))
