"""Reading a local dataset's next bytes into the page cache before the reader asks for them.

A loader knows which shards, and which byte ranges of them, the epoch's order reads next. On a
cold page cache (a fresh node, a dataset larger than memory) every read would otherwise wait for
the disk while nothing else happens; `Readahead` hands those ranges, soonest first, to one
background thread that asks the kernel for them (`posix_fadvise(POSIX_FADV_WILLNEED)`, or
`pread` into a scratch buffer), so the disk works while the reader decodes.

It is a hint and nothing more: it never changes what is read or in which order, never raises (a
range that cannot be opened or advised is skipped; the reader meets the problem itself, with its
own error), and holds at most one file descriptor at a time, in its thread, opened like a shard
(`fetch.open_regular`: regular files only). At most `limit` bytes from the reader's position are
asked for: ranges are counted in blocks of `BLOCK` bytes, each asked for once while it is
remembered. Settings: `Dataset(readahead_bytes=...)`, else the environment variable
NEUROCODEC_READAHEAD_BYTES (0 turns readahead off), else DEFAULT_READAHEAD_BYTES.
Stored order is not read ahead on a device whose own readahead window is at least
SEQUENTIAL_ENOUGH (`sequential_needs_hints`). NEUROCODEC_READAHEAD_MODE chooses `fadvise`
(default: the thread advises), `pread` (the thread reads into a scratch buffer) or `inline`
(the caller advises, no thread).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from neurocodec.format.fetch import open_regular

DEFAULT_READAHEAD_BYTES = 64 << 20
"""Bytes ahead of the reader's position asked for by default (64 MiB)."""
BLOCK = 256 << 10
"""Unit in which ranges are counted and remembered (256 KiB)."""
MAX_RANGE = 8 << 20
"""Largest range handed to the kernel in one call."""
IDLE_SECONDS = 2.0
"""How long the thread waits for more work before it ends."""
MODES = ("fadvise", "pread", "inline")
ENV_BYTES, ENV_MODE = "NEUROCODEC_READAHEAD_BYTES", "NEUROCODEC_READAHEAD_MODE"
_SCRATCH = 1 << 20


def readahead_bytes(value: int | None = None) -> int:
    """The readahead bound: `value`, else NEUROCODEC_READAHEAD_BYTES, else the default (0: off)."""
    if value is None:
        text = os.environ.get(ENV_BYTES, "").strip()
        if not text:
            return DEFAULT_READAHEAD_BYTES
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{ENV_BYTES} must be a whole number of bytes, got {text!r}") from None
    if type(value) is not int or value < 0:
        raise ValueError(f"readahead_bytes must be a non-negative integer, got {value!r}")
    return value


def readahead_mode() -> str:
    """How ranges are read ahead: NEUROCODEC_READAHEAD_MODE, `fadvise` by default."""
    mode = os.environ.get(ENV_MODE, "").strip() or MODES[0]
    if mode not in MODES:
        raise ValueError(f"{ENV_MODE} must be one of {MODES}, got {mode!r}")
    return mode


SEQUENTIAL_ENOUGH = 4 << 20
"""A device whose own readahead window is at least this needs no hints for sequential reads."""


def kernel_readahead(path: str | os.PathLike) -> int | None:
    """The kernel's readahead window, in bytes, of the block device holding `path` (Linux:
    /sys/dev/block/MAJ:MIN/queue/read_ahead_kb, or its parent's for a partition); None when it
    cannot be told (another system, a network or overlay filesystem)."""
    try:
        st = os.stat(path)
        device = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        for queue in (f"{device}/queue/read_ahead_kb", f"{device}/../queue/read_ahead_kb"):
            if os.path.exists(queue):
                with open(queue) as f:
                    return int(f.read().strip()) << 10
    except (OSError, ValueError, AttributeError):
        pass
    return None


def sequential_needs_hints(path: str | os.PathLike) -> bool:
    """Whether reading `path`'s dataset in stored order gains from readahead: not where the
    device's own readahead already streams at least SEQUENTIAL_ENOUGH (there the hints' second
    stream measured 10-20% slower than none, benchmarks/README.md)."""
    window = kernel_readahead(path)
    return window is None or window < SEQUENTIAL_ENOUGH


