"""Recipe configuration: a yaml file plus ``--key value`` overrides, checked against one schema.

Every key a recipe or the command line may set is declared once with its type, accepted range
and default: the keys every run has in ``src/recipe_keys.py``, each pruning method's keys on its
class (``src.pruning.core.registry``); ``schema()`` joins them. A typo or an out-of-range value raises
``ConfigError`` with one line that names the key and says what is accepted; the entry scripts
turn it into exit code 2.
"""
import difflib
import math
import os
import sys

import yaml

from src.errors import ConfigError
from src.outputs import refuse_existing
from src.pruning import methods  # noqa: F401  (registers the built-in methods)
from src.pruning.core import registry
from src.recipe_keys import ALIASES, BASE_KEYS, CIFAR_NETS, PRUNING_BASE_KEYS, Key, parse_bool_flag  # noqa: F401  (re-exported)


def schema():
    """{key: Key} of every recipe key: BASE_KEYS and the keys of every registered pruning method."""
    keys = dict(BASE_KEYS)
    method = keys["prune_method"]
    keys["prune_method"] = Key(str, method.default, choices=list(registry.METHODS), help_text=method.help)
    for name, key in registry.method_keys().items():
        if name in keys:
            raise RuntimeError(f"config key '{name}' declared twice")
        keys[name] = key
    return keys


