"""Physical filter removal: which convs are prunable, and exact equality of compact and masked nets."""
import numpy as np
import mindspore as ms

from src.config import build_config
from src.models import build_network
from src.pruning.filters.surgery import (compact_network, plan_removal, prunable_filter_convs,
                                 prunable_layers)



def _randomise_bn(net, rng):
    """Non-trivial BN statistics, so a wrong channel mapping cannot hide."""
    for param in net.get_parameters():
        value = param.asnumpy()
        if param.name.endswith(("gamma", "beta", "moving_mean")):
            param.set_data(ms.Tensor(rng.normal(0.0, 0.5, value.shape).astype(np.float32)))
        elif param.name.endswith("moving_variance"):
            param.set_data(ms.Tensor(rng.uniform(0.5, 2.0, value.shape).astype(np.float32)))


def _zero(net, name, filters, bn=None):
    params = {p.name: p for p in net.get_parameters()}
    value = params[name].asnumpy()
    value[filters] = 0
    params[name].set_data(ms.Tensor(value))
    for field in (bn or {}).values():
        if field.endswith(("gamma", "beta")):
            value = params[field].asnumpy()
            value[filters] = 0
            params[field].set_data(ms.Tensor(value))


def _outputs(net, x):
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def test_prunable_convs_are_inner_convs_only():
    basic = build_network(build_config({"net": "resnet20"}, {}))
    assert prunable_filter_convs(basic) == [f"layer{s}.{b}.conv1.weight"
                                            for s in (1, 2, 3) for b in range(3)]
    bottleneck = build_network(build_config({"net": "resnet50", "num_classes": 10,
                                             "in_channels": 3, "dataset": "imagenet"}, {}))
    names = prunable_filter_convs(bottleneck)
    assert len(names) == 2 * 16
    assert all(n.endswith(("conv1.weight", "conv2.weight")) and n.startswith("layer") for n in names)
    layers = prunable_layers(bottleneck)
    assert layers[1]["conv"] == "layer1.0.conv2.weight"
    assert layers[1]["next_conv"] == "layer1.0.conv3.weight"
    assert layers[1]["next_kernel"] == (1, 1)


