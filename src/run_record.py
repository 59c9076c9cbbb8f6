"""Which run an output directory holds, and whether a checkpoint may continue it.

A fresh training run claims its ``output_dir`` by writing ``run.json`` (a random run id and the
recipe). Every checkpoint carries the same run id and recipe in its metadata. So:
- a fresh run never writes into a directory that already holds a run (it would replace that run's
  ``last.ckpt`` and step checkpoints): it is refused with one line;
- ``resume_ckpt auto`` only considers checkpoints of the run recorded in ``run.json``;
- a resume whose recipe differs from the checkpoint's in a key that changes the run's meaning is
  refused with one line naming the keys, unless ``resume_allow_changes`` lists them.
"""
import glob
import json
import math
import os
import re
import uuid

from src.errors import ConfigError
from src.outputs import write_json_atomic

RUN_FILE = "run.json"
# Keys that say where and how a run executes, not what it computes: they may differ on resume
# (a moved data set, another logging interval, more eval workers). Every other key is part of
# the recipe, including keys added later, so a new key is protected by default.
OPERATIONAL_KEYS = frozenset({
    "output_dir", "resume_ckpt", "resume_allow_changes", "config_path", "data_path", "eval_data_path",
    "device_target", "device_id", "mode", "num_parallel_workers", "log_interval", "eval_interval",
    "eval_batch_size", "eval_samples", "save_checkpoint_epochs", "save_checkpoint_steps",
    "keep_checkpoint_max", "pre_trained", "scratch_warning", "run_distribute",
})
_STEP_NAME = re.compile(r"_step(\d+)\.ckpt$")


def new_run_id():
    return uuid.uuid4().hex[:16]


def recipe_of(cfg):
    """The keys of ``cfg`` that define what the run computes, as JSON-compatible values."""
    return json.loads(json.dumps({k: v for k, v in cfg.items() if k not in OPERATIONAL_KEYS}))


def recipe_changes(saved, cfg, allowed=None):
    """Recipe keys whose value in ``cfg`` differs from the ``saved`` recipe (sorted), minus the
    ``allowed`` keys (default: ``cfg.resume_allow_changes``); ``["all"]`` allows any change."""
    allowed = set(cfg.resume_allow_changes if allowed is None else allowed)
    if "all" in allowed:
        return []
    current = recipe_of(cfg)
    keys = sorted(set(current) | set(saved))
    return [k for k in keys if current.get(k) != saved.get(k) and k not in allowed]


def training_checkpoints(output_dir):
    """Training checkpoints in ``output_dir``, newest first: last.ckpt, then step checkpoints by step."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(output_dir), "*.ckpt")):
        match = _STEP_NAME.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
        elif os.path.basename(path) == "last.ckpt":
            found.append((math.inf, path))
    return [path for _, path in sorted(found, reverse=True)]


def step_checkpoints(output_dir):
    """Step checkpoints in ``output_dir``, oldest first (what keep_checkpoint_max counts)."""
    return [p for p in reversed(training_checkpoints(output_dir)) if _STEP_NAME.search(p)]


def remove_stale_temporaries(output_dir):
    """Checkpoint files half-written by a process killed mid-save (their names start with a dot:
    ``.<name>.tmp<pid>.ckpt`` and MindSpore's ``.tmp``, see src/outputs.py temporary_name and
    checkpoint.save_atomic); only one run writes to a directory."""
    for pattern in (".*.ckpt.tmp*.ckpt", ".*.ckpt.tmp*.tmp"):
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            os.remove(path)


def read_run(output_dir):
    """The run record of ``output_dir`` ({'run_id', 'recipe'}), or None."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        return {"run_id": str(record["run_id"]), "recipe": dict(record["recipe"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"output_dir {output_dir}: unreadable run record {RUN_FILE} ({err})") from None


def claim_fresh(output_dir):
    """A new run's id for ``output_dir``; refuse if the directory holds another run's checkpoints.

    Only the checkpoints count (a run that wrote none left nothing to lose), so every data-parallel
    worker reaches the same verdict. Nothing is written: the trainer records the run (``write_run``)
    once it is accepted, so a refused start leaves an earlier record as it was.
    """
    existing = training_checkpoints(output_dir)
    if existing:
        raise ConfigError(f"output_dir {output_dir} already holds a training run ({len(existing)} "
                          f"checkpoint(s), newest {os.path.basename(existing[0])}): continue it with "
                          "--resume_ckpt auto, or choose a new --output_dir")
    return new_run_id()


def write_run(output_dir, run_id, recipe):
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic({"run_id": run_id, "recipe": recipe}, os.path.join(output_dir, RUN_FILE))
    return run_id


def describe_changes(saved, cfg, changed, shown=4):
    """The first ``shown`` of the ``changed`` keys as "key (saved -> now)", and how many more."""
    now = recipe_of(cfg)
    text = ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed[:shown])
    return text + (f" and {len(changed) - shown} more" if len(changed) > shown else "")


def check_recipe(path, meta, cfg):
    """Refuse to continue from a checkpoint made with another recipe (one line naming the keys)."""
    saved = meta.get("recipe")
    if saved is None:
        if "all" in cfg.resume_allow_changes:
            return
        raise ConfigError(f"checkpoint {path} records no recipe (written by an older version), so this "
                          "resume cannot be checked: pass --resume_allow_changes all to continue anyway")
    changed = recipe_changes(saved, cfg)
    if changed:
        raise ConfigError(f"checkpoint {path} was made with another recipe: "
                          f"{describe_changes(saved, cfg, changed)}; resume with "
                          f"the same recipe, or allow the change with --resume_allow_changes "
                          f"{','.join(changed)}")
