"""MindSpore execution mode and device, with one clear line when the device is not there."""
import os

import mindspore as ms

from src.config import LAUNCHER_VARIABLES
from src.errors import ConfigError


def device_available(target):
    """Whether this MindSpore build and machine can run on ``target``; MindSpore's own probe prints
    several warning lines about missing plug-ins, which are silenced here (the caller says it in one)."""
    if target == "CPU":
        return True
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            return bool(ms.hal.is_available(target))
    except Exception:  # a broken plug-in counts as "not available"
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def set_up_device(cfg):
    """Graph or PyNative mode on the recipe's device (``device_id`` of a standalone run); ConfigError
    if the device is missing."""
    if not device_available(cfg.device_target):
        raise ConfigError(f"config key 'device_target': {cfg.device_target} is not available with this "
                          f"MindSpore build on this machine (CPU is); pass --device_target CPU to run "
                          "here")
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    device_id = standalone_device_id(cfg)
    try:
        if device_id is None:
            ms.set_device(cfg.device_target)
        else:
            ms.set_device(cfg.device_target, device_id)
    except RuntimeError:
        # MindSpore refuses a second call once its runtime runs (entry points called in-process,
        # as the tests do); the same device is fine, another one is a real error
        if ms.get_context("device_target") != cfg.device_target or \
                (device_id is not None and ms.get_context("device_id") != device_id):
            raise


def standalone_device_id(cfg):
    """``device_id`` checked against the devices this machine has, or None under a data-parallel
    launcher (msrun / a rank table assigns each worker its device; the key is ignored there)."""
    if cfg.run_distribute or any(os.environ.get(v) for v in LAUNCHER_VARIABLES):
        return None
    count = _device_count(cfg.device_target)
    if count is not None and cfg.device_id >= count:
        raise ConfigError(f"config key 'device_id': got {cfg.device_id}, but this machine has {count} "
                          f"{cfg.device_target} device(s) (ids 0..{count - 1})")
    return cfg.device_id


def _device_count(target):
    """Devices of ``target`` on this machine, None when MindSpore cannot tell (then it decides)."""
    try:
        return int(ms.hal.device_count(target))
    except Exception:  # an old driver or plug-in without the query: leave the check to MindSpore
        return None
