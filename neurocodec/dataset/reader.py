"""Reading datasets safely: `Dataset` (the manifest, its codecs, every shard) and the manifest.

Shards may come from anyone. Nothing here hands their bytes to `tarfile`, extracts to disk, or
executes data, and nothing maps them into memory: samples are copied out with `pread`, so a
shard that changes while open fails with an error, never a signal. The manifest is parsed
strictly (`format.manifest`); each shard's size is checked against it, its index against the
manifest's SHA-256 and against the tar layout (every offset must follow from the sizes before
it), every member header against the name and size the index promises, every payload against
its CRC-32, every decompression is bounded by the declared decoded size, and every decoded
value against the field's dtype and shape (`format.shard_reader`). Any failure raises
`ShardError` naming the shard and member, or `DatasetError` for the manifest; nothing else
escapes.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import attrs
import numpy as np

from neurocodec.errors import DatasetError, ShardError
from neurocodec.format import layout, limits, tar
from neurocodec.format.home import home, manifest_label
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, FieldSpec, Manifest, ShardEntry
from neurocodec.format.readahead import Readahead, readahead_bytes as readahead_limit, sequential_needs_hints
from neurocodec.format.shard_table import BytesSource, FileSource, TableShards, is_prefix
from neurocodec.format.shard_reader import KEY, VERIFY_MODES, ReadPlan, ShardReader, open_regular_file

__all__ = ["KEY", "Dataset", "ShardCheck", "ShardReader", "open_remote", "read_manifest"]
from neurocodec.dataset.decode import decode_plan
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry
from neurocodec.plugin.windowing import WindowGrid
from neurocodec.storage.location import dataset_path, is_remote

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

    `decode` chooses, per field, the load-time options of its codec (`{"spikes": {"bin_size_ms":
    5}}` bins stored spike events at 5 ms, `{"lfp": {"raw": True}}` gives stored integers
    unscaled; see each codec's `decode_options` and docs/format.md). `fields` then describes the
    values as decoded; `manifest.fields` as stored.

    `window` (a `neurocodec.plugin.windowing.WindowGrid`) opens a chunked dataset for cutting
    load-time windows: `read` then gives every field's chunk value in the form its codec cuts
    windows from, `cuts[i]` cuts field i, and `fields` describes a window's values. Loaders with
    `window_ms=` do this; a user reads windows through them.

    `version` opens an earlier version of a dataset that samples were appended to (exactly the
    samples it held; docs/versions.md); None the current one. `version` is the one opened.

    `readahead_bytes`: how far ahead of its reads a local dataset asks the kernel to bring its
    shards into the page cache (`neurocodec.format.readahead`; default 64 MiB or the environment
    variable NEUROCODEC_READAHEAD_BYTES; 0 turns it off). Iterating reads ahead in stored order;
    the loaders read ahead the epoch's order (`read_ahead`).
    """

    def __init__(self, path: str | os.PathLike, *, registry: Registry | None = None,
                 verify: str = "crc", max_open_shards: int = 64,
                 storage_options: Mapping[str, Any] | None = None, cache: Any = None,
                 max_member_bytes: int | None = None,
                 decode: Mapping[str, Mapping[str, Any]] | None = None, window: WindowGrid | None = None,
                 version: int | None = None, readahead_bytes: int | None = None) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.max_member_bytes = limits.max_member_bytes(max_member_bytes)
        self.path = dataset_path(path)
        self.verify = verify
        self.manifest = read_manifest(self.path, storage_options=storage_options,
                                      max_member_bytes=self.max_member_bytes, version=version)
        self.registry = registry or default_registry()
        decoding = decode_plan(self.manifest.fields, self.registry, manifest_label(self.path), decode, window)
        self.codecs = decoding.codecs
        self.cuts = decoding.cuts
        self.decode_options = decoding.options
        # The fields as decoded: dtype and shape of what `read` returns (the manifest's, unless a
        # decode option changes them, as a load-time bin size does).
        self.fields: tuple[FieldSpec, ...] = decoding.fields
        self.plan = ReadPlan(
            fields=self.manifest.fields, decoders=decoding.decoders,
            suffixes=tuple(f".{f.name}.{self.manifest.member_extension(f)}" for f in self.manifest.fields),
            compression=self.manifest.compression, verify=verify, max_member_bytes=self.max_member_bytes,
        )
        # Bisected per sample: plain ints for JSON rows; a shard table's array (searchsorted).
        self._starts = shard_starts(self.manifest.shards)
        self._start_array: np.ndarray | None = None  # the same as int64, for locate_all
        self._open: OrderedDict[int, ShardReader] = OrderedDict()
        self._max_open = max_open_shards
        # URL datasets only: shards come through the local cache (None keeps the local path bare).
        self.remote = None if not is_remote(self.path) else open_remote(self.path, storage_options, cache, self.manifest)
        self.readahead = Readahead(0 if self.remote is not None else readahead_limit(readahead_bytes))
        self._paths: dict[int, str] = {}  # shard files' paths as read ahead
        self._in_order: bool | None = None  # whether stored order is read ahead (asked once)

    def __len__(self) -> int:
        return self.manifest.total_samples

    @property
    def version(self) -> int:
        """The version of the dataset opened (1 until samples are appended)."""
        return self.manifest.version

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
                reader = ShardReader(self.path / entry.name, entry, self.plan)
            else:
                reader = self.remote.open(number, lambda local: ShardReader(local, entry, self.plan))
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
        if type(self._starts) is list:
            number = bisect.bisect_right(self._starts, index) - 1
            return number, index - self._starts[number]
        number = int(self._starts.searchsorted(index, side="right")) - 1
        return number, index - int(self._starts[number])

    def locate_all(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`locate` for an int64 array of global sample indices at once: (shard numbers,
        positions in shard), two int64 arrays (IndexError for an index out of range)."""
        outside = (indices < 0) | (indices >= len(self))
        if outside.any():
            self.locate(int(indices[outside][0]))  # raises, naming it
        if self._start_array is None:
            self._start_array = np.asarray(self._starts, dtype=np.int64)
        numbers = self._start_array.searchsorted(indices, side="right") - 1
        return numbers, indices - self._start_array[numbers]

    def read(self, index: int) -> dict[str, Any]:
        """Decode global sample `index`."""
        return self.read_local(*self.locate(index))

    def read_local(self, number: int, local: int, *, writable: bool = False) -> dict[str, Any]:
        """Decode sample `local` of shard `number`. A remote shard whose cached copy fails a check
        is downloaded again and read once more; a second failure raises. `writable`: arrays
        decoded without a copy are writable views of the sample's own buffer (see
        `ShardReader.read_sample`); by default they are read-only."""
        return self._read_healing(self.shard(number), number, local, writable)[1]

    def read_with(self, reader: ShardReader, number: int, local: int, *, writable: bool = False) -> dict[str, Any]:
        """`read_local` with shard `number`'s reader already in hand (from `shard(number)`)."""
        return self._read_healing(reader, number, local, writable)[1]

    def _read_healing(self, reader: ShardReader, number: int, local: int,
                      writable: bool = False) -> tuple[ShardReader, dict[str, Any]]:
        """(the reader, sample `local` read with it); a remote shard whose cached copy fails a
        check is downloaded again and the sample read once more with a new reader."""
        try:
            return reader, reader.read_sample(local, writable=writable)
        except ShardError:
            if not self._heal(number):
                raise
        reader = self.shard(number)
        return reader, reader.read_sample(local, writable=writable)

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
        """Start downloading these shards (soonest first) into the cache in the background; for
        a local dataset, read them ahead whole (within `readahead_bytes`, see `read_ahead`)."""
        if self.remote is not None:
            self.remote.prefetch(numbers)
        else:
            self.read_ahead((n, 0, self.manifest.shards[n].samples) for n in numbers)

    def read_ahead(self, spans: Iterable[tuple[int, int, int]], most: int | None = None) -> None:
        """Local datasets: ask the kernel for the bytes of these runs of samples (shard number,
        first sample, stop), the ones to be read next, soonest first, as far as `most` bytes
        from the first (default `readahead_bytes`; `neurocodec.format.readahead`). A hint: it
        never raises, never changes a read. Nothing for a URL dataset (see `prefetch`)."""
        if self.readahead.limit:
            try:
                self.readahead.want((self._byte_range(*span) for span in spans), most)
            except (IndexError, TypeError, ValueError):  # a span naming no shard: nothing to read ahead
                pass

    def _ahead_every(self) -> int:
        """Samples between two readahead requests in stored order: about a quarter of the bound
        (at least 64 samples); 0 (never) when stored order is not read ahead."""
        if not self.readahead.limit or not self.manifest.shards or not self.readahead_in_order():
            return 0
        first = self.manifest.shards[0]
        return max(64, self.readahead.limit // 4 // max(1, first.bytes // max(1, first.samples)))

    def readahead_in_order(self) -> bool:
        """Whether stored-order reads are read ahead: not on a device whose own readahead
        already streams them (`neurocodec.format.readahead.sequential_needs_hints`)."""
        if self._in_order is None:
            self._in_order = bool(self.readahead.limit) and sequential_needs_hints(self.path)
        return self._in_order

    def _byte_range(self, number: int, first: int, stop: int) -> tuple[str, int, int]:
        """(file, start, end) of samples [first, stop) of shard `number`: from its index when the
        shard is open, else estimated from its size (one sample's worth more on each side)."""
        entry = self.manifest.shards[number]
        path = self._paths.get(number)
        if path is None:
            path = self._paths[number] = str(self.path / entry.name)
        reader = self._open.get(number)
        if reader is not None and 0 <= first < stop <= len(reader.rows):
            rows = reader.rows
            return path, max(0, rows.item(first, 0, 0) - tar.BLOCK), rows.item(stop - 1, -1, 0) + rows.item(stop - 1, -1, 1)
        each = entry.bytes // max(1, entry.samples)
        return path, max(0, first * each - each), min(entry.bytes, stop * each + each)

    def read_run(self, number: int, first: int, stop: int, *,
                 writable: bool = False) -> Iterator[dict[str, Any] | ShardError]:
        """Samples `first` to `stop - 1` of shard `number` in order, each as `read_local` gives
        it or the ShardError that reading it raises (the run goes on after a bad sample; a shard
        that cannot be opened gives its error for each sample). Consecutive samples are read
        together (`ShardReader.read_run`); a remote shard whose cached copy fails a check is
        downloaded again and the sample read once more, as `read_local` does."""
        try:
            reader = self.shard(number)  # held here: dropping it from the cache cannot close it
        except ShardError as exc:
            for _ in range(first, stop):
                yield exc
            return
        while first < stop:
            for sample in reader.read_run(first, stop, writable=writable):
                if type(sample) is dict:
                    first += 1
                    yield sample
                    continue
                try:  # the bad sample again, healing a remote shard's damaged copy
                    reader, sample = self._read_healing(reader, number, first, writable)
                except ShardError as exc:
                    sample = exc
                first += 1
                yield sample
                break  # a healed shard has a new reader: go on with it

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shards = self.manifest.shards
        ahead = self._ahead_every()  # samples between readahead requests; 0: none
        for number, entry in enumerate(shards):
            if self.remote is not None:
                self.prefetch(range(number + 1, len(shards)))
            every = ahead or max(1, entry.samples)
            for first in range(0, entry.samples, every):
                if ahead:
                    self.read_ahead(_stored_spans(shards, number, first))
                for sample in self.read_run(number, first, min(first + every, entry.samples)):
                    if not isinstance(sample, dict):
                        raise sample
                    yield sample

    def verify_all(self) -> int:
        """Check every shard fully (see `ShardReader.verify`); return the samples checked.
        The first bad shard raises its ShardError (`verify_shards` goes on to the others)."""
        for check in self.verify_shards():
            if check.error is not None:
                raise check.error
        return len(self)

    def verify_shards(self) -> Iterator["ShardCheck"]:
        """Check every shard fully (see `ShardReader.verify`), in order, going on past bad ones:
        one `ShardCheck` per shard, with the ShardError that shard raised, if any."""
        for number, entry in enumerate(self.manifest.shards):
            self.prefetch(range(number + 1, len(self.manifest.shards)))
            yield ShardCheck(number, entry, self._verify_one(number))

    def _verify_one(self, number: int) -> ShardError | None:
        try:
            try:
                self.shard(number).verify()
            except ShardError:
                if not self._heal(number):
                    raise
                self.shard(number).verify()
        except ShardError as exc:
            self._drop(number)
            return exc
        return None

    def _drop(self, number: int) -> None:
        """Forget shard `number`'s reader (found bad: not kept open)."""
        reader = self._open.pop(number, None)
        if reader is not None:
            reader.close()

    def close(self) -> None:
        """Close every open shard (and stop reading ahead)."""
        self.readahead.close()
        while self._open:
            self._open.popitem()[1].close()
        if self.remote is not None:
            self.remote.close()

    def __enter__(self) -> "Dataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stored_spans(shards: tuple[ShardEntry, ...], number: int, local: int) -> Iterator[tuple[int, int, int]]:
    """The runs stored order reads from sample `local` of shard `number` on, soonest first."""
    yield number, local, shards[number].samples
    for later in range(number + 1, len(shards)):
        yield later, 0, shards[later].samples


@attrs.frozen
class ShardCheck:
    """What `Dataset.verify_shards` found for shard `number` (its manifest `entry`): `error` is
    the ShardError it raised, None when it matches the manifest."""

    number: int
    entry: ShardEntry
    error: ShardError | None

    @property
    def ok(self) -> bool:
        """True when the shard matches the manifest."""
        return self.error is None


def read_manifest(path: Path | str, *, storage_options: Mapping[str, Any] | None = None,
                  max_member_bytes: int | None = None, version: int | None = None) -> Manifest:
    """Read and validate `dataset_metadata.json` of the dataset at `path` (a directory, or an
    fsspec URL opened with `storage_options`). A manifest larger than MAX_MANIFEST_BYTES is
    refused by its size, unread; a field declaring members above the per-member ceiling
    (`max_member_bytes`, default `neurocodec.format.limits.max_member_bytes()`) is refused.

    `version` reads an earlier version of an appended dataset (kept as
    `versions/<n>/dataset_metadata.json`, docs/versions.md); None reads the current one."""
    path = dataset_path(path)
    home, current = _read_current(path, storage_options, max_member_bytes)
    if version is None or version == current.version:
        return current
    if type(version) is not int or not 1 <= version < current.version:
        raise DatasetError(f"{path} has versions 1 to {current.version}, not {version!r}")
    name = f"{home}{layout.version_dir(version)}/{layout.MANIFEST}"
    try:
        earlier = _read_manifest_file(path, name, storage_options, max_member_bytes)
    except DatasetError as exc:
        raise DatasetError(f"{path}: version {version} cannot be read: {exc}") from None
    if earlier.version != version or not is_prefix(earlier.shards, current.shards):
        raise DatasetError(f"{path}/{name}: not version {version} of this dataset (its version number or "
                           "shards are not the current manifest's first ones)")
    return earlier


def _read_current(path: Path | str, storage_options: Mapping[str, Any] | None, max_member_bytes: int | None
                  ) -> tuple[str, Manifest]:
    """The current manifest of the dataset at `path` and where the dataset keeps it, relative
    to `path` (`.neurocodec/`, or "" for a dataset in the top-level layout written before it)."""
    if not is_remote(path):
        prefix = "" if home(path) == path else f"{layout.HOME}/"
        return prefix, _read_manifest_file(path, prefix + layout.MANIFEST, storage_options, max_member_bytes)
    for prefix in (f"{layout.HOME}/", ""):
        found = _read_remote_manifest(path, prefix + layout.MANIFEST, storage_options, max_member_bytes)
        if found is not None:
            return prefix, found
    raise DatasetError(f"{path} has no {layout.MANIFEST_PATH}: not a neurocodec dataset, or its writer did not "
                       "finish")


def is_top_level_layout(path: Path | str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if the dataset at `path` (a directory or URL) has the layout written before
    `.neurocodec/`: its manifest at the top (docs/format.md, section 2)."""
    path = dataset_path(path)
    if not is_remote(path):
        return home(path) == path
    from neurocodec.storage.location import Location

    loc = Location(path, storage_options)
    return not loc.fs.exists(loc.path(layout.MANIFEST_PATH))


def _read_manifest_file(path: Path | str, name: str, storage_options: Mapping[str, Any] | None,
                        max_member_bytes: int | None) -> Manifest:
    """The manifest stored as `name` in the dataset at `path`, read within the size cap and parsed."""
    if is_remote(path):
        found = _read_remote_manifest(path, name, storage_options, max_member_bytes)
        if found is None:
            raise DatasetError(f"{path} has no {name}: not a neurocodec dataset, or its writer did not finish")
        return found
    manifest_path = path / name
    if not path.is_dir():
        raise DatasetError(f"{path} is not a directory")
    try:
        f, size = open_regular_file(manifest_path)
        with f:
            # Refused by its size before reading a byte (a sparse file costs nothing); the read is
            # still capped, in case the file grows meanwhile.
            if size > MAX_MANIFEST_BYTES:
                raise DatasetError(f"{manifest_path}: {size} bytes, larger than the {MAX_MANIFEST_BYTES} "
                                   "bytes a manifest may have")
            text = f.read(min(size, MAX_MANIFEST_BYTES) + 1)
    except FileNotFoundError:
        raise DatasetError(
            f"{path} has no {name}: not a neurocodec dataset, or its writer did not finish"
        ) from None
    except OSError as exc:
        raise DatasetError(f"{manifest_path}: cannot read ({exc.strerror or exc})") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise DatasetError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes")
    folder = manifest_path.parent
    return Manifest.from_json(text, source=str(manifest_path), max_member_bytes=max_member_bytes,
                              table=lambda table, size: FileSource(folder / table))


def _read_remote_manifest(url: str, name: str, storage_options: Mapping[str, Any] | None,
                          max_member_bytes: int | None) -> Manifest | None:
    """The manifest stored as `name` in the dataset at `url`, or None when there is no such object."""
    from neurocodec.storage.location import Location
    from neurocodec.storage.remote import read_remote_bytes

    location = Location(url, storage_options)
    try:
        text = read_remote_bytes(location, name, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        return None
    folder = name.rpartition("/")[0]
    return Manifest.from_json(text, source=f"{url}/{name}", max_member_bytes=max_member_bytes,
                              table=lambda table, size: _remote_table(location, f"{folder}/{table}".lstrip("/"), size))


def _remote_table(location: Any, name: str, size: int) -> BytesSource:
    """The shard table `name` of a URL dataset, read whole (at most its declared `size`)."""
    from neurocodec.storage.remote import read_remote_bytes

    try:
        return BytesSource(read_remote_bytes(location, name, size), location.url_of(name))
    except FileNotFoundError:
        raise DatasetError(f"{location.url_of(name)}: the shard table the manifest names is missing") from None


def shard_starts(shards: Any) -> Any:
    """The first sample of each shard: a list of ints for a tuple of entries, the int64 array
    of a shard table."""
    if isinstance(shards, TableShards):
        return shards.starts
    return [s.first_sample for s in shards]


def open_remote(url: str, storage_options: Mapping[str, Any] | None, cache: Any, manifest: Manifest) -> Any:
    """The `RemoteShards` of a URL dataset (imported here so local reads never load fsspec)."""
    from neurocodec.storage.cache import ShardCache
    from neurocodec.storage.location import Location
    from neurocodec.storage.remote import RemoteShards

    if cache is not None and not isinstance(cache, ShardCache):
        raise TypeError(f"cache must be a neurocodec.storage.ShardCache or None, got {type(cache).__name__}")
    return RemoteShards(Location(url, storage_options), manifest.shards, cache or ShardCache())
