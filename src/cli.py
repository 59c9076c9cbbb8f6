"""Shared entry-point behaviour: user errors become one line on stderr and exit code 2 (config)
or 1 (data, checkpoint, training), never a traceback."""
import sys

from src.config import ConfigError


def user_errors():
    """Exception classes that mean "the input is wrong", with their exit codes."""
    from src.checkpoint import CheckpointError
    from src.dataset import DataError
    from src.errors import TrainingError
    return [(ConfigError, 2), (DataError, 1), (CheckpointError, 1), (TrainingError, 1)]


def run(main, extra_errors=()):
    """Call ``main()``; turn known user errors into one clear line and a non-zero exit."""
    known = user_errors() + [(e, 1) for e in extra_errors]
    try:
        main()
    except tuple(cls for cls, _ in known) as err:
        code = next(c for cls, c in known if isinstance(err, cls))
        print(f"error: {err}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
