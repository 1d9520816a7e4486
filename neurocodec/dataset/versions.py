"""Versions of a dataset that samples were appended to: where each keeps its files.

Version 1 is a dataset as first written. Every append (`neurocodec.dataset.append`) adds shards
and makes the next version; the manifest of version n, and the splits and statistics made for
it, are kept under `versions/<n>/` of the dataset's home (`.neurocodec/versions/<n>/`, or
`versions/<n>/` at the top of a dataset of the older layout: `neurocodec.format.home`), while
the current version's live in the home itself. Shards are shared: version n's manifest lists the first shards of every
later one, and shards are never rewritten, so version n reads exactly the samples it held.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from neurocodec.format import layout
from neurocodec.format.home import home

_NUMBER = re.compile(r"[1-9][0-9]{0,6}")


def version_files(path: str | os.PathLike, version: int) -> Path:
    """The directory holding version `version`'s manifest, splits and statistics: the dataset
    home for the current version, its `versions/<n>/` for an earlier one (local datasets)."""
    where = home(path)
    kept = where / layout.version_dir(version)
    return kept if (kept / layout.MANIFEST).is_file() else where


def kept_versions(path: str | os.PathLike) -> list[int]:
    """The earlier versions kept in the local dataset at `path`, in increasing order."""
    root = home(path) / layout.VERSIONS
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if _NUMBER.fullmatch(n) and (root / n / layout.MANIFEST).is_file())
