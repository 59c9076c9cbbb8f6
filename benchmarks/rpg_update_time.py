"""Wall time of one RPG mask update on ResNet-50 (3x224x224, batch 32, random data), with the code
of the source tree this process runs in (the current directory), and how often each masked weight,
its mask and its momentum crossed between host and device during the update.

    cd TREE && PYTHONPATH=TREE python /this/tree/benchmarks/rpg_update_time.py REPEATS

prints one JSON line. Run so by ``python -m benchmarks.rpg_cost --before REV``, in the current
tree and in a checkout of REV in turn, so that both are timed on the same machine in one run (this
file by its path: REV's tree may predate it).
"""
import json
import os
import sys
import time

# the tree being measured: rpg_cost.py runs this file with that tree as the working directory
# and on PYTHONPATH, so benchmarks.common and src come from there
from benchmarks.common import random_batch, training_setup
from src.cli import OneLineParser


def _harness():
    """count_transfers from this script's own tree, loaded by path: the measured tree may predate
    it, and putting this tree on sys.path would mix its src/ into the measured one."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "transfer_count.py")
    spec = importlib.util.spec_from_file_location("transfer_count", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.count_transfers


def main():
    parser = OneLineParser(description="Wall time of one RPG mask update on ResNet-50 "
                                                 "(random data); prints one JSON line.")
    parser.add_argument("repeats", nargs="?", type=int, default=3, help="timed updates (default 3)")
    repeats = parser.parse_args().repeats
    cfg, _, pruner, _, ctx = training_setup({
        "net": "resnet50", "in_channels": 3, "image_size": 224, "num_classes": 1000,
        "batch_size": 32, "prune_method": "rpg", "sparsity": 0.9, "lamb": 0.5, "partial_k": 0.1,
        "delta": 100}, steps_per_epoch=1000)
    batch = random_batch(cfg, 32)

    def update():
        pruner.updates_done = 0           # replay the first update each time
        pruner.before_step(pruner.update_steps[0], batch, ctx)

    update()                              # compiles the dense-gradient cell
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    reads, writes = _harness()(update)
    names = pruner.names
    most = {kind: max(counts.get(prefix + n, 0) for n in names)
            for kind, counts, prefix in (("weight_reads", reads, ""), ("weight_writes", writes, ""),
                                         ("mask_writes", writes, "pruning_mask."),
                                         ("momentum_reads", reads, "moments."),
                                         ("momentum_writes", writes, "moments."))}
    print(json.dumps({"times_s": times, "max_per_tensor": most, "masked_tensors": len(names)}))


if __name__ == "__main__":
    main()
