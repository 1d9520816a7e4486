"""The conversion report: `conversion-report.json` beside the dataset's manifest (in
`.neurocodec/`, `neurocodec.format.home`), written by `NWBToWebDatasetConverter.finalize()`
after the manifest.

It lists every file converted (windows written and skipped, the series chosen for each field)
and every file skipped with `on_error="skip"` and why, with the conversion settings, so a large
conversion never drops a file without a trace. It is not part of the dataset's content: readers
ignore it, and replacing the dataset replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from neurocodec.format import layout
from neurocodec.format.home import home
from neurocodec.fsutil import atomic_write_bytes
from neurocodec.storage.location import Location, is_remote

REPORT = "conversion-report.json"


def build_report(summary: Mapping[str, Any], parts: Mapping[str, Mapping[str, Any]],
                 series: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The report's content: the summary's totals, one entry per converted file (`parts`: its
    part summary, `series`: the object each field was read from), the skipped files."""
    return {
        "samples": summary["samples"], "shards": summary["shards"],
        "settings": dict(settings),
        "files": [{"file": file, "windows": part.get("windows"), "skipped_windows": part.get("skipped_windows"),
                   "series": series.get(file, {})} for file, part in parts.items()],
        "skipped_files": list(summary["skipped_files"]),
    }


def write_report(output_dir: Path | str, report: Mapping[str, Any], *, fsync: bool = True,
                 storage_options: Mapping[str, Any] | None = None) -> str:
    """Write `report` as REPORT beside the manifest of the dataset in `output_dir` (atomically;
    one PUT for a URL); return where."""
    data = (json.dumps(report, indent=1, sort_keys=True, default=str) + "\n").encode()
    if not is_remote(output_dir):
        target = home(output_dir) / REPORT
        atomic_write_bytes(target, data, fsync=fsync)
        return str(target)
    location = Location(output_dir, storage_options)
    name = f"{layout.HOME}/{REPORT}"  # a writer at a URL always writes the hidden layout
    location.fs.pipe_file(location.path(name), data)
    return location.url_of(name)
