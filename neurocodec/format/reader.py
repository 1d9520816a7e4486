"""Reading datasets safely: the manifest, the per-shard index, and one sample at a time.

Shards may come from anyone. Nothing here hands their bytes to `tarfile`, extracts to disk, or
executes data. Each shard's size is checked against the manifest, its index against the
manifest's SHA-256 and against the tar layout (every offset must follow from the sizes before
it), every member header against the name and size the index promises, every payload against
its CRC-32, every decompression is bounded by the declared decoded size, and every decoded
value against the field's dtype and shape. Any failure raises `ShardError` naming the shard and
member; nothing else escapes.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import numpy as np

from neurocodec.codecs import Codec
from neurocodec.errors import DatasetError, NeurocodecError, ShardError
from neurocodec.format import index as shard_index
from neurocodec.format.checksum import crc32
from neurocodec.format import layout, readahead, tar
from neurocodec.format.headers import HeaderTemplates, differing_samples
from neurocodec.format.compression import decompress
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, FieldSpec, Manifest, ShardEntry
from neurocodec.plugins import default_registry
from neurocodec.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote

VERIFY_MODES = ("crc", "full", "none")
HEADER_CHUNK = 64
"""Samples whose member headers are verified together, the first time one of them is read."""
KEY = "__key__"


class ShardReader:
    """Random access to the samples of one shard through its index."""

    def __init__(self, path: Path, entry: ShardEntry, dataset: "Dataset") -> None:
        self.path = path
        self.entry = entry
        self.name = entry.name
        self._dataset = dataset
        self._verify_crc = dataset.verify != "none"
        try:
            f, size = _open_regular(path)
        except OSError as exc:
            raise ShardError(f"cannot open: {exc.strerror or exc}", shard=self.name) from None
        with f:
            if size != entry.bytes:
                raise ShardError(f"file has {size} bytes, the manifest says {entry.bytes} "
                                 "(truncated or replaced)", shard=self.name)
            self.rows = self._load_index(path.with_name(entry.index), size)
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            except (OSError, ValueError) as exc:
                raise ShardError(f"cannot map: {exc}", shard=self.name) from None
        self._view = memoryview(self._map)
        # The file as rows of 512-byte blocks, for checking many member headers at once.
        self._blocks = np.frombuffer(self._map, dtype=np.uint8, count=size - size % tar.BLOCK).reshape(-1, tar.BLOCK)
        # Plain Python lists and strings for the per-member hot path. Index rows become lists
        # one run of HEADER_CHUNK samples at a time, when their headers are checked, so opening
        # a large shard costs no more than opening a small one.
        self._suffixes = dataset.member_suffixes
        self._columns = tuple(zip(range(len(dataset.fields)), [f.name for f in dataset.fields], dataset.decoders))
        self._samples, self._first = entry.samples, entry.first_sample  # plain ints for the hot path
        self._compression = dataset.manifest.compression
        self._chunk_rows: list[list[int] | None] = [None] * -(-entry.samples // HEADER_CHUNK)
        self._bad_headers: dict[int, tuple[str, str]] = {}  # sample -> (why, member) for bad headers
        if dataset.verify == "full" and hashlib.sha256(self._view).hexdigest() != entry.sha256:
            raise ShardError("SHA-256 does not match the manifest (corrupted)", shard=self.name)

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
        problem = shard_index.validate(
            rows, shard_size, np.array([f.max_raw_bytes for f in fields], dtype=np.uint64),
            np.array([f.max_stored_bytes for f in fields], dtype=np.uint64),
        )
        if problem:
            raise ShardError(f"index {path.name} is inconsistent: {problem}", shard=self.name)
        return rows.astype(np.int64)

    def __len__(self) -> int:
        return self.entry.samples

    def member_name(self, local: int, column: int) -> str:
        """The name member `column` of sample `local` must have."""
        return layout.sample_key(self.entry.first_sample + local) + self._suffixes[column]

    def _check_headers(self, chunk: int) -> list[int]:
        """Verify the tar headers of samples [chunk * HEADER_CHUNK, ...) together; return the
        run's index rows as one flat list (sample, member, 4 values).

        Every header must be byte-identical to the one this format's writer produces for the
        member name and size the index promises (checked for the whole run at once); one that is
        not must still be accepted by the strict parser with that name and size. A sample failing
        this is remembered, and reading it raises.
        """
        lo = chunk * HEADER_CHUNK
        hi = min(self.entry.samples, lo + HEADER_CHUNK)
        run = self.rows[lo:hi]
        expected = self._dataset.header_templates.build(self._first + lo + 1, run[:, :, 1])
        if expected is None:
            suspects = range(hi - lo)
        else:
            suspects = differing_samples(self._blocks, run[:, :, 0], expected).tolist()
        for position in suspects:
            self._check_sample_headers(lo + position, run[position].tolist())
        # One flat list per run: nested lists would be hundreds of long-lived containers per
        # run, which set off the cyclic garbage collector over the whole heap (torch's included).
        flat = run.ravel().tolist()
        self._chunk_rows[chunk] = flat
        return flat

    def _check_sample_headers(self, local: int, row: list) -> None:
        """Check the headers of one sample one by one (see `_check_headers`)."""
        key = layout.sample_key(self._first + local)
        for column, (offset, stored, _, _) in enumerate(row):
            name = key + self._suffixes[column]
            header = self._view[offset - tar.BLOCK:offset]
            if header == tar.build_header(name, stored):
                continue
            try:
                parsed = tar.parse_header(header)
            except tar.HeaderError as exc:
                self._bad_headers[local] = (f"bad tar header: {exc}", name)
                return
            if parsed.name != name or parsed.size != stored:
                self._bad_headers[local] = (f"header says {parsed.name!r} of {parsed.size} bytes, the "
                                            f"index says {name!r} of {stored}", name)
                return

    def stored_payload(self, local: int, column: int, key: str | None = None) -> tuple[memoryview, int]:
        """The stored (still compressed) bytes of one member and its decoded size, with the
        header, size and CRC-32 checked (used to copy members between datasets unchanged)."""
        offset, stored, raw, crc = self._member(local, column)
        payload = self._view[offset:offset + stored]
        if self._verify_crc and crc32(payload) != crc:
            raise ShardError("payload CRC-32 mismatch (corrupted)", shard=self.name,
                             member=(key or layout.sample_key(self.entry.first_sample + local)) + self._suffixes[column])
        return payload, raw

    def read_payload(self, local: int, column: int, key: str | None = None) -> bytes | memoryview:
        """The decoded (decompressed) payload bytes of one member, fully checked."""
        payload, raw = self.stored_payload(local, column, key)
        if self._compression == "none" and len(payload) == raw:
            return payload
        try:
            return decompress(self._compression, payload, raw)
        except ValueError as exc:
            raise ShardError(str(exc), shard=self.name, member=self.member_name(local, column)) from None

    def _member(self, local: int, column: int) -> list[int]:
        """Offset, stored size, raw size and CRC-32 of one member (the sample's headers
        checked); ShardError if they are wrong."""
        chunk = local // HEADER_CHUNK
        rows = self._chunk_rows[chunk] or self._check_headers(chunk)
        if local in self._bad_headers:
            why, member = self._bad_headers[local]
            raise ShardError(why, shard=self.name, member=member)
        start = ((local - chunk * HEADER_CHUNK) * len(self._suffixes) + column) * 4
        return rows[start:start + 4]

    def read_sample(self, local: int) -> dict[str, Any]:
        """Decode sample `local` (0-based within the shard): field name to value, plus `__key__`."""
        if not 0 <= local < self._samples:
            raise IndexError(f"shard {self.name} has {self._samples} samples, not {local + 1}")
        chunk = local // HEADER_CHUNK
        rows = self._chunk_rows[chunk] or self._check_headers(chunk)
        if self._bad_headers and local in self._bad_headers:
            why, member = self._bad_headers[local]
            raise ShardError(why, shard=self.name, member=member)
        key = layout.sample_key(self._first + local)
        sample: dict[str, Any] = {KEY: key}
        view, verify, plain = self._view, self._verify_crc, self._compression == "none"
        start = (local - chunk * HEADER_CHUNK) * len(self._columns) * 4
        for column, name, decode in self._columns:
            offset, stored, raw, crc = rows[start:start + 4]
            start += 4
            payload = view[offset:offset + stored]
            if verify and crc32(payload) != crc:
                raise ShardError("payload CRC-32 mismatch (corrupted)", shard=self.name,
                                 member=key + self._suffixes[column])
            if not plain or stored != raw:
                try:
                    payload = decompress(self._compression, payload, raw)
                except ValueError as exc:
                    raise ShardError(str(exc), shard=self.name, member=key + self._suffixes[column]) from None
            try:
                sample[name] = decode(payload)
            except NeurocodecError:
                raise
            except Exception as exc:  # a hostile payload must not escape as anything else
                field = self._dataset.fields[column]
                raise ShardError(f"does not decode as {field.kind} with codec {field.codec_id!r}: "
                                 f"{type(exc).__name__}: {exc}", shard=self.name,
                                 member=key + self._suffixes[column]) from None
        return sample

    def read_in_order(self, piece_bytes: int = readahead.PIECE_BYTES) -> Iterator[dict[str, Any]]:
        """Every sample in order (as `read_sample`), the next `piece_bytes` of the file being
        mapped into memory on a background thread while the current ones are decoded (see
        `readahead`)."""
        if not self._samples:
            return
        offsets, stored = self.rows[:, :, shard_index.OFFSET], self.rows[:, -1, shard_index.STORED]
        starts, ends = offsets[:, 0] - tar.BLOCK, offsets[:, -1] + stored
        cuts = readahead.piece_starts(starts, ends, piece_bytes)
        mapper = readahead.page_mapper()

        def piece_view(piece: int) -> memoryview:
            return self._view[int(starts[cuts[piece]]):int(ends[cuts[piece + 1] - 1])]

        mapper.map_ahead(piece_view(0))
        for piece in range(len(cuts) - 1):
            if piece + 2 < len(cuts):
                mapper.map_ahead(piece_view(piece + 1))
            for local in range(cuts[piece], cuts[piece + 1]):
                yield self.read_sample(local)

    def verify(self) -> None:
        """Check the whole file: SHA-256, every header in sequence, and every sample's decoding."""
        digest = hashlib.sha256(self._view).hexdigest()
        if digest != self.entry.sha256:
            raise ShardError("SHA-256 does not match the manifest (corrupted)", shard=self.name)
        end = int(self.rows[-1, -1, 0] + self.rows[-1, -1, 1]) if self.entry.samples else 0
        end += tar.padding(int(self.rows[-1, -1, 1])) if self.entry.samples else 0
        if bytes(self._view[end:]) != tar.END_OF_ARCHIVE:
            raise ShardError("the archive does not end with two zero blocks", shard=self.name)
        for local in range(self.entry.samples):
            self.read_sample(local)

    def close(self) -> None:
        """Drop the mapping (values already returned keep it alive until they are freed)."""
        self._view = memoryview(b"")
        self._blocks = np.zeros((0, tar.BLOCK), dtype=np.uint8)
        self._map = b""


