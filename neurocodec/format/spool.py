"""A file written and hashed on a background thread, in order, while the caller goes on.

The caller hands over buffers without copying them; once `FLUSH_BYTES` are gathered, one
thread joins them into one block, adds the block to the file's SHA-256 and writes it. Joining,
hashing and writing all run without the GIL, on the other core, while the caller encodes the
next samples (or reads its source); and the hash is taken over bytes still in the CPU's cache,
not read back from the file later.

The thread needs the GIL back between those steps, and a caller busy in Python code gives it up
only every switch interval (5 ms): with many small buffers per block the thread falls behind
(`threaded=False` is then faster: the caller joins and writes each block itself, and `close`
hashes the whole file in one call that holds no GIL, as the writer did before).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

FLUSH_BYTES = 4 << 20
"""Bytes gathered before they are handed to the thread (one join, hash update and write)."""
MAX_BUFFERS = 1024
"""Buffers gathered before they are handed over, whatever their size (small members)."""
DEPTH = 2
"""Hand-offs in flight at most: `add` waits for the oldest beyond that (bounded memory)."""


class SpooledFile:
    """Creates (truncates) `path` and appends to it on a background thread; see the module.

    Buffers given to `add` must never change afterwards (bytes, or views of buffers nobody
    writes). A failure on the thread (a full disk) is raised by the next `add`, by `flush` or
    by `close`. Not thread-safe: one caller adds; `close` may run on another thread once the
    caller has called `flush` and stopped adding.
    """

    def __init__(self, path: Path, *, threaded: bool = True) -> None:
        self.path, self.threaded = path, threaded
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        self._sha = hashlib.sha256()
        self._gathered: list[bytes | memoryview] = []
        self._gathered_bytes = 0
        self._inflight: deque[Future] = deque()
        self._thread: ThreadPoolExecutor | None = None

    def add(self, *buffers: bytes | memoryview) -> None:
        """Append `buffers`, in order (kept by reference until written)."""
        self._gathered += buffers
        for buffer in buffers:
            self._gathered_bytes += len(buffer)
        if self._gathered_bytes >= FLUSH_BYTES or len(self._gathered) >= MAX_BUFFERS:
            self.flush()

    def flush(self) -> None:
        """Hand what is gathered to the thread (without waiting for it to be written)."""
        if not self._gathered:
            return
        if not self.threaded:
            self._write(self._gathered, hashed=False)
            self._gathered, self._gathered_bytes = [], 0
            return
        while len(self._inflight) >= DEPTH:
            self._inflight.popleft().result()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="neurocodec-spool")
        self._inflight.append(self._thread.submit(self._write, self._gathered))
        self._gathered, self._gathered_bytes = [], 0

    def _write(self, buffers: list[bytes | memoryview], hashed: bool = True) -> None:
        block = b"".join(buffers)  # one copy, without the GIL for large blocks
        if hashed:
            self._sha.update(block)
        view = memoryview(block)
        while view:
            view = view[os.write(self._fd, view):]

    def close(self, *, fsync: bool) -> str:
        """Write everything handed over, fsync it (when asked), close the file; return the
        SHA-256 (hex) of all bytes written. Call `flush` first."""
        assert not self._gathered, "flush() before close()"
        try:
            self._drain()
            if fsync:
                os.fsync(self._fd)
        finally:
            self._close()
        return self._sha.hexdigest() if self.threaded else _file_sha256(self.path)

    def abort(self) -> None:
        """Stop: wait for the thread (ignoring its failure) and close the file."""
        self._gathered = []
        try:
            self._drain()
        except BaseException:
            pass
        finally:
            self._close()

    def _drain(self) -> None:
        while self._inflight:
            self._inflight.popleft().result()

    def _close(self) -> None:
        self._inflight.clear()
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _file_sha256(path: Path) -> str:
    """SHA-256 of a file this process just wrote, in one call over its map: hashlib holds no GIL
    for all of it, where a chunked read would wait for the caller's GIL at every chunk."""
    with open(path, "rb") as stored:
        if os.fstat(stored.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(stored.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()
