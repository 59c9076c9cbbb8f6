"""Evaluation: top-1, top-5 and loss over a dataset, reduced across data-parallel workers."""
import numpy as np
from mindspore import nn, ops, Tensor

from src.dataset import batches


class _SumAcrossWorkers(nn.Cell):
    def __init__(self):
        super().__init__()
        self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM)  # the only reduction MindSpore has on CPU

    def construct(self, x):
        return self.all_reduce(x)


_REDUCER = []


def all_reduce(array):
    """Sum of a float32 host array over all data-parallel workers.

    A collective call: every worker must make it, with arrays of the same shape.
    """
    if not _REDUCER:
        _REDUCER.append(_SumAcrossWorkers())
    return _REDUCER[0](Tensor(np.asarray(array, np.float32))).asnumpy()


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def evaluate(net, dataset, label_smoothing=0.0, distributed=False):
    """Returns {"top1", "top5", "loss", "samples"}; loss uses the training label smoothing."""
    net.set_train(False)
    correct1 = correct5 = 0
    loss_sum, count = 0.0, 0
    for image, label in batches(dataset):
        logits = net(image).asnumpy().astype(np.float64)
        labels = label.asnumpy().astype(np.int64)
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1)[:, :k]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(axis=1).sum())
        log_probs = _log_softmax(logits)
        nll = -log_probs[np.arange(len(labels)), labels]
        smooth = -log_probs.mean(axis=1)
        loss_sum += float(((1 - label_smoothing) * nll + label_smoothing * smooth).sum())
        count += len(labels)
    totals = np.array([correct1, correct5, loss_sum, count], np.float64)
    if distributed:
        totals = all_reduce(totals).astype(np.float64)
    correct1, correct5, loss_sum, count = totals
    if count == 0:
        raise ValueError("evaluation set is empty")
    return {"top1": correct1 / count, "top5": correct5 / count, "loss": loss_sum / count,
            "samples": int(count)}