class Dataset:
    """An opened dataset: its manifest, codecs, and random access to every sample.

    `verify="crc"` (default) checks each member's CRC-32 as it is read; `"full"` also checks
    each shard's SHA-256 against the manifest when the shard is first opened (reads it whole);
    `"none"` skips payload checksums (headers, sizes and decoded shapes are still checked).
    `registry` replaces the installed plugins. Shard readers are opened lazily and at most
    `max_open_shards` stay open.

    Iterating (`for sample in dataset`) goes through the shards in order; a daemon thread maps
    the next 32 MB of the current shard meanwhile (`neurocodec.format.readahead`), so the pages
    the process has mapped run at most that far ahead of the sample being decoded.

    `path` may be an fsspec URL (`s3://bucket/ds`, `gs://...`, `https://...`) opened with
    `storage_options`; its shards are read whole into `cache` (a `ShardCache`, by default the
    shared one under ~/.cache/neurocodec) and checked against the manifest's SHA-256 on download.
    """

    def __init__(self, path: str | os.PathLike, *, registry: Registry | None = None,
                 verify: str = "crc", max_open_shards: int = 64,
                 storage_options: Mapping[str, Any] | None = None, cache: Any = None) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.path = dataset_path(path)
        self.verify = verify
        self.manifest = read_manifest(self.path, storage_options=storage_options)
        self.fields: tuple[FieldSpec, ...] = self.manifest.fields
        self.registry = registry or default_registry()
        self.codecs = tuple(
            self.registry.codec(f.codec, field=f.name, plugin_hint=_install_hint(f)) for f in self.fields
        )
        _check_codecs(self.fields, self.codecs, f"{self.path}/{layout.MANIFEST}")
        self.decoders = tuple(codec.decoder(field) for codec, field in zip(self.codecs, self.fields))
        self.member_suffixes = [f".{f.name}.{self.manifest.member_extension(f)}" for f in self.fields]
        self.header_templates = HeaderTemplates(self.member_suffixes)
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
                self._open.popitem(last=False)[1].close()
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
        number, local = self.locate(index)
        return self.shard(number).read_sample(local)

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
            yield from self.shard(number).read_in_order()

    def verify_all(self) -> int:
        """Check every shard fully (see `ShardReader.verify`); return the samples checked."""
        for number in range(len(self.manifest.shards)):
            self.prefetch(range(number + 1, len(self.manifest.shards)))
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
_PLAIN_DTYPE = re.compile(r"[<>|=]?[A-Za-z][A-Za-z0-9]{0,15}(\[[A-Za-z0-9]{1,8}\])?")


