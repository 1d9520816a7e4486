"""`neurocodec convert --input`: what the user names, as the files to convert, and their format.

Local files and NWB-Zarr folders are taken as named, glob patterns expanded; a directory that is
not an NWB-Zarr folder stands for the .nwb and .npz files and NWB-Zarr folders found in it and
below it (hidden ones left out), in path order; URLs are NWB files read in place. Errors are
`CommandLineError`s naming the flag and the file.
"""

from __future__ import annotations

import glob
import os
import zipfile
from pathlib import Path

import numpy as np

from neurocodec.cli.options import CommandLineError
from neurocodec.nwb.source import ZARR_MARKERS, URLPath
from neurocodec.storage.location import file_url_path, is_url

FORMATS = ("nwb", "npz")


def input_paths(patterns: list[str]) -> list[Path | URLPath]:
    """--input: local files and NWB-Zarr folders (glob patterns expanded, directories searched),
    and URLs (s3://, https://, ...: NWB files read in place, taken as given: `?` and `*` may be
    part of a URL)."""
    paths: list[Path | URLPath] = []
    for pattern in patterns:
        if is_url(pattern) and file_url_path(pattern) is None:
            paths.append(URLPath(pattern))
            continue
        pattern = str(file_url_path(pattern) or pattern)
        matches = [pattern] if Path(pattern).exists() else sorted(glob.glob(pattern))
        if not matches:
            raise CommandLineError(f"--input {pattern}: no such file or directory, and no file matches it as a "
                                   "pattern")
        for match in map(Path, matches):
            paths.extend(_in_directory(match) if match.is_dir() and not is_zarr_folder(match) else [match])
    return paths


def is_zarr_folder(path: Path) -> bool:
    """True for a local folder with Zarr metadata at its top (an NWB-Zarr file)."""
    return any((path / marker).is_file() for marker in ZARR_MARKERS)


def _in_directory(directory: Path) -> list[Path]:
    """The .nwb and .npz files and NWB-Zarr folders in `directory` and below, in path order."""
    found = []
    for top, dirs, files in os.walk(directory):
        here = Path(top)
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if is_zarr_folder(here / name):
                found.append(here / name)  # a file: not searched inside
            else:
                keep.append(name)
        dirs[:] = keep
        found.extend(here / name for name in files
                     if not name.startswith(".") and Path(name).suffix.lower() in (".nwb", ".npz"))
    if not found:
        raise CommandLineError(f"--input {directory}: a directory with no .nwb or .npz file and no NWB-Zarr folder "
                               f"in it or below it (NWB-Zarr folders have {' or '.join(ZARR_MARKERS)} at their top); "
                               "name the files to convert")
    return sorted(found)


def input_format(given: str | None, paths: list[Path | URLPath]) -> str:
    """--format, or the one format the inputs' extensions say (an NWB-Zarr folder is NWB whatever
    its name); CommandLineError saying what to do when they say none or several."""
    if given:
        return given
    kinds = {path: "nwb" if isinstance(path, Path) and path.is_dir() else path.suffix.lower().lstrip(".")
             for path in paths}
    formats = set(kinds.values())
    if len(formats) == 1 and formats <= set(FORMATS):
        return formats.pop()
    unknown = [str(path) for path, kind in kinds.items() if kind not in FORMATS]
    if unknown:
        raise CommandLineError(f"--input {unknown[0]}: cannot tell its format from its name (not .nwb, .npz or an "
                               "NWB-Zarr folder); pass --format nwb or --format npz")
    raise CommandLineError("--input names both NWB and .npz inputs: convert each format with a command of its own "
                           "(--append adds to a dataset)")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one .npz file, row i of every array being sample i; CommandLineError
    naming the file when it is not a readable npz (numpy reads a non-zip file as a pickle or a
    single .npy instead, and says so confusingly) or its arrays differ in their number of rows."""
    if not zipfile.is_zipfile(path):
        raise CommandLineError(f"--input {path}: not an .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CommandLineError(f"--input {path}: cannot read as .npz ({exc})") from None
    rows = {name: (len(array) if array.ndim else None) for name, array in arrays.items()}
    if None in rows.values() or len(set(rows.values())) > 1:
        counts = ", ".join(f"{name} {'is a scalar' if n is None else f'has {n:,}'}" for name, n in rows.items())
        raise CommandLineError(f"--input {path}: its arrays must have one row per sample, the same number each "
                               f"(their first dimension): {counts}")
    return arrays
