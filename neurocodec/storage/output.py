"""Where a writer puts a dataset: a local directory, or a URL through a local staging directory.

A local directory is locked for the writer's lifetime, cleared of an unfinished writer's files,
and replaced atomically when it holds a dataset (see `neurocodec.storage.local_output`).

For a URL, shards are written locally (in a temp staging directory) exactly as for a local
dataset; each finished shard is uploaded (index first, then the tar file) and its local copy
removed, so the staging area holds about one shard at a time. The manifest is uploaded last,
after every shard, so a reader never finds a manifest whose shards are not all there. Object
stores (S3, GCS, Azure, memory) make an object visible only once its upload completed; on
other filesystems an upload goes to a hidden temp name and is moved into place.

A URL cannot be locked (object stores have no advisory locks): two writers on one URL are not
detected. Replacing a dataset at a URL (`overwrite=True`) uploads the new shards under stand-in
names beside the old ones, switches with one manifest upload, then copies them to their final
names (server-side) and uploads the final manifest before deleting the old and stand-in
objects (`neurocodec.storage.replace`): a reader sees the old dataset or the new one. An
interrupted replacement leaves the old dataset (or, past the switch, the new one) and stand-in
objects that the next replacement deletes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from neurocodec.errors import DatasetError, DatasetExistsError
from neurocodec.format import layout
from neurocodec.format.home import has_manifest
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, Manifest, ShardEntry
from neurocodec.format.shard_table import is_table_name
from neurocodec.storage.local_output import LocalOutput
from neurocodec.storage.location import Location, dataset_path, is_remote
from neurocodec.storage.lock import OutputLock
from neurocodec.storage.replace import is_dataset_file, listed_names, stand_in_base, stand_in_manifest
from neurocodec.storage.retry import RetriesExhausted, RetryPolicy

log = logging.getLogger("neurocodec.storage")

# Protocols whose writes become visible only when complete (a PUT is atomic).
READ_ONLY = {"http", "https"}
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "memory"}


class DatasetOutput:
    """The output of one writer. `directory` is where `ShardFileWriter` writes (the dataset
    itself, a staging directory inside it when replacing a local dataset, a local staging
    directory for a URL); call `shard_done` after each shard is closed, `write_manifest` last,
    `abort` on failure. Either of the last two ends the output (and releases its lock).

    Creating it prepares the output: a location holding a dataset (a manifest) is refused
    unless `overwrite`; an unfinished writer's files (no manifest) are removed. A local
    directory is locked (DatasetLockedError if another writer holds it) unless `lock`, a lock
    the caller already holds on it, is given; the caller then keeps and releases it.
    """

    def __init__(self, target: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
                 overwrite: bool = False, fsync: bool = True, retry: RetryPolicy | None = None,
                 lock: OutputLock | None = None) -> None:
        path = dataset_path(target)
        self.fsync, self.retry = fsync, retry or RetryPolicy.default()
        self.target = path
        self.location: Location | None = None
        self._local: LocalOutput | None = None
        self._stand_in: int | None = None  # first stand-in shard number when replacing at a URL
        self._old: list[str] = []
        self._uploaded = 0
        if not is_remote(path):
            self._local = LocalOutput(path, overwrite=overwrite, fsync=fsync, lock=lock)
            self.directory: Path = self._local.directory
            return
        self.location = Location(path, storage_options)
        if self.location.protocol in READ_ONLY:
            raise DatasetError(f"{path}: {self.location.protocol}:// locations are read-only; write to a "
                               "directory or an object store (s3://, gs://, ...) and serve that")
        self._prepare_remote(overwrite)
        self.directory = Path(tempfile.mkdtemp(prefix="neurocodec-upload-"))

    @property
    def remote(self) -> bool:
        """True when writing to a URL."""
        return self.location is not None

    def _call(self, fn, what: str):
        try:
            return self.retry.call(fn, what)
        except RetriesExhausted as exc:
            raise DatasetError(str(exc)) from None
        except (FileNotFoundError, PermissionError) as exc:
            raise DatasetError(f"{what}: {type(exc).__name__}: {exc}") from None

    def _prepare_remote(self, overwrite: bool) -> None:
        loc = self.location
        fs, root = loc.fs, loc.root

        def listing() -> list[str]:
            fs.invalidate_cache(root)
            try:
                return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
            except FileNotFoundError:
                return []

        names = self._call(listing, f"listing {loc.url}")
        existing = [n for n in names if is_dataset_file(n)]
        hidden = layout.HOME in names and self._call(lambda: fs.exists(loc.path(layout.MANIFEST_PATH)),
                                                     f"checking {loc.url_of(layout.MANIFEST_PATH)}")
        if hidden or layout.MANIFEST in existing:
            if not overwrite:
                raise DatasetExistsError(
                    f"{loc.url} already holds a dataset ({layout.MANIFEST_PATH if hidden else layout.MANIFEST}); "
                    "pass overwrite=True to replace it")
            self._stand_in, self._old = stand_in_base(existing), existing
            return
        for name in existing:  # an unfinished writer's objects (no manifest): not a dataset
            self._call(lambda n=name: _remove(fs, loc.path(n)), f"removing {loc.url_of(name)}")
        if not names:
            try:
                fs.makedirs(root, exist_ok=True)
            except (FileExistsError, NotImplementedError):
                pass
            except OSError as exc:
                raise DatasetError(f"{loc.url}: cannot create ({type(exc).__name__}: {exc})") from None

    def upload(self, local: Path, name: str) -> None:
        """Upload local file `local` as `name` (retried; atomic as described above)."""
        loc = self.location
        size = local.stat().st_size
        self._call(lambda: self._place(name, size, lambda target: loc.fs.put_file(str(local), target)),
                   f"uploading {loc.url_of(name)}")

    def _copy(self, source: str, name: str, size: int) -> None:
        """Copy object `source` to `name` in the store (server-side where it can)."""
        loc = self.location
        self._call(lambda: self._place(name, size, lambda target: loc.fs.copy(loc.path(source), target)),
                   f"copying {loc.url_of(source)} to {loc.url_of(name)}")

    def _place(self, name: str, size: int, write) -> None:
        loc = self.location
        fs, final = loc.fs, loc.path(name)
        atomic = loc.protocol in ATOMIC_PUT
        folder, _, base = name.rpartition("/")
        target = final if atomic else loc.path(f"{folder}/.{base}.upload.tmp" if folder else f".{base}.upload.tmp")
        if folder and not atomic:
            fs.makedirs(loc.path(folder), exist_ok=True)
        write(target)
        if not atomic:
            fs.mv(target, final)
        fs.invalidate_cache(loc.root)
        got = fs.size(final)
        if got != size:
            raise OSError(f"wrote {size} bytes but {loc.url_of(name)} holds {got}")

    def shard_done(self, entry: ShardEntry) -> None:
        """A shard (and its index) is complete in `directory`: upload it when remote (under
        its stand-in name when replacing a dataset)."""
        if self.location is None:
            return
        names = {entry.index: entry.index, entry.name: entry.name}
        if self._stand_in is not None:
            stand_in = layout.shard_name(self._stand_in + self._uploaded)
            names = {entry.index: layout.index_name(stand_in), entry.name: stand_in}
        for local, remote in names.items():
            self.upload(self.directory / local, remote)
            (self.directory / local).unlink()
        self._uploaded += 1

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest, last (replacing the old dataset if any); end the output.
        DatasetError, before anything is written, for a manifest readers would refuse as too
        large (too many shards)."""
        check_manifest_size(manifest, self.target)
        if self._local is not None:
            self._local.write_manifest(manifest)
            return
        if self._stand_in is None:
            self._put_manifest(manifest)
        else:
            self._replace(manifest)
        self.cleanup()

    def _put_manifest(self, manifest: Manifest) -> None:
        """Upload the manifest (its shard table first, if it has one) and remove the tables of
        the manifests it replaced."""
        text, table = manifest.encode()
        if table is not None:
            staged_table = self.directory / table.name
            staged_table.write_bytes(table.data)
            self.upload(staged_table, f"{layout.HOME}/{table.name}")
            staged_table.unlink()
        staged = self.directory / layout.MANIFEST
        staged.write_bytes(text.encode())
        self.upload(staged, layout.MANIFEST_PATH)
        self._remove_tables(None if table is None else table.name)

    def _remove_tables(self, keep: str | None) -> None:
        loc = self.location
        folder = loc.path(layout.HOME)
        loc.fs.invalidate_cache(folder)
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in loc.fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return
        for name in names:
            if is_table_name(name) and name != keep:
                path = f"{layout.HOME}/{name}"
                self._call(lambda n=path: _remove(loc.fs, loc.path(n)), f"removing {loc.url_of(path)}")

    def _replace(self, manifest: Manifest) -> None:
        """Publish a dataset uploaded under stand-in names over the old one (module docs)."""
        stand_in = stand_in_manifest(manifest, self._stand_in)
        self._put_manifest(stand_in)  # the switch: from here on the new dataset
        for final, moved in zip(manifest.shards, stand_in.shards):
            self._copy(moved.index, final.index, final.index_bytes)
            self._copy(moved.name, final.name, final.bytes)
        self._put_manifest(manifest)  # the same dataset under its final names
        keep = listed_names(manifest)
        loc = self.location
        for name in sorted({*self._old, *listed_names(stand_in)} - keep):
            self._call(lambda n=name: _remove(loc.fs, loc.path(n)), f"removing {loc.url_of(name)}")

    def abort(self) -> None:
        """Give up: no manifest is written and the lock is released. Shards finished by a
        first write stay (a later writer clears them); a replacement leaves the old dataset
        as it was (stand-in objects already uploaded are deleted by the next replacement)."""
        if self._local is not None:
            self._local.abort()
        else:
            self.cleanup()

    def cleanup(self) -> None:
        """Remove the staging directory of a URL output."""
        if self.location is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __str__(self) -> str:
        return str(self.target)


