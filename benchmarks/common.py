"""Helpers shared by the benchmarks: a training graph on random data, timing, result files.
The benchmarks run from the repository root as modules: ``python -m benchmarks.<name>``."""
import argparse
import json
import logging
import os
import platform
import time

import numpy as np
import mindspore as ms
from mindspore import Tensor

from src.config import build_config
from src.models import build_network
from src.outputs import atomic_output, write_json_atomic, write_text_atomic
from src.training_graph import build_training_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_setup(overrides, steps_per_epoch=1000):
    """(cfg, net, pruner, train_step, ctx) built exactly as train.py builds them."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    # the recipe check ties in_channels to a data set: 3-channel nets are ImageNet/CIFAR-style here
    dataset = "imagenet" if overrides.get("in_channels", 1) == 3 else "fashion_mnist"
    cfg = build_config({"dataset": dataset, **overrides}, {})
    ms.set_seed(cfg.seed)
    net = build_network(cfg)
    logger = logging.getLogger("benchmark")
    logger.setLevel(logging.WARNING)
    size = cfg.image_size
    session = build_training_graph(cfg, net, steps_per_epoch, logger, (1, cfg.in_channels, size, size))
    pruner, step, ctx = session.pruner, session.train_step, session.ctx
    return cfg, net, pruner, step, ctx


def random_batch(cfg, batch, seed=0):
    rng = np.random.default_rng(seed)
    size = cfg.image_size
    image = rng.standard_normal((batch, cfg.in_channels, size, size)).astype(np.float32)
    label = rng.integers(0, cfg.num_classes, batch).astype(np.int32)
    return Tensor(image), Tensor(label)


def timed(fn, repeats, warmup=2):
    """Median and all wall times (s) of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def machine_info():
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "mindspore": ms.__version__, "numpy": np.__version__, "load_average_1min": load}


def result_name(text):
    """argparse type of --name: a file name inside benchmarks/results, not a path (``../x`` or
    ``a/b`` would write the results somewhere else, or fail after hours of runs)."""
    if (not text or text != os.path.basename(text) or text.startswith(".") or "\\" in text
            or not text.isprintable() or len(text.encode()) > 200):
        raise argparse.ArgumentTypeError(f"{text[:60]!r} is not a file name under benchmarks/results "
                                         "(no folders, no leading dot, no control characters, at "
                                         "most 200 bytes)")
    return text


def write_results(name, data, markdown, directory=None):
    directory = directory or os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(directory, exist_ok=True)
    write_json_atomic(data, os.path.join(directory, f"{name}.json"))
    write_text_atomic(markdown.rstrip() + "\n", os.path.join(directory, f"{name}.md"))
    print(markdown)


def save_figure(fig, path, **savefig_kwargs):
    """``fig.savefig`` through a temporary name (src/outputs.py): a crash never leaves half a PNG."""
    with atomic_output(path, ".png") as tmp:  # the extension tells matplotlib the format
        fig.savefig(tmp, **savefig_kwargs)


def dumps(data):
    return json.dumps(data, indent=2)
