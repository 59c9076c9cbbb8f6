"""The pruning methods by ``prune_method`` name, and the recipe keys they declare on their class.

The recipe schema (``src.config.schema``) is built from here: a method's keys exist exactly when
its class is registered. ``register`` adds a method (e.g. a test's toy method) without touching
the loop or the train step.
"""
from src.pruning.base import Pruner
from src.pruning.gmp import GMPPruner
from src.pruning.psap import PSAPPruner
from src.pruning.rigl import RigLPruner
from src.pruning.rpg import RPGPruner

METHODS = {}


def register(method):
    """Make ``method`` (a Pruner subclass with a unique ``name``) selectable by prune_method."""
    if not (isinstance(method, type) and issubclass(method, Pruner)):
        raise TypeError(f"{method!r} is not a Pruner subclass")
    METHODS[method.name] = method
    return method


for _method in (Pruner, GMPPruner, RPGPruner, RigLPruner, PSAPPruner):
    register(_method)


def method_keys():
    """{key: Key} of every registered method; a key declared by a shared base class (e.g.
    T_end_percent on HardMaskPruner) counts once, the same name declared twice is an error."""
    keys, owner = {}, {}
    for method in METHODS.values():
        for klass in method.__mro__:
            for name, key in vars(klass).get("keys", {}).items():
                if name in keys and owner[name] is not klass:
                    raise RuntimeError(f"config key '{name}' declared by both {owner[name].__name__} "
                                       f"and {klass.__name__}")
                keys[name], owner[name] = key, klass
    return keys


def check_recipe(cfg):
    METHODS[cfg.prune_method].check_recipe(cfg)


def build_pruner(cfg, net, steps_per_epoch, logger):
    return METHODS[cfg.prune_method](cfg, net, steps_per_epoch, logger)
