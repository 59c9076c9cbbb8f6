"""BatchNorm statistics re-estimated exactly (src/models/batchnorm.py): the average of the batch
statistics, whatever the moving averages held before; PSAP's final step and the unstructured
methods' ``bn_recalibration`` use it."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from src.models.batchnorm import reestimate_batchnorm
from src.pruning.api import SparseTraining
from tests.test_api import PlainConvNet, make_batches


@pytest.fixture(autouse=True)
def graph(graph_mode):
    yield


class OnlyBatchNorm(nn.Cell):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def construct(self, x):
        return self.bn(x)


def test_statistics_are_the_average_of_the_batches_whatever_was_there():
    rng = np.random.default_rng(0)
    images = [rng.normal(loc, scale, (4, 3, 5, 5)).astype(np.float32)
              for loc, scale in ((0.0, 1.0), (2.0, 0.5), (-1.0, 3.0))]
    data = [(Tensor(x), None) for x in images] + [(Tensor(images[0] + 100), None)]   # the 4th is not used
    net = OnlyBatchNorm()
    # stale statistics far from the data (a channel whose variance fell by 10 orders of magnitude)
    net.bn.moving_mean.set_data(Tensor(np.full(3, 50.0, np.float32)))
    net.bn.moving_variance.set_data(Tensor(np.full(3, 1e10, np.float32)))
    assert reestimate_batchnorm(net, data, 3) == 3
    means = np.mean([x.mean(axis=(0, 2, 3)) for x in images], axis=0)
    variances = np.mean([x.var(axis=(0, 2, 3), ddof=1) for x in images], axis=0)  # unbiased, as MindSpore
    np.testing.assert_allclose(net.bn.moving_mean.asnumpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bn.moving_variance.asnumpy(), variances, rtol=1e-4)
    # moving-average updates instead (what forward passes alone do) keep 0.9 ** 3 of the stale value
    net.bn.moving_variance.set_data(Tensor(np.full(3, 1e10, np.float32)))
    net.set_train(True)
    for image, _ in data[:3]:
        net(image)
    assert np.all(net.bn.moving_variance.asnumpy() > 0.7 * 1e10)


def test_no_batches_leave_the_statistics_as_they_were():
    net = OnlyBatchNorm()
    net.bn.moving_mean.set_data(Tensor(np.full(3, 7.0, np.float32)))
    assert reestimate_batchnorm(net, None, 5) == 0 and reestimate_batchnorm(net, [], 5) == 0
    assert reestimate_batchnorm(net, [(Tensor(np.ones((2, 3, 2, 2), np.float32)), None)], 0) == 0
    np.testing.assert_array_equal(net.bn.moving_mean.asnumpy(), np.full(3, 7.0))


def _gmp_run(**keys):
    ms.set_seed(1)
    net = PlainConvNet()
    batches = make_batches()
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.05, momentum=0.9)
    sparse = SparseTraining(net, nn.CrossEntropyLoss(), optimizer, method="gmp", sparsity=0.9,
                            gmp_frequency=4, steps_per_epoch=len(batches), epochs=2,
                            training_batches=make_batches(count=6, seed=9), **keys)   # a list will do
    events = []
    sparse.ctx.recorders.append(events.append)
    for epoch in range(2):
        for image, label in batches:
            sparse.step(image, label)
        before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
        sparse.end_epoch()   # the last one re-estimates, before the caller evaluates
    sparse.finish()
    return net, before, [e for e in events if e["event"] == "bn_recalibration"]


def test_bn_recalibration_of_an_unstructured_method_at_its_last_epoch_end():
    net, before, events = _gmp_run(bn_recalibration=4)
    assert [(e["batches"], e["asked"]) for e in events] == [(4, 4)]
    after = {p.name: p.asnumpy() for p in net.get_parameters()}
    changed = {n for n in after if not np.array_equal(after[n], before[n])}
    assert changed and all(n.endswith(("moving_mean", "moving_variance")) for n in changed)  # no weight moved
    # exact: independent of what the moving averages held, so doing it again changes nothing
    reestimate_batchnorm(net, make_batches(count=6, seed=9), 4)
    for name in changed:
        np.testing.assert_allclose(net.parameters_dict()[name].asnumpy(), after[name], rtol=1e-6, atol=1e-7)
    # the default is the reference: the moving averages are kept as training left them
    net, before, events = _gmp_run()
    assert events == [] and all(np.array_equal(p.asnumpy(), before[p.name]) for p in net.get_parameters())
