"""What RPG costs on top of dense training.

    python -m benchmarks.rpg_cost        # writes benchmarks/results/rpg_cost.{json,md}

1. ResNet-20 (Fashion-MNIST size, batch 128): mean step time over one whole delta cycle of RPG
   (delta - 1 masked steps + one mask update with the dense gradient of task + lamb * rank loss)
   divided by the dense step time. Target: within 5 %.
2. ResNet-50 at 224, batch 32: the time of one mask update (dense gradient incl. the SVD of all 53
   convs in the rank loss, global magnitude threshold, drop-and-grow, mask install), split into
   its parts, against a dense step.
3. The rank loss's host targets of the 53 ResNet-50 convs (the weights of part 2 after its mask
   update, and the same magnitude-pruned to 90 % and 98 %): the float64 SVD path (before) against
   the Gram path (after), timed alternately in the same run; whether they choose the same k; and
   what one of 2 data-parallel workers computes (its share of the eigendecompositions plus the
   projection of every layer; the two all-reduces that gather the bases are not included).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import machine_info, random_batch, timed, training_setup, write_results
from src.cli import OneLineParser
from src.pruning.masks.mask_ops import global_magnitude_masks
from src.pruning.masks.rpg.rank_targets import (layers_for_worker, own_bases, project_targets,
                                                rank_targets_numpy, unit_matrices)
from tests.rank_reference import svd_targets_numpy  # the float64 SVD path, timed as "before"


def rpg_setup(net, in_channels, size, classes, batch, delta, steps):
    return training_setup({"net": net, "in_channels": in_channels, "image_size": size,
                           "num_classes": classes, "batch_size": batch, "prune_method": "rpg",
                           "sparsity": 0.9, "lamb": 0.5, "partial_k": 0.1, "delta": delta},
                          steps_per_epoch=steps)


def cycle_cost(delta, rounds):
    """Dense step time vs the mean RPG step time over one delta cycle (ResNet-20).

    Dense and RPG cycles alternate, so that load from other processes on the machine hits both
    alike; the ratio of the summed times is reported.
    """
    cfg, _, _, dense_step, _ = training_setup({"net": "resnet20", "in_channels": 1, "image_size": 28,
                                               "num_classes": 10, "batch_size": 128})
    batch = random_batch(cfg, 128)
    _, _, pruner, step, ctx = rpg_setup("resnet20", 1, 28, 10, 128, delta, (rounds + 3) * delta)

    def dense_cycle():
        start = time.perf_counter()
        for _ in range(delta):
            dense_step(*batch).asnumpy()
        return time.perf_counter() - start

    def rpg_cycle(first):
        start = time.perf_counter()
        for t in range(first, first + delta):
            if pruner.before_step(t, batch, ctx) is None:
                step(*batch).asnumpy()
        return time.perf_counter() - start

    timed(lambda: dense_step(*batch).asnumpy(), 1, warmup=3)
    rpg_cycle(delta)                      # compiles both graphs, first update
    dense_times, rpg_times = [], []
    for k in range(rounds):
        dense_times.append(dense_cycle())
        rpg_times.append(rpg_cycle((k + 2) * delta))
    dense_s = sum(dense_times) / (rounds * delta)
    rpg_s = sum(rpg_times) / (rounds * delta)
    return {"delta": delta, "rounds": rounds, "dense_step_s": dense_s, "rpg_mean_step_s": rpg_s,
            "ratio": rpg_s / dense_s, "dense_cycles_s": dense_times, "rpg_cycles_s": rpg_times}


def resnet50_update(repeats):
    cfg, _, pruner, step, ctx = rpg_setup("resnet50", 3, 224, 1000, 32, 100, 1000)
    batch = random_batch(cfg, 32)
    dense_s, _ = timed(lambda: step(*batch).asnumpy(), repeats, warmup=1)

    def one_update():
        pruner.updates_done = 0           # replay the first update each time
        pruner.before_step(pruner.update_steps[0], batch, ctx)

    update_s, _ = timed(one_update, repeats, warmup=1)
    conv_weights = list(ctx.get_weights(pruner.rank_names).values())
    svd_s, _ = timed(lambda: pruner.rank_term.set_host_targets(conv_weights), repeats, warmup=0)
    grad_cell = pruner.grad_cell
    grad_s, _ = timed(lambda: grad_cell(*batch)[0].asnumpy(), repeats, warmup=0)
    return {"dense_step_s": dense_s, "mask_update_s": update_s, "host_svd_s": svd_s,
            "dense_gradient_with_rank_loss_s": grad_s,
            "host_mask_computation_s": max(update_s - grad_s - svd_s, 0.0),
            "conv_layers": len(pruner.rank_names), "masked_tensors": len(pruner.names),
            "first_update_density": float(pruner.target_density)}, conv_weights


def alternating(functions, repeats):
    """Median wall time of each function, calling them in turn ``repeats`` times, so that load
    from other processes hits all of them alike."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for index, fn in enumerate(functions):
            start = time.perf_counter()
            fn()
            times[index].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], times


