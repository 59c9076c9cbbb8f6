"""Errors that end a run with one clear line (see src/cli.py). They live here, away from the
modules that raise them, so that the entry scripts can recognise them without importing MindSpore."""


class DataError(ValueError):
    """A data set that is missing, malformed or does not fit the request (one-line message)."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the network (one-line message)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, pruning target missed, run too short)."""


def require_finite_loss(loss, step, where=""):
    """Stop training on a NaN/Inf loss with one line naming the (1-based) step."""
    import math
    if not math.isfinite(loss):
        raise TrainingError(f"loss is {loss} at step {step}{where}; stopping. The last good "
                            "checkpoint is left as it was: lower lr_max or check the data")
