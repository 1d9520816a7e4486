"""Helpers for the load-time window tests over ranks, workers and storage: a chunked dataset,
one record per window of a batch (its identity and digests of its values), streams of records.

A record holds the window's key, slot, epoch, session and start time and SHA-256 digests of its
LFP (the real channels only, as the batch mask says: padding depends on the batch's other rows),
spike counts and observation mask, so records from different processes compare exactly.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from neurocodec.dataset.reader import read_manifest
from neurocodec.loader.window_slots import Timeline, WindowSlots

sys.path.insert(0, str(Path(__file__).parent))
from nwbfiles import simple_session  # noqa: E402
from test_timeline import convert, holed_session  # noqa: E402

WINDOW_MS, WINDOW_BINS = 370, 37  # 10 ms bins; chunks of 0.5 s are 50 bins: windows cross chunk edges


def chunked_dataset(root: Path, shard_size: int = 4) -> Path:
    """Two simple sessions (3 s, 2.5 s) and one with a gap, in 0.5 s chunks: 16 chunks, 4 shards."""
    root.mkdir(parents=True, exist_ok=True)
    files = [simple_session(root / "a.nwb", seconds=3.0, seed=0),
             simple_session(root / "b.nwb", t0=50.25, seconds=2.5, seed=1),
             holed_session(root / "h.nwb", hole=(2.2, 3.1), seconds=4.0)]
    convert(root / "out", files, chunk_seconds=0.5, shard_size=shard_size, coverage="all")
    return root / "out"


def slot_counts(path: Path, seed: int, epochs: int, window_bins: int = WINDOW_BINS) -> list[int]:
    """Window slots of each jittered epoch, straight from the timeline."""
    timeline = Timeline.from_manifest(read_manifest(path))
    return [len(WindowSlots(timeline, window_bins=window_bins, seed=seed, epoch=e, mode="jitter"))
            for e in range(epochs)]


def digest(array: Any) -> str:
    """dtype, shape and bytes of an array, hashed."""
    array = np.ascontiguousarray(np.asarray(array))
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def records(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per window of a collated batch (JSON-ready)."""
    out = []
    for i, (key, meta) in enumerate(zip(batch["__key__"], batch["metadata"])):
        window = meta["window"]
        channels = batch["lfp_mask"][i].numpy()
        out.append({
            "key": key, "slot": window["slot"], "epoch": window["epoch"], "chunks": window["chunks"],
            "session": meta["session"], "start": meta["start_time"],
            "lfp": digest(batch["lfp"][i].numpy()[:, channels]),
            "spikes": digest(batch["spikes"][i].numpy()),
            "observed": digest(batch["spikes_observed"][i].numpy()),
        })
    return out


def epoch_records(loader: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records of one pass over `loader` (one epoch from its position), batch by batch."""
    return [records(batch) for batch in loader]


def run_epochs(loader: Any, until_epoch: int) -> list[dict[str, Any]]:
    """Records of every window `loader` hands out from its position until `until_epoch` starts."""
    out = []
    while loader.epoch < until_epoch:
        for batch in loader:
            out += records(batch)
    return out


def flat(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The records of batches, in order."""
    return [r for b in batches for r in b]
