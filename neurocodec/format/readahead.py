"""Mapping the pages of a shard ahead of a reader that walks it in order, on a background thread.

A memory-mapped shard costs a page fault for every ~100 KB the reader touches first (the kernel
maps a few neighbouring pages per fault): about 5 µs of every 300 KB sample on a 2-core VM,
paid by the thread that decodes. `madvise(MADV_POPULATE_READ)` (Linux 5.14+) maps a whole range
in one call, reading it from disk first if it is not cached, and a call made through ctypes
runs without the GIL; so one daemon thread per process maps the next stretch of the shard while
the reader decodes the current one. It is only a hint: it never changes what is read, its
errors are ignored (a range that cannot be mapped is left to the reader, which reports it), and
where the call is missing (another OS, an older kernel) nothing is done at all.

The thread holds a memoryview of each range until it has been mapped, so the shard's mapping
cannot be unmapped underneath the call. A forked child gets a fresh mapper on first use.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Any

import numpy as np

MADV_POPULATE_READ = 22
PAGE = 4096
PIECE_BYTES = 32 << 20
"""How much of a shard one request maps; the reader keeps one piece mapped ahead of itself."""


class PageMapper:
    """A daemon thread that maps ranges of memory-mapped files handed to `map_ahead`, in order."""

    def __init__(self, advice: int = MADV_POPULATE_READ) -> None:
        self.advice = advice
        self.enabled = sys.platform.startswith("linux")
        self.mapped_bytes = 0
        """Bytes mapped so far (only ranges the kernel accepted)."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._madvise: Any = None
        self._get_errno: Any = None

    def map_ahead(self, view: memoryview) -> None:
        """Queue `view` (a slice of a read-only mmap) to be mapped; returns at once."""
        if not self.enabled or not len(view):
            return
        if self._thread is None:
            self._start()
        self._queue.put(view)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far has been handled; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _start(self) -> None:
        import ctypes  # only where a shard is read in order: it costs a few ms to import

        try:
            madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            self.enabled = False
            return
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        self._madvise, self._get_errno = madvise, ctypes.get_errno
        self._thread = threading.Thread(target=self._run, name="neurocodec-readahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import errno

        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            if not self.enabled:
                continue
            address = np.frombuffer(item, dtype=np.uint8).ctypes.data
            start = address - address % PAGE
            length = address + len(item) - start
            if self._madvise(start, length, self.advice) == 0:
                self.mapped_bytes += len(item)
            elif self._get_errno() == errno.EINVAL:
                self.enabled = False  # the kernel does not know the advice: stop trying
            del item


def piece_starts(starts: np.ndarray, ends: np.ndarray, piece_bytes: int = PIECE_BYTES) -> list[int]:
    """Cut samples laid out at byte ranges [starts[i], ends[i]) (in order) into pieces of about
    `piece_bytes`: the first sample of each piece, then len(starts)."""
    count = len(starts)
    if count == 0:
        return [0]
    marks = np.arange(int(starts[0]), int(ends[-1]), piece_bytes, dtype=np.int64)
    firsts = np.searchsorted(starts, marks, side="left").tolist()  # non-decreasing
    cuts = [i for i, before in zip(firsts, [-1, *firsts]) if i != before and i < count]
    return [*cuts, count]


_mapper: PageMapper | None = None
_mapper_pid = -1


def page_mapper() -> PageMapper:
    """This process's mapper (a forked child makes its own; the parent's thread is not in it).
    No lock: two threads racing here at worst make one spare mapper, and a lock inherited
    locked across a fork would hang the child."""
    global _mapper, _mapper_pid
    if _mapper is None or _mapper_pid != os.getpid():
        _mapper, _mapper_pid = PageMapper(), os.getpid()
    return _mapper
