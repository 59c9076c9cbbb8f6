"""Every result file is written the same way: to a hidden temporary name in the same folder,
flushed to disk, then renamed over the final name (see :func:`atomic_output`). A crash or a full
disk never leaves a half-written file under the final name and never damages an earlier file.
A file the user named is never replaced unless the user said so (:func:`refuse_existing`, and
``atomic_output(overwrite=False)`` at the rename itself). Writers that refuse some folder names
(MindSpore's export) write in a :func:`plain_directory` and copy the file into place.
This module is free of MindSpore so that the entry scripts can import it before the heavy imports."""
import argparse
import contextlib
import json
import os
import shutil
import tempfile

from src.errors import ConfigError
from src.recipe_keys import parse_bool_flag


class OutputError(OSError):
    """A result file could not be written (one-line message; the earlier file is left as it was)."""


class OutputExists(OutputError):
    """The output exists and the user did not allow replacing it (a command-line mistake: exit 2)."""


OVERWRITE_HINT = "pass --overwrite true to replace it"


def refuse_existing(path, overwrite, key=""):
    """The one rule for every file a user names: an existing ``path`` is refused (OutputExists,
    naming ``key``, the option that named it) unless ``overwrite``."""
    if path and not overwrite and os.path.lexists(path):
        what = f"{key} '{path}'" if key else str(path)
        raise OutputExists(f"{what} exists: not replacing an earlier result ({OVERWRITE_HINT})")


def add_overwrite_option(parser):
    """``--overwrite true|false`` (bare ``--overwrite``: true) for the argparse scripts, as export.py
    and eval.py take it; ``args.overwrite`` is a bool."""
    parser.add_argument("--overwrite", nargs="?", const=True, default=False, type=_true_or_false,
                        metavar="true|false", help="replace an existing output (default false)")


def _true_or_false(text):
    try:
        return parse_bool_flag("overwrite", text)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected true or false") from None


def temporary_name(path, suffix=""):
    """``.<basename>.tmp<pid><suffix>`` beside ``path``: hidden, and one per process. The names of
    checkpoints' temporaries are what run_record.remove_stale_temporaries sweeps up."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}{suffix}")


def failure_reason(err):
    """The first line of what went wrong (an OSError's strerror, else the message's first line)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _output_error(path):
    return lambda reason: OutputError(f"cannot write {path}: {reason}; an earlier file is left as it was")


@contextlib.contextmanager
def atomic_output(path, suffix="", leftovers=(), failure=None, catch=(OSError,), overwrite=True):
    """Yield a temporary path beside ``path`` for the caller to write; when the block ends
    normally, fsync the file, rename it onto ``path`` and fsync the folder. With
    ``overwrite=False`` the rename refuses a ``path`` that exists by then (OutputExists).

    ``suffix`` ends the temporary name (writers that choose the format by extension need it).
    ``leftovers``: suffixes of other files the writer may leave beside the temporary (the name
    without ``suffix`` plus each of them, e.g. MindSpore's own ``.tmp``); they and the temporary
    are removed whatever happens. An exception of a ``catch`` class becomes ``failure(reason)``
    (default: an OutputError naming ``path``); any other exception passes through unchanged.
    ``replace`` False: a file another process gave ``path`` meanwhile is kept (and this one fails).
    """
    tmp = temporary_name(path, suffix)
    base = tmp[:len(tmp) - len(suffix)]
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        _publish(tmp, path, overwrite)
        _fsync_directory(os.path.dirname(tmp))
    except OutputExists:
        raise
    except catch as err:  # full disk, file size limit, permissions
        raise (failure or _output_error(path))(failure_reason(err)) from None
    finally:
        for leftover in (tmp, *(base + end for end in leftovers)):
            if os.path.exists(leftover):
                os.remove(leftover)


def _publish(tmp, path, overwrite):
    """Rename ``tmp`` onto ``path``; without ``overwrite`` only while ``path`` does not exist: a hard
    link fails atomically on an existing name (where the file system has no hard links: check,
    then rename)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        refuse_existing(path, False)
    except OSError:  # no hard links here (some network and FUSE file systems)
        refuse_existing(path, False)
        os.replace(tmp, path)
    else:
        os.remove(tmp)


@contextlib.contextmanager
def plain_directory(accept, rule):
    """A fresh private folder (removed afterwards with what is left in it) for writers that refuse
    some paths: in the first temporary folder, TMPDIR's then /tmp and /var/tmp, whose path
    ``accept(path)`` allows; OutputError naming ``rule`` (what the writer accepts) if none does."""
    for parent in dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp")):
        if os.path.isdir(parent) and os.access(parent, os.W_OK) and accept(os.path.abspath(parent)):
            break
    else:
        raise OutputError(f"no temporary folder whose path {rule}: set TMPDIR to one")
    directory = tempfile.mkdtemp(prefix="rpg_", dir=os.path.abspath(parent))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _fsync_directory(directory):
    """Make the rename durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(data, path, overwrite=True):
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")


def write_text_atomic(text, path, overwrite=True):
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
