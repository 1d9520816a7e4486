"""The shard table: a large dataset's per-shard rows in fixed-width binary (format version 3).

A dataset of more than `TABLE_ABOVE` shards (10,000 unless its writer was given another
`shard_table_above`) keeps its shard rows out of `dataset_metadata.json`, in a file beside it,
`shards-<16 hex digits>.table`, that the manifest names with its size and the SHA-256 of its
head (docs/format.md, section 8.5). Every number is little-endian:

* header, 64 bytes: magic `NCSHTBL\\0`, table version (u32, 1), record size (u32, 88), shard
  count (u64), records per block (u64, 1024), the first shard's number (u64; shard i is
  `shard_<first + i>.tar`, at least 6 digits), 24 zero bytes;
* `samples`: count u64, each shard's sample count;
* `first_sample`: count u64, each shard's first sample;
* `digests`: one SHA-256 (32 bytes) per block of 1024 records;
* records, 88 bytes per shard: shard bytes (u64), index bytes (u64), index layout (u64: 0 for
  `.shard_N.idx`, 1 for the top-level layout's `shard_N.idx`), the shard's SHA-256 (32
  bytes) and its index's (32 bytes).

The header, the two columns and the digests are the head: read whole, checked against the
manifest's SHA-256 and every count, on open. That is 16 bytes a shard (16 MB for 10^6 shards)
held as two numpy arrays, which is all the epoch's order and `Dataset.locate` need. A shard's
record is read with its block (90 KB) only when the shard is opened, checked against the
block's digest. So opening costs O(shards) bytes and vectorised checks, never a Python object
per shard; names are made from numbers and cannot be unsafe. Nothing is mapped: blocks are
read with `pread` (a table that changes while open fails its digest, never a signal).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from neurocodec.errors import DatasetError
from neurocodec.format import layout, limits
from neurocodec.format.fetch import open_regular

TABLE_VERSION = 1
TABLE_ABOVE = 10_000
"""Datasets with more shards than this keep them in a shard table (the writer option
`shard_table_above`, recorded in the manifest's writer settings when not this default)."""
FORMAT_VERSION = 3
"""The manifest format version of a dataset with a shard table."""
MAX_TABLE_SHARDS = 10**7
"""The most shards a table may declare: its head is then 160 MB, read whole on open."""
MAGIC = b"NCSHTBL\0"
BLOCK = 1024
HEADER = struct.Struct("<8sIIQQQ24x")
RECORD = np.dtype([("bytes", "<u8"), ("index_bytes", "<u8"), ("legacy_index", "<u8"),
                   ("sha256", "u1", (32,)), ("index_sha256", "u1", (32,))])
_ROW = struct.Struct("<QQQ32s32s")
assert _ROW.size == RECORD.itemsize
MAX_FIRST_NUMBER = 10**15
"""Shard numbers stay below this (stand-in names use multiples of 10^9)."""
_NAME = re.compile(r"shards-[0-9a-f]{16}\.table")
HEX64 = re.compile(r"[0-9a-f]{64}")
SHARD_NUMBER = re.compile(r"shard_([0-9]{6,})\.tar")
_CACHED_BLOCKS = 16


def is_table_name(name: object) -> bool:
    """True for a shard table's file name (`shards-<16 hex digits>.table`)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def table_bytes(count: int) -> int:
    """The exact size of the table of `count` shards."""
    blocks = -(-count // BLOCK)
    return HEADER.size + 16 * count + 32 * blocks + RECORD.itemsize * count


def head_bytes(count: int) -> int:
    """The size of the head (header, columns, digests) of the table of `count` shards."""
    return HEADER.size + 16 * count + 32 * -(-count // BLOCK)


class TableSource:
    """Where a table's bytes come from: `read(offset, length)` gives exactly that many bytes."""

    label: str
    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`; DatasetError naming the table otherwise."""
        raise NotImplementedError


class FileSource(TableSource):
    """A local table file, read with `pread`; reopened after a fork or in another process."""

    def __init__(self, path: Path) -> None:
        self.path, self.label = Path(path), str(path)
        self._fd: int | None = None
        self._pid = 0
        self.size = self._open()

    def _open(self) -> int:
        try:
            self._fd, size = open_regular(self.path)
        except FileNotFoundError:
            raise DatasetError(f"{self.label}: the shard table the manifest names is missing") from None
        except OSError as exc:
            raise DatasetError(f"{self.label}: cannot open the shard table ({exc.strerror or exc})") from None
        self._pid = os.getpid()
        return size

    def read(self, offset: int, length: int) -> bytes:
        """`TableSource.read` with `pread` (the file opened again in a forked child)."""
        if self._fd is None or self._pid != os.getpid():
            self._open()
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise DatasetError(f"{self.label}: cannot read the shard table ({exc.strerror or exc})") from None
        if len(data) != length:
            raise DatasetError(f"{self.label}: the shard table ends early (truncated at {offset + len(data)} bytes)")
        return data

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "size": self.size, "_fd": None, "_pid": 0}

    def __del__(self, _close: Callable[[int], None] = os.close, _getpid: Callable[[], int] = os.getpid) -> None:
        # os bound as defaults: at interpreter exit the module's globals may already be gone.
        if getattr(self, "_fd", None) is not None and self._pid == _getpid():
            try:
                _close(self._fd)
            except OSError:
                pass


class BytesSource(TableSource):
    """A table held in memory (a URL dataset's, downloaded whole)."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data, self.label, self.size = data, label, len(data)

    def read(self, offset: int, length: int) -> bytes:
        """`TableSource.read` from memory."""
        data = self.data[offset: offset + length]
        if len(data) != length:
            raise DatasetError(f"{self.label}: the shard table ends early (truncated at {offset + len(data)} bytes)")
        return data


class TableShards(Sequence):
    """The shards of a table dataset: a read-only sequence of `ShardEntry`, as the tuple of a
    JSON manifest is, whose entries are made when asked for (see the module documentation).
    `samples` and `starts` are the sample counts and first samples as int64 arrays; `entry`
    the class of the entries (`manifest.ShardEntry`)."""

    def __init__(self, source: TableSource, *, count: int, head_sha256: str, total_samples: int,
                 members: int, ceiling: int, entry: type) -> None:
        self.source, self.members, self.label, self.entry = source, members, source.label, entry
        self._need(source.size == table_bytes(count),
                   f"{source.size} bytes, but a table of {count} shards has {table_bytes(count)}")
        head = source.read(0, head_bytes(count))
        self._need(hashlib.sha256(head).hexdigest() == head_sha256,
                   "the shard table does not match the SHA-256 the manifest records (corrupted or altered)")
        magic, version, record, declared, block, first = HEADER.unpack_from(head)
        self._need(magic == MAGIC and version == TABLE_VERSION and record == RECORD.itemsize and block == BLOCK,
                   f"not a shard table of version {TABLE_VERSION}")
        self._need(declared == count, f"the table holds {declared} shards, the manifest lists {count}")
        self._need(first + count <= MAX_FIRST_NUMBER, f"shard numbers from {first} are out of range")
        self.first_number, self.count, self.head_sha256 = first, count, head_sha256
        columns = np.frombuffer(head, dtype="<u8", count=2 * count, offset=HEADER.size)
        self._check_columns(columns[:count], columns[count:], total_samples, ceiling)
        # Views of the head, no copies: every value was just checked to be below 10^9.
        signed = columns.view("<i8")
        self.samples, self.starts = signed[:count], signed[count:]
        self.digests = head[HEADER.size + 16 * count:]
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def _need(self, cond: bool, what: str) -> None:
        if not cond:
            raise DatasetError(f"{self.label}: {what}")

    def _check_columns(self, samples: np.ndarray, starts: np.ndarray, total: int, ceiling: int) -> None:
        if not len(samples):
            self._need(total == 0, f"no shards, but total_samples is {total}")
            return
        self._need(bool(samples.min() > 0), "a shard's sample count is not positive")
        self._need(int(samples.max()) <= layout.MAX_SAMPLES and int(starts.max()) <= layout.MAX_SAMPLES,
                   "a sample count is beyond what 9-digit keys number")
        ends = starts + samples  # no overflow: each term is below 10^9
        bad = np.flatnonzero(starts[1:] != ends[:-1])
        self._need(int(starts[0]) == 0, f"shard 0's first_sample is {int(starts[0])}, expected 0")
        self._need(not len(bad), f"shard {int(bad[0]) + 1 if len(bad) else 0}'s first_sample does not follow "
                                 "the samples before it")
        self._need(int(ends[-1]) == total, f"the shards hold {int(ends[-1])} samples but total_samples is {total}")
        largest = int(samples.max())
        index = limits.index_file_bytes(largest, self.members)
        self._need(index <= ceiling,
                   f"a shard's index of {largest} samples of {self.members} members is {index} bytes, above the "
                   f"per-member ceiling of {ceiling} bytes that bounds every read (raise it with max_member_bytes= "
                   f"or {limits.ENV_MAX_MEMBER_BYTES} if you trust this dataset)")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self.count)))
        number = int(index)
        if number < 0:
            number += self.count
        if not 0 <= number < self.count:
            raise IndexError(f"shard {index} of {self.count}")
        return self._entry(number, self._records(number // BLOCK), number % BLOCK)

    def __iter__(self) -> Iterator[Any]:
        for k in range(-(-self.count // BLOCK)):
            data = self._records(k)
            for j in range(len(data) // RECORD.itemsize):
                yield self._entry(k * BLOCK + j, data, j)

    def _block(self, k: int) -> np.ndarray:
        """Block `k`'s records, read and checked (not cached: `records`, `total_bytes`)."""
        return self._read_block(k)

    def _records(self, k: int) -> bytes:
        """Block `k`'s records, read and checked; the last `_CACHED_BLOCKS` blocks used kept."""
        with self._lock:
            data = self._blocks.get(k)
            if data is not None:
                self._blocks.move_to_end(k)
                return data
        data = self._read_block(k).tobytes()
        with self._lock:
            self._blocks[k] = data
            if len(self._blocks) > _CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        return data

    def _read_block(self, k: int) -> np.ndarray:
        n = min(BLOCK, self.count - k * BLOCK)
        data = self.source.read(head_bytes(self.count) + k * BLOCK * RECORD.itemsize, n * RECORD.itemsize)
        self._need(hashlib.sha256(data).digest() == self.digests[32 * k: 32 * k + 32],
                   f"block {k} of the shard records (shards {k * BLOCK} to {k * BLOCK + n - 1}) does not match "
                   "its checksum (corrupted or altered)")
        return np.frombuffer(data, dtype=RECORD)

    def _entry(self, number: int, data: bytes, j: int) -> Any:
        samples, members = int(self.samples[number]), self.members
        name = layout.shard_name(self.first_number + number)
        size, index_bytes, legacy, sha, index_sha = _ROW.unpack_from(data, j * RECORD.itemsize)
        least, need = limits.min_shard_bytes(samples, members), limits.index_file_bytes(samples, members)
        if legacy not in (0, 1) or size < least or index_bytes != need:
            self._need(legacy in (0, 1), f"shard {number}: index layout {legacy} is neither 0 nor 1")
            self._need(size >= least, f"shard {number}: {size} bytes, too few for {samples} samples of {members} "
                                      f"members (at least {least})")
            self._need(False, f"shard {number}: index_bytes is {index_bytes}, but the index of {samples} samples "
                              f"of {members} members is {need} bytes")
        return self.entry(
            name=name, index=layout.legacy_index_name(name) if legacy else layout.index_name(name),
            samples=samples, first_sample=int(self.starts[number]), bytes=size,
            sha256=sha.hex(), index_bytes=index_bytes, index_sha256=index_sha.hex())

    def records(self) -> Iterator[bytes]:
        """The record bytes, block by block, each checked against its digest."""
        for k in range(-(-self.count // BLOCK)):
            yield self._block(k).tobytes()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TableShards):
            return self.count == other.count and self.digests == other.digests and \
                self.first_number == other.first_number and bool(np.array_equal(self.samples, other.samples))
        if isinstance(other, (tuple, list)):
            return len(other) == self.count and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.count, self.first_number, self.digests))

    def __add__(self, other: Sequence[Any]) -> Any:
        """These shards and then `other` (an append's): an `ExtendedShards`, written back as a
        table by copying these records, not by making an entry per shard."""
        return ExtendedShards(self, tuple(other))

    def __repr__(self) -> str:
        return f"TableShards({self.label!r}, {self.count} shards)"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blocks"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class ExtendedShards(Sequence):
    """A table's shards followed by more entries (`TableShards + tuple`, as an append makes):
    a sequence of `ShardEntry` with the `samples` and `starts` arrays of both."""

    def __init__(self, table: TableShards, tail: tuple[Any, ...]) -> None:
        self.table, self.tail = table, tail
        samples, starts = shard_columns(tail)
        self.samples = np.concatenate([table.samples, samples])
        self.starts = np.concatenate([table.starts, starts])

    def __len__(self) -> int:
        return len(self.table) + len(self.tail)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        number = int(index) + (len(self) if int(index) < 0 else 0)
        if not 0 <= number < len(self):
            raise IndexError(f"shard {index} of {len(self)}")
        return self.table[number] if number < len(self.table) else self.tail[number - len(self.table)]

    def __iter__(self) -> Iterator[Any]:
        yield from self.table
        yield from self.tail

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(other) == len(self) and all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        return hash((self.table, self.tail))

    def __add__(self, other: Sequence[Any]) -> "ExtendedShards":
        return ExtendedShards(self.table, self.tail + tuple(other))


def shard_columns(shards: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(sample counts, first samples) of `shards` as int64 arrays: a table's own, or made
    from a tuple of entries."""
    if not isinstance(shards, (tuple, list)):  # a table, or a table and more (ExtendedShards)
        return shards.samples, shards.starts
    samples = np.fromiter((s.samples for s in shards), dtype=np.int64, count=len(shards))
    starts = np.fromiter((s.first_sample for s in shards), dtype=np.int64, count=len(shards))
    return samples, starts


def file_bytes(shards: Sequence[Any]) -> np.ndarray:
    """Each shard's bytes on disk, its index included (int64): a table's read block by block
    (each checked), without an entry per shard; for prefetch budgets and totals."""
    if not isinstance(shards, TableShards):
        return np.fromiter((s.bytes + s.index_bytes for s in shards), dtype=np.int64, count=len(shards))
    sizes = [(rows["bytes"] + rows["index_bytes"]).astype(np.int64)  # one block's records at a time
             for rows in map(shards._block, range(-(-len(shards) // BLOCK)))]
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)


def total_bytes(shards: Sequence[Any]) -> int:
    """The bytes of every shard and index file."""
    return int(file_bytes(shards).sum())


def is_prefix(earlier: Sequence[Any], current: Sequence[Any]) -> bool:
    """True if `earlier` are the first shards of `current` (an earlier version's): for two
    tables, compared by columns and block digests, entries only in a last partial block."""
    n = len(earlier)
    if n > len(current):
        return False
    if not (isinstance(earlier, TableShards) and isinstance(current, TableShards)):
        return all(a == b for a, b in zip(earlier, current))
    full = n // BLOCK
    return (earlier.first_number == current.first_number
            and bool(np.array_equal(earlier.samples, current.samples[:n]))
            and earlier.digests[: 32 * full] == current.digests[: 32 * full]
            and all(earlier[i] == current[i] for i in range(full * BLOCK, n)))


def table_name(head_sha256: str) -> str:
    """The file name of the table whose head has this SHA-256."""
    return f"shards-{head_sha256[:16]}.table"


def open_table(doc: Any, opener: Callable[[str, int], TableSource] | None, source: str, *, total_shards: Any,
               total_samples: int, members: int, ceiling: int, entry: type) -> TableShards:
    """The shards of the manifest entry `shard_table` (`doc`), read through `opener(name,
    declared bytes)`;
    DatasetError naming `source` for an entry that is not one this reader trusts."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DatasetError(f"{source}: shard_table {what}")

    need(isinstance(doc, dict) and set(doc) == {"name", "bytes", "sha256", "shards"},
         "must be an object of name, bytes, sha256 and shards")
    need(is_table_name(doc["name"]), f"name {str(doc['name'])[:80]!r} is not a shard table's file name")
    count = doc["shards"]
    need(type(count) is int and 0 <= count <= min(MAX_TABLE_SHARDS, total_samples),
         f"shards must be an integer from 0 to {min(MAX_TABLE_SHARDS, total_samples)} (one sample a shard at least)")
    need(total_shards == count, f"lists {count} shards but total_shards is {total_shards!r}")
    need(type(doc["bytes"]) is int and doc["bytes"] == table_bytes(count), f"bytes must be {table_bytes(count)} for {count} shards")
    need(isinstance(doc["sha256"], str) and HEX64.fullmatch(doc["sha256"]) is not None
         and doc["name"] == table_name(doc["sha256"]), "sha256 must be the 64 hex digits the name begins with")
    need(opener is not None, "cannot be read here (no dataset directory to read it from)")
    return TableShards(opener(doc["name"], doc["bytes"]), count=count, head_sha256=doc["sha256"], total_samples=total_samples,
                       members=members, ceiling=ceiling, entry=entry)
