"""Errors that end a run with one clear line (see src/cli.py)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, pruning target missed, run too short)."""
