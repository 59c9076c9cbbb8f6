"""Shared entry-point behaviour: user errors become one line on stderr and exit code 2 (config)
or 1 (data, checkpoint, training, export), never a traceback."""
import argparse
import os
import sys

from src.errors import CheckpointError, ConfigError, DataError, ExportError, TrainingError
from src.interrupt import EXIT_CODE, STOP, Interrupted
from src.outputs import OutputError, OutputExists


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: ...``, exit 2), as train.py's are."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def user_errors():
    """Exception classes that mean "the input is wrong", with their exit codes."""
    return [(ConfigError, 2), (OutputExists, 2), (DataError, 1), (CheckpointError, 1), (TrainingError, 1),
            (ExportError, 1), (OutputError, 1)]


def run(main):
    """Call ``main()``; turn known user errors into one clear line and a non-zero exit."""
    STOP.install()  # the entry scripts install it first thing already; again for other callers
    known = user_errors()
    try:
        main()
    except tuple(cls for cls, _ in known) as err:
        code = next(c for cls, c in known if isinstance(err, cls))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(code)
    except OSError as err:  # the file system said no: read-only, no space, no permission
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        sys.exit(1)
    except (Interrupted, KeyboardInterrupt) as err:
        print(str(err) if isinstance(err, Interrupted) else "interrupted", file=sys.stderr)
        # Skip the interpreter's exit handlers: a MindSpore interrupted half-way through its import
        # registers ones that fail with a traceback. Outputs are already whole (atomic writes).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CODE)
