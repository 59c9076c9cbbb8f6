"""Network construction from a recipe."""
from src import checkpoint
from src.models.precision import AMP_LEVELS, training_network  # noqa: F401
from src.models.resnet import build_resnet, count_parameters, default_inner_widths, is_cifar_style  # noqa: F401


def build_network(cfg, inner_widths=None, stage_widths=None):
    """The recipe's ResNet in float32 (also under ``amp_level``: only the train step's twin is cast,
    see src/models/precision.py); ``inner_widths`` and ``stage_widths`` (from a compact checkpoint)
    shrink the inner convs and the residual streams."""
    shortcut = None if cfg.shortcut == "auto" else cfg.shortcut
    return build_resnet(cfg.net, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                        width_multiplier=cfg.width_multiplier, shortcut=shortcut,
                        inner_widths=inner_widths, zero_gamma=cfg.zero_init_residual,
                        stage_widths=stage_widths)


# recipe keys that decide the network's architecture (what a checkpoint's weights must fit)
ARCHITECTURE_KEYS = ("net", "num_classes", "in_channels", "width_multiplier", "shortcut")


def _architecture(recipe):
    """The architecture keys of a recipe, with shortcut 'auto' resolved as build_resnet does."""
    arch = {k: recipe.get(k) for k in ARCHITECTURE_KEYS}
    if arch["shortcut"] == "auto" and arch["net"]:
        arch["shortcut"] = "A" if is_cifar_style(arch["net"]) else "B"
    return arch


def check_architecture(cfg, meta, path):
    """A checkpoint whose recipe built another network than ``cfg`` would (e.g. shortcut B weights
    read into an option-A network, the 1x1 shortcut convs silently dropped) is a CheckpointError
    naming the keys to pass."""
    saved = meta.get("recipe")
    if not saved:
        return
    ours, theirs = _architecture(cfg), _architecture(saved)
    differ = [k for k in ARCHITECTURE_KEYS if theirs[k] is not None and theirs[k] != ours[k]]
    if differ:
        hint = " ".join(f"--{k} {theirs[k]}" for k in differ)
        raise checkpoint.CheckpointError(f"checkpoint {path} holds a network built with {hint}; the "
                                         f"config builds another: pass {hint}")


def network_from_checkpoint(cfg, path):
    """Rebuild the network a checkpoint holds (compact widths come from its metadata) and load it.

    Returns (net in eval mode, checkpoint metadata). Raises CheckpointError when the file is
    missing, unreadable, or made for another network.
    """
    params, meta, _ = checkpoint.load(path)
    check_architecture(cfg, meta, path)   # every differing key in one line, when the recipe is recorded
    if meta.get("net") and meta["net"] != cfg.net:
        raise checkpoint.CheckpointError(f"checkpoint {path} holds a {meta['net']}, the config "
                                         f"builds a {cfg.net}: pass --net {meta['net']}")
    net = build_network(cfg, meta.get("inner_widths"), meta.get("stage_widths"))
    checkpoint.load_into(net, params, path, strict=True)
    checkpoint.require_finite(net, path)
    net.set_train(False)
    return net, meta
