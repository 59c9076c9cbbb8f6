"""Training logs: stdout and ``output_dir/<name>.log``, with start-up records held back until the
run is accepted, and ``metrics.jsonl``, the structured record benchmarks and plots read."""
import itertools
import json
import logging
import logging.handlers
import os
import sys
import time

from src.outputs import write_text_atomic


def setup_logger(output_dir, rank=0, name="train"):
    """Log to stdout and to ``output_dir/<name>.log`` (rank 0) or ``<name>_rank<N>.log``.

    File records are held back until ``open_log_file(logger)``: a run refused during start-up
    (another run's directory, a mismatched resume) leaves an earlier log byte-identical.
    """
    logger = logging.getLogger(f"prune.{name}.{rank}")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    os.makedirs(output_dir, exist_ok=True)
    filename = f"{name}.log" if rank == 0 else f"{name}_rank{rank}.log"
    file_handler = logging.FileHandler(os.path.join(output_dir, filename), delay=True)
    file_handler.setFormatter(fmt)
    logger.addHandler(_HeldBack(0, target=file_handler))
    if rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        stream.addFilter(lambda record: not getattr(record, "file_only", False))
        logger.addHandler(stream)
    return logger


# ``logger.info(message, extra=FILE_ONLY)``: into the log file, not on stdout (for a line the
# entry script prints itself, on stderr, so that the terminal shows it once).
FILE_ONLY = {"file_only": True}


class _HeldBack(logging.handlers.MemoryHandler):
    """Keeps records until released (also at interpreter exit, when logging flushes every handler)."""
    released = False

    def shouldFlush(self, record):
        return self.released

    def flush(self):
        if self.released:
            super().flush()


def open_log_file(logger):
    """Write the held-back start-up records to the log file and every later record at once."""
    for handler in logger.handlers:
        if isinstance(handler, _HeldBack):
            handler.released = True
            handler.flush()


class MetricsFile:
    """``output_dir/metrics.jsonl``: one JSON object per event (train log interval, evaluation,
    mask update, PSAP pruning step), appended and flushed as it happens, written by rank 0.

    On resume the events after the checkpoint's step are dropped first (they belong to the part
    of the run that is repeated), so the file reads as one uninterrupted run. An event marked
    ``"before_iteration": true`` (a mask update "at step t" runs before iteration t + 1) comes
    after the checkpoint of its step, so it is repeated too. A fresh start sets an earlier file
    aside (``start``): the file never mixes two attempts."""

    NAME = "metrics.jsonl"

    def __init__(self, output_dir, enabled=True):
        self.path = os.path.join(output_dir, self.NAME)
        self.enabled = enabled

    def start(self, step, same_run, logs=("train.log",)):
        """Begin an accepted attempt. Resuming the run the file belongs to (``same_run``) from the
        checkpoint of ``step`` keeps the events up to it; anything else (a fresh run, ``auto``
        finding no checkpoint, a checkpoint of another run) sets the file and ``logs`` aside as
        ``<name>.abandoned-<time of their last write>.<ext>``. Returns [(old name, new name)]."""
        if not self.enabled:
            return []
        if same_run:
            self.truncate_after(step)
            return []
        return set_aside(os.path.dirname(self.path), (self.NAME, *logs))

    def truncate_after(self, step):
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path, encoding="utf-8") as handle:
            kept = [line if line.endswith("\n") else line + "\n" for line in handle
                    if line.strip() and _written_by_step(line, step)]
        write_text_atomic("".join(kept), self.path)

    def __call__(self, event):
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_plain(event), sort_keys=False) + "\n")


def _written_by_step(line, step):
    """Whether the event on ``line`` was written before the checkpoint of ``step``."""
    try:
        event = json.loads(line)
        at = int(event.get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return False  # a line torn by a kill mid-write (the event is replayed after the resume)
    return at < step or (at == step and event.get("before_iteration") is not True)


def _plain(event):
    """JSON-safe values (numpy scalars to Python numbers)."""
    out = {}
    for key, value in event.items():
        if hasattr(value, "item") and getattr(value, "size", 1) == 1:
            value = value.item()
        out[key] = value
    return out


def set_aside(folder, names):
    """Rename the files ``names`` of ``folder`` that exist to ``<stem>.abandoned-<stamp><ext>``,
    one stamp for all (the time of the newest one's last write; ``-2``, ``-3`` ... if taken).
    Returns [(old name, new name)]."""
    found = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if not found:
        return []
    newest = max(os.path.getmtime(os.path.join(folder, n)) for n in found)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(newest))

    def target(name, suffix):
        stem, ext = os.path.splitext(name)
        return f"{stem}.abandoned-{stamp}{suffix}{ext}"
    suffixes = ("" if i == 1 else f"-{i}" for i in itertools.count(1))
    suffix = next(s for s in suffixes
                  if not any(os.path.exists(os.path.join(folder, target(n, s))) for n in found))
    moved = [(n, target(n, suffix)) for n in found]
    for old, new in moved:
        os.rename(os.path.join(folder, old), os.path.join(folder, new))
    return moved


def read_metrics(output_dir, event=None):
    """The events of a run's metrics.jsonl (those named ``event`` only, when given). A line that
    is not one JSON object is a ValueError naming the file's line number (blank lines count)."""
    path = os.path.join(output_dir, MetricsFile.NAME)
    events = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
                parsed = json.loads(line) if line.strip() else None
            except UnicodeDecodeError:
                raise ValueError(f"line {number}: not UTF-8 text") from None
            except json.JSONDecodeError as err:
                raise ValueError(f"line {number}, column {err.colno}: "
                                 f"{err.msg.removesuffix(' at')}") from None
            if line.strip() and not isinstance(parsed, dict):
                raise ValueError(f"line {number}: not a JSON object")
            if parsed is not None:
                events.append(parsed)
    return [e for e in events if event is None or e.get("event") == event]
