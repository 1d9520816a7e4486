"""Where a writer puts a dataset: a local directory, or a URL through a local staging directory.

For a URL, shards are written locally (in a temp staging directory) exactly as for a local
dataset; each finished shard is uploaded (index first, then the tar file) and its local copy
removed, so the staging area holds about one shard at a time. The manifest is uploaded last,
after every shard, so a reader never finds a manifest whose shards are not all there. Object
stores (S3, GCS, Azure, memory) make an object visible only once its upload completed; on
other filesystems an upload goes to a hidden temp name and is moved into place.
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
from neurocodec.format.manifest import Manifest, ShardEntry
from neurocodec.fsutil import is_temp_name
from neurocodec.storage.location import Location, dataset_path, is_remote
from neurocodec.storage.retry import RetriesExhausted, RetryPolicy

log = logging.getLogger("neurocodec.storage")

# Protocols whose writes become visible only when complete (a PUT is atomic).
READ_ONLY = {"http", "https"}
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2", "memory"}


def _is_dataset_file(name: str) -> bool:
    return (name == layout.MANIFEST or layout.is_shard_name(name)
            or (name.startswith("shard_") and name.endswith(".idx")) or is_temp_name(name))


class DatasetOutput:
    """The output of one writer. `directory` is where `ShardFileWriter` writes (the dataset
    itself when local, a staging directory for a URL); call `shard_done` after each shard is
    closed, `write_manifest` last, `abort` on failure.

    Creating it prepares the output: a location holding a dataset is refused unless
    `overwrite`, and otherwise cleared, manifest first.
    """

    def __init__(self, target: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
                 overwrite: bool = False, fsync: bool = True, retry: RetryPolicy | None = None) -> None:
        path = dataset_path(target)
        self.fsync, self.retry = fsync, retry or RetryPolicy.default()
        self.target = path
        self.location: Location | None = None
        if not is_remote(path):
            from neurocodec.writer import prepare_output_dir

            self.directory: Path = path
            prepare_output_dir(path, overwrite)
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

        existing = [n for n in self._call(listing, f"listing {loc.url}") if _is_dataset_file(n)]
        if existing and not overwrite:
            raise DatasetExistsError(
                f"{loc.url} already holds a dataset ({existing[0]}, ...); pass overwrite=True to replace it")
        # The manifest goes first: from then on no reader takes the location for a dataset.
        for name in sorted(existing, key=lambda n: n != layout.MANIFEST):
            self._call(lambda n=name: _remove(fs, loc.path(n)), f"removing {loc.url_of(name)}")
        if not existing:
            try:
                fs.makedirs(root, exist_ok=True)
            except (FileExistsError, NotImplementedError):
                pass
            except OSError as exc:
                raise DatasetError(f"{loc.url}: cannot create ({type(exc).__name__}: {exc})") from None

    def upload(self, local: Path, name: str) -> None:
        """Upload local file `local` as `name` (retried; atomic as described above)."""
        loc = self.location
        fs, final = loc.fs, loc.path(name)
        size = local.stat().st_size
        atomic = loc.protocol in ATOMIC_PUT

        def put() -> None:
            target = final if atomic else loc.path(f".{name}.upload.tmp")
            fs.put_file(str(local), target)
            if not atomic:
                fs.mv(target, final)
            fs.invalidate_cache(loc.root)
            got = fs.size(final)
            if got != size:
                raise OSError(f"uploaded {size} bytes but {loc.url_of(name)} holds {got}")

        self._call(put, f"uploading {loc.url_of(name)}")

    def shard_done(self, entry: ShardEntry) -> None:
        """A shard (and its index) is complete in `directory`: upload it when remote."""
        if self.location is None:
            return
        for name in (entry.index, entry.name):
            self.upload(self.directory / name, name)
            (self.directory / name).unlink()

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest, last; for a URL also remove the staging directory."""
        if self.location is None:
            from neurocodec.writer import write_manifest

            write_manifest(self.directory, manifest, fsync=self.fsync)
            return
        staged = self.directory / layout.MANIFEST
        staged.write_bytes(manifest.to_json().encode())
        self.upload(staged, layout.MANIFEST)
        self.cleanup()

    def abort(self) -> None:
        """Give up: for a URL, drop the staging directory (uploaded shards stay, as finished
        shards stay in a local directory; no manifest is written)."""
        if self.location is not None:
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
        return (path / layout.MANIFEST).exists()
    loc = Location(path, storage_options)
    loc.fs.invalidate_cache(loc.root)
    return RetryPolicy.default().call(lambda: loc.fs.exists(loc.path(layout.MANIFEST)), f"checking {loc.url}")


def local_staging_dir(url: str, kind: str) -> Path:
    """A stable local directory for work in progress towards dataset `url` (for example the
    converter's per-file parts), under `$NEUROCODEC_STAGING_DIR` or next to the shard cache."""
    import hashlib

    from neurocodec.storage.cache import default_cache_dir

    base = Path(os.environ["NEUROCODEC_STAGING_DIR"]) if os.environ.get("NEUROCODEC_STAGING_DIR") \
        else default_cache_dir().parent / "staging"
    return base / f"{kind}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"
