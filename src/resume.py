"""Whether a checkpoint may continue this run: the checks train.py makes before it loads one
(``Trainer._resume``). Changes that could never work are refused before the recipe check
(``run_record.check_recipe``), whose line would otherwise advise allowing them with
``resume_allow_changes``; data-parallel workers must all continue from the same step."""
import numpy as np

from src import run_record
from src.errors import CheckpointError, ConfigError
from src.metrics import all_reduce
from src.models import ARCHITECTURE_KEYS
from src.pruning.core.registry import keys_of


def refuse_weights_only(path, meta):
    """A checkpoint that holds weights but no training run cannot be continued."""
    if meta.get("converted_from"):  # scripts/convert_*.py
        raise CheckpointError(
            f"{path} is a converted pre-trained checkpoint (from {meta['converted_from']}), not a "
            "training run: give it as --pre_trained")
    if "step" not in meta:  # e.g. a model-zoo checkpoint, PSAP's last_compact.ckpt
        raise CheckpointError(
            f"{path} records no training step, so it is not a checkpoint of a training run "
            "(last.ckpt or *_step<N>.ckpt): give pre-trained weights as --pre_trained")


# method keys that do not touch the masks (what happens after the last epoch): resume_allow_changes may
# change them mid-run, e.g. adding bn_recalibration to a 99 % run already under way
CHANGEABLE_MID_RUN = {"bn_recalibration"}


def refuse_pruning_changes(cfg, path, meta):
    """The pruning target and the method's keys cannot change once a pruning run has begun,
    even when resume_allow_changes names them: the masks so far were built for the old ones
    (the run would end off target, or the change would do nothing)."""
    step = int(meta.get("step") or 0)
    if cfg.prune_method == "none" or not step or meta.get("recipe") is None:
        return
    fixed = set(keys_of(cfg.prune_method)) - CHANGEABLE_MID_RUN | {"sparsity", "prune_include", "prune_exclude",
                                                                   "prune_method"}
    changed = [k for k in run_record.recipe_changes(meta["recipe"], cfg, allowed=()) if k in fixed]
    if changed:
        raise ConfigError(f"checkpoint {path} is {step} steps into a pruning run: "
                          f"{', '.join(changed)} cannot change mid-run (start a new run instead)")


def refuse_impossible_changes(cfg, path, meta, steps_per_epoch, output_dir):
    """Changes that resume_allow_changes could not make work, refused before the recipe check
    (whose line would otherwise advise allowing them): another number of steps per epoch,
    another length of a pruning run, another network, any change to a complete run."""
    total_steps = steps_per_epoch * cfg.epoch_size
    saved_recipe = meta.get("recipe")
    changed = run_record.recipe_changes(saved_recipe or {}, cfg, allowed=())
    network = [k for k in changed if k in ARCHITECTURE_KEYS]
    if network:   # the checkpoint's weights fit one network only
        raise ConfigError(f"checkpoint {path} holds another network "
                          f"({run_record.describe_changes(saved_recipe, cfg, network)}): a run cannot "
                          "continue on another network; resume with the checkpoint's values, or start a "
                          "new run (its weights as --pre_trained where they fit)")
    saved_per_epoch = meta.get("steps_per_epoch")
    if saved_per_epoch != steps_per_epoch:
        keys = [k for k in ("batch_size", "train_samples", "dataset") if k in changed]
        what = run_record.describe_changes(saved_recipe or {}, cfg, keys) if keys else \
            "another data set size or device count"
        raise ConfigError(f"checkpoint {path} was made with {saved_per_epoch} steps per epoch, this "
                          f"run has {steps_per_epoch} ({what}): a run cannot continue with "
                          "another number of steps per epoch (its place in the data and its "
                          "schedules count steps); resume with the checkpoint's values, or start a "
                          "new run in another --output_dir")
    saved_steps = saved_per_epoch * (saved_recipe or {}).get("epoch_size", 0)
    if cfg.prune_method != "none" and saved_steps and saved_steps != total_steps:
        # mask updates sit at fractions of the whole run: another length moves every one of them
        raise ConfigError(f"checkpoint {path} is from a {saved_steps}-step run, this one has "
                          f"{total_steps}: a pruning schedule cannot be stretched mid-run "
                          "(only a dense run, prune_method none, can be given more epochs)")
    if int(meta.get("step") or 0) >= total_steps and saved_recipe is not None and changed:
        raise ConfigError(f"the run in {output_dir} is already complete ({meta['step']} "
                          f"steps): changing {', '.join(changed)} now would have no effect")


def check_same_start(cfg, rank, group_size, start_step, output_dir):
    """Data-parallel resume: every worker must continue from the same step (a collective call)."""
    if not cfg.run_distribute:
        return
    steps = np.zeros(group_size, np.float32)
    steps[rank] = start_step
    steps = all_reduce(steps)  # every worker's start step (exact below 2**24)
    if steps.min() != steps.max():
        raise CheckpointError(
            f"workers resumed from different steps ({int(steps.min())} to {int(steps.max())}): "
            f"every worker must see the same checkpoints in {output_dir} (shared storage)")
