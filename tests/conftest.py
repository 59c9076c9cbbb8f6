"""Shared fixtures: a Fashion-MNIST directory (the real files when installed, else small IDX files
written in the real format) and a helper that runs the entry scripts as a user would."""
import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# The network of the tests that train through the entry scripts: the shipped ResNet-20 recipes with
# ``--net resnet8`` (one block per stage). Its graphs compile in about half of ResNet-20's time, and
# graph compilation is most of what a few-step training run costs (the suite's time budget).
TINY_NET = ["--net", "resnet8"]


def write_idx(path, array, gz=True):
    """IDX: magic (0x0000 08 ndim), big-endian dims, raw uint8 data."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if gz else open
    with opener(path + (".gz" if gz else ""), "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(directory, train=600, test=300, seed=0):
    """Learnable toy data in the real format: the class sets the brightness of a block."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for split, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 4 + 2 * label:10 + 2 * label, 6:22] = 200
        write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte"), images)
        write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte"), labels)
    return directory


def _has_real(directory):
    return directory and all(os.path.exists(os.path.join(directory, f + ".gz")) or
                             os.path.exists(os.path.join(directory, f)) for f in FILES)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    for candidate in (os.environ.get("FASHION_MNIST_DIR"), SYSTEM_FASHION_MNIST):
        if _has_real(candidate):
            return candidate
    return write_fake_fashion_mnist(str(tmp_path_factory.mktemp("fashion")))


def _execution_mode(mode_name):
    """Run the test in MindSpore's ``mode_name`` (PYNATIVE_MODE / GRAPH_MODE), then restore the
    caller's mode."""
    import mindspore as ms
    previous = ms.get_context("mode")
    ms.set_context(mode=getattr(ms, mode_name))
    yield
    ms.set_context(mode=previous)


@pytest.fixture
def pynative():
    yield from _execution_mode("PYNATIVE_MODE")


@pytest.fixture
def graph_mode():
    yield from _execution_mode("GRAPH_MODE")


def run_script(*args, check=True, timeout=600):
    """Run ``python <script> args`` from the project root; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


# Runs entry points one after another in one fresh process, each as `python SCRIPT ARGS` / `python
# -m NAME ARGS` would (its own argv, exit code, and file descriptors 1 and 2 captured, so MindSpore's
# C++ log lines would count as well), paying MindSpore's import (about 1.5 s of CPU) once instead of
# once per command: for commands that fail early, where the import is most of their cost. State a
# command leaves in the process (MindSpore's context, imported modules) is seen by the next one, so
# commands that train belong in processes of their own. Prints {name: [exit code, stdout, stderr,
# every file that existed under the case's folders before it is byte-identical after]}.
ONE_PROCESS_DRIVER = """
import json, os, runpy, sys, tempfile, traceback
from tests.conftest import snapshot
results = {}
for name, args, folders in json.load(sys.stdin):
    before = snapshot(*folders)
    captured = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush(); sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(captured[0].fileno(), 1); os.dup2(captured[1].fileno(), 2)
    code = 0
    try:
        sys.argv = list(args)
        if args[0] == "-m":
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    texts = []
    for handle in captured:
        handle.seek(0)
        texts.append(handle.read().decode("utf-8", "replace"))
    after = snapshot(*folders)
    results[name] = [code, texts[0], texts[1], {path: after.get(path) for path in before} == before]
print(json.dumps(results))
"""


def entry_env(**extra):
    """The environment of an entry point run as a user would: the project importable, MindSpore's
    log lines off (GLOG_v=4, as the README tells users who want a quiet console), and no
    distributed-launch variables inherited from the shell."""
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_v="4", PYTHONWARNINGS="ignore")
    for name in ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE"):
        env.pop(name, None)
    env.update(extra)
    return env


def snapshot(*folders):
    """sha256 of every regular file under the folders (links, e.g. to /dev/zero, are not followed)."""
    found = {}
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(base, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    found[path] = digest(path)
    return found


def run_in_one_process(cases, timeout=600):
    """``cases``: [name, [script or "-m", args...], [folders to check]]; returns {name: (exit code,
    stdout, stderr, files unchanged)} (ONE_PROCESS_DRIVER)."""
    import json
    cases = [[name, [str(a) for a in args], [str(f) for f in folders]] for name, args, folders in cases]
    proc = subprocess.run([sys.executable, "-c", ONE_PROCESS_DRIVER], input=json.dumps(cases), cwd=ROOT,
                          env=entry_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: tuple(result) for name, result in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def shell_words(command):
    """The words bash reads from ``command`` (a launcher's resume command, quoted with printf %q:
    backslashes, or $'...' for non-ASCII names under the C locale, which shlex cannot read)."""
    return subprocess.run(["bash", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True,
                          check=True).stdout.splitlines()


def error_lines(proc):
    """stderr lines that are not MindSpore's own log noise."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and not line.startswith(("[WARNING", "[INFO", "[ERROR] ME", "  warnings.warn"))
            and "Warning" not in line]


def load_script(filename):
    """A script of scripts/ imported as a module (they are not a package)."""
    import importlib.util
    name = os.path.splitext(filename)[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resnet50_weight_shapes():
    """Conv and FC weight shapes of the ImageNet ResNet-50 (53 convs, then the FC layer)."""
    shapes, cin = [(64, 3, 7, 7)], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            shapes += [(width, cin, 1, 1), (width, width, 3, 3), (width * 4, width, 1, 1)]
            if block == 0:
                shapes.append((width * 4, cin, 1, 1))
            cin = width * 4
    return shapes + [(1000, 2048)]


def batchnorm_like(leaf, shape, rng):
    """Plausible values for a BatchNorm leaf or a bias (None for weights, which callers fill)."""
    if leaf == "moving_variance":
        return rng.uniform(0.5, 2.0, shape)
    if leaf == "gamma":
        return rng.uniform(0.5, 1.5, shape)
    if leaf in ("beta", "moving_mean", "bias"):
        return rng.normal(0.0, 0.1, shape)
    return None


def digest(path):
    """sha256 of a file's bytes (to prove a file was left byte-identical)."""
    import hashlib
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# The slowest files first: under `--dist loadfile` (scripts/run_tests.sh) pytest-xdist hands out
# whole files in collection order, and a long file handed out last keeps one worker busy alone
# at the end (about a minute and a half of the suite's wall time on 2 cores). Longest first, as
# measured (`bash scripts/run_tests.sh --durations=40` on a quiet machine).
SLOW_FILES_FIRST = ("test_distributed.py", "test_end_to_end.py", "test_interruption.py", "test_bad_inputs.py",
                    "test_density_distribution.py", "test_model_train.py", "test_concurrency.py",
                    "test_unusual_paths.py", "test_api.py", "test_zoo_fit.py", "test_rpg_pruner.py",
                    "test_psap_end_to_end.py", "test_rank_loss.py", "test_export.py", "test_method_rpg.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: order within a file kept
