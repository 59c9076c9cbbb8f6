"""Every result file is written the same way: to a hidden temporary name in the same folder,
flushed to disk, then renamed over the final name (see :func:`atomic_output`). A crash or a full
disk never leaves a half-written file under the final name and never damages an earlier file.
This module is free of MindSpore so that the entry scripts can import it before the heavy imports."""
import contextlib
import json
import os


class OutputError(OSError):
    """A result file could not be written (one-line message; the earlier file is left as it was)."""


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
def atomic_output(path, suffix="", leftovers=(), failure=None, catch=(OSError,), replace=True):
    """Yield a temporary path beside ``path`` for the caller to write; when the block ends
    normally, fsync the file, rename it onto ``path`` and fsync the folder.

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
        (os.replace if replace else _rename_new)(tmp, path)
        _fsync_directory(os.path.dirname(tmp))
    except catch as err:  # full disk, file size limit, permissions
        raise (failure or _output_error(path))(failure_reason(err)) from None
    finally:
        for leftover in (tmp, *(base + end for end in leftovers)):
            if os.path.exists(leftover):
                os.remove(leftover)


def _rename_new(tmp, path):
    """``tmp`` becomes ``path`` only if no file has that name (a hard link fails if it does)."""
    import errno
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "another process wrote it while this one ran", path) from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, "another process wrote it while this one ran", path) from None
        os.replace(tmp, path)


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


def write_json_atomic(data, path, replace=True):
    with atomic_output(path, replace=replace) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")


def write_text_atomic(text, path):
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
