"""Versions of a dataset that samples were appended to: where each keeps its files.

Version 1 is a dataset as first written. Every append (`neurocodec.dataset.append`) adds shards
and makes the next version; the manifest of version n, and the splits and statistics made for
it, are kept under `versions/<n>/`, while the current version's live at the top of the
dataset, as always. Shards are shared: version n's manifest lists the first shards of every
later one, and shards are never rewritten, so version n reads exactly the samples it held.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from neurocodec.format import layout

_NUMBER = re.compile(r"[1-9][0-9]{0,6}")


def version_files(path: str | os.PathLike, version: int) -> Path:
    """The directory holding version `version`'s manifest, splits and statistics: the dataset
    itself for the current version, `versions/<n>/` for an earlier one (local datasets)."""
    kept = Path(path) / layout.version_dir(version)
    return kept if (kept / layout.MANIFEST).is_file() else Path(path)


def kept_versions(path: str | os.PathLike) -> list[int]:
    """The earlier versions kept in the local dataset at `path`, in increasing order."""
    root = Path(path) / layout.VERSIONS
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if _NUMBER.fullmatch(n) and (root / n / layout.MANIFEST).is_file())
