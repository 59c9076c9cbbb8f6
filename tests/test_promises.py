"""Promises checked on behaviour: evaluate() on planted logits, best accuracy only after the last
mask update, the final-sparsity error and its exit code, a bit-flipped checkpoint refused, writers
that fail after writing has begun leave the earlier file byte for byte, and the sparse format
reads back bit for bit (-0.0 and all-zero tensors included)."""
import logging
import os

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn, Tensor

from src import checkpoint, sparse_format
from src.cli import run
from src.config import build_config
from src.metrics import evaluate
from src.models import build_network
from src.pruning.masks.hard_mask import FinalSparsityError
from src.training_graph import build_training_graph
from tests.conftest import digest


# --------------------------------------------------------------------------- evaluate()
class Identity(nn.Cell):
    def construct(self, x):
        return x


def _planted_logits():
    """20 samples, 8 classes: the label ranks 1st for 7 samples, 2nd for 5, 4th for 3, 7th for 5."""
    rng = np.random.default_rng(0)
    ranks = np.array([0] * 7 + [1] * 5 + [3] * 3 + [6] * 5)
    rng.shuffle(ranks)
    logits = np.zeros((len(ranks), 8), np.float32)
    labels = rng.integers(0, 8, len(ranks)).astype(np.int32)
    for i, (rank, label) in enumerate(zip(ranks, labels)):
        values = np.sort(rng.uniform(-3, 3, 8))[::-1]            # distinct, descending
        order = [c for c in rng.permutation(8) if c != label]
        order.insert(rank, label)                                 # label at position `rank`
        logits[i, order] = values
    return logits, labels, ranks


def test_evaluate_on_planted_logits():
    logits, labels, ranks = _planted_logits()
    data = ms.dataset.NumpySlicesDataset((logits, labels), column_names=["image", "label"],
                                         shuffle=False).batch(6)   # a partial last batch too
    smoothing = 0.1
    result = evaluate(Identity(), data, label_smoothing=smoothing)
    assert result["samples"] == 20
    assert result["top1"] == pytest.approx(7 / 20)
    assert result["top5"] == pytest.approx(15 / 20)
    x = logits.astype(np.float64)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    loss = (1 - smoothing) * -log_p[np.arange(20), labels] + smoothing * -log_p.mean(axis=1)
    assert result["loss"] == pytest.approx(loss.mean(), rel=1e-6)
    ms_loss = nn.CrossEntropyLoss(label_smoothing=smoothing)(Tensor(logits), Tensor(labels))
    assert result["loss"] == pytest.approx(float(ms_loss.asnumpy()), rel=1e-5)


# --------------------------------------------------------------------------- RPG pruner promises
def _rpg(sparsity=0.9):
    ms.set_context(mode=ms.GRAPH_MODE)   # training runs in graph mode (an earlier test may leave PyNative)
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10, "image_size": 28,
                        "prune_method": "rpg", "sparsity": sparsity, "delta": 5,
                        "epoch_size": 1}, {})
    ms.set_seed(0)
    net = build_network(cfg)
    session = build_training_graph(cfg, net, 40, logging.getLogger("t.promise"), (1, 1, 28, 28))
    pruner, ctx = session.pruner, session.ctx
    return pruner, ctx


def test_best_accuracy_counts_only_after_the_last_update():
    pruner, _ = _rpg()
    last = pruner.update_steps[-1]
    assert last == 35
    # an evaluation after `last` finished iterations comes before the update at step `last`
    assert [pruner.accept_best(s) for s in (0, 5, last - 1, last, last + 1, 40)] == \
        [False, False, False, False, True, True]


def _prune_to(pruner, ctx, names, sparsity):
    """Global magnitude pruning to the given sparsity, written into the network and its masks."""
    weights = {n: w.copy() for n, w in ctx.get_weights(names).items()}
    flat = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
    threshold = np.sort(flat)[int(round(sparsity * flat.size))]
    ctx.set_weights({n: np.where(np.abs(w) >= threshold, w, 0.0) for n, w in weights.items()})
    pruner.masks_piece.install({n: np.abs(w) >= threshold for n, w in weights.items()})
    total = sum(w.size for w in weights.values())
    return sum(int((ctx.get_weights([n])[n] == 0).sum()) for n in names) / total


def test_sparsity_of_counts_exact_zeros():
    from src.pruning.core.base import sparsity_of
    assert sparsity_of([np.array([0.0, 1.0, -0.0, 2.0]), np.zeros((2, 2))]) == 6 / 8   # -0.0 is a zero
    assert sparsity_of([np.array([1e-30, 3.0])]) == 0.0 and sparsity_of([]) == 0.0


