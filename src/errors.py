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


class DeadNetworkError(TrainingError):
    """Pruning left a network whose output no longer depends on its input (e.g. a whole layer cut)."""


class ExportError(RuntimeError):
    """Export failed or its result does not match the checkpoint."""


FLOAT16_MAX = 65504.0


def require_finite_loss(loss, step, where="", loss_scale=None, last_loss=None):
    """Stop training on a NaN/Inf loss with one line naming the (1-based) step.

    ``loss_scale``: the static loss scale when the train step computes in float16 (amp_level
    O1-O3), else None. When the scaled loss of the last finite step (``last_loss``, or 1 before any)
    exceeds float16's range, the line names that overflow instead of the learning rate or the data."""
    if math.isfinite(loss):
        return
    last = max(abs(last_loss) if last_loss is not None else 1.0, 1.0)
    if (loss_scale or 0.0) * last > FLOAT16_MAX:
        raise TrainingError(f"loss is {loss} at step {step}{where}: float16 overflow of the scaled "
                            f"loss (loss_scale {loss_scale:.10g} x loss {last:.3g} > {FLOAT16_MAX:g}, "
                            "float16's largest value); stopping, the last good checkpoint is left as "
                            "it was: lower loss_scale (e.g. 1024)")
    raise TrainingError(f"loss is {loss} at step {step}{where}; stopping. The last good "
                        "checkpoint is left as it was: lower lr_max or check the data")
