"""RPG as a method, with every expectation computed here, independently of src/pruning:

- one mask update on a real (tiny) ResNet-20 training graph: the global magnitude target, the
  per-layer drop, the regrowth by |grad of task loss + lamb * rank loss| and the regrown weights
  at +0.0 are recomputed in NumPy from the weights and gradients seen before the update;
- the regrowth gradient the pruner uses equals the task gradient (a separate graph built here)
  plus lamb times the rank-loss gradient (a NumPy float64 formula, itself checked by finite
  differences);
- after every update of a whole schedule the density is (1 - s) ** (j / R), R counted here;
- a NaN batch at a mask update is a TrainingError that leaves masks and weights untouched.
"""
import logging
import math

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, ops, ParameterTuple, Tensor

from src.config import build_config
from src.errors import TrainingError
from src.models import build_network
from src.training_graph import build_training_graph

STEPS = 40            # one epoch of 40 iterations
DELTA = 4
T_END, ITER_END = 0.95, 0.9   # T_end = 38, iterative_T_end = 36 (itself an update step)
SPARSITY, ALPHA, LAMB, PARTIAL_K = 0.9, 0.3, 0.5, 0.2
TOL_MISMATCH = 0.002  # float32 graph vs float64 host sums may flip near-tied regrowth choices


# --------------------------------------------------------------------- independent references
def rank_loss_and_grad(w4, partial_k):
    """-||W/||W|| - A_k||^2 and its gradient w.r.t. W (float64), A_k held constant."""
    w = w4.reshape(w4.shape[0], -1).astype(np.float64)
    norm = np.linalg.norm(w)
    wn = w / norm
    u, s, vt = np.linalg.svd(wn, full_matrices=False)
    tails = np.array([np.sum(s[k:] ** 2) for k in range(len(s))])   # energy left out by rank k
    dist = np.abs(tails - partial_k)
    k = max(i for i in range(len(s)) if dist[i] <= dist.min() + 1e-15)  # ties: larger k
    a = (u[:, :k] * s[:k]) @ vt[:k]
    d = wn - a
    grad = -2.0 * (d - wn * np.sum(wn * d)) / norm
    return -np.sum(d * d), grad.reshape(w4.shape)


def top_k(scores, k):
    """Boolean mask of the k largest scores, ties to the smaller flat index."""
    flat = scores.reshape(-1)
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(scores.shape)


def expected_update(weights, grads, density, fraction):
    """Masks, regrown positions and weights after one RPG update, from the definition."""
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).reshape(-1).astype(np.float64) for n in names])
    keep = top_k(flat, round(density * flat.size))
    masks, grown, after, offset = {}, {}, {}, 0
    for n in names:
        w = weights[n]
        target = keep[offset:offset + w.size].reshape(w.shape)
        offset += w.size
        n_remain = int(target.sum())
        n_grow = int(n_remain * fraction)
        kept = top_k(np.where(target, np.abs(w), -1.0), n_remain - n_grow)
        regrow = top_k(np.where(kept, -1.0, np.abs(grads[n])), n_grow) & ~kept
        masks[n] = kept | regrow
        grown[n] = regrow & ~target
        after[n] = np.where(masks[n] & target, w, np.float32(0.0))
    return masks, grown, after


def update_count(total, delta, t_end_percent, iter_end_percent):
    t_end = math.floor(t_end_percent * total + 1e-9)
    iter_end = math.floor(iter_end_percent * total + 1e-9)
    steps = list(range(delta, t_end, delta))
    return steps, min(max(sum(t <= iter_end for t in steps), 1), len(steps)), t_end


class TaskGrad(nn.Cell):
    """Gradient of the task loss alone (no rank term), built here."""

    def __init__(self, loss_cell, params):
        super().__init__(auto_prefix=False)
        self.loss_cell = loss_cell
        self.params = ParameterTuple(params)
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, image, label):
        return self.grad(self.loss_cell, self.params)(image, label)


# --------------------------------------------------------------------- the run
def _build(lamb=LAMB):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config({"net": "resnet8", "in_channels": 1, "num_classes": 10, "image_size": 28,
                        "prune_method": "rpg", "sparsity": SPARSITY, "delta": DELTA,
                        "epoch_size": 1, "T_end_percent": T_END, "iterative_T_end_percent": ITER_END,
                        "alpha": ALPHA, "lamb": lamb, "partial_k": PARTIAL_K, "rank_svd": "host"}, {})
    ms.set_seed(0)
    net = build_network(cfg)
    session = build_training_graph(cfg, net, STEPS, logging.getLogger("t.rpg"), (1, 1, 28, 28))
    pruner, ctx = session.pruner, session.ctx
    return pruner, ctx


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (Tensor(rng.standard_normal((8, 1, 28, 28)).astype(np.float32)),
            Tensor(rng.integers(0, 10, 8).astype(np.int32)))


