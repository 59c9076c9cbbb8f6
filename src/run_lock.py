"""One writer per output folder.

A training run holds ``output_dir/.lock`` exclusively for its whole life; eval.py and export.py
hold the lock of the folder they write into shared, when that folder has one (it is, or was, a
training run's folder). So a second training run, a launcher, an evaluation or an export into a
folder a live training run holds is refused with one line naming that run's pid, and a training
run is refused while an evaluation or export writes into its folder; evaluations and exports
into one folder may run side by side (their result names never collide: run_eval.sh reserves its
numbered names atomically, eval.py never replaces a result that appeared while it ran).

The lock is a POSIX record lock (``fcntl.lockf``) held by the process: the kernel drops it when
the process ends, however it ends (SIGKILL included), so nothing stale is ever left behind; forked
children (data-pipeline workers) do not inherit it, so none can keep it alive after its run. The
kernel also names the holder (``F_GETLK`` gives its pid), so the file is never written: it stays
empty, and a refused command leaves every file of the folder byte-identical, the lock file too
(a pid written into it would be rewritten by every run that takes it, and could name a dead or
reused pid). The file is never removed (removing it would race with a process about to lock it).

Data parallel: only rank 0 of a data-parallel run takes the lock (after ``init()``, when ranks are
known); the other workers write only their own ``train_rank<N>.log`` and are never refused by it.
The launchers check the lock before they start anything (scripts/_preflight.py), so a second
launch into a held folder is refused before msrun starts; rank 0 closes the gap between that check
and its own lock.

POSIX locks are per process: closing any descriptor of the lock file in the holding process
releases it, so the file is opened once per folder (``_HELD``) and never read by its holder.
"""
import errno
import fcntl
import os
import struct
import sys

from src.errors import ConfigError

LOCK_NAME = ".lock"
_HELD = {}  # real path of a lock file -> its open descriptor (the lock lives as long as it does)


class FolderBusy(ConfigError):
    """Another live process writes into the folder (one line naming its pid; exit 2)."""


def hold(folder, exclusive=True, label="output_dir", create=True):
    """Lock ``folder`` for this process until it ends or ``release(folder)``: exclusively (a
    training run) or shared (eval.py, export.py). ``create`` False: a folder without a lock file
    (never a training run's) is left alone. Raises FolderBusy naming the holder's pid."""
    path = os.path.join(folder, LOCK_NAME)
    key = os.path.realpath(path)
    if key in _HELD or (not create and not os.path.exists(path)):
        return
    if create:
        os.makedirs(folder, exist_ok=True)
    fd = _open(path, create, exclusive)
    try:
        _lock(fd, folder, label, exclusive)
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd


def check_free(folder, exclusive=True, label="output_dir"):
    """Raise FolderBusy if ``hold(folder, exclusive)`` would be refused now; takes nothing and
    writes nothing (the launchers' check before they write)."""
    path = os.path.join(folder, LOCK_NAME)
    if not os.path.exists(path) or os.path.realpath(path) in _HELD:
        return
    fd = _open(path, False, exclusive)
    try:
        _lock(fd, folder, label, exclusive)
    finally:
        os.close(fd)  # a separate process: closing releases only what this call took


def release(folder):
    """Give up ``folder``'s lock (a training run whose train() has returned)."""
    fd = _HELD.pop(os.path.realpath(os.path.join(folder, LOCK_NAME)), None)
    if fd is not None:
        os.close(fd)


def holder(folder, exclusive=True):
    """The pid of a live process whose lock on ``folder`` conflicts with an ``exclusive`` (else a
    shared) lock, or None (no lock file, nobody holds it, or the kernel cannot say)."""
    path = os.path.join(folder, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _conflicting_pid(fd, exclusive)
    finally:
        os.close(fd)  # never called by a holder on its own folder (see the module docstring)


def _open(path, create, exclusive):
    """The lock file, writable if possible (a shared lock on a read-only file still works)."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o644)
    except PermissionError:
        if exclusive:
            raise
        return os.open(path, os.O_RDONLY)


def _lock(fd, folder, label, exclusive):
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        raise FolderBusy(busy_message(folder, label, exclusive, _conflicting_pid(fd, exclusive))) from None


# struct flock of 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid (pid_t)
_FLOCK = "hhqqi4x"
_KNOWN_LAYOUT = sys.platform.startswith("linux") and struct.calcsize("l") == 8


def _conflicting_pid(fd, exclusive):
    """F_GETLK: the pid of a process holding a lock that conflicts with ours, or None."""
    if not _KNOWN_LAYOUT:
        return None
    query = struct.pack(_FLOCK, fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
    try:
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def busy_message(folder, label, exclusive, pid):
    who = f"pid {pid}{_command(pid)}" if pid else "another process"
    advice = (f"one writer per folder: wait for it to end, or choose another {label}" if exclusive
              else "a training run writes there: wait for it to end, or write elsewhere")
    return f"{label} {folder} is in use by {who}; {advice}"


def _command(pid):
    """" (train.py)": the script a process runs, from /proc (best effort: "" if unknown)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [a.decode(errors="replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return ""
    scripts = [os.path.basename(a) for a in args[:3] if a.endswith((".py", ".sh"))]
    name = scripts[0] if scripts else (os.path.basename(args[0]) if args else "")
    return f" ({name})" if name else ""