class Readahead:
    """Reads byte ranges of local files ahead of a reader, in a background thread (see the module).

    `want(ranges)` takes the ranges the reader will read next, soonest first, starting at its
    position; those within `limit` bytes are asked for, each block once while remembered.
    `listener`, when set, is called in the caller's thread with (path, start, end) for every
    range handed to the thread (a hook for tests and tools). The thread waits for work and ends
    after IDLE_SECONDS without any; a process forked meanwhile starts its own.
    """

    def __init__(self, limit: int, mode: str | None = None) -> None:
        self.limit = limit
        self.mode = mode or readahead_mode()
        self.listener: Callable[[str, int, int], None] | None = None
        self._asked = _Blocks(4 * (limit // BLOCK) + 1024)
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        """Only the settings: a copy (a pickled dataset) starts with nothing asked for."""
        return {"limit": self.limit, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["limit"], state["mode"])

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._ready = threading.Condition(threading.Lock())
        self._queue: deque[tuple[str, int, int]] = deque()
        self._thread: threading.Thread | None = None
        self._busy = self._stop = False  # a range in hand; close() asked the thread to end

    def want(self, ranges: Iterable[tuple[str, int, int]], most: int | None = None) -> None:
        """Ask for the ranges (path, start, end), soonest first, as far as `most` bytes from the
        first (default `limit`); blocks asked for before are not asked again. Never raises for a
        bad range."""
        if self.limit <= 0:
            return
        budget, new = max(1, (self.limit if most is None else most) // BLOCK), []
        for path, start, end in ranges:
            first, stop = max(0, start) // BLOCK, -(-end // BLOCK)
            if stop <= first:
                continue
            stop = min(stop, first + budget)
            budget -= stop - first
            new += [(path, a * BLOCK, b * BLOCK) for a, b in self._asked.add(path, first, stop)]
            if budget <= 0:
                break
        if new:
            self._submit(_split(new))

    def _submit(self, ranges: list[tuple[str, int, int]]) -> None:
        if self.listener is not None:
            for item in ranges:
                self.listener(*item)
        if self.mode == "inline":
            fd, current = -1, None
            for path, start, end in ranges:
                if path != current:
                    fd, current = _reopen(fd, path)
                if fd >= 0:
                    _read_ahead(fd, start, end, None)
            if fd >= 0:
                os.close(fd)
            return
        if self._pid != os.getpid():
            self._reset()
        with self._ready:
            self._queue.extend(ranges)
            self._stop = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="neurocodec-readahead", daemon=True)
                self._thread.start()
            else:
                self._ready.notify()

    def _run(self) -> None:
        fd, current = -1, None
        scratch = memoryview(bytearray(_SCRATCH)) if self.mode == "pread" else None
        try:
            while True:
                with self._ready:
                    self._busy = False
                    if not self._queue:
                        if fd >= 0:  # idle: hold no descriptor while waiting
                            os.close(fd)
                            fd, current = -1, None
                        if not self._stop:
                            self._ready.wait(IDLE_SECONDS)
                        if not self._queue:
                            self._thread = None
                            return
                    path, start, end = self._queue.popleft()
                    self._busy = True
                if path != current:
                    fd, current = _reopen(fd, path)
                if fd >= 0:
                    _read_ahead(fd, start, end, scratch)
        finally:
            if fd >= 0:
                os.close(fd)

    def wait(self) -> None:
        """Return once every range asked for so far has been handed to the kernel, or the
        thread has ended (tests, tools)."""
        while self._pid == os.getpid() and self._thread is not None:
            with self._ready:
                if not self._queue and not self._busy:
                    break
            time.sleep(0.001)

    def close(self) -> None:
        """Drop what is still queued and stop the thread (`want` starts another)."""
        if self._pid != os.getpid():
            self._reset()
            return
        with self._ready:
            self._queue.clear()
            self._stop = True
            thread = self._thread
            self._ready.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class _Blocks:
    """Which blocks of which files were asked for: per file, sorted disjoint runs of block
    numbers. Past `most` runs in all it forgets everything (asking again is harmless)."""

    def __init__(self, most: int) -> None:
        self.most, self.count = most, 0
        self.runs: dict[str, list[list[int]]] = {}

    def add(self, path: str, first: int, stop: int) -> list[tuple[int, int]]:
        """Mark blocks [first, stop) of `path` asked for; return the runs of them that were not."""
        if self.count > self.most:
            self.runs.clear()
            self.count = 0
        runs = self.runs.setdefault(path, [])
        at = bisect.bisect_right(runs, [first, float("inf")]) - 1
        missing, cursor = [], first
        i = max(at, 0)
        while i < len(runs) and runs[i][0] < stop:
            lo, hi = runs[i]
            if hi > cursor and lo < stop:
                if lo > cursor:
                    missing.append((cursor, lo))
                cursor = max(cursor, hi)
            i += 1
        if cursor < stop:
            missing.append((cursor, stop))
        if missing:
            self._merge(runs, first, stop)
        return missing

    def _merge(self, runs: list[list[int]], first: int, stop: int) -> None:
        lo = bisect.bisect_left(runs, [first, -1])
        if lo > 0 and runs[lo - 1][1] >= first:
            lo -= 1
        hi = lo
        while hi < len(runs) and runs[hi][0] <= stop:
            hi += 1
        merged = [min([first] + [r[0] for r in runs[lo:hi]]), max([stop] + [r[1] for r in runs[lo:hi]])]
        self.count += 1 - (hi - lo)
        runs[lo:hi] = [merged]


def _split(ranges: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The ranges cut into pieces of at most MAX_RANGE bytes, in order."""
    return [(path, at, min(end, at + MAX_RANGE)) for path, start, end in ranges for at in range(start, end, MAX_RANGE)]


def _reopen(fd: int, path: str) -> tuple[int, str]:
    """Close `fd` (if open) and open `path` like a shard; -1 when it cannot be opened."""
    if fd >= 0:
        os.close(fd)
    try:
        return open_regular(path)[0], path
    except OSError:
        return -1, path


def _read_ahead(fd: int, start: int, end: int, scratch: memoryview | None) -> None:
    """Bring bytes [start, end) of `fd` into the page cache; errors are ignored (only a hint)."""
    try:
        if scratch is None:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
            return
        while start < end:
            got = os.preadv(fd, [scratch[:min(len(scratch), end - start)]], start)
            if got <= 0:
                return
            start += got
    except (OSError, AttributeError):  # no fadvise or preadv on this platform, or the file went away
        return
