"""Session-level facts of an NWB file: ids, trials, and a stable key for the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from neurocodec.nwb.context import IntervalIndex
from neurocodec.nwb.source import URLPath


def session_key(path: Path | URLPath) -> str:
    """A short, stable, unique key for a source (a file, an NWB-Zarr folder or a URL): its stem
    plus a hash of its absolute path or of its URL (`ses-1-3fa2c9e0`)."""
    where = str(path) if isinstance(path, URLPath) else str(path.resolve())
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}"


def session_info(nwbfile: Any, path: Path | URLPath) -> dict[str, Any]:
    """Identifier, session and subject ids, start time and description, JSON-ready; `file` is
    the source's file or folder name (the last segment of a URL)."""
    subject = getattr(nwbfile, "subject", None)
    start = getattr(nwbfile, "session_start_time", None)
    return {
        "file": path.name,
        "identifier": str(nwbfile.identifier),
        "session_id": str(nwbfile.session_id) if nwbfile.session_id is not None else path.stem,
        "subject_id": None if subject is None or subject.subject_id is None else str(subject.subject_id),
        "session_start_time": None if start is None else start.isoformat(),
        "session_description": str(nwbfile.session_description or ""),
    }


class Trials:
    """The trials table's ids and start/stop times, read once (a small table), for per-window lookup."""

    def __init__(self, nwbfile: Any) -> None:
        table = getattr(nwbfile, "trials", None)
        if table is None or len(table) == 0:
            self.ids = np.zeros(0, dtype=np.int64)
            self.index = IntervalIndex(np.zeros(0), np.zeros(0))
            return
        self.ids = np.asarray(table.id[:], dtype=np.int64)
        self.index = IntervalIndex(table["start_time"][:], table["stop_time"][:])

    def overlapping(self, start: float, stop: float) -> list[int]:
        """Ids of the trials that overlap [start, stop), by start time."""
        return self.ids[self.index.overlapping(start, stop)].tolist()