def _coerce(name, key, value):
    """Convert a yaml or command-line value to the declared type, or raise ConfigError."""
    kind = key.kind
    if value is None and kind is str:
        return ""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value), 10) if isinstance(value, str) else int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):  # nan/inf slip through every range check
                raise ValueError
            return number
        if kind is list:
            if isinstance(value, (list, tuple)):
                return list(value)
            if isinstance(value, str):
                parsed = yaml.safe_load(value) if value.strip().startswith("[") else \
                    [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(parsed, list):
                    raise ValueError
                return parsed
            raise ValueError
        if isinstance(value, (list, tuple, dict, set)):   # str() would make a folder named "['a', 'b']"
            raise ValueError
        return str(value)
    except (TypeError, ValueError, yaml.YAMLError):
        raise ConfigError(f"config key '{name}': got {value!r}, expected {key.describe()}") from None


def _check_range(name, key, value):
    ok = True
    if key.choices is not None and value not in key.choices:
        ok = False
    if key.kind in (int, float):
        if key.low is not None and (value < key.low or (key.low_open and value == key.low)):
            ok = False
        if key.high is not None and (value > key.high or (key.high_open and value == key.high)):
            ok = False
    if not ok:
        raise ConfigError(f"config key '{name}': got {value!r}, expected {key.describe()}")


def _unknown_key_error(name, where, flags=()):
    """One line naming the closest recipe keys, entry-script flags and aliases."""
    keys = schema()
    known = list(keys) + list(flags) + [a for a, target in ALIASES.items() if target in keys or target in flags]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key '{name}' in {where}{hint}")


class Config(dict):
    """A checked recipe; keys are readable as attributes (``cfg.batch_size``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice (plain yaml keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError(f"config key on line {key_node.start_mark.line + 1} is a "
                                  f"{type(key).__name__}, not a name")
            if key in seen:
                raise ConfigError(f"config key '{key}' is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_UniqueKeyLoader) or {}
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (UTF-8) file") from None
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid yaml: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def build_config(values_from_file, overrides, config_path="<defaults>", network_known=True):
    """Merge defaults, file values and overrides; check every key, type and range, and the
    relations between keys (the pruning method's own ones too). ``network_known=False``: the
    network is not the recipe's (SparseTraining / PruningAlgorithm on a user's network), so checks
    that read the recipe's network keys are left to the method, which sees the network itself."""
    keys = schema()
    cfg = Config({name: key.default for name, key in keys.items()})
    given = set()
    for source, values in ((config_path, values_from_file), ("the command line", overrides)):
        for name, value in _resolve_aliases(values, source, keys).items():
            if name not in keys:
                raise _unknown_key_error(name, source)
            cfg[name] = _coerce(name, keys[name], value)
            given.add(name)
    object.__setattr__(cfg, "given", frozenset(given))  # not a recipe key: kept off the dict
    object.__setattr__(cfg, "network_known", network_known)
    _method_defaults(cfg, given)
    for name, value in cfg.items():
        _check_range(name, keys[name], value)
    _check_relations(cfg, keys)
    cfg["config_path"] = config_path
    return cfg


def _method_defaults(cfg, given):
    """A shared key the recipe leaves out takes its method's own default (e.g. RigL's erk)."""
    if cfg.prune_method in registry.METHODS:
        for name, value in registry.key_defaults(cfg.prune_method).items():
            if name not in given:
                cfg[name] = value


def _resolve_aliases(values, where, keys):
    """Recipe-key aliases of a yaml mapping replaced by their key; both given is an error."""
    resolved, given_as = {}, {}
    for name, value in values.items():
        key = ALIASES.get(name, name) if ALIASES.get(name) in keys else name
        if key in resolved:
            raise ConfigError(f"config key '{key}' is given twice in {where} (as '{given_as[key]}' "
                              f"and as '{name}')")
        resolved[key], given_as[key] = value, name
    return resolved


def _check_relations(cfg, keys):
    if cfg.lr_end > cfg.lr_max:
        raise ConfigError(f"config key 'lr_end': got {cfg.lr_end}, expected at most lr_max ({cfg.lr_max})")
    if cfg.warmup_epochs > cfg.epoch_size:
        raise ConfigError(f"config key 'warmup_epochs': got {cfg.warmup_epochs}, "
                          f"expected at most epoch_size ({cfg.epoch_size})")
    for key in ("prune_include", "prune_exclude", "resume_allow_changes"):
        if not all(isinstance(item, str) and item for item in cfg[key]):
            raise ConfigError(f"config key '{key}': got {cfg[key]!r}, expected a list of names or "
                              "name patterns (strings)")
    _check_network(cfg)
    _check_paths(cfg, keys)
    registry.check_recipe(cfg)
    for epoch in cfg.lr_decay_epochs:
        if not isinstance(epoch, (int, float)) or epoch <= 0:
            raise ConfigError(f"config key 'lr_decay_epochs': got {cfg.lr_decay_epochs!r}, "
                              "expected a list of positive epoch numbers")


# Image channels each data set's pipeline delivers.
DATASET_CHANNELS = {"fashion_mnist": 1, "cifar10": 3, "imagenet": 3}
# Set by msrun (MS_ROLE, MS_WORKER_NUM), an Ascend rank table, or OpenMPI on every worker.
LAUNCHER_VARIABLES = ("MS_ROLE", "MS_WORKER_NUM", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")
CIFAR_BASE_WIDTHS = (16, 32, 64)


def keys_of_other_methods(cfg):
    """Keys the recipe or command line set that cfg.prune_method does not read (ignored under it):
    other methods' keys, e.g. lamb on a GMP run, and base pruning keys it has no use for, e.g.
    sparsity on a PSAP run (its target is the MACs cut)."""
    own = set(registry.keys_of(cfg.prune_method))
    own |= set(registry.METHODS[cfg.prune_method].base_keys_read)
    foreign = (set(registry.method_keys()) | set(PRUNING_BASE_KEYS)) - own
    return sorted(k for k in getattr(cfg, "given", ()) if k in foreign)


def _check_network(cfg):
    channels = DATASET_CHANNELS[cfg.dataset]
    if cfg.in_channels != channels:
        raise ConfigError(f"config key 'in_channels': got {cfg.in_channels}, but {cfg.dataset} images "
                          f"have {channels} channel(s)")
    cifar_style = cfg.net in CIFAR_NETS
    if not cifar_style and cfg.width_multiplier != 1.0:
        raise ConfigError(f"config key 'width_multiplier': {cfg.net} is an ImageNet-style ResNet with "
                          f"fixed widths; width_multiplier applies to {', '.join(CIFAR_NETS)} only")
    if cifar_style and min(round(c * cfg.width_multiplier) for c in CIFAR_BASE_WIDTHS) < 1:
        raise ConfigError(f"config key 'width_multiplier': {cfg.width_multiplier} rounds the narrowest "
                          f"stage ({CIFAR_BASE_WIDTHS[0]} channels) to 0; use at least "
                          f"{0.5 / CIFAR_BASE_WIDTHS[0]:.4f}")


def check_training_mode(cfg):
    """Training runs in graph mode: PyNative training breaks in MindSpore 2.8 on CPU (option-A
    shortcuts: StridedSliceGrad out of bounds; RPG: the optimizer's step counter), so it is refused."""
    if cfg.mode != "graph":
        raise ConfigError("config key 'mode': training runs in graph mode only (PyNative training fails "
                          "in MindSpore 2.8); 'pynative' is for eval.py and export.py")


def check_launcher(cfg):
    """A data-parallel run must be started by a launcher; without one MindSpore's init() hangs."""
    if cfg.run_distribute and not any(os.environ.get(v) for v in LAUNCHER_VARIABLES):
        raise ConfigError("config key 'run_distribute': true needs a launcher (msrun or a rank table): "
                          "start it with scripts/run_distribute_train.sh")


def check_output_path(key, path, kind="file", overwrite=False):
    """``path`` must be creatable as a ``kind`` ('file' or 'dir'): an existing entry of the other kind,
    a file where a parent folder should be or a missing folder (for a file) is a ConfigError naming
    ``key``; an existing file that ``overwrite`` does not allow to replace is the OutputExists of
    src/outputs.refuse_existing (exit 2 as well)."""
    if not path:
        return
    full = os.path.abspath(path)
    if kind == "dir" and os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"{key} '{path}' exists and is not a directory")
    if kind == "file" and os.path.isdir(full):
        raise ConfigError(f"{key} '{path}' is a directory, expected a file name")
    if kind == "file":
        refuse_existing(path, overwrite, key)
    parent = os.path.dirname(full)
    while parent and not os.path.exists(parent):
        if kind == "file":
            raise ConfigError(f"{key} '{path}': directory {os.path.dirname(full)} does not exist")
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"{key} '{path}': {parent} is a file, not a directory")


