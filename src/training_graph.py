"""The training graph from a recipe: optimizer with per-step learning rates, loss, mixed-precision
twin and the pruning method's ``SparseTraining`` (``src.sparse_training``), shared by the Trainer
and the benchmarks so that both run exactly the same graph; and the helpers around it
(weight-decay groups, pre-trained weights, BatchNorm statistics across workers)."""
import numpy as np
from mindspore import nn, Parameter, Tensor

from src import checkpoint
from src.lr_schedule import learning_rates
from src.metrics import all_reduce
from src.models import build_network, training_network
from src.sparse_training import SparseTraining


def weight_decay_groups(net, weight_decay):
    """Weight decay on conv/FC weights only: BatchNorm parameters and biases are exempt."""
    decay, no_decay = [], []
    for param in net.trainable_params():
        (decay if param.name.endswith("weight") and len(param.shape) > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"order_params": net.trainable_params()}]


# what a training checkpoint holds beside the network, and the leaf names of a network's parameters
TRAINING_STATE_PREFIXES = ("moments.", "pruning_mask.", "pruner.", "meta.", "grad_energy", "worker_bn_statistics")
LAYER_PARAMETERS = ("weight", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def load_pretrained(net, path, logger):
    """Load weights; a classifier with another class count is skipped with a warning."""
    params, _, _ = checkpoint.load(path)
    own = {p.name: p for p in net.get_parameters()}
    skip = [name for name in ("fc.weight", "fc.bias")
            if name in own and name in params and tuple(params[name].shape) != tuple(own[name].shape)]
    if skip:
        logger.warning(f"pre_trained {path}: classifier shape differs from this network's "
                       f"({len(skip)} tensors); the classifier keeps its fresh initialisation")
    # layers of the file the network lacks (a ResNet-20 file into a ResNet-8) would be dropped
    extra = [n for n in params if n not in own and not n.startswith(TRAINING_STATE_PREFIXES)
             and n.endswith(LAYER_PARAMETERS)]
    if extra:
        raise checkpoint.CheckpointError(f"pre_trained {path} holds {len(extra)} layer parameter(s) this "
                                         f"network does not have (first: '{extra[0]}'): it was made for "
                                         "another network (net, width_multiplier, shortcut)")
    checkpoint.load_into(net, params, path, strict=True, skip=skip)
    logger.info(f"loaded pre-trained weights from {path}")


BN_STATISTICS = ("moving_mean", "moving_variance")
# in a checkpoint written on a stop: every worker's own statistics, one row per rank
WORKER_STATISTICS = "worker_bn_statistics"


def _bn_statistics(net):
    return [p for p in net.get_parameters() if p.name.endswith(BN_STATISTICS)]


def gather_bn_statistics(net, rank, group_size):
    """Every worker's own BatchNorm moving statistics as a Parameter with one row per rank.

    A collective call; exact (each row is summed with zeros). A run stopped between two averagings
    keeps them in its checkpoint, so that each resumed worker continues from its own statistics, as
    it would have without the stop (``restore_bn_statistics``).
    """
    flat = np.concatenate([p.asnumpy().reshape(-1) for p in _bn_statistics(net)]).astype(np.float32)
    rows = np.zeros((group_size, flat.size), np.float32)
    rows[rank] = flat
    return Parameter(Tensor(all_reduce(rows)), name=WORKER_STATISTICS, requires_grad=False)


def restore_bn_statistics(net, params, rank, group_size):
    """Set this worker's statistics from a checkpoint's ``WORKER_STATISTICS`` rows, if it has
    them for this many workers; returns whether it did."""
    rows = params.get(WORKER_STATISTICS)
    stats = _bn_statistics(net)
    if rows is None or tuple(rows.shape) != (group_size, sum(p.size for p in stats)):
        return False
    flat, offset = rows.asnumpy()[rank], 0
    for param in stats:
        value = param.asnumpy()
        param.set_data(Tensor(flat[offset:offset + value.size].reshape(value.shape).astype(value.dtype)))
        offset += value.size
    return True


def average_bn_statistics(net, group_size):
    """Average BatchNorm moving statistics over the data-parallel workers, in place.

    A collective call (every worker must make it). Each worker's statistics come from its own
    batches; afterwards every worker holds the same model. Training is unaffected (it normalises
    with batch statistics).
    """
    params = [p for p in net.get_parameters() if p.name.endswith(BN_STATISTICS)]
    if group_size <= 1 or not params:
        return
    values = [p.asnumpy() for p in params]
    flat = all_reduce(np.concatenate([v.reshape(-1) for v in values])) / group_size
    offset = 0
    for param, value in zip(params, values):
        param.set_data(Tensor(flat[offset:offset + value.size].reshape(value.shape).astype(value.dtype)))
        offset += value.size


def build_training_graph(cfg, net, steps_per_epoch, logger, input_shape, training_batches=None):
    """A ``SparseTraining`` for the recipe (its pruner, train step and context), with ``lrs``,
    the per-step learning rates, set on it. ``input_shape`` and ``training_batches``: what the
    loop gives a method that needs them (``SparseTraining``)."""
    total_steps = steps_per_epoch * cfg.epoch_size
    lrs = learning_rates(cfg.lr_schedule, cfg.lr_max, total_steps, steps_per_epoch,
                         cfg.warmup_epochs, cfg.lr_end, cfg.lr_decay_epochs,
                         cfg.lr_decay_rate, cfg.poly_power)
    optimizer = nn.Momentum(weight_decay_groups(net, cfg.weight_decay),
                            learning_rate=Tensor(lrs), momentum=cfg.momentum,
                            loss_scale=cfg.loss_scale)
    # amp_level: the optimizer steps run a float16 twin sharing net's float32 Parameters; the
    # method's dense gradients (RPG's) use the float32 network
    train_net = training_network(net, cfg.amp_level, lambda: build_network(cfg))
    if train_net is not net:
        logger.info(f"mixed precision {cfg.amp_level}: optimizer steps in float16 (BatchNorm, loss and "
                    f"master weights float32), static loss_scale {cfg.loss_scale:g}")
    session = SparseTraining(net, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), optimizer,
                             steps_per_epoch=steps_per_epoch, logger=logger, settings=cfg,
                             amp_network=None if train_net is net else train_net,
                             input_shape=input_shape, training_batches=training_batches)
    session.lrs = lrs
    return session