def _check_codecs(fields: tuple[FieldSpec, ...], codecs: tuple[Codec, ...], source: Path | str) -> None:
    """A field's codec must decode the field's kind, an array field's dtype must parse, and its
    size limits must fit the index's uint64 columns they are compared with."""
    for field, codec in zip(fields, codecs):
        if max(field.max_raw_bytes, field.max_stored_bytes) > _UINT64_MAX:
            raise DatasetError(f"{source}: field {field.name!r} declares sizes beyond 64 bits")
        if codec.kind != field.kind:
            raise DatasetError(f"{source}: field {field.name!r} is of kind {field.kind!r} but its codec "
                               f"{field.codec_id!r} decodes {codec.kind!r} values")
        if field.kind == "array":
            # Plain type codes only: numpy hands comma and shape strings ("f4,i4", "(2,)f4")
            # to ast.literal_eval, which a hostile manifest must not reach.
            try:
                if not _PLAIN_DTYPE.fullmatch(field.dtype):
                    raise TypeError
                np.dtype(field.dtype)
            except (TypeError, ValueError):
                raise DatasetError(f"{source}: field {field.name!r} has dtype {field.dtype[:40]!r}, "
                                   "which is not a plain numpy dtype") from None


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open `path` for reading if it is a regular file; return the file and its size.

    O_NONBLOCK keeps a FIFO planted under a dataset file name from blocking the open forever (it
    changes nothing for a regular file). Anything but a regular file raises OSError.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _install_hint(field: FieldSpec) -> str:
    if not field.distribution:
        return f"plugin {field.plugin!r} (it was registered directly, not from an installed distribution)"
    version = f"=={field.plugin_version}" if field.plugin_version else ""
    return f"plugin {field.plugin!r} (pip install {field.distribution}{version})"


