"""Any folder works: names with a space, a non-ASCII letter or a '+' (a clone under "~/My Projects/"
or "Prüfungen/"). MindSpore's export refuses such paths itself; the project writes where it accepts
and copies into place (src/export_model.py, src/outputs.plain_directory). The export tests are in
test_export.py; here: the write helpers, checkpoints, and the quick start run end to end from a
clone under such a folder.
"""
import json
import logging
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from src.export_model import MINDSPORE_PATH, MINDSPORE_RULE
from src.outputs import OutputError, OutputExists, atomic_output, plain_directory
from tests.conftest import ROOT, SYSTEM_FASHION_MNIST, _has_real

UNUSUAL = "My Prüfung ü"


def test_staging_folder_avoids_a_tmpdir_mindspore_refuses(tmp_path, monkeypatch):
    unusual_tmp = tmp_path / UNUSUAL
    unusual_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(unusual_tmp))
    with plain_directory(MINDSPORE_PATH.match, MINDSPORE_RULE) as folder:
        assert MINDSPORE_PATH.match(folder) and os.path.dirname(folder) in ("/tmp", "/var/tmp")
        open(os.path.join(folder, "left.over"), "w").close()
    assert not os.path.exists(folder)          # removed with what was left in it
    with pytest.raises(OutputError, match="set TMPDIR"):
        with plain_directory(lambda path: False, MINDSPORE_RULE):
            pass


def test_no_replacement_at_the_rename_without_overwrite(tmp_path):
    """A file that appears while the output is being written is not replaced either."""
    path = tmp_path / f"{UNUSUAL}.json"
    with pytest.raises(OutputExists, match="not replacing"):
        with atomic_output(str(path), overwrite=False) as tmp:
            with open(tmp, "w") as handle:
                handle.write("new")
            path.write_text("arrived meanwhile")
    assert path.read_text() == "arrived meanwhile"
    assert os.listdir(tmp_path) == [path.name]  # no temporary left
    path.unlink()
    with atomic_output(str(path), overwrite=False) as tmp:
        with open(tmp, "w") as handle:
            handle.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == [path.name]


def test_checkpoint_save_load_and_pre_trained_in_an_unusual_folder(tmp_path):
    import mindspore as ms
    from src import checkpoint
    from src.config import build_config
    from src.models import build_network
    from src.training_graph import load_pretrained
    folder = tmp_path / UNUSUAL
    folder.mkdir()
    path = str(folder / "last ü+1.ckpt")
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10}, {})
    ms.set_seed(1)
    net = build_network(cfg)
    checkpoint.save_atomic(net, path, meta={"net": "resnet20"})
    params, meta, _ = checkpoint.load(path)
    assert meta["net"] == "resnet20" and os.listdir(folder) == [os.path.basename(path)]
    ms.set_seed(2)
    other = build_network(cfg)
    load_pretrained(other, path, logging.getLogger("test"))
    for mine, theirs in zip(net.get_parameters(), other.get_parameters()):
        assert np.array_equal(mine.asnumpy(), theirs.asnumpy()), mine.name


def test_image_folders_under_an_unusual_folder(tmp_path):
    """ImageNet-style folders (MindSpore's ImageFolderDataset) at such a path, file names too."""
    from PIL import Image
    from src.dataset import create_dataset
    root = tmp_path / UNUSUAL / "imagenet"
    for label, cls in enumerate(("n01 ü", "n02+b")):
        (root / "val" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 24, 3), 60 * label, np.uint8)).save(
                root / "val" / cls / f"bild {i} ü.JPEG")
    batches = list(create_dataset("imagenet", str(root), False, 4, image_size=16,
                                  eval_resize=20).create_dict_iterator(output_numpy=True))
    assert len(batches) == 1 and sorted(batches[0]["label"]) == [0, 0, 1, 1]
    assert batches[0]["image"].shape == (4, 3, 16, 16)


