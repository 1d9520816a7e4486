"""`dataset_metadata.json`: what a dataset holds and how to read it.

The manifest records the format version, every field (its modality, the codec id and config
that encoded it, its dtype and shape, the plugin and version that supplied it), every shard
(name, sample count, bytes, SHA-256 of the shard and of its index) and the writer's settings.
It is written last, atomically: a directory without it is not a dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from neurocodec import npy
from neurocodec.errors import DatasetError, ShardError
from neurocodec.format import layout, limits, shard_table, shard_table_write, tar
from neurocodec.format.compression import COMPRESSIONS, SUFFIX

MAX_MANIFEST_BYTES = 8 << 20
"""The largest manifest a reader parses (8 MiB), refused by its size before it is read.

A shard entry takes about 350 bytes, so this holds about 24,000 shards (2.4 TB of 100 MB
shards). JSON parsing costs up to ~24 bytes of Python objects per byte of text (`[[],[],...]`),
so a hostile manifest at the cap costs at most ~200 MiB and well under a second to refuse."""
KINDS = ("array", "json", "text", "bytes")
MAX_VERSION = 10**6
"""The most appends a dataset records (its version numbers name directories)."""


@attrs.frozen(slots=True)
class FieldSpec:
    """One field of every sample: a modality's array, or the per-sample metadata.

    `shape` lists each axis's length, None for axes whose length varies between samples;
    `dtype` and `shape` are None for non-array kinds.
    """

    name: str
    modality: str
    kind: str
    codec: Mapping[str, Any]
    extension: str
    plugin: str
    plugin_version: str
    distribution: str = ""
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    max_raw_bytes: int = 0
    max_stored_bytes: int = 0
    max_value_bytes: int = 0

    @property
    def codec_id(self) -> str:
        """The codec id this field was encoded with."""
        return self.codec["id"]

    @property
    def install_hint(self) -> str:
        """Which plugin wrote this field and how to install it: "plugin 'x' (pip install
        dist==version)", for errors about a codec or modality that is not installed."""
        if not self.distribution:
            return f"plugin {self.plugin!r} (it was registered directly, not from an installed distribution)"
        version = f"=={self.plugin_version}" if self.plugin_version else ""
        return f"plugin {self.plugin!r} (pip install {self.distribution}{version})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = attrs.asdict(self, recurse=False)
        d["codec"] = dict(self.codec)
        d["shape"] = None if self.shape is None else list(self.shape)
        if not self.max_value_bytes:
            del d["max_value_bytes"]  # not declared: manifests of plain codecs stay as they were
        return d

    @property
    def value_bound(self) -> int:
        """The most bytes one decoded value of this field may take: `max_value_bytes` where the
        codec declares it (its values are larger than its payloads), else `max_raw_bytes`."""
        return self.max_value_bytes or self.max_raw_bytes


@attrs.frozen(slots=True)
class ShardEntry:
    """One shard file as the manifest records it."""

    name: str
    index: str
    samples: int
    first_sample: int
    bytes: int
    sha256: str
    index_bytes: int
    index_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)


def needed_version(fields: tuple[FieldSpec, ...]) -> int:
    """1 when every field uses a version-1 codec and declares no `max_value_bytes`, else 2."""
    plain = all(f.codec_id in layout.V1_CODECS and not f.max_value_bytes for f in fields)
    return 1 if plain else 2