def worker_share(conv_weights, partial_k, rank, group_size):
    """(function, layers): what worker ``rank`` computes, the eigendecompositions of its share,
    then the projection of every layer from the gathered bases (taken here from a single-worker
    run, as the all-reduces would deliver them)."""
    matrices = unit_matrices(conv_weights)
    shapes = [m.shape for m in matrices]
    ks, oks, bases = own_bases(matrices, partial_k, set(range(len(matrices))))
    share = layers_for_worker(shapes, rank, group_size)

    def compute():
        own_bases(matrices, partial_k, share)
        project_targets(matrices, bases, ks, oks, shapes)
    return compute, len(share)


def same_k(weights, partial_k):
    """(layers with the same k, layers, worst |A_new - A_old| / max|A_old|)."""
    old, old_k, _ = svd_targets_numpy(weights, partial_k)
    new, new_k, _ = rank_targets_numpy(weights, partial_k)
    worst = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(new, old))
    return sum(a == b for a, b in zip(old_k, new_k)), len(old_k), worst


def host_targets_resnet50(conv_weights, partial_k, repeats, group_size=2):
    """Old path, new path and each worker's share, timed in turn (see ``alternating``)."""
    shares = [worker_share(conv_weights, partial_k, r, group_size) for r in range(group_size)]
    medians, runs = alternating(
        [lambda: svd_targets_numpy(conv_weights, partial_k),
         lambda: rank_targets_numpy(conv_weights, partial_k)] + [fn for fn, _ in shares], repeats)
    old_s, new_s = medians[:2]
    pruned = {}
    for sparsity in (0.9, 0.98):
        named = {str(i): w for i, w in enumerate(conv_weights)}
        masks = global_magnitude_masks(named, 1.0 - sparsity)
        pruned[sparsity] = [np.where(masks[str(i)], w, 0.0).astype(np.float32)
                            for i, w in enumerate(conv_weights)]
    fidelity = []
    for label, weights in (("as after the mask update", conv_weights),
                           ("magnitude-pruned to 90 %", pruned[0.9]),
                           ("magnitude-pruned to 98 %", pruned[0.98])):
        for p in (0.1, 0.2):
            same, layers, worst = same_k(weights, p)
            fidelity.append({"weights": label, "partial_k": p, "same_k": same, "layers": layers,
                             "worst_target_diff_rel": worst})
    return {"partial_k": partial_k, "repeats": repeats, "svd_float64_s": old_s, "gram_s": new_s,
            "speedup": old_s / new_s, "runs_s": runs, "group_size": group_size,
            "worker_share_s": medians[2:], "worker_layers": [n for _, n in shares],
            "fidelity": fidelity}


def update_in_tree(tree, repeats):
    """Run benchmarks/rpg_update_time.py (of this tree) with ``tree``'s code; its JSON result."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rpg_update_time.py")
    env = dict(os.environ, PYTHONPATH=tree, GLOG_v="4")
    proc = subprocess.run([sys.executable, script, str(repeats)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rpg_update_time.py failed in {tree}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def update_before_after(revision, repeats, rounds):
    """One mask update (ResNet-50) with the code of ``revision`` and with this tree's, in separate
    processes, alternating ``rounds`` times; median over all timed updates of each."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as scratch:
        before_tree = os.path.join(scratch, "before")
        subprocess.run(["git", "-C", root, "worktree", "add", "--detach", before_tree, revision],
                       check=True, capture_output=True)
        try:
            runs = {"before": [], "after": []}
            for _ in range(rounds):
                runs["before"].append(update_in_tree(before_tree, repeats))
                runs["after"].append(update_in_tree(root, repeats))
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", before_tree],
                           capture_output=True)
    result = {"revision": revision, "repeats": repeats, "rounds": rounds, "runs": runs}
    for side in ("before", "after"):
        times = [t for run in runs[side] for t in run["times_s"]]
        result[side] = {"median_s": float(np.median(times)), "times_s": times,
                        "max_per_tensor": runs[side][-1]["max_per_tensor"]}
    return result


def update_markdown(result):
    rows = "\n".join(
        f"| {side} ({result['revision'] if side == 'before' else 'this tree'}) | "
        f"{result[side]['median_s']:.2f} | {result[side]['max_per_tensor']['weight_reads']} / "
        f"{result[side]['max_per_tensor']['weight_writes']} | "
        f"{result[side]['max_per_tensor']['mask_writes']} | "
        f"{result[side]['max_per_tensor']['momentum_reads']} / "
        f"{result[side]['max_per_tensor']['momentum_writes']} |" for side in ("before", "after"))
    return f"""
## One mask update before and after the engine refactor, ResNet-50 (3x224x224, batch 32)
Separate processes with each tree's code, alternating, {result['rounds']} rounds x {result['repeats']}
timed updates each (after one untimed compile), median. Transfers: the most calls of
`asnumpy` (device -> host) / `set_data` (host -> device) on any one tensor during one update.

| code | update (s) | weight reads / writes | mask writes | momentum reads / writes |
|---|---|---|---|---|
{rows}
"""