def _real_fashion_mnist():
    for candidate in (os.environ.get("FASHION_MNIST_DIR"), SYSTEM_FASHION_MNIST):
        if _has_real(candidate):
            return candidate
    return None


def _clone_with_working_copy_edits(target):
    """``git clone`` of this repository, plus its uncommitted edits to tracked files."""
    subprocess.run(["git", "clone", "--quiet", ROOT, target], check=True, capture_output=True)
    diff = subprocess.run(["git", "-C", ROOT, "diff", "HEAD", "--binary"], check=True,
                          capture_output=True).stdout
    if diff:
        subprocess.run(["git", "-C", target, "apply"], input=diff, check=True, capture_output=True)


def test_quickstart_from_a_clone_under_an_unusual_folder(tmp_path):
    """The README's first command in a clone under "My Prüfung ü/": data, training, evaluation
    (JSON and PNG) and the verified MINDIR export, all under that folder (QUICKSTART_SMOKE=1: the
    pipeline, not the accuracy); then scripts/run_export.sh to ONNX, relative name, cwd there."""
    data = _real_fashion_mnist()
    if data is None:   # get_fashion_mnist.sh verifies the official files' MD5
        pytest.skip("the real Fashion-MNIST files are not available")
    if not os.path.exists(os.path.join(sys.prefix, "bin", "activate")):
        pytest.skip("not running in a virtual environment the quick start could reuse")
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / UNUSUAL / "rpg clone+1"
    clone.parent.mkdir()
    _clone_with_working_copy_edits(str(clone))
    env = dict(os.environ, PRUNE_VENV=sys.prefix, FASHION_MNIST_SYSTEM_DIR=data, FASHION_MNIST_OFFLINE="1",
               QUICKSTART_SMOKE="1", GLOG_v="4", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "scripts/quickstart.sh"], cwd=clone, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = clone / "output" / "quickstart"
    # (.lock: the training run's folder lock, src/run_lock.py, an empty file it leaves)
    assert sorted(os.listdir(out)) == [".lock", "eval.json", "last.ckpt", "layers.png", "metrics.jsonl",
                                       "resnet20_rpg_s90.mindir", "run.json", "train.log"]
    assert abs(json.loads((out / "eval.json").read_text())["sparsity"] - 0.9) < 1e-3
    assert f"reloaded {out / 'resnet20_rpg_s90.mindir'}: max abs difference" in proc.stdout
    assert len(os.listdir(clone / "data" / "fashion_mnist")) == 4   # the data read from there too
    # the export launcher, ONNX, a relative name in a working directory under that folder
    env["PATH"] = os.path.join(sys.prefix, "bin") + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(["bash", str(clone / "scripts" / "run_export.sh"),
                           str(clone / "config" / "rpg_resnet20_fashion_mnist_s90.yaml"),
                           str(out / "last.ckpt"), "ONNX", "net ü+1"], cwd=out, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    onnx = (out / "net ü+1.onnx").read_bytes()
    assert onnx[:1] == b"\x08" and b"conv1.weight" in onnx   # ModelProto: ir_version first
    assert not [name for name in os.listdir(out) if name.startswith(".") and name != ".lock"]  # no temporary left


def test_quickstart_reads_a_relative_output_dir_from_where_you_are(tmp_path):
    """As the launchers do: `cd somewhere; bash .../quickstart.sh out` means somewhere/out, not a
    folder in the clone (here a file of that name stops train.py at once, naming the path)."""
    data = _real_fashion_mnist()
    if data is None:
        pytest.skip("the real Fashion-MNIST files are not available")
    (tmp_path / "taken").write_text("a file, not a folder")
    env = dict(os.environ, PRUNE_VENV=sys.prefix, FASHION_MNIST_SYSTEM_DIR=data, FASHION_MNIST_OFFLINE="1",
               GLOG_v="4")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "quickstart.sh"), "taken"], cwd=tmp_path,
                          env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 2
    assert f"output_dir '{tmp_path / 'taken'}' exists and is not a directory" in proc.stderr, proc.stderr
