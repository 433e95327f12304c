"""File safety shared by the data import and the training run folders (POSIX).

One home for the rules that keep files whole and owners apart:

* ``exclusive_lock(path)``: at most one process writes ``path`` (a file or a run folder) at a
  time; a second one gets ``LockedError`` naming the holder's PID. The lock is an
  ``fcntl.flock`` on a small lock file, so the kernel drops it when its process dies (even
  by ``kill -9``): a stale lock file is simply taken over.
* ``temp_name(path)``: a hidden sibling name for writing ``path`` before renaming it into
  place (same folder, so the rename is atomic). The name carries the writer's PID, so
  ``remove_stale_temporaries(folder)`` can delete what a killed writer left behind, and only
  that: a temporary whose process is still alive is kept.
* ``atomic_write(path, write)``: ``write(temp)``, fsync, rename over ``path``; on any failure
  (Ctrl-C included) the temporary is removed and ``path`` is untouched.
* ``check_writable_folder(path)``: one clear ``ValueError`` when ``path`` cannot become a
  writable folder (a file in the way, no permission, a read-only file system).
* ``DeferredInterrupt``: Ctrl-C while writing is held until the writer reaches a safe point,
  because a ``KeyboardInterrupt`` raised inside a library's cleanup (h5py closing a file)
  can be swallowed as "Exception ignored", letting the command finish and exit 0.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LockedError", "exclusive_lock", "lock_path", "temp_name", "remove_stale_temporaries", "atomic_write",
           "check_writable_folder", "is_disk_full", "pid_alive", "DeferredInterrupt"]


class LockedError(ValueError):
    """Another live process holds the lock; the message names the path and its PID."""


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists (on this machine's PID namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<folder>/.lock`` for an existing folder (a run folder keeps
    its lock inside), else the sibling ``<path>.lock``."""
    path = Path(path)
    return path / ".lock" if path.is_dir() else path.with_name(path.name + ".lock")


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str | None = None):
    """Hold an exclusive lock on ``path`` for the ``with`` block (see ``lock_path`` for where the
    lock file lives; it holds our PID and is removed on exit).

    Raises ``LockedError`` at once (never waits) when another live process, or another ``with``
    block of this one, holds it. ``what`` names the path in the message (default: the path).
    """
    path = Path(path)
    lock_file = lock_path(path)
    what = what or str(path)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{what} is in use by {_holder(lock_file)} (lock file {lock_file}); "
                              f"wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        # A holder that was releasing may have unlinked the file between our open and flock:
        # then we locked an orphan inode, and must lock the file that is at the path now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_file
    finally:
        try:
            lock_file.unlink()  # while still locked, so no one else holds this inode
        except FileNotFoundError:
            pass
        os.close(fd)


# Temporary names: ``.{name}.tmp-{pid}`` (checkpoint writer) and ``.{name}.tmp-{pid}-{token}.part``
# (``temp_name``). Anything else is never touched by ``remove_stale_temporaries``.
_TEMP = re.compile(r"^\..+\.tmp-(\d+)(?:-[0-9a-f]+\.part)?$")


def temp_name(path: str | os.PathLike) -> Path:
    """A fresh hidden sibling of ``path``, ``.{name}.tmp-{pid}-{token}.part``, to write before
    ``os.replace(temp, path)``. The random token keeps two writers of one process apart."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}.part")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries in ``folder`` (names as written by ``temp_name`` or the checkpoint
    writer) whose writing process is dead, e.g. after a ``kill -9``; returns what was removed.
    Files of live processes, other files and a missing folder are left alone."""
    folder = Path(folder)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        p = folder / name
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                continue
            p.unlink()
            removed.append(p)
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            pass
    return removed


def atomic_write(path: str | os.PathLike, write, check=None) -> Path:
    """Call ``write(temp)`` with a ``temp_name`` of ``path``, then ``check()`` if given (a last
    chance to stop, e.g. ``DeferredInterrupt.check``), fsync the file, rename it over ``path`` and
    fsync the folder so the rename survives a power cut. On any exception the temporary is removed
    and ``path`` keeps its old content (or stays absent). Returns ``path``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = temp_name(path)
    try:
        write(tmp)
        if check:
            check()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself is still atomic
        pass
    return path


def check_writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` is, or can be created as, a folder this process may write into;
    creates nothing. Raises one ``ValueError`` line naming ``what`` and the cause: a file in the
    way (``path`` or a parent), no write permission, a read-only file system. Returns ``path``."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise ValueError(f"cannot use {what} {path}: {existing} is a dangling symbolic link "
                         f"(to {os.readlink(existing)}); remove it or choose another folder")
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, which is a file"
        raise ValueError(f"cannot use {what} {path}: it {where}; choose a folder")
    try:  # access() also reports a read-only file system (EROFS), for root too
        ok = os.access(existing, os.W_OK | os.X_OK)
        reason = "no write permission"
        if ok:
            st = os.statvfs(existing)
            ok, reason = not (st.f_flag & os.ST_RDONLY), "read-only file system"
    except OSError as e:
        ok, reason = False, e.strerror
    if not ok:
        target = "" if existing == path else f" (its nearest existing parent {existing})"
        raise ValueError(f"cannot write into {what} {path}{target}: {reason}; choose another folder "
                         f"or fix its permissions")
    return path


def is_disk_full(e: BaseException) -> bool:
    """True for 'no space left' / 'quota exceeded' errors, so callers can say so plainly."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class DeferredInterrupt:
    """``with DeferredInterrupt() as guard:`` holds SIGINT (Ctrl-C) until ``guard.check()``, which
    raises ``KeyboardInterrupt`` if one arrived; leaving the block also checks. Call ``check()`` at
    safe points (between chunks, before renaming a finished file into place). Outside the main
    thread (where signal handlers cannot be set) it does nothing and Ctrl-C behaves as usual."""

    def __init__(self):
        self.received = False
        self._previous = None

    def _handler(self, signum, frame):
        self.received = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def check(self) -> None:
        if self.received:
            self.received = False
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if exc_type is None:
            self.check()
