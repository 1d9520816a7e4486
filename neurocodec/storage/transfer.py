"""Downloading a shard's files with a few concurrent GETs: small files whole, a large one in
ranged parts written at their offsets, then checked against the manifest's SHA-256.

Every GET runs as a job of the process's `DownloadPool` (at most `threads` at once), in the
order queued, except that the jobs of a shard a reader is waiting for go first. The thread
that downloads a shard for a reader also runs its own queued jobs itself, so a reader never
waits behind the prefetcher for a free thread.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from pathlib import Path
from typing import Any, Callable, Iterator

from neurocodec.storage.location import Location
from neurocodec.storage.retry import ChecksumMismatch, RetriesExhausted, RetryPolicy

IDLE_SECONDS = 2.0
"""A pool thread with nothing to do for this long ends (the next job starts one again)."""


class Cancelled(Exception):
    """A download given up because whoever wanted it (a closed prefetcher) no longer does."""


class RangesIgnored(Exception):
    """The server answered a ranged GET with more bytes than asked: download the file whole."""


class DownloadError(Exception):
    """Downloading file `name` failed for good; `cause` is the error that ended it."""

    def __init__(self, name: str, cause: BaseException) -> None:
        super().__init__(f"{name}: {cause}")
        self.name, self.cause = name, cause


class _Job:
    """One GET (a whole file or a part of one) waiting for, or run by, a pool thread."""

    __slots__ = ("fn", "key", "future", "stop")

    def __init__(self, fn: Callable[[], Any], key: str, stop: Callable[[], bool]) -> None:
        self.fn, self.key, self.stop, self.future = fn, key, stop, Future()

    def run(self) -> None:
        if self.stop():
            self.future.set_exception(Cancelled())
            return
        try:
            self.future.set_result(self.fn())
        except BaseException as exc:  # handed to whoever waits for the download
            self.future.set_exception(exc)


class DownloadPool:
    """Up to `threads` daemon threads running queued jobs: those of an urgent key (a reader is
    waiting for that shard) first, the others in the order queued. Threads start when jobs
    come and end after `IDLE_SECONDS` without any, so an idle pool holds none. One per process
    (a forked child makes its own: see `ShardCache`)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._alive = 0
        self._idle = 0
        self._urgent: Counter[str] = Counter()

    def submit(self, key: str, fn: Callable[[], Any], stop: Callable[[], bool]) -> _Job:
        """Queue `fn` (a GET of shard `key`); it is skipped (Cancelled) if `stop()` is true by
        the time a thread takes it."""
        job = _Job(fn, key, stop)
        with self._cond:
            self._jobs.append(job)
            if self._idle:
                self._cond.notify()
            if len(self._jobs) > self._idle and self._alive < self.threads:
                self._alive += 1
                threading.Thread(target=self._work, name="neurocodec-download", daemon=True).start()
        return job

    def claim(self, jobs: list[_Job]) -> _Job | None:
        """Take one of `jobs` off the queue if no thread has started it (to run it inline)."""
        with self._cond:
            for i, job in enumerate(self._jobs):
                if job in jobs:
                    return self._jobs.pop(i)
        return None

    @contextlib.contextmanager
    def urgent(self, key: str) -> Iterator[None]:
        """While the block runs, the queued jobs of shard `key` go before all others."""
        with self._cond:
            self._urgent[key] += 1
        try:
            yield
        finally:
            with self._cond:
                self._urgent[key] -= 1
                if self._urgent[key] <= 0:
                    del self._urgent[key]

    def _take(self) -> _Job:
        if self._urgent:
            for i, job in enumerate(self._jobs):
                if job.key in self._urgent:
                    return self._jobs.pop(i)
        return self._jobs.pop(0)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._idle += 1
                    woken = self._cond.wait(IDLE_SECONDS)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        self._alive -= 1
                        return
                job = self._take()
            job.run()


class FileTask:
    """One file of a shard to download to `tmp`: `size` bytes whose SHA-256 is `digest`."""

    def __init__(self, location: Location, name: str, size: int, digest: str, tmp: Path) -> None:
        self.location, self.name, self.size, self.digest, self.tmp = location, name, size, digest, tmp
        self.url = location.url_of(name)
        self.ranged = False


def download(pool: DownloadPool, key: str, files: list[FileTask], retry: RetryPolicy, part_bytes: int,
             cancel: threading.Event | None = None, help_inline: bool = False) -> None:
    """Download `files` to their temp paths, each verified against its size and SHA-256.

    A file larger than `part_bytes` (when > 0) is fetched in ranged GETs of that size, each
    retried on its own, and verified whole; a mismatch downloads it again, `retry.attempts`
    times in all. Raises DownloadError naming the file, or Cancelled once `cancel` is set.
    `help_inline`: this thread runs its own queued jobs too (a reader waiting for them).
    """
    for f in files:
        f.ranged = 0 < part_bytes < f.size
    pending, failures = list(files), Counter[str]()
    while pending:
        mismatched = _round(pool, key, pending, retry, part_bytes, cancel, help_inline)
        pending = []
        for f, exc in mismatched:
            failures[f.name] += 1
            if failures[f.name] >= retry.attempts:
                raise DownloadError(f.name, RetriesExhausted(f"downloading {f.url}", retry.attempts, exc))
            pending.append(f)
        if pending and (cancel or threading.Event()).wait(retry.delay(max(failures.values()) - 1)):
            raise Cancelled()


