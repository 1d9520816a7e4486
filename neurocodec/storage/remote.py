"""The remote side of a `Dataset`: its manifest over fsspec, its shards through a `ShardCache`,
and background threads that prefetch the shards the reader will want next, several at once."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from neurocodec.errors import DatasetError, ShardError
from neurocodec.format.manifest import ShardEntry
from neurocodec.format.shard_table import file_bytes
from neurocodec.process import PerProcess
from neurocodec.storage.cache import Identity, ShardCache
from neurocodec.storage.location import Location
from neurocodec.storage.retry import RetriesExhausted, RetryPolicy
from neurocodec.storage.transfer import IDLE_SECONDS, Cancelled

log = logging.getLogger("neurocodec.storage")
T = TypeVar("T")


def read_remote_bytes(location: Location, name: str, limit: int, retry: RetryPolicy | None = None) -> bytes:
    """The whole object `name` of `location` (at most `limit` bytes), with retries.

    FileNotFoundError passes through; other failures raise DatasetError naming the URL.
    """
    retry = retry or RetryPolicy.default()
    url = location.url_of(name)

    def fetch() -> bytes:
        fs, path = location.fs, location.path(name)
        size = fs.size(path)
        if size is not None and size > limit:
            raise DatasetError(f"{url}: larger than {limit} bytes")
        return fs.cat_file(path)

    try:
        return retry.call(fetch, f"reading {url}")
    except RetriesExhausted as exc:
        raise DatasetError(f"{url}: cannot read ({exc})") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DatasetError(f"{url}: cannot read ({type(exc).__name__}: {exc})") from None


class Prefetcher:
    """Downloads wanted shards into the cache with up to `threads` daemon threads (several
    shards at once), in the order wanted, at most `budget` bytes ahead, the downloads in
    progress included; the latest `want` replaces the earlier wish list. Errors are left for
    the reader to meet (and report) when it opens the shard itself. A thread idle for
    `IDLE_SECONDS` ends. `fetch(number, cancel)` downloads one shard and stops once `cancel`
    is set (see `ShardCache.fetch`)."""

    def __init__(self, fetch: Callable[[int, threading.Event], Any], sizes: Sequence[int], budget: int,
                 threads: int = 1) -> None:
        self._fetch, self._sizes, self._budget, self._max_threads = fetch, sizes, budget, max(1, threads)
        self._queue: list[int] = []
        self._active: set[int] = set()  # being downloaded now
        self._recent: OrderedDict[int, None] = OrderedDict()  # fetched lately: skip
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._cancel = threading.Event()
        self._closed = False
        self.fetched = 0

    def want(self, numbers: Iterable[int]) -> None:
        """Shards the reader will open next, soonest first."""
        with self._cond:
            if self._closed:
                return
            queue, total = [], sum(self._sizes[n] for n in self._active)
            for n in numbers:
                if n in self._recent or n in self._active or n in queue:
                    continue
                total += self._sizes[n]
                if (queue or self._active) and total > self._budget:
                    break
                queue.append(n)
            self._queue = queue
            for _ in range(min(len(queue) - self._idle, self._max_threads - len(self._threads))):
                thread = threading.Thread(target=self._run, name="neurocodec-prefetch", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._cond.notify(len(queue))

    def _next(self) -> int | None:
        """The next shard to download, or None when closed or idle for long (the thread ends)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._idle += 1
                woken = self._cond.wait(IDLE_SECONDS)
                self._idle -= 1
                if not woken and not self._queue:
                    break
            if self._closed or not self._queue:
                self._threads.remove(threading.current_thread())
                return None
            number = self._queue.pop(0)
            self._active.add(number)
            return number

    def _run(self) -> None:
        while (number := self._next()) is not None:
            done = False
            try:
                self._fetch(number, self._cancel)
                done = True
            except Cancelled:
                pass
            except Exception as exc:  # the reader raises it properly when it gets there
                log.debug("prefetching shard %d failed: %s", number, exc)
                done = True
            with self._cond:
                self._active.discard(number)
                self.fetched += done
                if done:
                    self._recent[number] = None
                while len(self._recent) > 64:
                    self._recent.popitem(last=False)

    def close(self, timeout: float = 10.0) -> None:
        """Drop the wish list and stop the downloads in progress (each ends after the GETs
        already under way; nothing partial is published); wait up to `timeout` s for them."""
        with self._cond:
            self._closed = True
            self._queue = []
            self._cancel.set()
            self._cond.notify_all()
            threads = [t for t in self._threads if t is not threading.current_thread()]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class RemoteShards:
    """Opens a remote dataset's shards from the local cache, downloading (and prefetching)
    them as needed, and heals cached copies damaged on local disk. Held by `Dataset` for URL
    datasets; one per process."""

    def __init__(self, location: Location, shards: Sequence[ShardEntry], cache: ShardCache) -> None:
        self.location, self.shards, self.cache = location, shards, cache
        self._prefetcher: PerProcess[Prefetcher] = PerProcess()
        self._opened: dict[int, Identity | None] = {}  # shard -> the cached files last opened
        self._intact: dict[int, Identity] = {}  # shard -> cached files found intact by heal()

    def open(self, number: int, opener: Callable[[Path], T]) -> T:
        """`opener(local path of shard number)`, downloading the shard first if needed.

        If `opener` raises ShardError (the reader's checks at open: the index's SHA-256, with
        verify="full" the shard's) and `heal` finds the cached copy damaged, the shard is
        downloaded again and `opener` called once more; its error then stands.
        """
        called = False

        def tracked(path: Path) -> T:
            nonlocal called
            called = True
            return self._open_cached(number, path, opener)

        try:
            return self.cache.open(self.location, self.shards[number], tracked)
        except ShardError:
            # A failed download is not a damaged copy: it was retried already.
            if not called or not self.heal(number):
                raise
        return self.cache.open(self.location, self.shards[number],
                               lambda path: self._open_cached(number, path, opener))

    def _open_cached(self, number: int, path: Path, opener: Callable[[Path], T]) -> T:
        # Called under the shard's cache lock: the files cannot be replaced meanwhile.
        self._opened[number] = self.cache.identity(self.shards[number])
        return opener(path)

    def heal(self, number: int) -> bool:
        """Called when reading shard `number` from the cache failed a check (its SHA-256, a
        member's CRC-32 or header): drop the cached copy if it no longer matches the manifest,
        so that the next `open` downloads it again (see `ShardCache.discard_damaged`).

        True if the caller should close its reader, open the shard again and retry once: the
        copy it read was damaged and is gone, or was replaced meanwhile. False if the copy is
        intact, i.e. the shard itself is bad: the caller raises its error.
        """
        entry = self.shards[number]
        seen = self._opened.get(number)
        if seen is not None and self._intact.get(number) == seen:
            return False  # checked already: do not hash a bad shard once per bad sample
        if self.cache.discard_damaged(entry, seen):
            self._intact.pop(number, None)
            return True
        if seen is not None:
            self._intact[number] = seen
        return False

    def prefetch(self, numbers: Iterable[int]) -> None:
        """Start downloading these shards (soonest first) in the background."""
        if self.cache.prefetch_bytes <= 0:
            return
        self._prefetcher.get(lambda: Prefetcher(
            lambda n, cancel: self.cache.fetch(self.location, self.shards[n], cancel),
            file_bytes(self.shards), self.cache.prefetch_bytes,
            self.cache.download_threads)).want(numbers)

    def close(self) -> None:
        """Stop prefetching (this process's prefetcher; a forked parent's is not this one's)."""
        prefetcher = self._prefetcher.current()
        if prefetcher is not None:
            prefetcher.close()
        self._prefetcher.forget()
