"""Small helpers for result files: atomic writes (temporary name in the same folder, then rename)."""
import json
import os


class OutputError(OSError):
    """A result file could not be written (one-line message; the earlier file is left as it was)."""


def write_atomic(path, write):
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it into place; on any
    failure the temporary file is removed and an earlier ``path`` is left untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; an earlier file is left as "
                          "it was") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(data, path):
    def dump(handle):
        json.dump(data, handle, indent=2)
        handle.write("\n")
    write_atomic(path, dump)
