"""Appending samples to a dataset without rewriting it: new shards, a new version.

`append_datasets(target, sources)` copies the samples of `sources` (datasets with the target's
fields, codecs and compression), in order, into new shards numbered after the target's last
one and keyed after its last sample; no existing shard is touched. Then, under the target's
writer lock:

1. the current manifest (byte for byte), the splits and statistics made for it and the other
   JSON files beside it (a conversion's report) are kept in `versions/<n>/` of the dataset's
   home (`.neurocodec/`, or the top of a dataset of the older layout: `neurocodec.format.home`),
   n its version;
2. the new manifest, version n + 1, listing the old shards and then the new ones, replaces
   `dataset_metadata.json` atomically: this is the switch. The new shards' indexes have hidden
   names (`.shard_000000.idx`) whatever the layout; an append keeps the layout of the dataset;
3. every stored split is made again by its own rule for version n + 1
   (`neurocodec.dataset.splits.refresh_splits`): existing sessions keep their parts, new ones
   get theirs by the same rule; then every stored set of normalisation statistics is computed
   again from its part (`neurocodec.dataset.stats_compute.refresh_stats`).

A reader that opened version n keeps reading exactly its samples (shards never change), and
`Dataset(path, version=n)` or a loader's `version=n` opens it later. An interruption before the
switch leaves version n as it was (the new shards are not listed, and the next append replaces
them); between 2 and 3, loaders refuse the split (and statistics) made for version n and say how
to refresh them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
import re
from typing import Any, Callable, Mapping, Sequence

from neurocodec import __version__
from neurocodec.dataset.extra_merge import merge_extra
from neurocodec.dataset.merge import copy_samples, merged_fields
from neurocodec.dataset.reader import Dataset
from neurocodec.errors import DatasetError
from neurocodec.format import layout
from neurocodec.format.home import has_manifest, home
from neurocodec.format.manifest import MAX_VERSION, Manifest
from neurocodec.format.shardfile import ShardSequence
from neurocodec.format.shard_table import TableShards, is_table_name, shard_columns
from neurocodec.fsutil import atomic_link_or_copy, atomic_write_bytes, fsync_dir, is_temp_name
from neurocodec.plugin.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote
from neurocodec.storage.local_output import write_manifest
from neurocodec.storage.lock import OutputLock

KEPT_WITH_VERSION = ("splits", "stats")
_NUMBERED = re.compile(r"\.?shard_([0-9]{6,})\.(?:tar|idx)")
"""Directories of files made for one version, kept with its manifest when the next is made."""

STAGING = ".neurocodec-append"
"""Where a writer appending to a dataset writes the new samples first (inside the dataset)."""


def append_datasets(target: str | os.PathLike, sources: Sequence[str | os.PathLike], *, fsync: bool = True,
                    registry: Registry | None = None, lock: OutputLock | None = None,
                    extra: Mapping[str, Any] | None = None) -> Manifest:
    """Append the samples of the datasets `sources`, in order, to the local dataset `target`
    as its next version (see the module documentation); return the new manifest.

    The sources need the target's fields (names, modalities, codecs, dtypes, dimensions) and
    compression. Their `extra` sections (or `extra`, the appended samples' section, when
    given) join the target's by `neurocodec.dataset.extra_merge.merge_extra`: no session twice,
    the same conversion settings. `lock` is the target's `OutputLock` if the caller holds it
    already. DatasetError says what does not fit; nothing of the target changes then."""
    path = dataset_path(target)
    if is_remote(path):
        raise ValueError(f"appending needs a local dataset; {path} is a URL (append locally, then upload)")
    if not sources:
        raise DatasetError("nothing to append")
    held = lock or OutputLock(Path(path))
    try:
        return _append(Path(path), sources, fsync, registry, extra)
    finally:
        if lock is None:
            held.release()


def _append(path: Path, sources: Sequence[str | os.PathLike], fsync: bool, registry: Registry | None,
            extra: Mapping[str, Any] | None) -> Manifest:
    from neurocodec.dataset.splits import refresh_splits
    from neurocodec.dataset.stats_compute import refresh_stats

    where = home(path)
    manifest_bytes = (where / layout.MANIFEST).read_bytes() if (where / layout.MANIFEST).is_file() else None
    current = Dataset(path, registry=registry)
    news = [Dataset(p, registry=registry) for p in sources]
    try:
        if current.version >= MAX_VERSION:
            raise DatasetError(f"{path} has {MAX_VERSION} versions, as many as a dataset may")
        fields = merged_fields([current, *news])
        merged = _merged_extra(path, current, news, extra)
        _clear_unlisted(path, current.manifest)
        shards = ShardSequence(path, _shard_size(current.manifest), fsync=fsync, background=True,
                               first_shard=len(current.shards), first_sample=len(current))
        try:
            copy_samples(news, fields, shards)
            added = shards.finish()
        except BaseException:
            shards.abort()
            raise
    finally:
        for ds in (current, *news):
            ds.close()
    manifest = Manifest(compression=current.manifest.compression, total_samples=shards.samples, fields=fields,
                        shards=current.shards + tuple(added), writer=dict(current.manifest.writer), extra=merged,
                        created_with={"neurocodec": __version__}, version=current.version + 1)
    _keep_version(where, current.version, manifest_bytes, fsync)
    write_manifest(path, manifest, fsync=fsync, into=where)  # the switch
    refresh_splits(path)
    refresh_stats(path)
    return manifest


def _merged_extra(path: Path, current: Dataset, news: Sequence[Dataset], extra: Mapping[str, Any] | None
                  ) -> dict[str, Any]:
    if extra is not None:
        return merge_extra(current.manifest.extra, extra, len(current), f"appending to {path}")
    merged, first = dict(current.manifest.extra), len(current)
    for ds in news:
        merged = merge_extra(merged, ds.manifest.extra, first, f"appending {ds.path} to {path}")
        first += len(ds)
    return merged


class AppendStaging:
    """A writer's append to the local dataset at `target`: the dataset's lock, held from here to
    `commit` or `abort`, and `directory`, the empty staging directory inside it where the writer
    writes the new samples as a dataset of their own; `commit` appends that to the target."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.lock = OutputLock(target)
        try:
            self.first_sample = Dataset(target).manifest.total_samples
            self.directory = target / STAGING
            shutil.rmtree(self.directory, ignore_errors=True)  # a failed append's, unlisted
        except BaseException:
            self.lock.release()
            raise

    def commit(self, *, fsync: bool = True, registry: Registry | None = None,
               extra: Mapping[str, Any] | None = None) -> Manifest:
        """Append the staged dataset to the target (see `append_datasets`) and clean up."""
        try:
            return append_datasets(self.target, [self.directory], fsync=fsync, registry=registry, lock=self.lock,
                                   extra=extra)
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the staged samples and release the lock (the target stays as it was)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.lock.release()


