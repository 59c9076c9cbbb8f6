"""One data-parallel worker of tests/test_model_train.py (launched by msrun): RPG through
``ms.Model.train`` on this worker's shard of a toy data set; writes every parameter of the train
network (weights, masks, momentum, step counter) and the mask-update steps to OUT/rank<N>.npz.

    msrun --worker_num 2 ... tests/model_train_worker.py OUT
"""
import os
import sys

import numpy as np
import mindspore as ms
import mindspore.dataset as de
from mindspore import nn
from mindspore.communication import get_group_size, get_rank, init

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.pruning.api import PruningAlgorithm  # noqa: E402
from tests.test_api import SIZE, PlainConvNet  # noqa: E402


def toy_data(count=64, seed=0):
    """The class sets the row of a bright band (as tests/test_api.py's batches)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, count).astype(np.int32)
    image = rng.normal(0, 0.3, (count, 1, SIZE, SIZE)).astype(np.float32)
    for i, c in enumerate(label):
        image[i, 0, c:c + 4, :] += 2.0
    return image, label


def main(out):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    init()
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    ms.set_seed(3)
    ds = de.NumpySlicesDataset(toy_data(), column_names=["image", "label"], shuffle=False,
                               num_shards=size, shard_id=rank).batch(8)
    algo = PruningAlgorithm("rpg", steps_per_epoch=ds.get_dataset_size(), epochs=2, sparsity=0.9,
                            delta=2)
    net = algo.apply(PlainConvNet())
    opt = algo.optimizer(nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9))
    model = ms.Model(net, nn.CrossEntropyLoss(), opt)
    model.train(2, ds, callbacks=algo.callbacks(ds), dataset_sink_mode=False)
    algo.convert(net)   # averages the BatchNorm statistics over the workers
    arrays = {p.name: p.asnumpy() for p in model.train_network.get_parameters()}
    steps = [e["step"] for e in algo.events if e["event"] == "mask_update"]
    np.savez(os.path.join(out, f"rank{rank}.npz"), update_steps=np.array(steps), **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
