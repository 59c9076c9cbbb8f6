"""What RPG costs on top of dense training.

    python benchmarks/rpg_cost.py        # writes benchmarks/results/rpg_cost.{json,md}

1. ResNet-20 (Fashion-MNIST size, batch 128): mean step time over one whole delta cycle of RPG
   (delta - 1 masked steps + one mask update with the dense gradient of task + lamb * rank loss)
   divided by the dense step time. Target: within 5 %.
2. ResNet-50 at 224, batch 32: the time of one mask update (dense gradient incl. the SVD of all 53
   convs in the rank loss, global magnitude threshold, drop-and-grow, mask install), split into
   its parts, against a dense step.
"""
import argparse
import time

from common import machine_info, random_batch, timed, training_setup, write_results


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
    conv_weights = list(ctx.get_weights(pruner.conv_names).values())
    svd_s, _ = timed(lambda: pruner.rank_term.set_host_targets(conv_weights), repeats, warmup=0)
    grad_cell = pruner.grad_cell
    grad_s, _ = timed(lambda: grad_cell(*batch)[0].asnumpy(), repeats, warmup=0)
    return {"dense_step_s": dense_s, "mask_update_s": update_s, "host_svd_s": svd_s,
            "dense_gradient_with_rank_loss_s": grad_s,
            "host_mask_computation_s": max(update_s - grad_s - svd_s, 0.0),
            "conv_layers": len(pruner.conv_names), "masked_tensors": len(pruner.names)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delta", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cycle = cycle_cost(args.delta, args.rounds)
    big = resnet50_update(args.repeats)
    info = machine_info()
    md = f"""# RPG cost on this machine (CPU, graph mode)

Command: `python benchmarks/rpg_cost.py --delta {args.delta} --repeats {args.repeats} --rounds {args.rounds}`
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
| of which: host SVD (float64) of the {big['conv_layers']} conv weight matrices | {big['host_svd_s']:.2f} |
| of which: dense gradient of task + lamb * rank loss (forward, backward) | {big['dense_gradient_with_rank_loss_s']:.2f} |
| of which: the rest (global threshold over 25.5 M weights, drop-and-grow, install) | {big['host_mask_computation_s']:.2f} |
"""
    write_results("rpg_cost", {"machine": info, "cycle_resnet20": cycle, "update_resnet50": big}, md)


if __name__ == "__main__":
    main()
