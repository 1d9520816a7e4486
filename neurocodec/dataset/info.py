"""`ShardedDatasetInfo`: what a dataset holds, from its manifest, and whether its shard files are
all there with the sizes it lists (by their sizes alone: no shard is read)."""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, TextIO

from neurocodec.format.shard_table import total_bytes
from neurocodec.dataset.file_check import FileCheck, check_files
from neurocodec.dataset.reader import is_top_level_layout, read_manifest
from neurocodec.storage.location import dataset_path


class ShardedDatasetInfo:
    """Summary of the dataset at `path` (a directory, or an fsspec URL opened with
    `storage_options`): samples, shards, modalities, shapes, dtypes, bytes. A manifest declaring
    members above `max_member_bytes` (see `Dataset`) is refused. `check_files()` says whether
    every shard and index file is present with the size the manifest lists (one `stat` per file,
    or one listing of a URL dataset; `neurocodec verify` reads their bytes)."""

    def __init__(self, path: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
                 max_member_bytes: int | None = None) -> None:
        self.path = dataset_path(path)
        self.storage_options = storage_options
        self.manifest = read_manifest(self.path, storage_options=storage_options, max_member_bytes=max_member_bytes)
        self._files: FileCheck | None = None

    def check_files(self) -> FileCheck:
        """Whether the shard and index files are all present with the manifest's sizes (looked at
        once, on the first call); DatasetError if a URL dataset cannot be listed."""
        if self._files is None:
            self._files = check_files(self.path, self.manifest, self.storage_options)
        return self._files

    def get_summary(self) -> dict[str, Any]:
        """A dict with total_samples, total_shards, modalities, shapes, dtypes, codecs, bytes,
        compression, format_version, fields (kinds), the writer's settings, the dataset's
        version (1 until samples are appended; docs/versions.md), its `layout` ("hidden", or
        "top-level" for datasets written before `.neurocodec/`) and `files`: the result of
        `check_files()` (`ok`, `shards`, `bad_shards`, `problems`, `text`).

        Shapes list None for axes whose length varies between samples.
        """
        m = self.manifest
        mods = m.modalities
        return {
            "path": str(self.path),
            "format_version": m.format_version,
            "total_samples": m.total_samples,
            "total_shards": len(m.shards),
            "modalities": [f.name for f in mods],
            "shapes": {f.name: None if f.shape is None else list(f.shape) for f in mods},
            "dtypes": {f.name: f.dtype for f in mods},
            "kinds": {f.name: f.kind for f in mods},
            "codecs": {f.name: dict(f.codec) for f in mods},
            "plugins": {f.name: f"{f.plugin} {f.plugin_version}".strip() for f in mods},
            "bytes": total_bytes(m.shards),
            "compression": m.compression,
            "writer": dict(m.writer),
            "version": m.version,
            "layout": "top-level" if is_top_level_layout(self.path, self.storage_options) else "hidden",
            "files": self.check_files().to_dict(),
        }

    def print_summary(self, file: TextIO | None = None) -> None:
        """Print a human-readable summary (to stdout by default)."""
        out = file or sys.stdout
        s = self.get_summary()
        print(f"Dataset: {s['path']}  (neurocodec format v{s['format_version']})", file=out)
        print(f"  samples: {s['total_samples']:,}  shards: {s['total_shards']:,}  "
              f"size: {_human(s['bytes'])}  compression: {s['compression']}", file=out)
        print(f"  files: {s['files']['text']}", file=out)
        if s["layout"] == "top-level":
            print("  layout: top-level (written before .neurocodec/; docs/format.md, section 2): Hugging Face "
                  "datasets and Ray Data cannot read this directory", file=out)
        if s["version"] > 1:
            print(f"  version: {s['version']} (samples appended; earlier versions readable with version=N)", file=out)
        print("  modalities:", file=out)
        for name in s["modalities"]:
            shape = s["shapes"][name]
            shape_text = "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")" if shape is not None else "-"
            print(f"    {name:<16} {s['kinds'][name]:<6} {s['dtypes'][name] or '-':<6} {shape_text:<18} "
                  f"codec {s['codecs'][name]['id']} ({s['plugins'][name]})", file=out)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