def _check_paths(cfg, keys):
    if not cfg.output_dir.strip():
        raise ConfigError("config key 'output_dir': must name a directory")
    check_output_path("output_dir", cfg.output_dir, kind="dir")
    if os.path.isdir(cfg.output_dir) and not os.access(cfg.output_dir, os.W_OK):
        raise ConfigError(f"config key 'output_dir': {cfg.output_dir} is not writable")
    unknown = [k for k in cfg.resume_allow_changes if k != "all" and k not in keys]
    if unknown:
        raise _unknown_key_error(unknown[0], "resume_allow_changes")


def parse_args(argv=None, extra_flags=None, description=None):
    """Parse ``--config_path FILE`` and ``--key value`` pairs into a checked Config.

    ``extra_flags`` maps flag names that belong to the entry script, not the recipe
    (``--ckpt``, ``--json_out``), to their default; they come back as a second dict.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra_flags = dict(extra_flags or {})
    if any(a in ("-h", "--help") for a in argv):
        _print_help(description, extra_flags)
        raise SystemExit(0)
    config_path = None
    overrides, extras = {}, dict(extra_flags)
    seen = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}': arguments take the form --key value")
        name, value = arg[2:], None
        if "=" in name:
            name, value = name.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 1
        i += 1
        if value is None:
            raise ConfigError(f"--{name} needs a value")
        name = _command_line_name(name, extra_flags, seen)
        if name == "config_path":
            config_path = value
        elif name in extra_flags:
            extras[name] = value
        else:
            overrides[name] = value
    file_values = load_yaml(config_path) if config_path else {}
    cfg = build_config(file_values, overrides, config_path or "<defaults>")
    return cfg, extras


def _command_line_name(given, extra_flags, seen):
    """The key or flag ``--given`` sets (aliases resolved); unknown or repeated is a ConfigError.
    ``seen`` collects the names already given."""
    name = given
    keys = schema()
    if ALIASES.get(given) in keys or ALIASES.get(given) in extra_flags:
        name = ALIASES[given]
    if name not in keys and name not in extra_flags and name != "config_path":
        raise _unknown_key_error(given, "the command line", extra_flags)
    if name in seen:
        also = f" (also as --{given})" if given != name else ""
        raise ConfigError(f"--{name} is given twice on the command line{also}")
    seen.add(name)
    return name


def _aliases_of(name):
    names = [alias for alias, target in ALIASES.items() if target == name]
    return f"  (also --{', --'.join(names)})" if names else ""


def _print_help(description, extra_flags):
    print((description or "").strip() + "\n")
    print("usage: --config_path FILE [--key value ...]\n")
    for name in extra_flags:
        print(f"  --{name}{_aliases_of(name)}")
    print("\nrecipe keys (any may be overridden):")
    for name, key in schema().items():
        extra = f"  ({key.help})" if key.help else ""
        print(f"  --{name:<28} default {key.default!r}{_defaults_by_method(name)}; {key.describe()}{extra}"
              f"{_aliases_of(name)}")


def _defaults_by_method(name):
    """' (rigl: 'erk')' for a key whose default a method sets for itself."""
    own = [f"{method}: {registry.key_defaults(method)[name]!r}" for method in registry.METHODS
           if name in registry.key_defaults(method)]
    return f" ({', '.join(own)})" if own else ""
