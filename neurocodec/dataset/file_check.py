"""Whether a dataset's shard and index files are all there with the sizes its manifest lists:
one `stat` per file for a local dataset, one listing per folder for a URL dataset; nothing is
read, so this is cheap whatever the dataset's size (`neurocodec verify` reads everything)."""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import attrs

from neurocodec.errors import DatasetError
from neurocodec.format.manifest import Manifest, ShardEntry
from neurocodec.storage.location import is_remote

MISSING, TRUNCATED, LONGER, NOT_A_FILE = "missing", "truncated", "longer", "not a regular file"
_SHOWN = 10  # problems named in `describe` (all are in `problems`)
_UNKNOWN = -1  # a listed file whose size the listing does not give (some HTTP servers): taken as it is


@attrs.frozen
class FileProblem:
    """One file of shard `shard` not as the manifest lists it: `kind` is MISSING, TRUNCATED,
    LONGER or NOT_A_FILE (or a reason it could not be looked at); `found` its size, if any."""

    shard: str
    name: str
    kind: str
    expected: int
    found: int | None = None

    def describe(self) -> str:
        """E.g. "shard_000003.tar truncated (1,024 of 4,096 bytes)"."""
        if self.kind in (TRUNCATED, LONGER):
            return f"{self.name} {self.kind} ({self.found:,} bytes, the manifest lists {self.expected:,})"
        return f"{self.name} {self.kind}"


@attrs.frozen
class FileCheck:
    """The result of `check_files`: `shards` checked (each with its index file), the
    `problems` found; `ok` when there are none."""

    shards: int
    problems: tuple[FileProblem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every file is present with the manifest's size."""
        return not self.problems

    @property
    def bad_shards(self) -> tuple[str, ...]:
        """The shards whose file or index file has a problem, in the manifest's order."""
        return tuple(dict.fromkeys(p.shard for p in self.problems))

    def describe(self) -> str:
        """One sentence: "all 12 shards present with the sizes the manifest lists", or how many
        are bad and each problem."""
        if self.ok:
            if self.shards == 1:
                return "the shard and its index file present with the sizes the manifest lists"
            return f"all {self.shards:,} shards and their index files present with the sizes the manifest lists"
        shown = "; ".join(p.describe() for p in self.problems[:_SHOWN])
        more = f"; and {len(self.problems) - _SHOWN:,} more" if len(self.problems) > _SHOWN else ""
        return (f"{len(self.bad_shards):,} of {self.shards:,} shards missing or not of the size the manifest "
                f"lists: {shown}{more}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for `ShardedDatasetInfo.get_summary`)."""
        return {"ok": self.ok, "shards": self.shards, "bad_shards": list(self.bad_shards),
                "problems": [attrs.asdict(p) for p in self.problems], "text": self.describe()}


def check_files(path: Path | str, manifest: Manifest,
                storage_options: Mapping[str, Any] | None = None) -> FileCheck:
    """Check that every shard of `manifest` and its index file are present in the dataset at
    `path` with the sizes the manifest lists, by their sizes alone (no byte is read).
    DatasetError naming the URL if a URL dataset's folder cannot be listed."""
    sizes = _remote_sizes(path, manifest, storage_options) if is_remote(path) else _local_size(Path(path))
    problems = [problem for entry in manifest.shards for problem in _problems(entry, sizes)]
    return FileCheck(len(manifest.shards), tuple(problems))


def _files(entry: ShardEntry) -> Iterator[tuple[str, int]]:
    yield entry.name, entry.bytes
    yield entry.index, entry.index_bytes


def _problems(entry: ShardEntry, size_of: Callable[[str], int | str | None]) -> Iterator[FileProblem]:
    for name, expected in _files(entry):
        found = size_of(name)
        if found is None:
            yield FileProblem(entry.name, name, MISSING, expected)
        elif isinstance(found, str):
            yield FileProblem(entry.name, name, found, expected)
        elif found not in (expected, _UNKNOWN):
            yield FileProblem(entry.name, name, TRUNCATED if found < expected else LONGER, expected, found)


def _local_size(root: Path) -> Callable[[str], int | str | None]:
    """The size of a dataset file (following links, as the reader does), None when missing, or
    why it cannot be one."""
    def size_of(name: str) -> int | str | None:
        try:
            st = os.stat(root / name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"cannot be looked at ({exc.strerror or exc})"
        return st.st_size if stat.S_ISREG(st.st_mode) else NOT_A_FILE
    return size_of


def _remote_sizes(url: str, manifest: Manifest,
                  storage_options: Mapping[str, Any] | None) -> Callable[[str], int | str | None]:
    """Sizes of a URL dataset's files from one listing of each folder holding them."""
    from neurocodec.storage.location import Location

    location = Location(url, storage_options)
    folders = {posixpath.dirname(name) for entry in manifest.shards for name, _ in _files(entry)}
    sizes: dict[str, int | str] = {}
    for folder in sorted(folders):
        where = location.path(folder) if folder else location.root
        try:
            listing = location.fs.ls(where, detail=True)
        except FileNotFoundError:
            continue  # no such folder: each of its files is missing
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{location.url_of(folder) if folder else url}: cannot list the shards to check "
                               f"them ({type(exc).__name__}: {exc})") from None
        for item in listing:
            name = posixpath.join(folder, posixpath.basename(str(item.get("name", "")).rstrip("/")))
            size = item.get("size")
            if item.get("type", "file") != "file":
                sizes[name] = NOT_A_FILE
            else:
                sizes[name] = int(size) if isinstance(size, int) else _UNKNOWN
    return sizes.get
