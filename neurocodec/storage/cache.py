"""`ShardCache`: whole shards of remote datasets in a local directory shared by processes.

Layout under `cache_dir`:

    entries/<key>/shard_000123.tar   a verified shard ...
    entries/<key>/.shard_000123.idx  ... and its index, under their dataset names
    locks/<key>.lock                 per-shard lock file (flock), never deleted
    tmp/<key>.<name>.<pid>.<tid>.part  downloads in progress
    entries/<key>/.reserved          a download's room, reserved until it completes (sparse)
    evict.lock                       serialises eviction scans

`<key>` is derived from the shard's and index's SHA-256 and names in the manifest, so a
cached shard is found again by any dataset (or version of one) that holds the same bytes, and a
rewritten dataset never reads stale ones.

Every download goes to a temp file and is renamed into `entries/` only after its size and
SHA-256 match the manifest, so no reader ever sees a partial file. A process downloads a shard
only while it holds the shard's lock exclusively; readers check and open a cached shard under
the shared lock, and eviction deletes only entries whose lock it can take exclusively without
waiting. A shard that is open keeps its data after eviction (its open file holds the inode).
Locks are `flock` locks, so the cache directory must be on a local filesystem.

Downloads run as GETs of a small per-process thread pool (`download_threads`), several shards
at once when prefetching, and a file larger than `part_bytes` in ranged parts written at their
offsets into its temp file, then verified whole (see `transfer.py`).

An entry damaged on local disk after its download was verified is caught by the reader's checks
and dropped by `discard_damaged` (if it no longer matches the manifest's SHA-256), so that it is
downloaded again (see docs/storage.md, "Damaged cache entries heal").
"""

from __future__ import annotations

import contextlib
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: remote reading needs flock
    fcntl = None  # type: ignore[assignment]
import hashlib
import logging
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from neurocodec.errors import ShardError
from neurocodec.format.manifest import ShardEntry
from neurocodec.process import PerProcess
from neurocodec.storage.forkguard import FORK_GUARD
from neurocodec.storage.location import Location
from neurocodec.storage.retry import RetriesExhausted, RetryPolicy
from neurocodec.storage.transfer import Cancelled, DownloadError, DownloadPool, FileTask, digest_of, download

log = logging.getLogger("neurocodec.storage")
T = TypeVar("T")

CACHE_DIR_ENV = "NEUROCODEC_CACHE_DIR"
CACHE_SIZE_ENV = "NEUROCODEC_CACHE_SIZE"
DEFAULT_CACHE_BYTES = 10 << 30
DEFAULT_DOWNLOAD_THREADS = 4
DEFAULT_PART_BYTES = 8 << 20
RESERVATION = ".reserved"
"""The file that holds a download's room in its entry folder until the download completes."""
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6,
          "mib": 1 << 20, "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}

Identity = tuple[int, int, int, int]
"""Device and inode numbers of a cached shard file and its index (see `ShardCache.identity`)."""

# Lock file descriptors open in this process: closed in a forked child, so that a child (a
# DataLoader worker) never keeps a lock its parent took alive after the parent releases it.
_OPEN_LOCKS: "weakref.WeakSet[_Lock]" = weakref.WeakSet()


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as `"500M"`, `"10GiB"`, `"1.5G"` (K/M/G/T are binary)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must not be negative, got {value}")
        return value
    text = str(value).strip().lower().replace(" ", "")
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(number):]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. 500M, 10G)") from None
    if unit not in _UNITS or amount < 0:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. 500M, 10G)")
    return int(amount * _UNITS[unit])


class NoRoom(Cancelled):
    """A prefetch gave up: the shards in use or on their way fill the cache."""