def _remove(fs: Any, path: str) -> None:
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def manifest_exists(target: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if a dataset manifest is at `target` (a directory or URL)."""
    path = dataset_path(target)
    if not is_remote(path):
        return has_manifest(path)
    loc = Location(path, storage_options)
    loc.fs.invalidate_cache(loc.root)
    return RetryPolicy.default().call(
        lambda: loc.fs.exists(loc.path(layout.MANIFEST_PATH)) or loc.fs.exists(loc.path(layout.MANIFEST)),
        f"checking {loc.url}")


def local_staging_dir(url: str, kind: str) -> Path:
    """A stable local directory for work in progress towards dataset `url` (for example the
    converter's per-file parts), under `$NEUROCODEC_STAGING_DIR` or next to the shard cache."""
    import hashlib

    from neurocodec.storage.cache import default_cache_dir

    base = Path(os.environ["NEUROCODEC_STAGING_DIR"]) if os.environ.get("NEUROCODEC_STAGING_DIR") \
        else default_cache_dir().parent / "staging"
    return base / f"{kind}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def check_manifest_size(manifest: Manifest, target: Any) -> None:
    """DatasetError unless `manifest` fits the size readers accept (`MAX_MANIFEST_BYTES`)."""
    size = manifest.json_size()
    if size > MAX_MANIFEST_BYTES:
        raise DatasetError(
            f"{target}: the manifest of {len(manifest.shards)} shards would be {size} bytes, more than "
            f"the {MAX_MANIFEST_BYTES} readers accept; write fewer, larger shards (a larger shard_size)")
