"""The recipe keys every run has (run, data, network, optimisation, logging, checkpoints and the
keys shared by all pruning methods), their declaration type ``Key`` and the model-zoo aliases.
Each pruning method declares its own keys on its class (``src.pruning.core.registry``);
``src.config.schema()`` joins both."""
from src.errors import ConfigError


class Key:
    """Declaration of one configuration key."""

    def __init__(self, kind, default, low=None, high=None, choices=None, help_text="",
                 low_open=False, high_open=False):
        self.kind = kind            # int, float, str, bool or list
        self.default = default
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.choices = choices
        self.help = help_text

    def describe(self):
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is not None or self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            low = "-inf" if self.low is None else self.low
            high = "inf" if self.high is None else self.high
            return f"a{'n' if self.kind is int else ''} {self.kind.__name__} in {left}{low}, {high}{right}"
        return "a finite number" if self.kind is float else f"a value of type {self.kind.__name__}"


# ImageNet-style ResNets and the CIFAR-style ones (6n+2 layers, three stages; resnet8 is the n=1 net
# for small data and quick experiments); src/models/resnet.py holds their depth tables
IMAGENET_NETS = ["resnet18", "resnet34", "resnet50"]
CIFAR_NETS = ["resnet8", "resnet20", "resnet32", "resnet56", "resnet110"]
NETS = IMAGENET_NETS + CIFAR_NETS

BASE_KEYS = {
    # --- run ---
    "device_target": Key(str, "CPU", choices=["CPU", "GPU", "Ascend"]),
    "mode": Key(str, "graph", choices=["graph", "pynative"]),
    "seed": Key(int, 42, 0, 2**31 - 1),
    "output_dir": Key(str, "./output"),
    "run_distribute": Key(bool, False),
    "device_id": Key(int, 0, 0, 4095, help_text="device of a standalone run; a data-parallel launcher "
                                              "assigns devices itself and this key is ignored"),
    "amp_level": Key(str, "O0", choices=["O0", "O1", "O2", "O3"],
                     help_text="mixed precision of the train step: O0 float32; O1 float16 convs/matmuls; "
                               "O2/O3 float16 except BatchNorm and the loss (see README)"),
    # --- data ---
    "dataset": Key(str, "fashion_mnist", choices=["imagenet", "cifar10", "fashion_mnist"]),
    "data_path": Key(str, ""),
    "eval_data_path": Key(str, "", help_text="evaluation data; '' = found in data_path (val/, the "
                                             "model zoo's validation_preprocess/, or the test files)"),
    "image_size": Key(int, 0, 0, 1024, help_text="0 = the data set's native size (224, 32, 28)"),
    "eval_resize": Key(int, 256, 8, 1200),
    "batch_size": Key(int, 128, 1, 65536),
    "eval_batch_size": Key(int, 0, 0, 65536, help_text="0 = same as batch_size"),
    "train_samples": Key(int, 0, 0, None, help_text="0 = all"),
    "eval_samples": Key(int, 0, 0, None, help_text="0 = all"),
    "num_parallel_workers": Key(int, 2, 1, 64),
    "crop_padding": Key(int, 4, 0, 64),
    # --- network ---
    "net": Key(str, "resnet20", choices=NETS),
    "num_classes": Key(int, 10, 2, 100000),
    "in_channels": Key(int, 1, 1, 16),
    "width_multiplier": Key(float, 1.0, 0.0, 16.0, low_open=True),
    "shortcut": Key(str, "auto", choices=["auto", "A", "B"]),
    "zero_init_residual": Key(bool, False),
    # --- optimisation ---
    "epoch_size": Key(int, 1, 1, 100000),
    "optimizer": Key(str, "momentum", choices=["momentum"]),
    "momentum": Key(float, 0.9, 0.0, 1.0, high_open=True),
    "weight_decay": Key(float, 1e-4, 0.0, 1.0),
    "lr_schedule": Key(str, "cosine", choices=["cosine", "step", "poly", "constant"]),
    "lr_max": Key(float, 0.1, 0.0, 100.0, low_open=True),
    "lr_end": Key(float, 0.0, 0.0, 100.0),
    "warmup_epochs": Key(float, 0.0, 0.0, 10000.0),
    "lr_decay_epochs": Key(list, [], help_text="epochs where the step schedule multiplies by lr_decay_rate"),
    "lr_decay_rate": Key(float, 0.1, 0.0, 1.0, low_open=True),
    "poly_power": Key(float, 2.0, 0.0, 100.0, low_open=True),
    "label_smoothing": Key(float, 0.0, 0.0, 1.0, high_open=True),
    "loss_scale": Key(float, 1.0, 1.0, 2.0**24),
    # --- logging, evaluation, checkpoints ---
    "log_interval": Key(int, 20, 1, None),
    "eval_interval": Key(int, 1, 0, None, help_text="epochs between evaluations; 0 = only at the end"),
    "save_checkpoint_epochs": Key(int, 1, 1, None),
    "save_checkpoint_steps": Key(int, 0, 0, None, help_text="0 = only at epoch ends"),
    "keep_checkpoint_max": Key(int, 5, 1, None),
    "resume_ckpt": Key(str, "", help_text="checkpoint to continue from; 'auto' = newest of the run in output_dir"),
    "resume_allow_changes": Key(list, [], help_text="recipe keys a resume may change on purpose "
                                                   "(e.g. [epoch_size]); [all] = any"),
    "pre_trained": Key(str, ""),
    "scratch_warning": Key(str, "", help_text="logged as a warning when the run starts without "
                                              "pre_trained (recipes whose published number needs one)"),
    # --- pruning (shared) ---
    "prune_method": Key(str, "none", help_text="a registered pruning method (src/pruning/methods.py)"),
    "sparsity": Key(float, 0.9, 0.0, 1.0, high_open=True),
    "prune_include": Key(list, [], help_text="name patterns of prunable weights; [] = every conv and FC weight"),
    "prune_exclude": Key(list, [], help_text="name patterns removed from the prunable set"),
}


# base keys only some pruning methods read (a method lists those it does in Pruner.base_keys_read;
# a run that sets one its method does not read is told so)
PRUNING_BASE_KEYS = ("sparsity", "prune_include", "prune_exclude")

# Names users of the MindSpore model zoo's official/cv/ResNet type, mapped to ours. A target is a
# recipe key or an entry script's own flag; an alias whose target the script lacks is unknown.
ALIASES = {
    "checkpoint_file_path": "ckpt",   # zoo eval.py
    "ckpt_file": "ckpt",              # zoo yaml / export.py
    "eval_dataset_path": "eval_data_path",
}


# The entry scripts' own flags (not recipe keys): no recipe key, alias or method key may take them.
SCRIPT_FLAGS = ("config_path", "ckpt", "json_out", "report_png", "overwrite", "file_format",
                "file_name", "export_batch", "fold_bn")


def parse_bool_flag(name, text):
    """An entry script's own true/false flag (``--overwrite true``)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"--{name}: got {text!r}, expected true or false")