def test_final_sparsity_error_and_its_exit_code(capsys):
    pruner, ctx = _rpg()
    with pytest.raises(SystemExit) as stop:
        run(lambda: pruner.on_train_end(ctx))      # dense weights: sparsity 0, target 0.9
    assert stop.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: final sparsity")
    assert _prune_to(pruner, ctx, pruner.names, 0.898) == pytest.approx(0.898, abs=1e-5)
    with pytest.raises(FinalSparsityError):         # 0.2 points off: more than the 0.1 allowed
        pruner.on_train_end(ctx)
    assert _prune_to(pruner, ctx, pruner.names, 0.9) == pytest.approx(0.9, abs=1e-5)
    pruner.on_train_end(ctx)                        # on target: no error
    # a weight regrown at 0 that stayed 0 (a dead unit) is kept by its mask: not "over-sparse"
    masks = pruner.masks()
    name = pruner.names[3]
    kept = np.flatnonzero(masks[name])[:5]
    weight = ctx.get_weights([name])[name].copy()
    weight.reshape(-1)[kept] = 0.0
    ctx.set_weights({name: weight})
    pruner.on_train_end(ctx)
    # a non-zero weight outside its mask is a broken invariant, never passed silently
    weight.reshape(-1)[np.flatnonzero(~masks[name])[0]] = 1.0
    ctx.set_weights({name: weight})
    with pytest.raises(RuntimeError, match="outside their mask"):
        pruner.on_train_end(ctx)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture()
def small_ckpt(tmp_path):
    cfg = build_config({"net": "resnet20", "in_channels": 1, "num_classes": 10}, {})
    net = build_network(cfg)
    path = tmp_path / "a.ckpt"
    checkpoint.save_atomic(net, str(path), meta={"net": "resnet20", "step": 7})
    return net, path


def test_bit_flipped_checkpoint_is_refused(small_ckpt):
    _, path = small_ckpt
    params, meta, _ = checkpoint.load(str(path))
    assert meta["step"] == 7 and params
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10                     # one bit, inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load(str(path))


def test_checkpoints_get_the_umask_mode_not_mindspores_0400(tmp_path):
    old = os.umask(0o027)
    try:
        checkpoint.save_atomic([ms.Parameter(Tensor(np.ones(3, np.float32)), name="w")],
                               str(tmp_path / "c.ckpt"))
    finally:
        os.umask(old)
    assert oct((tmp_path / "c.ckpt").stat().st_mode & 0o777) == oct(0o640)


@pytest.mark.parametrize("partial", [True, False])
def test_checkpoint_writer_failing_mid_write_keeps_the_earlier_file(small_ckpt, monkeypatch,
                                                                     partial):
    net, path = small_ckpt
    before = digest(path)
    real = ms.save_checkpoint

    def failing(items, file_name, **kwargs):
        if partial:
            with open(file_name, "wb") as handle:       # half a file, then the disk is full
                handle.write(b"\x0a" * 4096)
        else:
            real(items, file_name, **kwargs)            # all written, the sync fails
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.ms, "save_checkpoint", failing)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        checkpoint.save_atomic(net, str(path), meta={"net": "resnet20", "step": 8})
    assert digest(path) == before
    assert os.listdir(path.parent) == ["a.ckpt"]       # the temporary file is gone


def test_sparse_writer_failing_mid_write_keeps_the_earlier_file(tmp_path, monkeypatch):
    path = tmp_path / "w.sparse.npz"
    sparse_format.write_sparse({"w": np.eye(4, dtype=np.float32)}, str(path))
    before = digest(path)

    def failing(handle, **payload):
        handle.write(b"PK\x03\x04" + b"\x00" * 1000)
        raise OSError("No space left on device")

    monkeypatch.setattr(sparse_format.np, "savez_compressed", failing)
    with pytest.raises(OSError):
        sparse_format.write_sparse({"w": np.zeros((4, 4), np.float32)}, str(path))
    assert digest(path) == before
    assert os.listdir(tmp_path) == ["w.sparse.npz"]


# --------------------------------------------------------------------------- sparse format
def test_sparse_format_round_trip_bit_for_bit(tmp_path):
    rng = np.random.default_rng(4)
    sparse = np.where(rng.random((8, 3, 3, 3)) < 0.9, 0.0, rng.standard_normal((8, 3, 3, 3)))
    sparse = sparse.astype(np.float32)
    sparse.reshape(-1)[:5] = -0.0                        # negative zeros among the pruned
    dense = rng.standard_normal((6, 4)).astype(np.float32)
    dense[0, 0] = -0.0
    arrays = {"conv.weight": sparse, "fc.weight": dense, "bn.gamma": rng.standard_normal(8)
              .astype(np.float32), "empty.weight": np.zeros((4, 2, 3, 3), np.float32),
              "neg_zero.weight": np.full((3, 5), -0.0, np.float32),
              "tiny": np.array([np.float32(1e-45), np.float32(-3.4e38)], np.float32)}
    path = tmp_path / "x.sparse.npz"
    size = sparse_format.write_sparse(arrays, str(path), {"net": "resnet20", "widths": [[1, 2]]})
    assert size == os.path.getsize(path)
    restored, meta = sparse_format.read_sparse(str(path))
    assert meta == {"net": "resnet20", "widths": [[1, 2]]}
    assert set(restored) == set(arrays)
    for name, value in arrays.items():
        got = restored[name]
        assert got.dtype == np.float32 and got.shape == value.shape, name
        want = np.where(value == 0, np.float32(0.0), value)          # +0.0 for every zero
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
        assert not np.signbit(got[got == 0]).any(), name
    # sparse tensors really are stored sparse (positions + values), not dense
    rng = np.random.default_rng(0)
    big = {"big.weight": np.where(rng.random((256, 256, 3, 3)) < 0.9, 0.0,
                                  rng.standard_normal((256, 256, 3, 3))).astype(np.float32)}
    size = sparse_format.write_sparse(big, str(tmp_path / "big.sparse.npz"))
    assert size < 0.25 * big["big.weight"].nbytes