def default_cache_dir() -> Path:
    """`$NEUROCODEC_CACHE_DIR`, else `$XDG_CACHE_HOME/neurocodec/shards` (~/.cache by default)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurocodec" / "shards"


class _Lock:
    """One open lock file (its own open file description, so threads exclude each other too)."""

    def __init__(self, path: Path) -> None:
        with FORK_GUARD:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            _OPEN_LOCKS.add(self)

    def shared(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def exclusive(self, wait: bool = True) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False

    def close(self) -> None:
        with FORK_GUARD:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            _OPEN_LOCKS.discard(self)


def _close_inherited_locks() -> None:
    for lock in list(_OPEN_LOCKS):
        if lock.fd >= 0:
            try:
                os.close(lock.fd)
            except OSError:
                pass
            lock.fd = -1
    _OPEN_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class ShardCache:
    """A local cache of whole remote shards, at most `max_bytes` of them (least recently used
    evicted), shared safely by any number of processes on this machine.

    `cache_dir` defaults to `default_cache_dir()`, `max_bytes` (an int or a size string such
    as `"20G"`) to `$NEUROCODEC_CACHE_SIZE` or 10 GiB. `retry` bounds the attempts at each
    download (default `RetryPolicy.default()`); `prefetch_bytes` bounds how far ahead each
    reading process prefetches (default a quarter of `max_bytes`; 0 turns prefetching off).
    `download_threads` (default 4) is how many GETs each process runs at once, and how many
    shards its prefetcher downloads at once; a file larger than `part_bytes` (default 8 MiB; 0:
    never) is fetched in ranged GETs of that size. A shard larger than `max_bytes` is still
    downloaded (the cache then holds it alone). The object holds only settings, so it pickles
    into DataLoader workers.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_bytes: int | str | None = None, *,
                 retry: RetryPolicy | None = None, prefetch_bytes: int | str | None = None,
                 download_threads: int = DEFAULT_DOWNLOAD_THREADS,
                 part_bytes: int | str = DEFAULT_PART_BYTES) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        if max_bytes is None:
            max_bytes = os.environ.get(CACHE_SIZE_ENV) or DEFAULT_CACHE_BYTES
        self.max_bytes = parse_size(max_bytes)
        self.retry = retry or RetryPolicy.default()
        self.prefetch_bytes = parse_size(prefetch_bytes) if prefetch_bytes is not None else self.max_bytes // 4
        if type(download_threads) is not int or download_threads < 1:
            raise ValueError(f"download_threads must be a positive integer, got {download_threads!r}")
        self.download_threads = download_threads
        self.part_bytes = parse_size(part_bytes)
        self._pool: PerProcess[DownloadPool] = PerProcess()
        self._ready = False
        self.downloads = 0  # shards this object downloaded in this process
        self.evictions = 0  # entries this object evicted in this process
        self.discarded = 0  # damaged entries this object dropped in this process
        self._counting: PerProcess[threading.Lock] = PerProcess()  # a fork may copy it held

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ready": False}

    @property
    def _count_lock(self) -> threading.Lock:
        return self._counting.get(threading.Lock)

    @property
    def pool(self) -> DownloadPool:
        """This process's download threads (made on first use, again after a fork)."""
        return self._pool.get(lambda: DownloadPool(self.download_threads))

    def __repr__(self) -> str:
        return f"ShardCache({str(self.cache_dir)!r}, max_bytes={self.max_bytes})"

    # -- layout -------------------------------------------------------------------------------
    @staticmethod
    def key(entry: ShardEntry) -> str:
        """The cache key of a shard: its content (both checksums) and its file names."""
        text = f"{entry.sha256}\0{entry.index_sha256}\0{entry.name}\0{entry.index}\0{entry.bytes}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _dirs(self) -> None:
        if not self._ready:
            for sub in ("entries", "locks", "tmp"):
                (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)
            self._ready = True

    def entry_dir(self, entry: ShardEntry) -> Path:
        """The directory that holds `entry`'s shard and index once cached."""
        return self.cache_dir / "entries" / self.key(entry)

    def _complete(self, entry: ShardEntry) -> bool:
        folder = self.entry_dir(entry)
        try:
            return (os.stat(folder / entry.name).st_size == entry.bytes
                    and os.stat(folder / entry.index).st_size == entry.index_bytes)
        except FileNotFoundError:
            return False

    def cached(self, entry: ShardEntry) -> bool:
        """True if `entry` is in the cache now (it may be evicted right after)."""
        return self._complete(entry)

    # -- using shards -------------------------------------------------------------------------
    @contextlib.contextmanager
    def checkout(self, location: Location, entry: ShardEntry) -> Iterator[Path]:
        """Yield the local path of `entry`'s shard (its index beside it), downloading both
        first if needed; the files are not evicted before the block ends (open them inside).

        A reader goes first: the GETs of this shard, its own or those of a prefetch already
        downloading it in this process, jump the queue of the process's download threads."""
        with self.pool.urgent(self.key(entry)), self._checkout(location, entry, None) as (path, _):
            yield path

    @contextlib.contextmanager
    def _checkout(self, location: Location, entry: ShardEntry,
                  cancel: threading.Event | None) -> Iterator[tuple[Path, bool]]:
        self._dirs()
        lock = _Lock(self.cache_dir / "locks" / f"{self.key(entry)}.lock")
        try:
            yield self._hold(lock, location, entry, cancel)
        finally:
            lock.close()

    def open(self, location: Location, entry: ShardEntry, opener: Callable[[Path], T]) -> T:
        """`opener(local path)` for `entry`'s shard, called while the shard cannot be evicted."""
        with self.checkout(location, entry) as path:
            return opener(path)

    def fetch(self, location: Location, entry: ShardEntry, cancel: threading.Event | None = None) -> bool:
        """Make sure `entry` is cached (used by prefetching); True if this call downloaded it.
        Once `cancel` is set, a download in progress stops and raises `Cancelled`."""
        with self._checkout(location, entry, cancel) as (_, downloaded):
            return downloaded

    def _hold(self, lock: _Lock, location: Location, entry: ShardEntry,
              cancel: threading.Event | None) -> tuple[Path, bool]:
        path, downloaded = self.entry_dir(entry) / entry.name, False
        for _ in range(8):
            lock.shared()
            if self._complete(entry):
                try:
                    os.utime(path)  # recency for LRU eviction
                except FileNotFoundError:
                    continue
                return path, downloaded
            lock.exclusive()  # may drop the shared lock first: check again below
            if not self._complete(entry):
                self._download(location, entry, cancel)
                downloaded = True
        raise ShardError("evicted again each time it was downloaded: the cache is too small for the "
                         f"shards in use ({self!r})", shard=entry.name)

    def _download(self, location: Location, entry: ShardEntry, cancel: threading.Event | None) -> None:
        """Download `entry`'s index and shard (holding its lock exclusively): a reader's
        (`cancel` None) runs its own GETs too, a prefetch's stops once `cancel` is set."""
        key = self.key(entry)
        tmp_dir = self.cache_dir / "tmp"
        for stale in tmp_dir.glob(f"{key}.*"):  # left by a killed holder of this lock
            stale.unlink(missing_ok=True)
        folder = self.entry_dir(entry)
        reservation = folder / RESERVATION
        # A reader's shard is downloaded even if it overfills the cache; a prefetch waits its turn.
        self.make_room(entry.bytes + entry.index_bytes, keep=key, reserve=reservation, must_fit=cancel is not None)
        tag = f"{os.getpid()}.{threading.get_ident()}"
        # The index first: the shard file's presence is what `_complete` looks for last.
        files = [FileTask(location, name, size, digest, tmp_dir / f"{key}.{name}.{tag}.part")
                 for name, size, digest in ((entry.index, entry.index_bytes, entry.index_sha256),
                                            (entry.name, entry.bytes, entry.sha256))]
        try:
            download(self.pool, key, files, self.retry, self.part_bytes, cancel, help_inline=cancel is None)
            for f in files:
                os.replace(f.tmp, folder / f.name)
        except DownloadError as exc:
            raise _download_failed(location.url_of(exc.name), exc.cause, entry.name) from None
        except OSError as exc:
            raise ShardError(f"cannot download {location.url_of(entry.name)}: {type(exc).__name__}: {exc}",
                             shard=entry.name) from None
        finally:  # done, or failed: the files themselves count from here on
            for f in files:
                f.tmp.unlink(missing_ok=True)
            reservation.unlink(missing_ok=True)
        with self._count_lock:
            self.downloads += 1
        log.debug("cached %s (%d bytes)", location.url_of(entry.name), entry.bytes)

    # -- healing ------------------------------------------------------------------------------
    def identity(self, entry: ShardEntry) -> Identity | None:
        """Device and inode of `entry`'s cached shard and index, or None if it is not cached:
        tells whether the files a reader opened are still the ones in the cache."""
        folder = self.entry_dir(entry)
        try:
            shard, index = os.stat(folder / entry.name), os.stat(folder / entry.index)
        except FileNotFoundError:
            return None
        return shard.st_dev, shard.st_ino, index.st_dev, index.st_ino

    def discard_damaged(self, entry: ShardEntry, seen: Identity | None = None) -> bool:
        """Called when a check failed on a cached copy of `entry` (SHA-256, a CRC-32, a header):
        drop the copy if its bytes no longer match the manifest's SHA-256 (damaged on local disk
        after it was verified), so that the next open downloads it again.

        `seen` is the `identity()` of the copy the failing reader opened. True if opening the
        shard again may succeed: the copy was dropped, or is gone or replaced since `seen`.
        False if the copy is intact: the shard itself is bad, and a download would not help.
        """
        self._dirs()
        lock = _Lock(self.cache_dir / "locks" / f"{self.key(entry)}.lock")
        try:
            lock.exclusive()  # no reader opens it and no download replaces it meanwhile
            now = self.identity(entry)
            if now is None or (seen is not None and now != seen) or not self._complete(entry):
                return True
            folder = self.entry_dir(entry)
            if (_sha256_of(folder / entry.index) == entry.index_sha256
                    and _sha256_of(folder / entry.name) == entry.sha256):
                return False
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock.close()
        with self._count_lock:
            self.discarded += 1
        log.warning("dropped the cached copy of %s from %s: it no longer matches the manifest's "
                    "SHA-256 (damaged on local disk); it will be downloaded again", entry.name, self.cache_dir)
        return True

    # -- eviction -----------------------------------------------------------------------------
    def usage(self) -> list[tuple[float, str, int]]:
        """(last use time, key, bytes) of every cached entry."""
        out = []
        root = self.cache_dir / "entries"
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return out
        for key in names:
            size, used = 0, 0.0
            try:
                with os.scandir(root / key) as files:
                    for f in files:
                        st = f.stat()
                        size += st.st_size
                        used = max(used, st.st_mtime)
            except FileNotFoundError:
                continue
            out.append((used, key, size))
        return out

    def size(self) -> int:
        """Bytes of the cached entries now."""
        return sum(size for _, _, size in self.usage())

    def make_room(self, needed: int, keep: str | None = None, reserve: Path | None = None,
                  must_fit: bool = False) -> int:
        """Evict least recently used entries (not `keep`, none in use) until `needed` more bytes
        fit under `max_bytes`; return the number evicted. With `reserve`, a sparse file of
        `needed` bytes is made there before the eviction lock is let go, so that another process
        making room for its own download meanwhile counts this one's bytes too. `must_fit`
        (a prefetch): raise NoRoom, reserving nothing, if the bytes in use leave too little room."""
        self._dirs()
        guard = _Lock(self.cache_dir / "evict.lock")
        evicted = 0
        try:
            guard.exclusive()
            entries = self.usage()
            total = sum(size for _, _, size in entries)
            for _, key, size in sorted(entries):
                if total + needed <= self.max_bytes:
                    break
                if key == keep:
                    continue
                lock = _Lock(self.cache_dir / "locks" / f"{key}.lock")
                try:
                    if not lock.exclusive(wait=False):
                        continue  # being opened or downloaded right now
                    shutil.rmtree(self.cache_dir / "entries" / key, ignore_errors=True)
                finally:
                    lock.close()
                total -= size
                evicted += 1
                log.debug("evicted %s (%d bytes)", key, size)
            if must_fit and total + needed > self.max_bytes:
                raise NoRoom(f"{needed} bytes do not fit beside the {total} in use")
            if reserve is not None:
                reserve.parent.mkdir(exist_ok=True)
                with open(reserve, "wb") as f:
                    f.truncate(needed)  # sparse: it takes no disk, but its size counts in usage()
        finally:
            guard.close()
        with self._count_lock:
            self.evictions += evicted
        return evicted

    def clear(self) -> None:
        """Evict every entry not in use."""
        saved, self.max_bytes = self.max_bytes, 0
        try:
            self.make_room(0)
        finally:
            self.max_bytes = saved


def _download_failed(url: str, cause: BaseException, shard: str) -> ShardError:
    """The ShardError of a download that failed for good with `cause`."""
    if isinstance(cause, RetriesExhausted):
        return ShardError(f"cannot download {url}: {cause.attempts} attempts failed, the last with "
                          f"{type(cause.last).__name__}: {cause.last}", shard=shard)
    return ShardError(f"cannot download {url}: {type(cause).__name__}: {cause}", shard=shard)


def _sha256_of(path: Path) -> str | None:
    """The SHA-256 (hex) of a file, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return digest_of(f)
    except OSError:
        return None
