"""Writing one shard: tar members streamed to a temp file, index and checksums kept on the way.

The shard appears under its final name only when complete: members go to a hidden temp file,
the index is written atomically, and the tar file is renamed into place last. Committing a
finished shard (fsync, SHA-256 of the file, index, rename) is the slow part of closing it and
touches nothing the writer still uses, so `BackgroundCommits` runs it on a thread while the
next shard is encoded: fsync waits on the disk. The bytes of shards of large samples are hashed
and written on other threads as they come (`neurocodec.format.spool`); those of small samples
by the caller, the SHA-256 being taken at commit.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from neurocodec.format import index as shard_index
from neurocodec.format.checksum import crc32
from neurocodec.format.adopt import AdoptedShard
from neurocodec.format import layout, tar
from neurocodec.format.manifest import ShardEntry
from neurocodec.format.spool import SpooledFile
from neurocodec.fsutil import atomic_write_bytes, temp_path


class ShardFileWriter:
    """Streams samples into one shard file and produces its index and manifest entry.

    Headers, payloads and padding go to a `SpooledFile` by reference, so a payload is copied
    once on its way to the file; with `threaded` it is hashed and written on a thread while the
    next samples are encoded. The CRC-32 of each payload is computed here, from the bytes
    handed over.
    """

    def __init__(self, directory: Path, number: int, first_sample: int, members: int,
                 *, fsync: bool = True, threaded: bool = True) -> None:
        self.name = layout.shard_name(number)
        self.final = directory / self.name
        self.tmp = temp_path(self.final)
        self.first_sample = first_sample
        self.members = members
        self.fsync = fsync
        self.rows: list[list[tuple[int, int, int, int]]] = []
        self.offset = 0
        self._file = SpooledFile(self.tmp, threaded=threaded)

    @property
    def samples(self) -> int:
        """Samples written so far."""
        return len(self.rows)

    def add_sample(self, names: Sequence[str], payloads: Sequence[bytes | memoryview], raw_sizes: Sequence[int],
                   *, immutable: bool = False) -> None:
        """Append one sample: its member names, stored payloads, and decoded sizes, in field order.

        Payloads are written later (up to a few MiB later, maybe on a thread): a `bytes` payload
        is kept as it is, any other is copied first unless `immutable` promises that nobody
        changes it afterwards."""
        row = []
        for name, payload, raw in zip(names, payloads, raw_sizes):
            if not immutable and type(payload) is not bytes:
                payload = bytes(payload)
            size = len(payload)
            row.append((self.offset + tar.BLOCK, size, raw, crc32(payload)))
            pad = tar.padding(size)
            self._file.add(tar.build_header(name, size), payload, _ZEROS[:pad])
            self.offset += tar.BLOCK + size + pad
        self.rows.append(row)

    def finish(self) -> None:
        """End the archive and hand its last bytes over (still under the temp name)."""
        self._file.add(tar.END_OF_ARCHIVE)
        self.offset += len(tar.END_OF_ARCHIVE)
        self._file.flush()

    def commit(self) -> ShardEntry:
        """Wait until every byte is written, fsync the file, write the index, rename both into
        place; return the entry (with the file's SHA-256). Safe to run on another thread once
        `finish` has returned."""
        sha256 = self._file.close(fsync=self.fsync)
        index_bytes = shard_index.encode(np.array(self.rows, dtype=np.uint64).reshape(-1, self.members, 4))
        index_path = self.final.with_name(layout.index_name(self.name))
        atomic_write_bytes(index_path, index_bytes, fsync=self.fsync)
        os.replace(self.tmp, self.final)
        return ShardEntry(
            name=self.name, index=index_path.name, samples=self.samples, first_sample=self.first_sample,
            bytes=self.offset, sha256=sha256, index_bytes=len(index_bytes),
            index_sha256=hashlib.sha256(index_bytes).hexdigest(),
        )

    def close(self) -> ShardEntry:
        """Finish and commit in this thread; return the entry."""
        self.finish()
        return self.commit()

    def abort(self) -> None:
        """Drop the unfinished shard."""
        try:
            self._file.abort()
        finally:
            self.tmp.unlink(missing_ok=True)


_ZEROS = memoryview(bytes(tar.BLOCK))
THREADED_SAMPLE_BYTES = 128 << 10
"""A shard whose first sample stores at least this many bytes is written and hashed on a thread
as it comes (`SpooledFile`); one of smaller samples is written by the caller and hashed when
committed. Measured here: large samples (LFP windows, 256 KB) convert 25-30% faster threaded,
small ones (40 KB in three members) write 25% slower (see `neurocodec.format.spool`)."""


class BackgroundCommits:
    """Commits finished shards one at a time, in order, on one background thread.

    At most one shard is in flight: `submit` requires the previous one collected with `wait`,
    which returns its entry or raises what its commit raised (after removing its temp file).
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[ShardFileWriter | AdoptedShard, Future] | None = None

    @property
    def in_flight(self) -> int:
        """Shards submitted and not yet collected (0 or 1)."""
        return 0 if self._pending is None else 1

    def submit(self, shard: ShardFileWriter | AdoptedShard) -> None:
        """Start committing `shard` (finished) in the background."""
        assert self._pending is None, "wait() for the previous shard first"
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="neurocodec-commit")
        self._pending = (shard, self._executor.submit(shard.commit))

    def hand_over(self, shard: ShardFileWriter | AdoptedShard) -> ShardEntry | None:
        """Finish `shard` and start committing it; return the previous shard's entry once it is
        committed (None for the first). If this raises, `shard` was not taken: abort it."""
        shard.finish()
        previous = self.wait()
        self.submit(shard)
        return previous

    def wait(self) -> ShardEntry | None:
        """The entry of the shard in flight once committed, or None if there is none."""
        if self._pending is None:
            return None
        shard, future = self._pending
        self._pending = None
        try:
            return future.result()
        except BaseException:
            shard.abort()
            raise

    def close(self) -> None:
        """Wait for the shard in flight, ignoring its failure (used when giving up), and stop
        the thread. A shard already renamed into place stays, like every finished shard."""
        try:
            self.wait()
        except BaseException:
            pass
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


