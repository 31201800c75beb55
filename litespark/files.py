"""Writing files so that a reader never sees half of one, and so that two processes never write the
same output.

:func:`atomic_write_text` writes through a temporary name, fsyncs and renames.  :func:`hold_lock`
takes an exclusive ``flock`` on a lock file beside an output (a run directory, a dataset prefix) for
as long as the process lives, or until released: a second process that asks for it is refused with
the holder's pid and host, and the kernel drops the lock when the holder exits, however it exits,
so a lock is never left stale by a crash or a SIGKILL.  A clean release removes the lock file; a
killed holder leaves it, unlocked, for the next one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
"""A write failed for want of space (disk full, quota exceeded)."""
WRITE_ERRORS = (*NO_SPACE, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST)
"""A write failed because of where it went (space, permissions, a read-only or wrong path), not a bug."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError of :data:`WRITE_ERRORS` behind ``exc``, if any: ``torch.save`` reports a full disk as
    the ``RuntimeError`` its zip writer raises while closing, with the ``OSError`` as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem that holds ``path`` (or would, for a path not created yet)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def describe_write_error(exc: OSError, directory: Path, needed: int | None = None) -> str:
    """One line for a failed write: which file, why, and for a full disk which filesystem, how much
    is free and (when known) how much the write needs."""
    where = exc.filename or directory
    text = f"cannot write {where}: {exc.strerror or exc}"
    if exc.errno in NO_SPACE:
        mount = mount_point(directory)
        usage = shutil.disk_usage(mount)
        text += f" ({human_bytes(usage.free)} free of {human_bytes(usage.total)} on {mount}"
        text += f"; needs about {human_bytes(needed)})" if needed else ")"
    return text


class LockHeld(Exception):
    """Another process holds the lock; the message names the output and the holder."""


class FileLock:
    """An exclusive lock on ``path`` held through an open file descriptor (see :func:`hold_lock`)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file goes first, while still locked: a process
        that opened it meanwhile finds, once it has the lock, that the path no longer names its file,
        and tries again on a new one)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_lock(path: Path, what: str) -> FileLock:
    """Take the exclusive lock ``path`` (created if missing) without waiting; raises :class:`LockHeld`,
    naming ``what`` and the holder, when another process has it.  The lock lasts until
    :meth:`FileLock.release` (which removes the file) or the end of the process (which leaves the file,
    unlocked, for the next holder)."""
    path = Path(path)
    for _ in range(100):  # another holder may remove the file between our open and our lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockHeld(f"{what} is in use by {holder} (lock {path})") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # we locked a file its holder had just removed: try the one the path names now
    else:
        raise LockHeld(f"{what}: could not take the lock {path}")
    stamp = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, stamp, 0)
    return FileLock(path, fd)