@attrs.frozen(slots=True)
class Manifest:
    """The whole of `dataset_metadata.json`. `fields` ends with the metadata field."""

    compression: str
    total_samples: int
    fields: tuple[FieldSpec, ...]
    shards: Sequence[ShardEntry]
    """A tuple, or the `TableShards` of a dataset with a shard table (`format.shard_table`)."""
    writer: Mapping[str, Any] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    created_with: Mapping[str, str] = attrs.field(factory=dict)
    format_version: int = attrs.field(default=attrs.Factory(lambda m: needed_version(m.fields), takes_self=True))
    """As read; for a new manifest, the lowest version that describes its fields."""
    version: int = 1
    """The dataset's version: 1 as first written, one more with every append (docs/versions.md).
    Earlier versions' manifests are kept under `versions/<n>/` (`neurocodec.dataset.versions`)."""

    @property
    def modalities(self) -> tuple[FieldSpec, ...]:
        """The fields other than per-sample metadata."""
        return tuple(f for f in self.fields if f.name != layout.METADATA_FIELD)

    def member_extension(self, field: FieldSpec) -> str:
        """The extension of `field`'s members, compression suffix included."""
        return field.extension + SUFFIX[self.compression]

    @property
    def table_above(self) -> int:
        """Above how many shards this dataset keeps them in a shard table: the writer setting
        `shard_table_above`, else `shard_table.TABLE_ABOVE`."""
        value = self.writer.get("shard_table_above")
        return value if type(value) is int and value >= 0 else shard_table.TABLE_ABOVE

    def to_json(self) -> str:
        """Serialise deterministically (sorted keys, compact separators); the JSON of `encode`."""
        return self.encode()[0]

    def json_size(self) -> int:
        """The bytes of the JSON `encode` gives, without encoding the shard table (its name,
        size and digest take the same bytes whatever its content)."""
        return len(self.encode(sizing=True)[0].encode())

    def encode(self, *, sizing: bool = False) -> tuple[str, "ManifestTable | None"]:
        """The manifest's JSON and, for a dataset of more than `table_above` shards whose names
        and checksums a table can hold, its shard table (written first, beside the manifest).
        `sizing`: a stand-in digest instead of the table (see `json_size`)."""
        first = shard_table_write.first_number(self.shards) if len(self.shards) > self.table_above else None
        table = None
        doc = {
            "format": layout.FORMAT_NAME,
            "format_version": self.format_version,
            "created_with": dict(self.created_with),
            "compression": self.compression,
            "total_samples": self.total_samples,
            "total_shards": len(self.shards),
            "fields": [f.to_dict() for f in self.fields],
            "writer": dict(self.writer),
            "extra": dict(self.extra),
        }
        if first is None:
            doc["shards"] = [s.to_dict() for s in self.shards]
            if self.format_version == shard_table.FORMAT_VERSION:  # read with a table, written without
                doc["format_version"] = needed_version(self.fields)
        else:
            if sizing:
                size, digest = shard_table.table_bytes(len(self.shards)), "0" * 64
            else:
                data, digest = shard_table_write.encode_table(self.shards, first)
                table, size = ManifestTable(shard_table.table_name(digest), data), len(data)
            doc["format_version"] = max(self.format_version, shard_table.FORMAT_VERSION)
            doc["shard_table"] = {"name": shard_table.table_name(digest), "bytes": size, "sha256": digest,
                                  "shards": len(self.shards)}
        if self.version != 1:
            doc["version"] = self.version  # written only once appended: first versions stay as they were
        # compact: per-session records (units, electrodes) must not spend the size cap on indentation
        return json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False) + "\n", table

    @classmethod
    def from_json(cls, text: str | bytes, source: str = layout.MANIFEST, *,
                  max_member_bytes: int | None = None,
                  table: Callable[[str, int], shard_table.TableSource] | None = None) -> "Manifest":
        """Parse and strictly validate a manifest; errors name `source` and the bad entry.
        `table(name, size)` opens the shard table of that name (and declared size) beside the
        manifest, for a manifest that has one.

        A field whose `max_raw_bytes` exceeds the per-member ceiling (`max_member_bytes`, see
        `neurocodec.format.limits.max_member_bytes` for the default) is refused.
        """
        ceiling = limits.max_member_bytes(max_member_bytes)
        if len(text) > MAX_MANIFEST_BYTES:
            raise DatasetError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"{source}: not valid JSON ({exc})") from None
        return _parse(doc, source, ceiling, table)


@attrs.frozen
class ManifestTable:
    """A manifest's shard table as written: its file `name` (beside the manifest) and bytes."""

    name: str
    data: bytes


def _need(cond: bool, source: str, what: str) -> None:
    if not cond:
        raise DatasetError(f"{source}: {what}")


def _int(doc: Mapping, key: str, source: str, where: str) -> int:
    value = doc.get(key)
    _need(type(value) is int and value >= 0, source, f"{where}{key} must be a non-negative integer")
    return value


def _str(doc: Mapping, key: str, source: str, where: str) -> str:
    value = doc.get(key)
    _need(isinstance(value, str), source, f"{where}{key} must be a string")
    return value


