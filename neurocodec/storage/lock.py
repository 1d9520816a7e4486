"""An advisory lock on a local output directory, held by one writer for its whole lifetime.

The lock is `flock` on the hidden file `.neurocodec-writer.lock` in the directory. The kernel
drops it when the holder dies (even by SIGKILL), so a stale lock file never blocks anyone: it
is only a name, which readers, `neurocodec info`, `verify` and the writers' own checks ignore.
A second writer gets `DatasetLockedError` at once instead of waiting.

Written by hand rather than with `filelock` for three details that matter here:

* the file is removed on release, so a finished dataset holds no trace of it; a process that
  opened the file before it was removed finds, after `flock`, that the name now points to
  another file (or none) and starts again, so two holders can never coexist;
* a forked child (a DataLoader worker, a `fork` pool) closes its inherited descriptor at fork
  time without unlocking: it neither keeps the lock alive after its parent dies nor releases
  the parent's lock when it exits;
* a lock object that is garbage collected without `release()` still releases.

`flock` is advisory and per machine: writers on other hosts of a network filesystem may not
see it. Where the filesystem does not support it at all the writer goes on unlocked, with a
warning.
"""

from __future__ import annotations

import errno
import os
import warnings
import weakref
from pathlib import Path

from neurocodec.errors import DatasetError, DatasetLockedError
from neurocodec.storage.forkguard import FORK_GUARD

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".neurocodec-writer.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_held: "weakref.WeakSet[OutputLock]" = weakref.WeakSet()

_NO_FLOCK = (-1, -1)
"""What `_lock` returns when the directory's filesystem has no flock: the writer goes on unlocked."""


def _drop(fd: int, path: str, identity: tuple[int, int], pid: int) -> None:
    """Remove the lock file if it is still ours, then close (which unlocks); only in the
    process that took the lock."""
    if os.getpid() != pid:
        return
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)  # while still locked: nobody else can hold this file now
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError:
        pass


class OutputLock:
    """Holds the writer lock of `directory` (which must exist) from creation to `release()`.

    Raises DatasetLockedError naming the directory (and the holder's process id, when known)
    if another writer holds it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._finalizer: weakref.finalize | None = None
        if fcntl is None:  # pragma: no cover
            return
        # under FORK_GUARD: a child forked meanwhile must see the descriptor recorded (and close it)
        with FORK_GUARD:
            for _ in range(100):
                if self._take():
                    return
        raise DatasetLockedError(f"{self.directory}: the writer lock file {LOCK_NAME} keeps changing; "
                                 "is another writer starting and stopping in a loop?")

    def _take(self) -> bool:
        """One attempt: True once locked (or unlockable here), False if the file moved on."""
        fd = self._open()
        identity = self._lock(fd)
        if identity is _NO_FLOCK:
            _remove_if_empty(self.path)  # made just now by os.open; nothing can lock it
            return True
        if identity is None:
            return False
        os.write(fd, f"{os.getpid()}\n".encode())
        self._finalizer = weakref.finalize(self, _drop, fd, str(self.path), identity, os.getpid())
        _held.add(self)
        return True

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DatasetError(f"{self.directory}: cannot create the writer lock file {LOCK_NAME} "
                               f"({exc.strerror or exc})") from None

    def _lock(self, fd: int) -> tuple[int, int] | None:
        """Lock `fd`; return its (device, inode) if it is still the file named `path`, None if
        the name moved on meanwhile (released and removed by the last holder: try again),
        `_NO_FLOCK` if the filesystem cannot lock (warned once)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise DatasetLockedError(
                f"{self.directory} is being written by another writer{holder} (it holds {LOCK_NAME}); "
                "wait for it to finish or stop it, then try again") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _UNSUPPORTED:
                warnings.warn(f"{self.directory}: the filesystem does not support flock; writing "
                              "without the writer lock (do not run two writers on it)", stacklevel=5)
                return _NO_FLOCK
            raise DatasetError(f"{self.directory}: cannot lock {LOCK_NAME} ({exc.strerror or exc})") from None
        mine = os.fstat(fd)
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        if named is None or (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        return mine.st_dev, mine.st_ino

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._finalizer is not None and self._finalizer.alive

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent; a no-op in a forked child)."""
        if self._finalizer is not None:
            self._finalizer()
        _held.discard(self)

    def __repr__(self) -> str:
        return f"OutputLock({str(self.directory)!r}, held={self.held})"


def _remove_if_empty(path: Path) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except OSError:
        pass


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (process {text})" if text.isdigit() else ""


def _forget_in_child() -> None:
    """After fork, in the child: close inherited lock descriptors without unlocking, and never
    remove the parent's lock file (`_drop` checks the process id)."""
    for lock in list(_held):
        finalizer = lock._finalizer
        if finalizer is not None and finalizer.alive:
            fd = finalizer.peek()[2][0]  # (object, function, args, kwargs)
            finalizer.detach()
            try:
                os.close(fd)
            except OSError:
                pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
