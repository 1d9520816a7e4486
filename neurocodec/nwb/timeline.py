"""The sessions' timeline: which stored sample holds which stretch of each recording.

A conversion whose windows do not overlap (`overlap=0`, which `chunk_seconds=` implies) stores
each session as consecutive chunks. `finalize()` records, in `manifest.extra["timeline"]`:

    {"chunk_s": 10.0, "bin_s": 0.01,
     "sessions": {session_key: {"first_sample": n, "chunks": [[start_s, stop_s], ...]}}}

`first_sample` is the global index of the session's first chunk in the merged dataset; chunk `i`
of the session is sample `first_sample + i`, and chunks are in time order (a part writes its
windows in increasing start time and the merge keeps every part's samples in order). A gap is
where one chunk's stop is not the next one's start: windows skipped because a modality did not
cover them (`coverage="all"`), or a hole in a series' timestamps. The times are the samples'
own `start_time` / `stop_time` metadata, read back from the parts, so they are equal by
construction.

Conversions with overlapping windows get no timeline: their samples are not a partition of the
recording, so a loader cutting windows from them would read most bytes twice and would have to
choose between samples holding the same time; each window's metadata still holds its times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from neurocodec.dataset.metadata import sample_metadata as part_metadata
from neurocodec.errors import DatasetError
from neurocodec.plugin.registry import Registry


def is_chunked(sequence_length: int, step: int) -> bool:
    """Whether windows of `sequence_length` bins, `step` bins apart, tile the recording
    without overlap (the only conversions given a timeline)."""
    return step == sequence_length


def part_chunks(part_dir: str | Path, registry: Registry | None = None) -> tuple[str | None, list[list[float]]]:
    """(session key, [[start_s, stop_s], ...]) of a part's samples, in sample order, from each
    sample's metadata. DatasetError if the part holds more than one session or its windows are
    not in increasing time order (a timeline needs both)."""
    chunks: list[list[float]] = []
    key = None
    for meta in part_metadata(part_dir, registry):
        if key is not None and meta["session"] != key:
            raise DatasetError(f"{part_dir}: holds sessions {key!r} and {meta['session']!r}")
        key = meta["session"]
        chunks.append([float(meta["start_time"]), float(meta["stop_time"])])
    if any(b[0] < a[0] for a, b in zip(chunks, chunks[1:])):
        raise DatasetError(f"{part_dir}: windows are not in increasing start time")
    return key, chunks


def build_timeline(parts: Sequence[str | Path], chunk_s: float, bin_s: float,
                   registry: Registry | None = None) -> dict[str, Any]:
    """The timeline of the dataset merged from `parts` in this order (see the module doc)."""
    sessions: dict[str, Any] = {}
    first = 0
    for part in parts:
        key, chunks = part_chunks(part, registry)
        if key is None:
            continue
        if key in sessions:
            raise DatasetError(f"session {key!r} appears in two parts")
        sessions[key] = {"first_sample": first, "chunks": chunks}
        first += len(chunks)
    return {"chunk_s": float(chunk_s), "bin_s": float(bin_s), "sessions": sessions}