def _parse(doc: Any, source: str, ceiling: int, table: Callable[[str, int], shard_table.TableSource] | None
           ) -> Manifest:
    _need(isinstance(doc, dict), source, "the manifest must be a JSON object")
    if doc.get("format") != layout.FORMAT_NAME:
        raise DatasetError(
            f"{source}: not a neurocodec manifest (format {doc.get('format')!r}); shards of the "
            "user guide's older pipeline (pickled .pyd members) convert with "
            "neurocodec.dataset.legacy.convert_legacy_shards, see docs/format.md"
        )
    version = doc.get("format_version")
    _need(type(version) is int and version >= 1, source, "format_version must be a positive integer")
    _need(version <= layout.FORMAT_VERSION, source,
          f"format_version {version} is newer than this neurocodec reads "
          f"({layout.FORMAT_VERSION}); upgrade neurocodec")
    compression = doc.get("compression")
    _need(compression in COMPRESSIONS, source, f"unknown compression {compression!r}")
    fields_doc = doc.get("fields")
    _need(isinstance(fields_doc, list) and fields_doc, source, "fields must be a non-empty list")
    fields = tuple(_parse_field(f, source, f"fields[{i}].", ceiling) for i, f in enumerate(fields_doc))
    names = [f.name for f in fields]
    _need(len(set(names)) == len(names), source, "field names repeat")
    _need(names[-1] == layout.METADATA_FIELD and fields[-1].kind == "json", source,
          "the last field must be the json metadata field")
    for key in ("writer", "extra", "created_with"):
        _need(isinstance(doc.get(key, {}), dict), source, f"{key} must be an object")
    number = doc.get("version", 1)
    _need(type(number) is int and 1 <= number <= MAX_VERSION, source,
          f"version must be an integer from 1 to {MAX_VERSION}")
    total = _int(doc, "total_samples", source, "")
    _need(total <= layout.MAX_SAMPLES, source, "too many samples for 9-digit keys")
    if "shard_table" in doc:
        _need("shards" not in doc, source, "a manifest with a shard_table lists no shards")
        _need(version >= shard_table.FORMAT_VERSION, source,
              f"format_version {version} has no shard tables (version {shard_table.FORMAT_VERSION} has)")
        shards = shard_table.open_table(doc["shard_table"], table, source, total_shards=doc.get("total_shards"),
                                        total_samples=total, members=len(fields), ceiling=ceiling,
                                        entry=ShardEntry)
    else:
        shards = _parse_shards(doc, source, total, len(fields), ceiling)
    return Manifest(
        compression=compression, total_samples=total, fields=fields, shards=shards,
        writer=doc.get("writer", {}), extra=doc.get("extra", {}),
        created_with=doc.get("created_with", {}), format_version=version, version=number,
    )


def _parse_shards(doc: Mapping, source: str, total: int, members: int, ceiling: int) -> tuple[ShardEntry, ...]:
    shards_doc = doc.get("shards")
    _need(isinstance(shards_doc, list), source, "shards must be a list")
    shards = tuple(_parse_shard(s, source, f"shards[{i}].") for i, s in enumerate(shards_doc))
    expected_first = 0
    for i, shard in enumerate(shards):
        _need(shard.first_sample == expected_first, source,
              f"shards[{i}].first_sample is {shard.first_sample}, expected {expected_first}")
        expected_first += shard.samples
    _need(expected_first == total, source,
          f"shards hold {expected_first} samples but total_samples is {total}")
    _need(len({s.name for s in shards}) == len(shards), source, "shard names repeat")
    _need(doc.get("total_shards", len(shards)) == len(shards), source,
          f"total_shards is {doc.get('total_shards')!r} but {len(shards)} shards are listed")
    for i, shard in enumerate(shards):
        _check_shard_sizes(shard, members, source, f"shards[{i}].", ceiling)
    return shards


def _parse_field(doc: Any, source: str, where: str, ceiling: int) -> FieldSpec:
    _need(isinstance(doc, dict), source, f"{where[:-1]} must be an object")
    name = _str(doc, "name", source, where)
    if name != layout.METADATA_FIELD:
        problem = layout.field_name_problem(name)
        _need(problem is None, source, f"{where}name: {problem}")
    kind = doc.get("kind")
    _need(kind in KINDS, source, f"{where}kind must be one of {KINDS}")
    codec = doc.get("codec")
    _need(isinstance(codec, dict) and isinstance(codec.get("id"), str), source,
          f"{where}codec must be an object with a string id")
    extension = _str(doc, "extension", source, where)
    _need(extension.replace(".", "").isascii() and extension.replace(".", "").isalnum()
          and len(extension) <= 16, source,
          f"{where}extension {extension!r} is not a short alphanumeric extension")
    dtype, shape = doc.get("dtype"), doc.get("shape")
    if kind == "array":
        _need(isinstance(dtype, str), source, f"{where}dtype must be a string for arrays")
        # Exactly the writer's spellings: no np.dtype() on manifest text, no byte-order aliases.
        _need(dtype in npy.DTYPES, source,
              f"{where}dtype {dtype[:40]!r} of field {name!r} is not a dtype this format stores "
              f"(one of {', '.join(npy.DTYPES)}; see docs/format.md)")
        _need(isinstance(shape, list) and all(d is None or (type(d) is int and d >= 0) for d in shape),
              source, f"{where}shape must be a list of lengths or nulls")
        shape = tuple(shape)
    max_raw = _int(doc, "max_raw_bytes", source, where)
    max_stored = _int(doc, "max_stored_bytes", source, where)
    _need(max_stored <= tar.MAX_MEMBER_SIZE, source,
          f"{where}max_stored_bytes of field {name!r} is {max_stored}, beyond the tar member limit")
    _need(max_raw <= ceiling, source,
          f"{where}max_raw_bytes: field {name!r} declares members of up to {max_raw} bytes decoded, above "
          f"the per-member ceiling of {ceiling} bytes (raise it with max_member_bytes= or "
          f"{limits.ENV_MAX_MEMBER_BYTES} if you trust this dataset)")
    max_value = doc.get("max_value_bytes", 0)
    _need(type(max_value) is int and 0 <= max_value <= ceiling, source,
          f"{where}max_value_bytes: field {name!r} must declare decoded values of 0 to {ceiling} bytes "
          f"(the per-member ceiling; raise it with max_member_bytes= or {limits.ENV_MAX_MEMBER_BYTES} "
          "if you trust this dataset)")
    return FieldSpec(
        name=name, modality=_str(doc, "modality", source, where), kind=kind, codec=codec,
        extension=extension, plugin=_str(doc, "plugin", source, where),
        plugin_version=_str(doc, "plugin_version", source, where),
        distribution=doc.get("distribution", "") if isinstance(doc.get("distribution", ""), str) else "",
        dtype=dtype if kind == "array" else None, shape=shape if kind == "array" else None,
        max_raw_bytes=max_raw, max_stored_bytes=max_stored, max_value_bytes=max_value,
    )