def staging_for_append(target: Any) -> AppendStaging | None:
    """The staging of an append to `target`; None when `target` holds no dataset yet (a
    writer then writes it as version 1). ValueError for a URL."""
    path = dataset_path(target)
    if is_remote(path):
        raise ValueError(f"append=True needs a local dataset; {path} is a URL (append locally, then upload)")
    if not has_manifest(path):
        return None
    return AppendStaging(Path(path))


def _shard_size(manifest: Manifest) -> int:
    """The dataset's shard size: its writer's setting, else its largest shard."""
    size = manifest.writer.get("shard_size")
    if type(size) is int and size >= 1:
        return size
    samples = shard_columns(manifest.shards)[0]
    return int(samples.max()) if len(samples) else 1000


def _clear_unlisted(path: Path, manifest: Manifest) -> None:
    """Remove shards, indexes and temp files the manifest does not list: a failed append's.
    (Every earlier version lists a prefix of the current shards, so none of theirs.)"""
    listed = _listed(manifest)
    for name in os.listdir(path):
        ours = layout.is_shard_name(name) or layout.is_index_name(name) or is_temp_name(name)
        if ours and not listed(name):
            (path / name).unlink(missing_ok=True)


def _listed(manifest: Manifest) -> Callable[[str], bool]:
    """Whether the manifest lists a shard or index file name: by a set of names for JSON rows,
    by the number in the name for a shard table (its shards are numbered from its first)."""
    shards = manifest.shards
    if not isinstance(shards, TableShards):
        names = {name for entry in shards for name in (entry.name, entry.index)}
        return names.__contains__
    first, count = shards.first_number, len(shards)

    def listed(name: str) -> bool:
        match = _NUMBERED.fullmatch(name)
        return match is not None and first <= int(match[1]) < first + count
    return listed


def _keep_version(path: Path, version: int, manifest_bytes: bytes | None, fsync: bool) -> None:
    """Copy version `version`'s manifest (its exact bytes) and the files made for it, all in the
    dataset's home `path`, into `versions/<version>/` there, the manifest last (a directory with
    it is a complete version)."""
    if manifest_bytes is None:
        raise DatasetError(f"{path} has no {layout.MANIFEST}")
    kept = path / layout.version_dir(version)
    kept.mkdir(parents=True, exist_ok=True)
    for item in sorted(path.glob("*.json")):  # a conversion's report, say; not the manifest itself
        if item.name != layout.MANIFEST and item.is_file():
            atomic_write_bytes(kept / item.name, item.read_bytes(), fsync=fsync)
    for name in KEPT_WITH_VERSION:
        source = path / name
        if source.is_dir():
            shutil.rmtree(kept / name, ignore_errors=True)
            (kept / name).mkdir(parents=True)
            for item in sorted(source.glob("*.json")):
                atomic_write_bytes(kept / name / item.name, item.read_bytes(), fsync=fsync)
    for item in sorted(path.glob("shards-*.table")):  # the manifest's shard table, if it has one
        if is_table_name(item.name):
            atomic_link_or_copy(item, kept / item.name, fsync=fsync)
    atomic_write_bytes(kept / layout.MANIFEST, manifest_bytes, fsync=fsync)
    if fsync:
        fsync_dir(kept)
