"""Concatenating datasets into one, copying every member's stored bytes unchanged.

Used by the parallel converter: each worker writes one part per input file, and the parts are
merged in input order. Because payloads are copied as stored (only member names and the index
change), the result is byte-identical to writing the same samples with one writer, whatever
produced the parts. A part's shard that is already byte for byte the output's (the first
part's full shards, or a single part's every shard) is hard-linked instead of copied, after
its file and index are checked against the part's index and manifest (see
`neurocodec.format.adopt`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from neurocodec import __version__
from neurocodec.errors import DatasetError
from neurocodec.format import layout
from neurocodec.format.manifest import FieldSpec, Manifest
from neurocodec.dataset.reader import Dataset
from neurocodec.format.shardfile import ShardSequence
from neurocodec.plugin.registry import Registry

if TYPE_CHECKING:
    from neurocodec.storage.lock import OutputLock


def merged_fields(datasets: Sequence[Dataset]) -> tuple[FieldSpec, ...]:
    """The fields of the concatenation; DatasetError if the datasets' schemas differ."""
    first = datasets[0]
    fields = list(first.fields)
    for ds in datasets[1:]:
        if ds.manifest.compression != first.manifest.compression:
            raise DatasetError(f"{ds.path} uses compression {ds.manifest.compression!r}, "
                               f"{first.path} uses {first.manifest.compression!r}")
        if [f.name for f in ds.fields] != [f.name for f in fields]:
            raise DatasetError(f"{ds.path} has fields {[f.name for f in ds.fields]}, "
                               f"{first.path} has {[f.name for f in fields]}")
        for i, (mine, theirs) in enumerate(zip(fields, ds.fields)):
            for key in ("modality", "kind", "codec", "dtype", "extension"):
                if getattr(mine, key) != getattr(theirs, key):
                    raise DatasetError(f"field {mine.name!r}: {key} {getattr(theirs, key)!r} in {ds.path} "
                                       f"differs from {getattr(mine, key)!r} in {first.path}")
            if (mine.shape is None) != (theirs.shape is None) or (
                    mine.shape is not None and len(mine.shape) != len(theirs.shape)):
                raise DatasetError(f"field {mine.name!r}: {ds.path} and {first.path} differ in dimensions")
            shape = None if mine.shape is None else tuple(
                a if a == b else None for a, b in zip(mine.shape, theirs.shape))
            fields[i] = FieldSpec(**{**mine.to_dict(), "shape": shape,
                                     "max_raw_bytes": max(mine.max_raw_bytes, theirs.max_raw_bytes),
                                     "max_stored_bytes": max(mine.max_stored_bytes, theirs.max_stored_bytes),
                                     "max_value_bytes": max(mine.max_value_bytes, theirs.max_value_bytes)})
    return tuple(fields)


def merge_datasets(sources: Sequence[str | os.PathLike], output_dir: str | os.PathLike, shard_size: int, *,
                   writer: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                   fsync: bool = True, overwrite: bool = False, registry: Registry | None = None,
                   storage_options: Mapping[str, Any] | None = None, lock: OutputLock | None = None) -> Manifest:
    """Write the samples of `sources`, in order, as one dataset of `shard_size`-sample shards
    (`output_dir` may be an fsspec URL opened with `storage_options`: see `DatasetOutput`).

    The output is prepared, locked and (with `overwrite`) replaced atomically as a writer's
    is; `lock` is an `OutputLock` the caller already holds on a local `output_dir`. A source
    may be the output itself: it is read whole before it is replaced."""
    from neurocodec.storage.output import DatasetOutput

    if not sources:
        raise DatasetError("nothing to merge")
    output: DatasetOutput | None = None
    shards: ShardSequence | None = None
    datasets = [Dataset(p, registry=registry) for p in sources]
    try:
        fields = merged_fields(datasets)
        output = DatasetOutput(output_dir, storage_options=storage_options, overwrite=overwrite, fsync=fsync,
                               lock=lock)
        # A local output commits each shard in the background while the next is copied.
        shards = ShardSequence(output.directory, shard_size, fsync=fsync and not output.remote,
                               background=not output.remote, on_commit=output.shard_done)
        copy_samples(datasets, fields, shards)
        entries = shards.finish()
    except BaseException:
        if shards is not None:
            shards.abort()
        if output is not None:
            output.abort()
        raise
    finally:
        for ds in datasets:
            ds.close()
    manifest = Manifest(
        compression=datasets[0].manifest.compression, total_samples=shards.samples, fields=fields,
        shards=tuple(entries),
        writer=dict(writer or datasets[0].manifest.writer), extra=dict(extra or {}),
        created_with={"neurocodec": __version__},
    )
    try:
        output.write_manifest(manifest)
    except BaseException:
        output.abort()
        raise
    return manifest


def copy_samples(datasets: Sequence[Dataset], fields: Sequence[FieldSpec], shards: ShardSequence) -> None:
    """Every sample of `datasets`, in order, into `shards`: the stored payloads unchanged, the
    member names renumbered. A shard that would come out byte for byte as it is in its source
    (the first part's full shards, when the parts' shard size is the output's) is hard-linked
    and checked instead of copied (`ShardSequence.adopt`)."""
    extensions = [datasets[0].manifest.member_extension(f) for f in fields]

    def names(key: str) -> list[str]:
        return [layout.member_name(key, f.name, ext) for f, ext in zip(fields, extensions)]

    for ds in datasets:
        for number, entry in enumerate(ds.shards):
            last = ds is datasets[-1] and number == len(ds.shards) - 1
            reader = ds.shard(number)  # its index read and validated against the manifest
            if ds.remote is None and shards.adopt(
                    ds.path, entry, reader.rows, lambda local, first=entry.first_sample: names(
                        layout.sample_key(first + local)), last=last):
                continue
            for local in range(entry.samples):
                stored = reader.stored_payloads(local)
                shards.add(names(layout.sample_key(shards.samples)),
                           [payload for payload, _ in stored],  # views of read-only buffers the reader read: no copy
                           [raw for _, raw in stored], immutable=True)