def _parse_shard(doc: Any, source: str, where: str) -> ShardEntry:
    _need(isinstance(doc, dict), source, f"{where[:-1]} must be an object")
    name = _str(doc, "name", source, where)
    _need(layout.is_shard_name(name), source, f"{where}name {name!r} is not a shard file name")
    index = _str(doc, "index", source, where)
    _need(index in (layout.index_name(name), layout.legacy_index_name(name)), source,
          f"{where}index must be {layout.index_name(name)!r} (or {layout.legacy_index_name(name)!r}, as "
          "datasets written before the hidden layout name it)")
    entry = ShardEntry(
        name=name, index=index, samples=_int(doc, "samples", source, where),
        first_sample=_int(doc, "first_sample", source, where), bytes=_int(doc, "bytes", source, where),
        sha256=_str(doc, "sha256", source, where), index_bytes=_int(doc, "index_bytes", source, where),
        index_sha256=_str(doc, "index_sha256", source, where),
    )
    _need(entry.samples > 0, source, f"{where}samples must be positive")
    return entry


def _check_shard_sizes(entry: ShardEntry, members: int, source: str, where: str, ceiling: int) -> None:
    """A shard's sample count must fit its declared sizes: every member takes at least a
    512-byte header, and the index is exactly a (samples, members, 4) uint64 NPY file, read
    whole, so at most the per-member ceiling. So a count can never size anything (an epoch's
    order, an index read) beyond what the shard's declared sizes, checked against the files
    before use, admit."""
    least = limits.min_shard_bytes(entry.samples, members)
    _need(entry.bytes >= least, source,
          f"{where}bytes is {entry.bytes}, too few for {entry.samples} samples of {members} members "
          f"(at least {least})")
    index_bytes = limits.index_file_bytes(entry.samples, members)
    _need(entry.index_bytes == index_bytes, source,
          f"{where}index_bytes is {entry.index_bytes}, but the index of {entry.samples} samples of "
          f"{members} members is {index_bytes} bytes")
    _need(index_bytes <= ceiling, source,
          f"{where}index of {entry.samples} samples of {members} members is {index_bytes} bytes, above the "
          f"per-member ceiling of {ceiling} bytes that bounds every read (raise it with max_member_bytes= or "
          f"{limits.ENV_MAX_MEMBER_BYTES} if you trust this dataset)")


def check_local_shards(root: Path, manifest: Manifest) -> None:
    """Stat (never read) each index file of a local dataset; ShardError naming the shard when
    an index is present but smaller than the sample count the manifest lists implies.

    For the loaders, before they size an epoch's order (or a sampler its permutation) by the
    manifest's sample counts: those counts are then backed by index files of their exact size,
    each within the per-member ceiling (checked at manifest parse). Shard files are not judged
    here: a truncated or missing shard, or a missing index, is reported by the reader when its
    samples are read, so that `on_error="skip"` still skips them.
    """
    if isinstance(manifest.shards, shard_table.TableShards):
        return  # a table's counts are checked on open; each index is checked as its shard is opened
    members = len(manifest.fields)
    for entry in manifest.shards:
        need = limits.index_file_bytes(entry.samples, members)
        try:
            size = os.stat(root / entry.index).st_size
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ShardError(f"cannot stat index {entry.index}: {exc.strerror or exc}", shard=entry.name) from None
        if size < need:
            raise ShardError(f"index {entry.index} has {size} bytes, too few for the {entry.samples} samples "
                             f"the manifest lists ({need} bytes)", shard=entry.name)
