"""RPG pruner on a real (tiny) training graph: host and in-graph SVD give the same update, the
update reaches the scheduled density exactly, regrown weights start at zero, and the skipped
optimizer step leaves the surviving weights untouched (reference behaviour); the reference's
sparsity_thres and its per-update record of each layer's k (the layer_ranks event)."""
import logging

import numpy as np
import mindspore as ms
from mindspore import Tensor

from src.config import build_config
from src.models import build_network
from src.training_graph import build_training_graph


def _setup(rank_svd, apply_update_step=False, **keys):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config({"net": "resnet8", "in_channels": 1, "num_classes": 10, "image_size": 28,
                        "prune_method": "rpg", "sparsity": 0.9, "delta": 5, "epoch_size": 1,
                        "rank_svd": rank_svd, "rpg_apply_update_step": apply_update_step, **keys}, {})
    ms.set_seed(0)
    net = build_network(cfg)
    session = build_training_graph(cfg, net, 40, logging.getLogger("t"), (1, 1, 28, 28))
    pruner, step, ctx = session.pruner, session.train_step, session.ctx
    return pruner, step, ctx


def _batch():
    rng = np.random.default_rng(0)
    return (Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32)),
            Tensor(rng.integers(0, 10, 8).astype(np.int32)))


def test_update_host_and_graph_svd_agree():
    results = {}
    for svd in ("host", "graph"):
        pruner, _, ctx = _setup(svd)
        before = ctx.get_weights(pruner.names)
        loss = pruner.before_step(pruner.update_steps[0], _batch(), ctx)
        assert loss is not None  # the update consumed the batch: no optimizer step
        results[svd] = (pruner.masks(), ctx.get_weights(pruner.names), before, pruner)
    host_masks, host_weights, before, pruner = results["host"]
    graph_masks, _, _, _ = results["graph"]
    agree = np.mean([np.mean(host_masks[n] == graph_masks[n]) for n in host_masks])
    assert agree > 0.999  # float32 vs float64 SVD may flip a few near-tied regrowth choices
    total = sum(m.size for m in host_masks.values())
    kept = sum(int(m.sum()) for m in host_masks.values())
    assert kept == round(pruner.target_density * total)
    for name, mask in host_masks.items():
        weight = host_weights[name]
        assert np.all(weight[mask == 0] == 0)
        # survivors keep their values: the update iteration's optimizer step was skipped
        survivors = (mask == 1) & (weight != 0)
        np.testing.assert_array_equal(weight[survivors], before[name][survivors])
        # everything alive now was either kept by magnitude or regrown at exactly zero
        assert np.all((weight[mask == 1] == before[name][mask == 1]) | (weight[mask == 1] == 0))


def test_applied_update_step_keeps_pruned_weights_zero():
    pruner, _, ctx = _setup("host", apply_update_step=True)
    before = ctx.get_weights(pruner.names)
    pruner.before_step(pruner.update_steps[0], _batch(), ctx)
    masks, weights = pruner.masks(), ctx.get_weights(pruner.names)
    for name, mask in masks.items():
        assert np.all(weights[name][mask == 0] == 0), name
    # the optimizer step was applied this time: surviving weights moved
    moved = sum(int(np.sum(weights[n][masks[n] == 1] != before[n][masks[n] == 1])) for n in masks)
    assert moved > 0


def _update_with_sparse_layers(rank_svd, **keys):
    """The first mask update after making the first two convs 95 % sparse (the others dense)."""
    pruner, _, ctx = _setup(rank_svd, **keys)
    events = []
    ctx.recorders.append(events.append)
    sparse = pruner.rank_names[:2]
    weights = ctx.get_weights(sparse)
    for name, weight in weights.items():
        flat = weight.reshape(-1).copy()
        flat[np.argsort(np.abs(flat))[:round(0.95 * flat.size)]] = 0.0
        weights[name] = flat.reshape(weight.shape)
    ctx.set_weights(weights)
    pruner.before_step(pruner.update_steps[0], _batch(), ctx)
    return pruner, ctx, [e for e in events if e["event"] == "layer_ranks"]


def test_sparsity_thres_keeps_the_rank_loss_to_sparse_layers():
    flags = {}
    for svd in ("host", "graph"):
        pruner, _, events = _update_with_sparse_layers(svd, sparsity_thres=0.5)
        term = pruner.rank_term
        assert term.covered == [True, True] + [False] * (len(pruner.rank_names) - 2)
        flags[svd] = term.ok_flags.asnumpy()
        assert [k is not None for k in term.ranks] == term.covered
        assert [row["k"] for row in events[0]["layers"]] == term.ranks
    np.testing.assert_array_equal(flags["host"], flags["graph"])
    # the default (the reference's 0) covers every conv
    pruner, _, _ = _update_with_sparse_layers("host")
    assert all(pruner.rank_term.covered) and all(k is not None for k in pruner.rank_term.ranks)


def test_layer_ranks_event_has_k_and_the_numerical_rank_after_the_update():
    from src.report import numerical_rank
    pruner, ctx, events = _update_with_sparse_layers("host", record_layer_ranks=True)
    (event,) = events
    assert event["update"] == 1 and event["step"] == pruner.update_steps[0]
    weights = ctx.get_weights(pruner.rank_names)
    assert [row["name"] for row in event["layers"]] == pruner.rank_names
    for row in event["layers"]:
        assert isinstance(row["k"], int) and 0 < row["k"] <= weights[row["name"]].shape[0]
        assert row["rank"] == numerical_rank(weights[row["name"]].astype(np.float64))
    from benchmarks.layer_ranks_csv import layer_ranks_table
    lines = layer_ranks_table(events).splitlines()
    assert lines[0].split(",") == ["update", "step"] + pruner.rank_names
    assert lines[1].split(",")[2:] == [str(row["k"]) for row in event["layers"]]