def _round(pool: DownloadPool, key: str, files: list[FileTask], retry: RetryPolicy, part_bytes: int,
           cancel: threading.Event | None, help_inline: bool) -> list[tuple[FileTask, Exception]]:
    """Fetch `files` once (whole ones with their own retries); the ranged ones whose SHA-256
    then does not match, with the mismatch."""
    abort = threading.Event()
    stop = (lambda: abort.is_set() or cancel.is_set()) if cancel is not None else abort.is_set
    fds: dict[str, int] = {}
    jobs: list[tuple[FileTask, _Job]] = []
    try:
        for f in files:
            f.tmp.unlink(missing_ok=True)
            if f.ranged:
                fds[f.name] = fd = os.open(f.tmp, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
                os.ftruncate(fd, f.size)
        try:
            for f in files:
                if f.ranged:
                    for start in range(0, f.size, part_bytes):
                        end = min(f.size, start + part_bytes)
                        job = _part_fetcher(f, fds[f.name], start, end, retry)
                        jobs.append((f, pool.submit(key, job, stop)))
                else:
                    jobs.append((f, pool.submit(key, _whole_fetcher(f, retry, in_memory=part_bytes > 0), stop)))
        except BaseException:  # no thread may write to the files once they are closed
            abort.set()
            _wait(pool, jobs, abort, None, False)
            raise
        failed = _wait(pool, jobs, abort, cancel, help_inline)
    finally:
        for fd in fds.values():
            os.close(fd)
    if failed is not None:
        f, exc = failed
        if isinstance(exc, RangesIgnored):  # the other files' jobs were dropped: all again
            f.ranged = False
            return _round(pool, key, files, retry, part_bytes, cancel, help_inline)
        raise DownloadError(f.name, exc)
    out = []
    for f in files:
        if f.ranged:
            try:
                verify_file(f.tmp, f.size, f.digest)
            except ChecksumMismatch as exc:
                out.append((f, exc))
    return out


def _wait(pool: DownloadPool, jobs: list[tuple[FileTask, _Job]], abort: threading.Event,
          cancel: threading.Event | None, help_inline: bool) -> tuple[FileTask, BaseException] | None:
    """Wait for every job (running this thread's own if `help_inline`); on the first failure
    the queued ones are dropped and the running ones awaited (they write to our files).
    Returns (file, error) of the first failure, if any; raises Cancelled if jobs were dropped
    for `cancel` alone."""
    mine = [job for _, job in jobs]
    futures = {job.future: f for f, job in jobs}
    while True:
        if cancel is not None and cancel.is_set():
            abort.set()
        if abort.is_set():
            for job in iter(lambda: pool.claim(mine), None):
                job.future.set_exception(Cancelled())
            wait(futures)
            break
        job = pool.claim(mine) if help_inline else None
        if job is not None:
            job.run()
        else:
            done, rest = wait(futures, timeout=0.05 if cancel is not None else None, return_when=FIRST_EXCEPTION)
            if not rest:
                break
        if any(fut.done() and fut.exception() is not None for fut in futures):
            abort.set()
    errors = [(futures[fut], fut.exception()) for fut in futures if fut.exception() is not None]
    real = [e for e in errors if not isinstance(e[1], Cancelled)]
    if errors and not real:
        raise Cancelled()
    return real[0] if real else None


def _whole_fetcher(f: FileTask, retry: RetryPolicy, in_memory: bool) -> Callable[[], None]:
    """A job downloading `f` whole: into memory, checked, then written (a file of at most
    `part_bytes`: one read of the answer's body, no second pass over the file); else streamed
    to disk by the filesystem's `get_file` and checked there."""
    def fetch() -> None:
        if not in_memory:
            f.location.fs.get_file(f.location.path(f.name), str(f.tmp))
            verify_file(f.tmp, f.size, f.digest)
            return
        # A ranged GET of the whole file: the body is bounded by the manifest's size (and moto
        # serves it faster than a plain GET)
        data = f.location.fs.cat_file(f.location.path(f.name), start=0, end=f.size) if f.size else b""
        if len(data) != f.size:
            raise ChecksumMismatch(errno.EIO, f"downloaded {len(data)} bytes, the manifest says {f.size}")
        if hashlib.sha256(data).hexdigest() != f.digest:
            raise ChecksumMismatch(errno.EIO, "SHA-256 does not match the manifest (corrupted)")
        with open(f.tmp, "wb") as out:
            out.write(data)

    def job() -> None:
        retry.call(fetch, f"downloading {f.url}")

    return job


def _part_fetcher(f: FileTask, fd: int, start: int, end: int, retry: RetryPolicy) -> Callable[[], None]:
    def fetch() -> None:
        data = f.location.fs.cat_file(f.location.path(f.name), start=start, end=end)
        if len(data) > end - start:
            raise RangesIgnored(f"{f.url}: asked for bytes {start}-{end - 1}, got {len(data)} bytes")
        if len(data) != end - start:
            raise ChecksumMismatch(errno.EIO, f"bytes {start}-{end - 1}: got {len(data)} bytes")
        view, at = memoryview(data), start
        while view:
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written

    def job() -> None:
        retry.call(fetch, f"downloading {f.url} bytes {start}-{end - 1}")

    return job


def digest_of(f: Any) -> str:
    """The SHA-256 (hex) of the rest of an open binary file, read in 4 MiB blocks."""
    sha = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        sha.update(block)
    return sha.hexdigest()


def verify_file(path: Path, size: int, digest: str) -> None:
    """ChecksumMismatch unless the file at `path` has `size` bytes and SHA-256 `digest`."""
    try:
        with open(path, "rb") as f:
            got = os.fstat(f.fileno()).st_size
            if got != size:
                raise ChecksumMismatch(errno.EIO, f"downloaded {got} bytes, the manifest says {size}")
            if digest_of(f) != digest:
                raise ChecksumMismatch(errno.EIO, "SHA-256 does not match the manifest (corrupted)")
    except FileNotFoundError:
        raise ChecksumMismatch(errno.EIO, "the download produced no file") from None
