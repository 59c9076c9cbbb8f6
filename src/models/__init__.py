"""Network construction from a recipe."""
from src.models.precision import AMP_LEVELS, training_network  # noqa: F401
from src.models.resnet import build_resnet, count_parameters, default_inner_widths  # noqa: F401


def build_network(cfg, inner_widths=None):
    """The recipe's ResNet in float32 (also under ``amp_level``: only the train step's twin is cast,
    see src/models/precision.py); ``inner_widths`` (from a compact checkpoint) shrinks the inner convs."""
    shortcut = None if cfg.shortcut == "auto" else cfg.shortcut
    return build_resnet(cfg.net, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                        width_multiplier=cfg.width_multiplier, shortcut=shortcut,
                        inner_widths=inner_widths, zero_gamma=cfg.zero_init_residual)


def network_from_checkpoint(cfg, path):
    """Rebuild the network a checkpoint holds (compact widths come from its metadata) and load it.

    Returns (net in eval mode, checkpoint metadata). Raises CheckpointError when the file is
    missing, unreadable, or made for another network.
    """
    from src import checkpoint
    params, meta, _ = checkpoint.load(path)
    if meta.get("net") and meta["net"] != cfg.net:
        raise checkpoint.CheckpointError(f"checkpoint {path} holds a {meta['net']}, the config "
                                         f"builds a {cfg.net}")
    net = build_network(cfg, meta.get("inner_widths"))
    checkpoint.load_into(net, params, path, strict=True)
    net.set_train(False)
    return net, meta
