"""The pruning methods by ``prune_method`` name, and the recipe keys they declare on their class.

The recipe schema (``src.config.schema``) is built from here: a method's keys exist exactly when
its class is registered. The built-in methods are registered by ``src.pruning.methods``;
``register`` adds another (e.g. a test's toy method) without touching the loop or the train step.
"""
import re

from src.pruning.core.base import SUPPLIES, Pruner, prunable_weight_names
from src.recipe_keys import ALIASES, BASE_KEYS, SCRIPT_FLAGS, Key

METHODS = {}


def register(method):
    """Make ``method`` (a Pruner subclass with its own ``name``) selectable by prune_method.

    Refused with a ValueError, leaving the registry as it was: a name that is taken by another
    class, keys that are not ``src.recipe_keys.Key`` declarations, a key another method or the
    base recipe already declares, a need the training loop cannot supply, and ``key_defaults``
    for keys the method does not read or with values the key does not accept."""
    if not (isinstance(method, type) and issubclass(method, Pruner)):
        raise TypeError(f"{method!r} is not a Pruner subclass")
    name = method.name
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name) \
            or METHODS.get(name, method) is not method:
        raise ValueError(f"prune_method name {name!r} of {method.__name__} is taken by "
                         f"{METHODS[name].__name__}: give the class its own name"
                         if name in METHODS else f"{method.__name__}.name must be lower case letters, "
                         f"digits and _ (a recipe value), got {name!r}")
    own = vars(method).get("keys", {})
    wrong = [k for k, v in own.items() if not isinstance(v, Key)]
    if wrong:
        raise ValueError(f"{method.__name__}.keys['{wrong[0]}'] must be a src.recipe_keys.Key declaration")
    clash = [k for k in own if k in BASE_KEYS or k in ALIASES or k in SCRIPT_FLAGS
             or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", k)]
    if clash:
        raise ValueError(f"{method.__name__} declares '{clash[0]}': a key every run has, an alias, "
                         "an entry script's flag, or not a plain name")
    unknown = [n for n in method.needs if n not in SUPPLIES]
    if unknown:
        raise ValueError(f"{method.__name__}.needs '{unknown[0]}': the training loop supplies only "
                         f"{', '.join(SUPPLIES)}")
    previous = METHODS.get(name)
    METHODS[name] = method
    try:
        method_keys()
        _check_key_defaults(name)
    except RuntimeError as err:
        if previous is None:
            del METHODS[name]
        else:
            METHODS[name] = previous
        raise ValueError(str(err)) from None
    return method


def key_defaults(method_name):
    """{key: default} the method ``method_name`` sets for keys it shares with other methods
    (``key_defaults`` on its class or a base class, e.g. RigL's density_distribution erk)."""
    defaults = {}
    for klass in reversed(METHODS[method_name].__mro__):
        defaults.update(vars(klass).get("key_defaults", {}))
    return defaults


def _check_key_defaults(method_name):
    keys = keys_of(method_name)
    for name, value in key_defaults(method_name).items():
        key = keys.get(name)
        if key is None or (key.choices is not None and value not in key.choices) \
                or not isinstance(value, key.kind):
            raise RuntimeError(f"{METHODS[method_name].__name__}.key_defaults['{name}'] = {value!r}: not a "
                               "value of a key the method reads")


def keys_of(method_name):
    """The recipe keys the method ``method_name`` reads (its own and its base classes')."""
    keys = {}
    for klass in reversed(METHODS[method_name].__mro__):
        keys.update(vars(klass).get("keys", {}))
    return keys


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


def build_pruner(cfg, net, steps_per_epoch, logger, supplies=None):
    """The recipe's method, given what it ``needs`` of ``supplies`` ({name: value}; None if absent)."""
    method = METHODS[cfg.prune_method]
    supplies = supplies or {}
    pruner = method(cfg, net, steps_per_epoch, logger, **{need: supplies.get(need) for need in method.needs})
    pruner.training_batches = supplies.get("training_batches")   # any method may re-estimate BatchNorm
    return pruner


def pruned_weight_names(net, recipe):
    """The weights a run of ``recipe`` (a Config, or a checkpoint's recorded recipe) prunes: the
    conv/FC weights its prune_include / prune_exclude select for a method that reads them, every
    conv/FC weight otherwise (and when the patterns select none)."""
    everything = prunable_weight_names(net)
    method = METHODS.get(recipe.get("prune_method", "none"))
    if method is None or "prune_include" not in method.base_keys_read:
        return everything
    return prunable_weight_names(net, recipe.get("prune_include") or (),
                                 recipe.get("prune_exclude") or ()) or everything
