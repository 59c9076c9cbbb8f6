"""Errors that end a run with one clear line (see src/cli.py): every one a user can act on
(a recipe, data set, checkpoint, export or training problem). They live here, away from the
modules that raise them, so that the entry scripts can recognise them without importing MindSpore
and every module can raise them without importing another. (A few subclasses name a method's own
failure beside the code that raises it, e.g. hard masks' FinalSparsityError, a TrainingError;
``src.outputs.OutputError`` is an OSError of the one atomic write.)"""
import math


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message is one line."""


class DataError(ValueError):
    """A data set that is missing, malformed or does not fit the request (one-line message)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the network (one-line message)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, pruning target missed, run too short)."""


class ExportError(RuntimeError):
    """Export failed or its result does not match the checkpoint."""


def require_finite_loss(loss, step, where=""):
    """Stop training on a NaN/Inf loss with one line naming the (1-based) step."""
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} at step {step}{where}; stopping. The last good "
                            "checkpoint is left as it was: lower lr_max or check the data")
