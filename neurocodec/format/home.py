"""Where a local dataset keeps its manifest and the files made for it: its home.

A dataset written today keeps them in the hidden directory `.neurocodec/`
(`.neurocodec/dataset_metadata.json`, `.neurocodec/splits/`, `.neurocodec/stats/`,
`.neurocodec/versions/<n>/`, a conversion's report), so that only its shards are visible.
A dataset written before that keeps them at its top (`dataset_metadata.json`, `splits/`, ...);
it is read, appended to and given splits and statistics where it keeps them. When both
manifests exist (a replacement of such a dataset interrupted after its switch) the hidden
one is the dataset's: it was written last.
"""

from __future__ import annotations

import os
from pathlib import Path

from neurocodec.format import layout


def home(path: str | os.PathLike) -> Path:
    """The directory of the local dataset at `path` that holds its manifest and the files made
    for it: `path/.neurocodec`, or `path` itself for a dataset in the top-level layout. A
    directory without a dataset gets `path/.neurocodec`, where a writer puts one."""
    root = Path(path)
    hidden = root / layout.HOME
    if (hidden / layout.MANIFEST).is_file() or not (root / layout.MANIFEST).is_file():
        return hidden
    return root


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest file of the local dataset at `path` (see `home`)."""
    return home(path) / layout.MANIFEST


def has_manifest(path: str | os.PathLike) -> bool:
    """True if the local directory `path` holds a dataset manifest, in either layout."""
    root = Path(path)
    return (root / layout.HOME / layout.MANIFEST).is_file() or (root / layout.MANIFEST).is_file()


def is_top_level(path: str | os.PathLike) -> bool:
    """True for a local dataset in the layout written before `.neurocodec/` (manifest at the top)."""
    return home(path) == Path(path)


def manifest_label(path: str | os.PathLike) -> str:
    """How errors name the manifest of the dataset at `path`: its file for a local directory
    (a `Path`), `<url>/.neurocodec/dataset_metadata.json` for a URL (a `str`)."""
    if isinstance(path, Path):
        return str(manifest_path(path))
    return f"{path}/{layout.MANIFEST_PATH}"