class ShardSequence:
    """Samples written into consecutive shards of `shard_size` samples: the one component that
    rolls shards over and commits them, for the writer and for merging alike.

    A shard is started at the first sample that needs it and closed when full; with
    `background` it is committed on a thread while the next one is written (`BackgroundCommits`),
    else at once (an upload must follow each shard in order). Each committed shard's entry is
    appended to `entries` and handed to `on_commit`, in shard order; what `on_commit` raises
    stops the sequence like a failed commit. After a failure call `abort`.

    `first_shard` and `first_sample` continue a dataset (an append): shards are numbered, and
    samples keyed, from there; `samples` counts from `first_sample`, `entries` only new shards.
    """

    def __init__(self, directory: Path, shard_size: int, *, fsync: bool, background: bool,
                 on_commit: Callable[[ShardEntry], None] = lambda entry: None,
                 first_shard: int = 0, first_sample: int = 0) -> None:
        self.directory, self.shard_size, self.fsync = directory, shard_size, fsync
        self.entries: list[ShardEntry] = []
        self.first_shard = first_shard
        self.samples = first_sample
        self._on_commit = on_commit
        self._commits = BackgroundCommits() if background else None
        self._current: ShardFileWriter | None = None

    def add(self, names: Sequence[str], payloads: Sequence[bytes | memoryview], raw_sizes: Sequence[int], *,
            immutable: bool = False) -> None:
        """Append one sample (member names, stored payloads, decoded sizes, in field order);
        `immutable`: nobody changes the payloads afterwards (see `ShardFileWriter.add_sample`)."""
        if self._current is None:
            # Numbered by shards started: the last finished one may still be committing.
            started = self.first_shard + len(self.entries) + (self._commits.in_flight if self._commits else 0)
            self._current = ShardFileWriter(self.directory, started, self.samples, len(payloads), fsync=self.fsync,
                                            threaded=sum(map(len, payloads)) >= THREADED_SAMPLE_BYTES)
        self._current.add_sample(names, payloads, raw_sizes, immutable=immutable)
        self.samples += 1
        if self._current.samples == self.shard_size:
            self._close_current()

    def adopt(self, source: Path, entry: ShardEntry, rows: np.ndarray, member_names: Callable[[int], Sequence[str]],
              *, last: bool) -> bool:
        """Take the finished shard `entry` of the local dataset in `source` as the next shard,
        hard-linked instead of copied, when it is byte for byte the shard this sequence would
        write from its samples: no shard is open, it starts at this sequence's next sample
        under the next shard's name (so every member name is the same), and it is full, or
        `last` (no sample follows it). `rows` is its validated index and `member_names(local)`
        the names its sample `local` must have; its files are checked against both and `entry`
        when committed (`neurocodec.format.adopt`). Returns False, having done nothing, when it
        is not such a shard or the filesystem cannot link; the caller then copies its samples."""
        number = self.first_shard + len(self.entries) + (self._commits.in_flight if self._commits else 0)
        if (self._current is not None or entry.first_sample != self.samples or entry.name != layout.shard_name(number)
                or not (entry.samples == self.shard_size or (last and 0 < entry.samples < self.shard_size))):
            return False
        try:
            shard = AdoptedShard(self.directory, source, entry, rows, member_names, fsync=self.fsync)
        except OSError:
            return False
        try:
            committed = shard.commit() if self._commits is None else self._commits.hand_over(shard)
        except BaseException:
            shard.abort()
            raise
        self.samples += entry.samples
        self._record(committed)
        return True

    def finish(self) -> list[ShardEntry]:
        """Close the last shard, wait for every commit; return the entries of all shards."""
        if self._current is not None:
            self._close_current()
        if self._commits is not None:
            self._record(self._commits.wait())
            self._commits.close()
        return self.entries

    def abort(self) -> None:
        """Stop committing and drop the unfinished shard (shards already renamed into place stay)."""
        if self._commits is not None:
            self._commits.close()
        if self._current is not None:
            self._current.abort()
            self._current = None

    def _close_current(self) -> None:
        shard = self._current
        entry = shard.close() if self._commits is None else self._commits.hand_over(shard)
        self._current = None  # taken: from here on its commit owns it
        self._record(entry)

    def _record(self, entry: ShardEntry | None) -> None:
        if entry is not None:
            self.entries.append(entry)
            self._on_commit(entry)