def read_manifest(path: Path | str, *, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Read and validate `dataset_metadata.json` of the dataset at `path` (a directory, or an
    fsspec URL opened with `storage_options`)."""
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
        return Manifest.from_json(text, source=f"{path}/{layout.MANIFEST}")
    manifest_path = path / layout.MANIFEST
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory")
    try:
        f, size = _open_regular(manifest_path)
        with f:
            # Sized by the file, not the cap: a 1 GiB buffer per open fails under memory limits.
            text = f.read(min(size, MAX_MANIFEST_BYTES) + 1)
    except FileNotFoundError:
        raise DatasetError(
            f"{path} has no {layout.MANIFEST}: not a neurocodec dataset, or its writer did not finish"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{manifest_path}: cannot read ({exc.strerror or exc})") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes")
    return Manifest.from_json(text, source=str(manifest_path))


def open_remote(url: str, storage_options: Mapping[str, Any] | None, cache: Any, manifest: Manifest) -> Any:
    """The `RemoteShards` of a URL dataset (imported here so local reads never load fsspec)."""
    from neurocodec.storage.cache import ShardCache
    from neurocodec.storage.location import Location
    from neurocodec.storage.remote import RemoteShards

    if cache is not None and not isinstance(cache, ShardCache):
        raise TypeError(f"cache must be a neurocodec.storage.ShardCache or None, got {type(cache).__name__}")
    return RemoteShards(Location(url, storage_options), manifest.shards, cache or ShardCache())
