"""MindSpore execution mode and device, with one clear line when the device is not there."""
import os

import mindspore as ms

from src.config import ConfigError


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
    """Graph or PyNative mode on the recipe's device; ConfigError if the device is missing."""
    if not device_available(cfg.device_target):
        raise ConfigError(f"config key 'device_target': {cfg.device_target} is not available with this "
                          f"MindSpore build on this machine (CPU is); pass --device_target CPU to run "
                          "here")
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE)
    try:
        ms.set_device(cfg.device_target)
    except RuntimeError:
        # MindSpore refuses a second call once its runtime runs (entry points called in-process,
        # as the tests do); the same device is fine, another one is a real error
        if ms.get_context("device_target") != cfg.device_target:
            raise