def _copies(ctx, names):
    """Host copies: asnumpy() may share the parameter's buffer, which an update writes into."""
    return {n: w.copy() for n, w in ctx.get_weights(names).items()}


def _independent_grads(task_grad, names, conv_names, weights, batch, lamb):
    task = {n: g.asnumpy().astype(np.float64) for n, g in zip(names, task_grad(*batch))}
    total = dict(task)
    for n in conv_names:
        total[n] = task[n] + lamb * rank_loss_and_grad(weights[n], PARTIAL_K)[1] / len(conv_names)
    return task, total


@pytest.fixture(scope="module")
def schedule():
    """Every update of a one-epoch RPG schedule, with the inputs seen before each update."""
    pruner, ctx = _build()
    names, conv_names = pruner.names, [n for n in pruner.names if ctx.get_weights([n])[n].ndim == 4]
    task_grad = TaskGrad(ctx.loss_cell, [ctx._params[n] for n in names])
    records = []
    for j, step in enumerate(pruner.update_steps, start=1):
        batch = _batch(j)
        weights = _copies(ctx, names)
        task, total = _independent_grads(task_grad, names, conv_names, weights, batch, LAMB)
        loss = pruner.before_step(step, batch, ctx)
        records.append({"step": step, "weights": weights, "task": task, "total": total,
                        "loss": loss, "masks": pruner.masks(),
                        "after": _copies(ctx, names), "density": pruner.target_density})
    # the regrowth gradient as the pruner computes it, at the final weights
    weights = ctx.get_weights(names)
    pruner.rank_term.set_host_targets([weights[n] for n in conv_names])
    _, _, extra, grads = pruner.grad_cell(*_batch(99))
    pruner_grads = {n: g.asnumpy().astype(np.float64) for n, g in zip(names, grads)}
    task, total = _independent_grads(task_grad, names, conv_names, weights, _batch(99), LAMB)
    rank_value = np.mean([rank_loss_and_grad(weights[n], PARTIAL_K)[0] for n in conv_names])
    return {"pruner": pruner, "records": records, "conv_names": conv_names,
            "grad_check": (pruner_grads, task, total, float(extra.asnumpy()), LAMB * rank_value)}


def test_rank_gradient_formula_matches_finite_differences():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 2, 3, 3))
    _, grad = rank_loss_and_grad(w, PARTIAL_K)
    for index in [(0, 0, 0, 0), (3, 1, 2, 1), (5, 1, 1, 2)]:
        h = np.zeros_like(w)
        h[index] = 1e-6
        # A_k is a constant of the loss: finite differences hold the target of w fixed
        numeric = (_fixed_target_loss(w + h, w) - _fixed_target_loss(w - h, w)) / 2e-6
        assert numeric == pytest.approx(grad[index], rel=1e-5, abs=1e-9)


def _fixed_target_loss(w_new, w_ref):
    ref = w_ref.reshape(w_ref.shape[0], -1)
    u, s, vt = np.linalg.svd(ref / np.linalg.norm(ref), full_matrices=False)
    _, _ = rank_loss_and_grad(w_ref, PARTIAL_K)
    tails = np.array([np.sum(s[k:] ** 2) for k in range(len(s))])
    k = int(np.argmin(np.abs(tails - PARTIAL_K)))
    a = (u[:, :k] * s[:k]) @ vt[:k]
    x = w_new.reshape(w_new.shape[0], -1)
    return -np.sum((x / np.linalg.norm(x) - a) ** 2)


def test_regrowth_gradient_is_task_plus_lamb_rank(schedule):
    pruner_grads, task, total, extra, rank_value = schedule["grad_check"]
    assert extra == pytest.approx(rank_value, rel=1e-4)
    for name, grad in pruner_grads.items():
        scale = np.abs(total[name]).max()
        np.testing.assert_allclose(grad, total[name], rtol=0, atol=1e-4 * scale, err_msg=name)
    # the rank term is not negligible here: without it the gradients would be far off
    conv = schedule["conv_names"]
    off = max(np.abs(pruner_grads[n] - task[n]).max() / np.abs(total[n]).max() for n in conv)
    assert off > 1e-2


