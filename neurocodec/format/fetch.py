"""Reading a shard's samples with `pread`: nothing of a shard file is memory-mapped.

A memory map trusts the file never to change. A shard truncated or rewritten while mapped (a
`cp` over it, a sync tool replacing it in place) turns the next touch of a vanished page into
SIGBUS, which kills the process, and so does touching a decoded array that views the map long
after the read. Here the bytes are copied into buffers the process owns: a file that shrank
gives a short read, reported as `ShardError` naming the shard, and one that was rewritten fails
its checksums. A sample is read whole (its members' headers and payloads) with one call into a
buffer of its own, so a decoded value keeps alive its own sample's bytes and nothing else. The
price is a copy of every byte read, which a map avoided.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from pathlib import Path

import numpy as np

from neurocodec.errors import ShardError

HASH_CHUNK = 8 << 20
"""Bytes read per call while hashing a whole shard."""


def open_regular(path: Path | str) -> tuple[int, int]:
    """Open `path` for reading if it is a regular file; return the descriptor and its size.

    O_NONBLOCK keeps a FIFO planted under a dataset file name from blocking the open forever (it
    changes nothing for a regular file). Anything but a regular file raises OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fd, st.st_size
    except BaseException:
        os.close(fd)
        raise


class ShardFile:
    """One shard file, read with `pread` into buffers this process owns.

    Reads never trust the file to be as long as when it was opened. `close` waits for a read in
    progress on another thread, and the descriptor is also closed when the object is freed, so
    a reader dropped from a cache while someone still uses it keeps working until let go.
    """

    def __init__(self, path: Path | str, name: str) -> None:
        self.name = name
        self._fd, self.size = open_regular(path)
        self._lock = threading.Lock()

    def span(self, start: int, end: int, *, writable: bool = False) -> np.ndarray:
        """The bytes [start, end) of the file in a buffer of its own, read-only unless `writable`
        (ShardError if the file now ends before `end`). Nothing else holds the buffer: writing
        into a writable one changes only that buffer, never the file."""
        try:
            buffer = np.empty(end - start, dtype=np.uint8)
        except MemoryError:
            raise ShardError(f"no memory to read bytes {start} to {end}", shard=self.name) from None
        done = 0
        while done < len(buffer):
            got = self._preadv(buffer[done:] if done else buffer, start + done)
            if got == 0:
                raise ShardError(f"the file ends at byte {start + done}, before byte {end} "
                                 "(truncated or rewritten while open)", shard=self.name)
            done += got
        if not writable:
            buffer.flags.writeable = False
        return buffer

    def read(self, start: int, length: int) -> bytes:
        """`length` bytes from `start` (ShardError if the file ends before)."""
        return self.span(start, start + length).tobytes()

    def sha256(self) -> str:
        """SHA-256 of the file's first `size` bytes (ShardError if it is now shorter or longer)."""
        digest = hashlib.sha256()
        for position in range(0, self.size, HASH_CHUNK):
            digest.update(self.span(position, min(position + HASH_CHUNK, self.size)))
        if self._preadv(np.empty(1, dtype=np.uint8), self.size):
            raise ShardError(f"the file grew past its {self.size} bytes while open (rewritten)", shard=self.name)
        return digest.hexdigest()

    def _preadv(self, buffer: np.ndarray, position: int) -> int:
        with self._lock:
            if self._fd < 0:
                raise ShardError("read after the shard was closed", shard=self.name)
            try:
                if _HAVE_PREADV:
                    return os.preadv(self._fd, [buffer], position)
                data = os.pread(self._fd, len(buffer), position)
            except OSError as exc:
                raise ShardError(f"cannot read: {exc.strerror or exc}", shard=self.name) from None
        buffer[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        return len(data)

    def close(self) -> None:
        """Close the file (waiting for a read in progress on another thread)."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:
                os.close(fd)
            except (OSError, TypeError, AttributeError):  # `os` (or its close) torn down at interpreter exit
                pass


_HAVE_PREADV = hasattr(os, "preadv")
