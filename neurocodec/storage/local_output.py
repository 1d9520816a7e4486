"""A local output directory for one writer: checked, locked, cleared of unfinished debris, and
replaced atomically when it already holds a dataset.

* The path must be a directory (created if missing); anything else is a DatasetError naming it.
* The directory is locked for the writer's lifetime (`neurocodec.storage.lock`).
* A directory with a manifest holds a dataset: refused unless `overwrite`. Files a writer left
  without a manifest (shards, indexes, temp files of a killed or failed run) are not a dataset:
  they are removed and the new dataset is written from scratch, as `neurocodec info` and every
  reader already treat them (no manifest, no dataset).
* Overwriting writes the new dataset into the hidden `.neurocodec-staging/` subdirectory; the old
  dataset is untouched and readable until the new one is complete, and is then replaced as
  described in `neurocodec.storage.replace`. A staging directory left by an interrupted
  overwrite is removed by the next writer. The earlier versions of a replaced dataset
  (`versions/`, kept by appends) go with it.
* The manifest goes to the hidden `.neurocodec/` (`neurocodec.format.home`). Replacing a dataset
  of the top-level layout moves its splits, statistics and report there too (they are stale, and
  refused as such, exactly as a replaced dataset's are) and removes its top-level manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from neurocodec.errors import DatasetError, DatasetExistsError
from neurocodec.format import layout
from neurocodec.format.home import has_manifest, home, manifest_path
from neurocodec.format.manifest import Manifest
from neurocodec.format.shard_table import is_table_name
from neurocodec.fsutil import atomic_link_or_copy, atomic_write_bytes, fsync_dir, is_temp_name
from neurocodec.storage.lock import OutputLock
from neurocodec.storage.replace import STAGING, is_dataset_file, listed_names, stand_in_base, stand_in_manifest


def write_manifest(directory: Path, manifest: Manifest, *, fsync: bool = True, into: Path | None = None) -> None:
    """Write the manifest of the dataset in `directory` atomically, after making the shards'
    renames durable: into `into`, by default where the dataset keeps it (`.neurocodec/` unless
    it is a dataset of the top-level layout, `neurocodec.format.home`). A dataset with a shard
    table has it written first, beside the manifest, and the tables no longer named removed."""
    target = home(directory) if into is None else into
    text, table = manifest.encode()
    if fsync:
        fsync_dir(directory)
    target.mkdir(exist_ok=True)
    if table is not None:
        atomic_write_bytes(target / table.name, table.data, fsync=fsync)
    atomic_write_bytes(target / layout.MANIFEST, text.encode(), fsync=fsync)
    for name in os.listdir(target):  # the tables of the manifests replaced
        if is_table_name(name) and (table is None or name != table.name):
            (target / name).unlink(missing_ok=True)
    if fsync:
        fsync_dir(target)
        fsync_dir(directory)


def make_output_dir(path: Path) -> None:
    """Create directory `path` (and its parents); DatasetError naming it if it cannot be one."""
    if path.exists() and not path.is_dir():
        raise DatasetError(f"{path} exists and is not a directory; the output of a writer must be a "
                           "directory (a new one, or one holding a dataset to replace)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot create the output directory ({type(exc).__name__}: "
                           f"{exc.strerror or exc})") from None


class LocalOutput:
    """The local side of `DatasetOutput` (see the module documentation). `directory` is where
    shards are written: the output itself, or its staging directory when replacing."""

    def __init__(self, path: Path, *, overwrite: bool, fsync: bool, lock: OutputLock | None = None) -> None:
        self.target, self.fsync = path, fsync
        make_output_dir(path)
        self.lock, self._own_lock = lock or OutputLock(path), lock is None
        try:
            self.replacing = self._prepare(overwrite)
            self.directory = path / STAGING if self.replacing else path
            if self.replacing:
                self.directory.mkdir()
        except BaseException:
            self._release()
            raise

    def _prepare(self, overwrite: bool) -> bool:
        """Check and clear the directory; True if it holds a dataset to replace."""
        names = sorted(os.listdir(self.target))
        if STAGING in names:  # left by an interrupted overwrite; the lock says nobody uses it
            _remove(self.target / STAGING)
        own = [n for n in names if is_dataset_file(n)]
        for name in own:
            path = self.target / name
            if path.is_dir() and not path.is_symlink():
                raise DatasetError(f"{path} is a directory where the dataset keeps a file of that name; "
                                   "move or remove it (a writer only replaces neurocodec's own files)")
        hidden = self.target / layout.HOME
        if hidden.exists() and not hidden.is_dir():
            raise DatasetError(f"{hidden} is a file where the dataset keeps its manifest (a directory); "
                               "move or remove it")
        if hidden.is_dir():  # a killed writer's unfinished manifest
            for name in os.listdir(hidden):
                if is_temp_name(name):
                    (hidden / name).unlink(missing_ok=True)
        if has_manifest(self.target):
            if not overwrite:
                raise DatasetExistsError(f"{self.target} already holds a dataset "
                                         f"({manifest_path(self.target).relative_to(self.target)}); "
                                         "pass overwrite=True to replace it")
            return True
        for name in own:  # an unfinished writer's files: not a dataset, start afresh
            (self.target / name).unlink(missing_ok=True)
        return False

    def write_manifest(self, manifest: Manifest) -> None:
        """Publish the dataset (replacing the old one if any) and release the lock."""
        try:
            if self.replacing:
                self._replace(manifest)
            else:
                write_manifest(self.target, manifest, fsync=self.fsync)
        finally:
            self._release()

    def _replace(self, manifest: Manifest) -> None:
        root, staging, fsync = self.target, self.directory, self.fsync
        stand_in = stand_in_manifest(manifest, stand_in_base(os.listdir(root)))
        if fsync:
            fsync_dir(staging)
        for final, moved in zip(manifest.shards, stand_in.shards):
            os.replace(staging / final.index, root / moved.index)
            os.replace(staging / final.name, root / moved.name)
        hidden = root / layout.HOME
        top_level = home(root) == root  # the replaced dataset keeps its files at the top
        write_manifest(root, stand_in, fsync=fsync, into=hidden)  # the switch: from here on the new dataset
        for final, moved in zip(manifest.shards, stand_in.shards):
            atomic_link_or_copy(root / moved.index, root / final.index, fsync=fsync)
            atomic_link_or_copy(root / moved.name, root / final.name, fsync=fsync)
        write_manifest(root, manifest, fsync=fsync, into=hidden)  # the same dataset under its final names
        keep = listed_names(manifest)
        for name in os.listdir(root):
            if is_dataset_file(name) and name not in keep:  # the top-level manifest of an older layout too
                (root / name).unlink(missing_ok=True)
        if top_level:
            _move_top_level_files(root, hidden)
        _remove(hidden / layout.VERSIONS)  # the replaced dataset's earlier versions: their shards are gone
        _remove(staging)
        if fsync:
            fsync_dir(root)

    def abort(self) -> None:
        """Give up: drop the staging directory of a replacement (the old dataset stays as it
        was) and release the lock; shards finished by a first write stay on disk."""
        try:
            if self.replacing:
                _remove(self.directory)
        finally:
            self._release()

    def _release(self) -> None:
        if self._own_lock:
            self.lock.release()


TOP_LEVEL_FILES = ("splits", "stats", "conversion-report.json")
"""Files made for a dataset of the top-level layout that a replacement keeps (stale, as a
replaced dataset's always are) in `.neurocodec/`."""


def _move_top_level_files(root: Path, hidden: Path) -> None:
    """Move the files made for a replaced dataset of the top-level layout into `.neurocodec/`
    (dropping them where it has its own) and remove its earlier versions."""
    for name in TOP_LEVEL_FILES:
        source = root / name
        if source.exists() and not (hidden / name).exists():
            os.replace(source, hidden / name)
        elif source.exists():
            _remove(source)
    _remove(root / layout.VERSIONS)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