def test_first_update_masks_match_the_definition(schedule):
    record = schedule["records"][0]
    steps, big_r, t_end = update_count(STEPS, DELTA, T_END, ITER_END)
    density = (1 - SPARSITY) ** (1 / big_r)
    fraction = ALPHA / 2 * (1 + math.cos(math.pi * record["step"] / t_end))
    masks, grown, after = expected_update(record["weights"], record["total"], density, fraction)
    got = record["masks"]
    total = sum(m.size for m in masks.values())
    n_grown = sum(int(g.sum()) for g in grown.values())
    assert n_grown > 0.05 * total * density   # a real regrowth happens at this step
    mismatch = sum(int(np.sum(got[n] != masks[n])) for n in masks)
    assert mismatch <= TOL_MISMATCH * n_grown, (mismatch, n_grown)
    # regrowth by the task gradient alone would choose differently: the test sees the rank term
    task_masks, _, _ = expected_update(record["weights"], record["task"], density, fraction)
    assert sum(int(np.sum(task_masks[n] != masks[n])) for n in masks) > 10 * max(mismatch, 1)
    for name, mask in got.items():
        weight = record["after"][name]
        # survivors kept by magnitude keep their value bit for bit; everything else is +0.0
        np.testing.assert_array_equal(weight[mask & (after[name] != 0)],
                                      after[name][mask & (after[name] != 0)], err_msg=name)
        assert np.all(weight[~mask] == 0) and not np.signbit(weight[~mask]).any(), name
        assert np.all(weight[grown[name] & mask] == 0), name   # regrown weights start at 0
    assert record["loss"] is not None   # the update consumed the batch (no optimizer step)


def test_every_update_reaches_the_scheduled_density(schedule):
    steps, big_r, _ = update_count(STEPS, DELTA, T_END, ITER_END)
    records = schedule["records"]
    assert [r["step"] for r in records] == steps and big_r == len(steps) == 9
    for j, record in enumerate(records, start=1):
        density = (1 - SPARSITY) ** (min(j, big_r) / big_r)
        masks = record["masks"]
        total = sum(m.size for m in masks.values())
        kept = sum(int(m.sum()) for m in masks.values())
        assert kept == round(density * total), (j, kept, density * total)
        nonzero = sum(int(np.count_nonzero(w)) for w in record["after"].values())
        assert nonzero <= kept   # regrown weights are zero until trained
    assert schedule["pruner"].updates_done == len(steps)


def _assert_nan_update_changes_nothing(poison, message):
    pruner, ctx = _build()
    image, label = _batch(5)
    poisoned = image.asnumpy()
    poison(poisoned, ctx)
    before_w = _copies(ctx, pruner.names)
    before_m = {n: m.copy() for n, m in pruner.masks().items()}
    with pytest.raises(TrainingError, match=message):
        pruner.before_step(pruner.update_steps[0], (Tensor(poisoned), label), ctx)
    for name, weight in ctx.get_weights(pruner.names).items():
        assert np.array_equal(weight, before_w[name]), name
    for name, mask in pruner.masks().items():
        assert np.array_equal(mask, before_m[name]), name
    assert pruner.updates_done == 0


def test_nan_loss_at_a_mask_update_changes_nothing():
    def poison(image, ctx):
        bias = ctx._params["fc.bias"]   # not a masked weight: a NaN logit, a NaN loss
        bias.set_data(Tensor(np.full(bias.shape, np.nan, np.float32)))
    # stopped by the loss check itself, naming the loss and the step (not only by the gradient check)
    _assert_nan_update_changes_nothing(poison, r"loss is nan at step 5 \(an RPG mask update\)")


def test_nan_gradient_with_finite_loss_at_a_mask_update_changes_nothing():
    # on CPU a NaN pixel leaves the loss finite but makes conv1's gradient NaN
    def poison(image, ctx):
        image[0, 0, 3, 3] = np.nan
    _assert_nan_update_changes_nothing(poison, r"non-finite dense gradient .* at step 5")


def test_a_mask_update_moves_each_weight_once_each_way():
    """The update reads every masked weight to the host once and writes it back once; the masks
    go to the device once; the optimizer state is zeroed on the device (no host trip at all)."""
    from tests.transfer_count import count_transfers
    pruner, ctx = _build()
    pruner.before_step(pruner.update_steps[0], _batch(), ctx)   # compiles the gradient cell
    pruner.updates_done = 0
    reads, writes = count_transfers(lambda: pruner.before_step(pruner.update_steps[0], _batch(1), ctx))
    for name in pruner.names:
        assert reads.get(name) == 1 and writes.get(name) == 1, (name, reads.get(name), writes.get(name))
        assert writes.get("pruning_mask." + name) == 1 and not reads.get("pruning_mask." + name), name
        assert not reads.get("moments." + name) and not writes.get("moments." + name), name
