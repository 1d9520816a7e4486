"""Reading the samples of one shard through its index, safely (see `neurocodec.dataset.reader`).

`ShardReader` needs nothing from the dataset but a `ReadPlan`: the fields, the functions that
decode them, the member-name suffixes, the compression and the checks to make. It imports no
plugin or storage code; `Dataset` builds the plan from the manifest and the codecs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import numpy as np

from neurocodec.errors import NeurocodecError, ShardError
from neurocodec.format import index as shard_index
from neurocodec.format import layout, tar
from neurocodec.format.checksum import crc32
from neurocodec.format.compression import decompress
from neurocodec.format.fetch import ShardFile, open_regular
from neurocodec.format.headers import MemberHeaders
from neurocodec.format.manifest import FieldSpec, ShardEntry

RUN = 64
"""Samples whose index rows become Python lists together, the first time one of them is read."""
RUN_BYTES = 1 << 18
"""Bytes `ShardReader.read_run` reads at once, at most (a larger sample is read alone). Small
enough that a read's bytes are still in the CPU's cache when its samples' CRC-32 checks and
decoding touch them: 1 MiB reads made 300 KB samples 20-30% slower than reading each alone."""
KEY = "__key__"
VERIFY_MODES = ("crc", "full", "none")


@attrs.frozen
class ReadPlan:
    """What reading any shard of one dataset takes: its `fields` (manifest order, metadata
    last), one decoding function per field, the member-name `suffixes`
    (`.<field>.<ext><compression suffix>`), the `compression`, the `verify` mode (one of
    VERIFY_MODES) and the per-member decoded-size ceiling."""

    fields: tuple[FieldSpec, ...]
    decoders: tuple[Callable[[Any], Any], ...]
    suffixes: tuple[str, ...]
    compression: str
    verify: str
    max_member_bytes: int
    headers: MemberHeaders = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "headers", MemberHeaders(self.suffixes))


def open_regular_file(path: Path) -> tuple[Any, int]:
    """Open `path` for reading if it is a regular file (see `fetch.open_regular`); return the
    file and its size."""
    fd, size = open_regular(path)
    return os.fdopen(fd, "rb"), size


class ShardReader:
    """Random access to the samples of one shard through its index.

    Every read copies the sample it needs out of the file with `pread` (see
    `neurocodec.format.fetch`): nothing is mapped, so a shard truncated or rewritten while open
    gives `ShardError`, never a signal, and decoded values own their bytes. The tar header in
    front of every member is checked against the name and size the index promises, the first
    time the sample is read; every payload against its CRC-32 on every read.
    """

    def __init__(self, path: Path, entry: ShardEntry, plan: ReadPlan) -> None:
        self.path = path
        self.entry = entry
        self.name = entry.name
        self._plan = plan
        self._verify_crc = plan.verify != "none"
        try:
            self._file = ShardFile(path, entry.name)
        except OSError as exc:
            raise ShardError(f"cannot open: {exc.strerror or exc}", shard=self.name) from None
        try:
            if self._file.size != entry.bytes:
                raise ShardError(f"file has {self._file.size} bytes, the manifest says {entry.bytes} "
                                 "(truncated or replaced)", shard=self.name)
            self.rows = self._load_index(path.with_name(entry.index), self._file.size)
            if plan.verify == "full" and self._file.sha256() != entry.sha256:
                raise ShardError("SHA-256 does not match the manifest (corrupted)", shard=self.name)
        except BaseException:
            self._file.close()
            raise
        # Plain Python lists and strings for the per-member hot path. Index rows become one flat
        # list per run of RUN samples when first read, so opening a large shard costs no more
        # than opening a small one.
        self._suffixes = plan.suffixes
        self._columns = tuple(zip(range(len(plan.fields)), [f.name for f in plan.fields], plan.decoders))
        self._samples, self._first = entry.samples, entry.first_sample  # plain ints for the hot path
        self._compression, self._max_member_bytes = plan.compression, plan.max_member_bytes
        self._plain = self._compression == "none"
        self._headers = plan.headers
        self._checked = bytearray(entry.samples)  # 1: the sample's headers passed
        self._run_rows: list[list[int] | None] = [None] * -(-entry.samples // RUN)
        self._ends: np.ndarray | None = None  # each sample's end offset, for read_run

    def _load_index(self, path: Path, shard_size: int) -> np.ndarray:
        entry, fields = self.entry, self._plan.fields
        try:
            f, size = open_regular_file(path)
            with f:
                # index_bytes comes from the (untrusted) manifest: never size a buffer by it alone.
                data = f.read(min(size, entry.index_bytes) + 1)
        except OSError as exc:
            raise ShardError(f"cannot read index {path.name}: {exc.strerror or exc}", shard=self.name) from None
        if len(data) != entry.index_bytes or hashlib.sha256(data).hexdigest() != entry.index_sha256:
            raise ShardError(f"index {path.name} does not match the manifest's size and SHA-256", shard=self.name)
        try:
            rows = shard_index.decode(data, entry.samples, len(fields))
        except ValueError as exc:
            raise ShardError(f"index {path.name} is malformed: {exc}", shard=self.name) from None
        # Checked as the uint64 it is stored as: only a validated index becomes int64 below.
        problem = shard_index.validate(
            rows, shard_size, np.array([f.max_raw_bytes for f in fields], dtype=np.uint64),
            np.array([f.max_stored_bytes for f in fields], dtype=np.uint64),
            max_member_bytes=self._plan.max_member_bytes,
            names=[f.name for f in fields],
        )
        if problem is not None:
            member = None
            if problem.sample is not None:
                member = layout.sample_key(entry.first_sample + problem.sample) + \
                    self._plan.suffixes[problem.column]
            raise ShardError(f"index {path.name} is inconsistent: {problem.why}", shard=self.name, member=member)
        return rows.astype(np.int64)

    def __len__(self) -> int:
        return self.entry.samples

    def _row(self, local: int) -> list[int]:
        """Sample `local`'s index values as one flat list: (offset, stored, raw, crc) per member."""
        run = local // RUN
        rows = self._run_rows[run]
        if rows is None:
            # One flat list per run: nested lists would be hundreds of long-lived containers per
            # run, which set off the cyclic garbage collector over the whole heap (torch's included).
            rows = self._run_rows[run] = self.rows[run * RUN:(run + 1) * RUN].ravel().tolist()
        width = 4 * len(self._suffixes)
        start = (local - run * RUN) * width
        return rows[start:start + width]

    def read_sample(self, local: int, *, writable: bool = False) -> dict[str, Any]:
        """Decode sample `local` (0-based within the shard): field name to value, plus `__key__`.

        The sample is read into a buffer of its own, which arrays decoded without a copy view.
        It is read-only unless `writable`: then those arrays are writable, and writing into
        them changes that sample's buffer alone (not the file, not another sample), so the
        caller can hand them on without copying as long as it keeps no other reference to them."""
        row, key, view = self._read_checked(local, writable)
        return self._decoded(row, key, view)

    def read_run(self, first: int, stop: int, *, writable: bool = False) -> Iterator[dict[str, Any] | ShardError]:
        """Samples `first` to `stop - 1` in order, each decoded as `read_sample` would, or the
        ShardError that reading it raises (a bad sample does not end the run: the next one is
        read). Consecutive samples are read together, up to RUN_BYTES a read, each read into a
        buffer of its own: arrays decoded without a copy view their sample's bytes in it, so
        writing into one changes nothing else, though a value kept keeps its read's buffer."""
        if not 0 <= first <= stop <= self._samples:
            raise IndexError(f"shard {self.name} has {self._samples} samples, not {first} to {stop}")
        while first < stop:
            end = stop if stop - first == 1 else self._run_end(first, stop)
            try:
                start = self._row(first)[0] - tar.BLOCK
                last = self._row(end - 1)
                whole = memoryview(self._file.span(start, last[-4] + last[-3], writable=writable))
            except ShardError:  # truncated, say: read each sample alone, for the errors to name it
                whole = None
            for local in range(first, end):
                try:
                    yield self._from_run(local, whole, start, writable)
                except ShardError as exc:
                    yield exc
            first = end

    def _run_end(self, first: int, stop: int) -> int:
        """Where a read from sample `first` ends: at `stop`, or before the sample that would take
        it past RUN_BYTES (at least one sample is read)."""
        if self._ends is None:
            self._ends = self.rows[:, -1, 0] + self.rows[:, -1, 1]
        limit = self.rows.item(first, 0, 0) - tar.BLOCK + RUN_BYTES
        return max(first + 1, min(stop, int(self._ends.searchsorted(limit, side="right"))))

    def _from_run(self, local: int, whole: memoryview | None, start: int, writable: bool) -> dict[str, Any]:
        """Sample `local` decoded from `whole` (the bytes of its run from file offset `start`),
        or read alone when the run could not be read."""
        if whole is None:
            return self.read_sample(local, writable=writable)
        row = self._row(local)
        view = whole[row[0] - tar.BLOCK - start:row[-4] + row[-3] - start]
        return self._decoded(row, self._checked_key(local, row, view), view)

    def _decoded(self, row: list[int], key: str, view: memoryview) -> dict[str, Any]:
        """The sample whose index values are `row` and whose bytes are `view`, decoded."""
        sample: dict[str, Any] = {KEY: key}
        plain = self._plain
        for column, name, decode in self._columns:
            payload, raw = self._stored(view, row, column, key), row[4 * column + 2]
            if not plain or len(payload) != raw:
                payload = self._decompressed(payload, raw, key, column)
            try:
                sample[name] = decode(payload)
            except NeurocodecError:
                raise
            except Exception as exc:  # a hostile payload must not escape as anything else
                field = self._plan.fields[column]
                raise ShardError(f"does not decode as {field.kind} with codec {field.codec_id!r}: "
                                 f"{type(exc).__name__}: {exc}", shard=self.name,
                                 member=key + self._suffixes[column]) from None
        return sample

    def stored_payloads(self, local: int) -> list[tuple[memoryview, int]]:
        """The stored (still compressed) bytes and the decoded size of every member of sample
        `local`, headers and CRC-32 checked (to copy members between datasets unchanged)."""
        row, key, view = self._read_checked(local)
        return [(self._stored(view, row, column, key), row[4 * column + 2]) for column in range(len(self._suffixes))]

    def read_payload(self, local: int, column: int) -> bytes | memoryview:
        """The decoded (decompressed) payload bytes of one member, fully checked."""
        payload, raw = self.stored_payloads(local)[column]
        if self._plain and len(payload) == raw:
            return payload
        return self._decompressed(payload, raw, layout.sample_key(self._first + local), column)

    def _read_checked(self, local: int, writable: bool = False) -> tuple[list[int], str, memoryview]:
        """Sample `local`'s index values, key and bytes (headers and payloads, one read, into a
        buffer of its own, writable or not), its headers checked the first time this reader reads it."""
        if not 0 <= local < self._samples:
            raise IndexError(f"shard {self.name} has {self._samples} samples, not {local + 1}")
        row = self._row(local)
        view = memoryview(self._file.span(row[0] - tar.BLOCK, row[-4] + row[-3], writable=writable))
        return row, self._checked_key(local, row, view), view

    def _checked_key(self, local: int, row: list[int], view: memoryview) -> str:
        """Sample `local`'s key, its headers in `view` checked the first time this reader reads it."""
        key = layout.sample_key(self._first + local)
        if not self._checked[local]:
            self._check_headers(local, key, row, view)
        return key

    def _stored(self, view: memoryview, row: list[int], column: int, key: str) -> memoryview:
        """Member `column`'s stored bytes within `view` (its sample's bytes), CRC-32 checked."""
        offset, stored, _, crc = row[4 * column:4 * column + 4]
        at = offset - row[0] + tar.BLOCK
        payload = view[at:at + stored]
        if self._verify_crc and crc32(payload) != crc:
            raise ShardError("payload CRC-32 mismatch (corrupted)", shard=self.name, member=key + self._suffixes[column])
        return payload

    def _decompressed(self, payload: memoryview, raw: int, key: str, column: int) -> bytes | memoryview:
        try:
            return decompress(self._compression, payload, raw, self._max_member_bytes)
        except ValueError as exc:
            raise ShardError(str(exc), shard=self.name, member=key + self._suffixes[column]) from None
        except MemoryError:
            raise ShardError(f"no memory for the {raw} bytes it decodes to", shard=self.name,
                             member=key + self._suffixes[column]) from None

    def _check_headers(self, local: int, key: str, row: list[int], view: memoryview) -> None:
        """Check the headers in `view` (sample `local`'s bytes) against the writer's: byte for
        byte, else with the strict parser. A sample whose headers passed is not checked again by
        this reader (its payloads still are, against their CRC-32, on every read)."""
        key_bytes = key.encode("ascii")
        key_sum, base = sum(key_bytes), row[0]
        for column in range(len(self._suffixes)):
            at = row[4 * column] - base
            stored = row[4 * column + 1]
            header = view[at:at + tar.BLOCK].tobytes()
            if header != self._headers.build(key_bytes, key_sum, column, stored):
                _check_header(header, key + self._suffixes[column], stored, self.name)
        self._checked[local] = 1

    def read_in_order(self) -> Iterator[dict[str, Any]]:
        """Every sample in order (as `read_sample`); reading the file front to back lets the
        kernel read ahead of it from disk."""
        for sample in self.read_run(0, self._samples):
            if isinstance(sample, ShardError):
                raise sample
            yield sample

    def verify(self) -> None:
        """Check the whole file: SHA-256, every header in sequence, and every sample's decoding."""
        if self._file.sha256() != self.entry.sha256:
            raise ShardError("SHA-256 does not match the manifest (corrupted)", shard=self.name)
        end = 0
        if self.entry.samples:
            last_offset, last_stored = int(self.rows[-1, -1, 0]), int(self.rows[-1, -1, 1])
            end = last_offset + last_stored + tar.padding(last_stored)
        if self._file.read(end, self._file.size - end) != tar.END_OF_ARCHIVE:
            raise ShardError("the archive does not end with two zero blocks", shard=self.name)
        for _ in self.read_in_order():
            pass

    def close(self) -> None:
        """Close the file (values already returned own their bytes and stay valid)."""
        self._file.close()


def _check_header(header: bytes, name: str, stored: int, shard: str) -> None:
    """Raise ShardError unless `header`, though not byte-identical to the writer's, still parses
    strictly as a plain member named `name` holding `stored` bytes."""
    try:
        parsed = tar.parse_header(header)
    except tar.HeaderError as exc:
        raise ShardError(f"bad tar header: {exc}", shard=shard, member=name) from None
    if parsed.name != name or parsed.size != stored:
        raise ShardError(f"header says {parsed.name!r} of {parsed.size} bytes, the index says "
                         f"{name!r} of {stored}", shard=shard, member=name)