def test_resnet20_compact_equals_masked(pynative):
    rng = np.random.default_rng(0)
    cfg = build_config({"net": "resnet20", "in_channels": 3, "dataset": "cifar10"}, {})
    net = build_network(cfg)
    _randomise_bn(net, rng)
    layers = prunable_layers(net)
    expected_widths = []
    for i, layer in enumerate(layers):
        n = 16 * 2 ** (i // 3)
        if i == 4:      # every filter zeroed: one must stay
            chosen = np.arange(n)
        else:
            chosen = rng.choice(n, size=int(rng.integers(1, n // 2)), replace=False)
        _zero(net, layer["conv"], chosen, layer["bn"])
        expected_widths.append([max(n - len(chosen), 1)])
    # a zero filter whose BN still outputs a positive constant, before a 3x3 conv: must stay
    params = {p.name: p for p in net.get_parameters()}
    keep_layer = layers[0]
    w = params[keep_layer["conv"]].asnumpy()
    alive = np.flatnonzero(np.abs(w).reshape(w.shape[0], -1).sum(1) > 0)[0]
    w[alive] = 0
    params[keep_layer["conv"]].set_data(ms.Tensor(w))
    beta = params[keep_layer["bn"]["beta"]].asnumpy()
    beta[alive] = 2.0
    params[keep_layer["bn"]["beta"]].set_data(ms.Tensor(beta))

    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    masked = _outputs(net, x)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    plans = plan_removal(arrays, layers)
    assert list(plans[0]["kept_constant"]) == [alive]
    compact, widths, _ = compact_network(net)
    assert widths == expected_widths
    assert widths[4] == [1]
    compact_out = _outputs(compact, x)
    assert np.max(np.abs(compact_out - masked)) <= 1e-4
    assert sum(p.size for p in compact.trainable_params()) < \
        sum(p.size for p in net.trainable_params())


def test_bottleneck_compact_equals_masked(pynative):
    rng = np.random.default_rng(1)
    cfg = build_config({"net": "resnet50", "num_classes": 10, "in_channels": 3, "dataset": "imagenet"}, {})
    net = build_network(cfg)
    _randomise_bn(net, rng)
    layers = prunable_layers(net)
    params = {p.name: p for p in net.get_parameters()}
    folded_expected = 0
    for layer in layers:
        n = params[layer["conv"]].shape[0]
        chosen = rng.choice(n, size=int(rng.integers(1, n // 2)), replace=False)
        _zero(net, layer["conv"], chosen, layer["bn"])
        if layer["inner"] == 1:
            # weights only, BN untouched but made positive: constant output before a 1x1 conv,
            # removable by folding it into the next BN's moving mean
            extra = np.setdiff1d(np.arange(n), chosen)[:3]
            _zero(net, layer["conv"], extra)
            beta = params[layer["bn"]["beta"]].asnumpy()
            beta[extra] = np.abs(beta[extra]) + 1.0
            params[layer["bn"]["beta"]].set_data(ms.Tensor(beta))
            folded_expected += len(extra)
    x = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    masked = _outputs(net, x)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    plans = plan_removal(arrays, layers)
    assert sum(len(p["folded"]) for p in plans) == folded_expected
    compact, widths, _ = compact_network(net, plans)
    for layer, plan in zip(layers, plans):
        assert widths[layer["block"]][layer["inner"]] == len(plan["keep"])
    compact_out = _outputs(compact, x)
    scale = max(1.0, float(np.max(np.abs(masked))))
    assert np.max(np.abs(compact_out - masked)) <= 1e-4 * scale


def test_rounded_widths_compact_equals_masked(pynative):
    """ResNet-56 pruned to kept widths on multiples of 8 (psap_width_multiple) by the width
    rounding: the compact network has exactly those widths and computes the masked network."""
    from src.models.flops import layer_records
    from src.pruning.filters.allocation import count_bounds, flops_layer_counts, removed_macs
    from src.pruning.filters.widths import round_pruned_counts

    rng = np.random.default_rng(2)
    cfg = build_config({"net": "resnet56", "in_channels": 3, "dataset": "cifar10"}, {})
    net = build_network(cfg)
    _randomise_bn(net, rng)
    layers = prunable_layers(net)
    records = layer_records(net, (1, 3, 32, 32))
    n = np.array([r["c_out"] for r in records if r["name"] in {l["conv"] for l in layers}])
    counts = flops_layer_counts(rng.uniform(0.05, 0.6, len(n)), n, 0.5, 0.8, records, layers)
    _, lower, caps = count_bounds(n, 0.8, None, None)
    dense = sum(r["macs"] for r in records)
    rounded, _ = round_pruned_counts(counts, n, 8, lower, caps,
                                     lambda c: removed_macs(records, layers, c), 0.5 * dense)
    for layer, size, cut in zip(layers, n, rounded):
        _zero(net, layer["conv"], rng.choice(size, size=int(cut), replace=False), layer["bn"])
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    masked = _outputs(net, x)
    compact, widths, _ = compact_network(net)
    assert [w[0] for w in widths] == [int(v) for v in n - rounded]
    assert all(w[0] % 8 == 0 for w in widths)
    assert np.max(np.abs(_outputs(compact, x) - masked)) <= 1e-4


def _zero_stream(net, stream, channels):
    for writer in stream["writers"]:
        _zero(net, writer["conv"], channels, writer["bn"])


def _stream_case(shortcut, seed):
    """ResNet-20 with inner filters and residual-stream channels zeroed (gamma and beta too)."""
    from src.pruning.filters.surgery import residual_streams
    rng = np.random.default_rng(seed)
    cfg = build_config({"net": "resnet20", "in_channels": 3, "dataset": "cifar10",
                        "shortcut": shortcut}, {})
    net = build_network(cfg)
    _randomise_bn(net, rng)
    for layer in prunable_layers(net):
        n = int({p.name: p for p in net.get_parameters()}[layer["conv"]].shape[0])
        _zero(net, layer["conv"], rng.choice(n, size=n // 4, replace=False), layer["bn"])
    return cfg, net, residual_streams(net), rng


def test_residual_streams_name_every_writer_and_reader():
    from src.pruning.filters.surgery import residual_streams
    for shortcut, carried in (("A", [0, 16, 32]), ("B", [0, 0, 0])):
        net = build_network(build_config({"net": "resnet20", "shortcut": shortcut}, {}))
        streams = residual_streams(net)
        assert [s["channels"] for s in streams] == [16, 32, 64]
        assert [s["carried"] for s in streams] == carried
        assert streams[0]["writers"][0]["conv"] == "conv1.weight"
        assert [w["conv"] for w in streams[1]["writers"]][-3:] == \
            [f"layer2.{b}.conv2.weight" for b in range(3)]
        assert streams[0]["readers"][:3] == [f"layer1.{b}.conv1.weight" for b in range(3)]
        assert streams[2]["readers"][-1] == "fc.weight"
        if shortcut == "B":
            assert "layer2.0.downsample.0.weight" in [w["conv"] for w in streams[1]["writers"]]
            assert "layer2.0.downsample.0.weight" in streams[0]["readers"]
    try:
        residual_streams(build_network(build_config({"net": "resnet50", "in_channels": 3,
                                                     "dataset": "imagenet"}, {})))
    except TypeError as err:
        assert "CIFAR-style" in str(err)
    else:
        raise AssertionError("a bottleneck ResNet was accepted")


def test_stream_pruned_compact_equals_masked_option_a(pynative):
    """Option A: stage 1 loses half its stream, stage 2 keeps its carried channels but also takes
    back stage-1-pruned ones (the 8/32/48 layout), stage 3 loses a quarter of its new channels."""
    from src.pruning.filters.surgery import plan_stream_removal
    cfg, net, streams, rng = _stream_case("A", 3)
    gone1 = rng.choice(16, size=8, replace=False)
    _zero_stream(net, streams[0], gone1)
    gone3 = 32 + rng.choice(32, size=16, replace=False)
    _zero_stream(net, streams[2], gone3)
    # a silent channel of stage 2 that stage 1 keeps arrives through the shortcut: it must stay
    carried_alive = np.setdiff1d(np.arange(16), gone1)[0]
    _zero_stream(net, streams[1], [carried_alive])
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    masked = _outputs(net, x)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    orders = plan_stream_removal(arrays, streams)
    assert [len(o) for o in orders] == [8, 32, 48]
    assert list(orders[1][:8]) == list(orders[0]) and carried_alive in orders[1]
    compact, _, stage_widths = compact_network(net, stream_plans=orders)
    assert stage_widths == [8, 32, 48]
    assert np.max(np.abs(_outputs(compact, x) - masked)) <= 1e-4


def test_stream_pruned_compact_equals_masked_option_b(pynative):
    from src.pruning.filters.surgery import plan_stream_removal
    cfg, net, streams, rng = _stream_case("B", 4)
    for stream, cut in zip(streams, (4, 16, 8)):
        _zero_stream(net, stream, rng.choice(stream["channels"], size=cut, replace=False))
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    masked = _outputs(net, x)
    arrays = {p.name: p.asnumpy() for p in net.get_parameters()}
    orders = plan_stream_removal(arrays, streams)
    compact, _, stage_widths = compact_network(net, stream_plans=orders)
    assert stage_widths == [12, 16, 56]     # option B: no carried constraint, stages may shrink
    assert np.max(np.abs(_outputs(compact, x) - masked)) <= 1e-4