def main():
    parser = OneLineParser(description=__doc__)
    parser.add_argument("--before", default="", help="git revision to time the mask update of, "
                        "beside this tree's (e.g. the commit before a refactor)")
    parser.add_argument("--only_update", action="store_true",
                        help="with --before: only the before/after update timing (merged into the "
                             "existing results)")
    parser.add_argument("--delta", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--host_repeats", type=int, default=3)
    args = parser.parse_args()
    before_after = update_before_after(args.before, args.repeats, args.rounds + 1) if args.before else None
    if args.only_update:
        write_only_update(before_after, args)
        return
    cycle = cycle_cost(args.delta, args.rounds)
    big, conv_weights = resnet50_update(args.repeats)
    host = host_targets_resnet50(conv_weights, 0.1, args.host_repeats)
    info = machine_info()
    md = markdown(args, info, cycle, big, host)
    if before_after:
        md += update_markdown(before_after)
    write_results("rpg_cost", {"machine": info, "cycle_resnet20": cycle, "update_resnet50": big,
                               "host_targets_resnet50": host, "update_before_after": before_after}, md)


def markdown(args, info, cycle, big, host):
    """The results page: the delta cycle, one mask update, the host targets."""
    fidelity_rows = "\n".join(
        f"| {f['weights']} | {f['partial_k']} | {f['same_k']}/{f['layers']} | "
        f"{f['worst_target_diff_rel']:.1e} |" for f in host["fidelity"])
    shares = ", ".join(f"worker {r}: {s:.2f} s ({n} layers)" for r, (s, n) in
                       enumerate(zip(host["worker_share_s"], host["worker_layers"])))
    share_ratio = max(host["worker_share_s"]) / host["gram_s"]
    return f"""# RPG cost on this machine (CPU, graph mode)

Command: `python -m benchmarks.rpg_cost --delta {args.delta} --repeats {args.repeats} --rounds {args.rounds} --host_repeats {args.host_repeats}`
({info['cpu_count']} cores, MindSpore {info['mindspore']}, 1-min load at the end {info['load_average_1min']:.2f})

## Whole delta cycle, ResNet-20 (1x28x28, batch 128)
Dense and RPG cycles of {cycle['delta']} steps alternate ({cycle['rounds']} rounds each), so machine load hits both alike.

| dense step (s) | RPG mean step over a delta={cycle['delta']} cycle (s) | ratio |
|---|---|---|
| {cycle['dense_step_s']:.4f} | {cycle['rpg_mean_step_s']:.4f} | {cycle['ratio']:.3f} |

## One mask update, ResNet-50 (3x224x224, batch 32)
| part | seconds |
|---|---|
| dense training step (reference) | {big['dense_step_s']:.2f} |
| whole mask update | {big['mask_update_s']:.2f} |
| of which: host rank-loss targets of the {big['conv_layers']} conv weight matrices (Gram path) | {big['host_svd_s']:.2f} |
| of which: dense gradient of task + lamb * rank loss (forward, backward) | {big['dense_gradient_with_rank_loss_s']:.2f} |
| of which: the rest (global threshold over 25.5 M weights, drop-and-grow, install) | {big['host_mask_computation_s']:.2f} |

## Rank-loss host targets, ResNet-50 ({big['conv_layers']} convs, partial_k {host['partial_k']})
The weights above after their mask update (density {big['first_update_density']:.3f}). The old
path, the new path and each worker's share run in turn, {host['repeats']} times each, median:

| path | seconds |
|---|---|
| before: float64 SVD of every layer (`tests/rank_reference.py`) | {host['svd_float64_s']:.2f} |
| after: float64 Gram eigh of the smaller side + float32 projection (default) | {host['gram_s']:.2f} |
| speed-up | {host['speedup']:.1f}x |
| one of {host['group_size']} data-parallel workers: its share of the eigendecompositions + all projections (max over workers) | {max(host['worker_share_s']):.2f} ({share_ratio:.2f} of one worker's) |

Per worker: {shares}. Not included: the two all-reduces that gather k, flags and bases.

Same k as the float64 SVD (and the largest target difference relative to max|A_k|):

| weights | partial_k | same k | worst diff |
|---|---|---|---|
{fidelity_rows}
"""


def write_only_update(before_after, args):
    """Replace the before/after section of the existing results, keep the rest as measured."""
    if before_after is None:
        raise SystemExit("--only_update needs --before REV")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "rpg_cost")
    with open(path + ".json", encoding="utf-8") as handle:
        data = json.load(handle)
    with open(path + ".md", encoding="utf-8") as handle:
        md = handle.read().split("\n## One mask update before and after")[0].rstrip() + "\n"
    data["update_before_after"] = before_after
    md += update_markdown(before_after) + (f"\nCommand: `python -m benchmarks.rpg_cost --before "
                                          f"{args.before} --only_update --repeats {args.repeats} "
                                          f"--rounds {args.rounds}`\n")
    write_results("rpg_cost", data, md)


if __name__ == "__main__":
    main()
