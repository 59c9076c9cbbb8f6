"""Errors that end a run with one clear line (see src/cli.py). They live here, away from the
modules that raise them, so that the entry scripts can recognise them without importing MindSpore."""


class DataError(ValueError):
    """A data set that is missing, malformed or does not fit the request (one-line message)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the network (one-line message)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, pruning target missed, run too short)."""


class DeadNetworkError(TrainingError):
    """Pruning left a network whose output no longer depends on its input (e.g. a whole layer cut)."""


FLOAT16_MAX = 65504.0


def require_finite_loss(loss, step, where="", loss_scale=None, last_loss=None):
    """Stop training on a NaN/Inf loss with one line naming the (1-based) step.

    ``loss_scale``: the static loss scale when the train step computes in float16 (amp_level
    O1-O3), else None. When the scaled loss of the last finite step (``last_loss``, or 1 before any)
    exceeds float16's range, the line names that overflow instead of the learning rate or the data."""
    import math
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
