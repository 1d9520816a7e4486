"""Reading datasets safely: the manifest, the per-shard index, and one sample at a time.

Shards may come from anyone. Nothing here hands their bytes to `tarfile`, extracts to disk, or
executes data, and nothing maps them into memory: members are copied out with `pread`, so a
shard that changes while open fails with an error, never a signal. Each shard's size is checked
against the manifest, its index against the
manifest's SHA-256 and against the tar layout (every offset must follow from the sizes before
it), every member header against the name and size the index promises, every payload against
its CRC-32, every decompression is bounded by the declared decoded size, and every decoded
value against the field's dtype and shape. Any failure raises `ShardError` naming the shard and
member; nothing else escapes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import numpy as np

from neurocodec import npy
from neurocodec.codecs import Codec
from neurocodec.errors import DatasetError, NeurocodecError, ShardError
from neurocodec.format import index as shard_index
from neurocodec.format.checksum import crc32
from neurocodec.format import layout, limits, tar
from neurocodec.format.headers import MemberHeaders
from neurocodec.format.compression import decompress
from neurocodec.format.fetch import ShardFile, open_regular
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, FieldSpec, Manifest, ShardEntry
from neurocodec.plugins import default_registry
from neurocodec.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote

VERIFY_MODES = ("crc", "full", "none")
RUN = 64
"""Samples whose index rows become Python lists together, the first time one of them is read."""
KEY = "__key__"


class ShardReader:
    """Random access to the samples of one shard through its index.

    Every read copies the members it needs out of the file with `pread` (see
    `neurocodec.format.fetch`): nothing is mapped, so a shard truncated or rewritten while open
    gives `ShardError`, never a signal, and decoded values own their bytes. The tar header in
    front of every member is checked on every read against the name and size the index promises.
    """

    def __init__(self, path: Path, entry: ShardEntry, dataset: "Dataset") -> None:
        self.path = path
        self.entry = entry
        self.name = entry.name
        self._dataset = dataset
        self._verify_crc = dataset.verify != "none"
        try:
            self._file = ShardFile(path, entry.name)
        except OSError as exc:
            raise ShardError(f"cannot open: {exc.strerror or exc}", shard=self.name) from None
        try:
            if self._file.size != entry.bytes:
                raise ShardError(f"file has {self._file.size} bytes, the manifest says {entry.bytes} "
                                 "(truncated or replaced)", shard=self.name)
            self.rows = self._load_index(path.with_name(entry.index), self._file.size)
            if dataset.verify == "full" and self._file.sha256() != entry.sha256:
                raise ShardError("SHA-256 does not match the manifest (corrupted)", shard=self.name)
        except BaseException:
            self._file.close()
            raise
        # Plain Python lists and strings for the per-member hot path. Index rows become one flat
        # list per run of RUN samples when first read, so opening a large shard costs no more
        # than opening a small one.
        self._suffixes = dataset.member_suffixes
        self._columns = tuple(zip(range(len(dataset.fields)), [f.name for f in dataset.fields], dataset.decoders))
        self._samples, self._first = entry.samples, entry.first_sample  # plain ints for the hot path
        self._compression, self._max_member_bytes = dataset.manifest.compression, dataset.max_member_bytes
        self._plain = self._compression == "none"
        self._headers = dataset.member_headers
        self._checked = bytearray(entry.samples)  # 1: the sample's headers passed
        self._run_rows: list[list[int] | None] = [None] * -(-entry.samples // RUN)

    def _load_index(self, path: Path, shard_size: int) -> np.ndarray:
        entry, fields = self.entry, self._dataset.fields
        try:
            f, size = _open_regular(path)
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
            max_member_bytes=self._dataset.max_member_bytes,
            names=[f.name for f in fields],
        )
        if problem is not None:
            member = None
            if problem.sample is not None:
                member = layout.sample_key(entry.first_sample + problem.sample) + \
                    self._dataset.member_suffixes[problem.column]
            raise ShardError(f"index {path.name} is inconsistent: {problem.why}", shard=self.name, member=member)
        return rows.astype(np.int64)

    def __len__(self) -> int:
        return self.entry.samples

    def member_name(self, local: int, column: int) -> str:
        """The name member `column` of sample `local` must have."""
        return layout.sample_key(self._first + local) + self._suffixes[column]

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

    def read_sample(self, local: int) -> dict[str, Any]:
        """Decode sample `local` (0-based within the shard): field name to value, plus `__key__`."""
        if not 0 <= local < self._samples:
            raise IndexError(f"shard {self.name} has {self._samples} samples, not {local + 1}")
        row = self._row(local)
        return self._decode(local, row, self._file.span(row[0] - tar.BLOCK, row[-4] + row[-3]))

    def _decode(self, local: int, row: list[int], span: np.ndarray) -> dict[str, Any]:
        """Check and decode sample `local` from `span`, its bytes (headers and payloads) read
        from the file; `row` holds its index values."""
        key = layout.sample_key(self._first + local)
        sample: dict[str, Any] = {KEY: key}
        view, base = memoryview(span), row[0]
        if not self._checked[local]:
            self._check_headers(local, key, row, view)
        verify, plain = self._verify_crc, self._plain
        for column, name, decode in self._columns:
            offset, stored, raw, crc = row[4 * column:4 * column + 4]
            member = key + self._suffixes[column]
            at = offset - base + tar.BLOCK
            payload = view[at:at + stored]
            if verify and crc32(payload) != crc:
                raise ShardError("payload CRC-32 mismatch (corrupted)", shard=self.name, member=member)
            if not plain or stored != raw:
                try:
                    payload = decompress(self._compression, payload, raw, self._max_member_bytes)
                except ValueError as exc:
                    raise ShardError(str(exc), shard=self.name, member=member) from None
                except MemoryError:
                    raise ShardError(f"no memory for the {raw} bytes it decodes to", shard=self.name,
                                     member=member) from None
            try:
                sample[name] = decode(payload)
            except NeurocodecError:
                raise
            except Exception as exc:  # a hostile payload must not escape as anything else
                field = self._dataset.fields[column]
                raise ShardError(f"does not decode as {field.kind} with codec {field.codec_id!r}: "
                                 f"{type(exc).__name__}: {exc}", shard=self.name, member=member) from None
        return sample

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

    def stored_payload(self, local: int, column: int, key: str | None = None) -> tuple[memoryview, int]:
        """The stored (still compressed) bytes of one member and its decoded size, with the
        header, size and CRC-32 checked (used to copy members between datasets unchanged)."""
        if not 0 <= local < self._samples:
            raise IndexError(f"shard {self.name} has {self._samples} samples, not {local + 1}")
        offset, stored, raw, crc = self._row(local)[4 * column:4 * column + 4]
        view = memoryview(self._file.span(offset - tar.BLOCK, offset + stored))
        name = self.member_name(local, column)
        header = view[:tar.BLOCK].tobytes()
        if header != tar.build_header(name, stored):  # one member: the plain builder will do
            _check_header(header, name, stored, self.name)
        payload = view[tar.BLOCK:]
        if self._verify_crc and crc32(payload) != crc:
            raise ShardError("payload CRC-32 mismatch (corrupted)", shard=self.name,
                             member=(key or layout.sample_key(self._first + local)) + self._suffixes[column])
        return payload, raw

    def read_payload(self, local: int, column: int, key: str | None = None) -> bytes | memoryview:
        """The decoded (decompressed) payload bytes of one member, fully checked."""
        payload, raw = self.stored_payload(local, column, key)
        if self._plain and len(payload) == raw:
            return payload
        try:
            return decompress(self._compression, payload, raw, self._max_member_bytes)
        except ValueError as exc:
            raise ShardError(str(exc), shard=self.name, member=self.member_name(local, column)) from None

    def read_in_order(self) -> Iterator[dict[str, Any]]:
        """Every sample in order (as `read_sample`); reading the file front to back lets the
        kernel read ahead of it from disk."""
        for local in range(self._samples):
            yield self.read_sample(local)

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


class Dataset:
    """An opened dataset: its manifest, codecs, and random access to every sample.

    `verify="crc"` (default) checks each member's CRC-32 as it is read; `"full"` also checks
    each shard's SHA-256 against the manifest when the shard is first opened (reads it whole);
    `"none"` skips payload checksums (headers, sizes and decoded shapes are still checked).
    `registry` replaces the installed plugins. Shard readers are opened lazily and at most
    `max_open_shards` stay cached (one still in use elsewhere stays open until it is let go).

    Iterating (`for sample in dataset`) goes through the shards in order.

    `max_member_bytes` is the ceiling on any one member's decoded size (default 256 MiB, or the
    environment variable NEUROCODEC_MAX_MEMBER_BYTES; see `neurocodec.format.limits`): a dataset
    declaring more is refused before anything is allocated for it.

    `path` may be an fsspec URL (`s3://bucket/ds`, `gs://...`, `https://...`) opened with
    `storage_options`; its shards are read whole into `cache` (a `ShardCache`, by default the
    shared one under ~/.cache/neurocodec) and checked against the manifest's SHA-256 on download.
    """

    def __init__(self, path: str | os.PathLike, *, registry: Registry | None = None,
                 verify: str = "crc", max_open_shards: int = 64,
                 storage_options: Mapping[str, Any] | None = None, cache: Any = None,
                 max_member_bytes: int | None = None) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.max_member_bytes = limits.max_member_bytes(max_member_bytes)
        self.path = dataset_path(path)
        self.verify = verify
        self.manifest = read_manifest(self.path, storage_options=storage_options,
                                      max_member_bytes=self.max_member_bytes)
        self.fields: tuple[FieldSpec, ...] = self.manifest.fields
        self.registry = registry or default_registry()
        self.codecs = tuple(
            self.registry.codec(f.codec, field=f.name, plugin_hint=_install_hint(f),
                                source=f"{self.path}/{layout.MANIFEST}") for f in self.fields
        )
        _check_codecs(self.fields, self.codecs, f"{self.path}/{layout.MANIFEST}")
        self.decoders = tuple(codec.decoder(field) for codec, field in zip(self.codecs, self.fields))
        self.member_suffixes = [f".{f.name}.{self.manifest.member_extension(f)}" for f in self.fields]
        self.member_headers = MemberHeaders(self.member_suffixes)
        self._starts = np.array([s.first_sample for s in self.manifest.shards], dtype=np.int64)
        self._open: OrderedDict[int, ShardReader] = OrderedDict()
        self._max_open = max_open_shards
        # URL datasets only: shards come through the local cache (None keeps the local path bare).
        self.remote = None if not is_remote(self.path) else open_remote(self.path, storage_options, cache, self.manifest)

    def __len__(self) -> int:
        return self.manifest.total_samples

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        """The manifest's shard entries."""
        return self.manifest.shards

    def shard(self, number: int) -> ShardReader:
        """The reader of shard `number` (opened and checked on first use)."""
        reader = self._open.get(number)
        if reader is None:
            entry = self.manifest.shards[number]
            if self.remote is None:
                reader = ShardReader(self.path / entry.name, entry, self)
            else:
                reader = self.remote.open(number, lambda local: ShardReader(local, entry, self))
            self._open[number] = reader
            if len(self._open) > self._max_open:
                # Dropped, not closed: a reader still in use (an iteration in progress, a caller
                # holding it) keeps working, and its file closes when its last user lets go.
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(number)
        return reader

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, position in shard) of global sample `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"dataset {self.path} has {len(self)} samples, index {index} is out of range")
        number = int(np.searchsorted(self._starts, index, side="right")) - 1
        return number, index - int(self._starts[number])

    def read(self, index: int) -> dict[str, Any]:
        """Decode global sample `index`."""
        return self.read_local(*self.locate(index))

    def read_local(self, number: int, local: int) -> dict[str, Any]:
        """Decode sample `local` of shard `number`. A remote shard whose cached copy fails a check
        is downloaded again and read once more; a second failure raises."""
        return self._read_healing(self.shard(number), number, local)[1]

    def _read_healing(self, reader: ShardReader, number: int, local: int) -> tuple[ShardReader, dict[str, Any]]:
        """(the reader, sample `local` read with it); a remote shard whose cached copy fails a
        check is downloaded again and the sample read once more with a new reader."""
        try:
            return reader, reader.read_sample(local)
        except ShardError:
            if not self._heal(number):
                raise
        reader = self.shard(number)
        return reader, reader.read_sample(local)

    def _heal(self, number: int) -> bool:
        """True if shard `number` is a remote shard whose damaged cached copy was dropped, with
        its reader, so that opening it again downloads it anew."""
        if self.remote is None or not self.remote.heal(number):
            return False
        reader = self._open.pop(number, None)
        if reader is not None:
            reader.close()
        return True

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        return self.read(index)

    def prefetch(self, numbers: Iterable[int]) -> None:
        """Start downloading these shards (soonest first) into the cache in the background;
        nothing for a local dataset."""
        if self.remote is not None:
            self.remote.prefetch(numbers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for number, entry in enumerate(self.manifest.shards):
            self.prefetch(range(number + 1, len(self.manifest.shards)))
            reader = self.shard(number)  # held here: dropping it from the cache cannot close it
            for local in range(entry.samples):
                reader, sample = self._read_healing(reader, number, local)
                yield sample

    def verify_all(self) -> int:
        """Check every shard fully (see `ShardReader.verify`); return the samples checked."""
        for number in range(len(self.manifest.shards)):
            self.prefetch(range(number + 1, len(self.manifest.shards)))
            try:
                self.shard(number).verify()
            except ShardError:
                if not self._heal(number):
                    raise
                self.shard(number).verify()
        return len(self)

    def close(self) -> None:
        """Close every open shard."""
        while self._open:
            self._open.popitem()[1].close()
        if self.remote is not None:
            self.remote.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_UINT64_MAX = 2**64 - 1


def _check_codecs(fields: tuple[FieldSpec, ...], codecs: tuple[Codec, ...], source: Path | str) -> None:
    """A field's codec must decode the field's kind, an array field's dtype must be one of
    `npy.DTYPES` (the manifest parser checks it too; fields may also be built directly), and its
    size limits must fit the index's uint64 columns they are compared with."""
    for field, codec in zip(fields, codecs):
        if max(field.max_raw_bytes, field.max_stored_bytes) > _UINT64_MAX:
            raise DatasetError(f"{source}: field {field.name!r} declares sizes beyond 64 bits")
        if codec.kind != field.kind:
            raise DatasetError(f"{source}: field {field.name!r} is of kind {field.kind!r} but its codec "
                               f"{field.codec_id!r} decodes {codec.kind!r} values")
        # Membership only: the text never reaches np.dtype (which evaluates comma and shape strings).
        if field.kind == "array" and field.dtype not in npy.DTYPES:
            raise DatasetError(f"{source}: field {field.name!r} has dtype {str(field.dtype)[:40]!r}, "
                               f"which is not a dtype this format stores (one of {', '.join(npy.DTYPES)})")


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open `path` for reading if it is a regular file (see `fetch.open_regular`); return the
    file and its size."""
    fd, size = open_regular(path)
    return os.fdopen(fd, "rb"), size


def _install_hint(field: FieldSpec) -> str:
    if not field.distribution:
        return f"plugin {field.plugin!r} (it was registered directly, not from an installed distribution)"
    version = f"=={field.plugin_version}" if field.plugin_version else ""
    return f"plugin {field.plugin!r} (pip install {field.distribution}{version})"


def read_manifest(path: Path | str, *, storage_options: Mapping[str, Any] | None = None,
                  max_member_bytes: int | None = None) -> Manifest:
    """Read and validate `dataset_metadata.json` of the dataset at `path` (a directory, or an
    fsspec URL opened with `storage_options`). A manifest larger than MAX_MANIFEST_BYTES is
    refused by its size, unread; a field declaring members above the per-member ceiling
    (`max_member_bytes`, default `neurocodec.format.limits.max_member_bytes()`) is refused."""
    path = dataset_path(path)
    if is_remote(path):
        from neurocodec.storage.location import Location
        from neurocodec.storage.remote import read_remote_bytes

        try:
            text = read_remote_bytes(Location(path, storage_options), layout.MANIFEST, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise DatasetError(
                f"{path} has no {layout.MANIFEST}: not a neurocodec dataset, or its writer did not finish"
            ) from None
        return Manifest.from_json(text, source=f"{path}/{layout.MANIFEST}", max_member_bytes=max_member_bytes)
    manifest_path = path / layout.MANIFEST
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory")
    try:
        f, size = _open_regular(manifest_path)
        with f:
            # Refused by its size before reading a byte (a sparse file costs nothing); the read is
            # still capped, in case the file grows meanwhile.
            if size > MAX_MANIFEST_BYTES:
                raise DatasetError(f"{manifest_path}: {size} bytes, larger than the {MAX_MANIFEST_BYTES} "
                                   "bytes a manifest may have")
            text = f.read(min(size, MAX_MANIFEST_BYTES) + 1)
    except FileNotFoundError:
        raise DatasetError(
            f"{path} has no {layout.MANIFEST}: not a neurocodec dataset, or its writer did not finish"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{manifest_path}: cannot read ({exc.strerror or exc})") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes")
    return Manifest.from_json(text, source=str(manifest_path), max_member_bytes=max_member_bytes)


def open_remote(url: str, storage_options: Mapping[str, Any] | None, cache: Any, manifest: Manifest) -> Any:
    """The `RemoteShards` of a URL dataset (imported here so local reads never load fsspec)."""
    from neurocodec.storage.cache import ShardCache
    from neurocodec.storage.location import Location
    from neurocodec.storage.remote import RemoteShards

    if cache is not None and not isinstance(cache, ShardCache):
        raise TypeError(f"cache must be a neurocodec.storage.ShardCache or None, got {type(cache).__name__}")
    return RemoteShards(Location(url, storage_options), manifest.shards, cache or ShardCache())
