"""Load-time windows in the loaders: the user's window settings, and reading one window.

With `window_ms=` (or `window_bins=`) a loader over a chunked dataset (converted with
`chunk_seconds=`) reads windows instead of stored samples. Epoch `e`'s samples are the window
slots of `WindowSlots(timeline, window, seed, e, mode)` (see `neurocodec.loader.window_slots`),
numbered 0..n-1 session after session; the epoch order permutes them exactly as it permutes
stored samples, in chunks of consecutive numbers (docs/order.md), so neighbouring windows of a
session, reading neighbouring chunks, mostly stay together. Everything that holds for stored samples holds for
slots: the order, the state, resuming with other worker counts or world sizes, the transforms'
generators (seeded by the slot number).

A window is cut from the chunk it starts in and, when it runs on, the next one: each field by its
codec (`Codec.windowed`), the metadata joined here (`window_metadata`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import OrderedDict
from fractions import Fraction
from typing import Any, Mapping

import attrs
import numpy as np

from neurocodec.dataset.reader import Dataset
from neurocodec.errors import NeurocodecError, ShardError
from neurocodec.format import layout
from neurocodec.loader.source import SampleSource
from neurocodec.process import PerProcess
from neurocodec.loader.window_slots import MODES, Located, Timeline, WindowSlots, window_length_bins
from neurocodec.plugin.windowing import WindowGrid

CACHED_EPOCHS = 2


@attrs.frozen(eq=False)
class WindowSettings:
    """Validated window settings of a loader: the dataset's timeline, the window in bins, the
    mode, and a fingerprint of both that goes into the loader state."""

    timeline: Timeline
    window_bins: int
    mode: str
    timeline_sha256: str

    @classmethod
    def choose(cls, manifest: Any, *, window_ms: Any, window_bins: Any, window_mode: Any,
               shuffle: bool) -> "WindowSettings | None":
        """The settings a loader was given, or None for stored samples. ValueError in the
        words of the loader's arguments; DatasetError for a dataset without a timeline."""
        if window_ms is None and window_bins is None:
            if window_mode is not None:
                raise ValueError("window_mode applies to load-time windows: give window_ms= or window_bins= too")
            return None
        if window_ms is not None and window_bins is not None:
            raise ValueError("give window_ms= or window_bins=, not both")
        mode = window_mode if window_mode is not None else ("jitter" if shuffle else "grid")
        if mode not in MODES:
            raise ValueError(f"window_mode must be one of {MODES}, got {window_mode!r}")
        timeline = Timeline.from_manifest(manifest)
        if window_ms is not None:
            window_bins = _ms_to_bins(window_ms, timeline)
        try:
            bins = window_length_bins(timeline, None, window_bins)
        except ValueError as exc:
            raise ValueError(f"window_ms={window_ms!r}: {exc}" if window_ms is not None else str(exc)) from None
        doc = json.dumps(manifest.extra["timeline"], sort_keys=True, separators=(",", ":"))
        return cls(timeline, bins, mode, hashlib.sha256(doc.encode()).hexdigest())

    @property
    def grid(self) -> WindowGrid:
        """Window and chunk lengths in the conversion's bins, for the codecs."""
        bin_ms = Fraction(repr(self.timeline.bin_s)) * 1000  # the bin size as the manifest prints it
        return WindowGrid(self.window_bins, self.timeline.chunk_bins, bin_ms)

    def describe(self) -> str:
        """What the loader state records: mode, window in bins, the timeline's SHA-256."""
        return f"{self.mode}:{self.window_bins}:{self.timeline_sha256}"


def _ms_to_bins(window_ms: Any, timeline: Timeline) -> int:
    if isinstance(window_ms, bool) or not isinstance(window_ms, (int, float)) or not math.isfinite(window_ms) \
            or window_ms <= 0:
        raise ValueError(f"window_ms must be a positive number of milliseconds, got {window_ms!r}")
    bin_ms = timeline.bin_s * 1000
    bins = round(window_ms / bin_ms)
    if bins < 1 or abs(bins * bin_ms - window_ms) > 1e-6 * bin_ms:
        raise ValueError(f"window_ms={window_ms!r} is not a whole number of the dataset's {bin_ms:g} ms bins")
    return bins


class SlotCache:
    """The slots of the last few epochs (building them hashes every session once), inside a
    split's time `ranges` when given."""

    def __init__(self, settings: WindowSettings, seed: int, ranges: Mapping[str, Any] | None = None) -> None:
        self.settings, self.seed, self.ranges = settings, seed, ranges
        self._slots: dict[int, WindowSlots] = {}

    def __call__(self, epoch: int) -> WindowSlots:
        slots = self._slots.get(epoch)
        if slots is None:
            s = self.settings
            slots = WindowSlots(s.timeline, window_bins=s.window_bins, seed=self.seed, epoch=epoch, mode=s.mode,
                                ranges=self.ranges)
            if len(self._slots) >= CACHED_EPOCHS:
                self._slots.pop(next(iter(self._slots)))
            self._slots[epoch] = slots
        return slots

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "seed": self.seed, "ranges": self.ranges}  # workers build their own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"], state["seed"], state["ranges"])


CHUNK_CACHE_BYTES = 128 << 20
"""The most bytes of read chunks a loader process keeps for the next windows that read them (a
chunk of 10 s holds about ten 1 s windows, which an epoch's order spreads over its shuffle
buffer): their stored bytes and the arrays parsed from them, counted as the chunk is cached."""


class WindowSource(SampleSource):
    """Reads window slots (by number, in an epoch) instead of stored samples: the chunks each
    lies in, cut field by field, with joined metadata. Errors name the window and its chunks.
    Chunks read are kept, least recently used first out, up to CHUNK_CACHE_BYTES per process."""

    owned = False  # cached chunks: their arrays stay read-only, and windows cut from them are copied into tensors
    reads_stored = False  # an id is a window slot, not a stored sample

    def __init__(self, path: Any, *, slots: SlotCache, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.slots = slots
        self._chunks: PerProcess[ChunkCache] = PerProcess()

    def read_sample(self, ds: Dataset, sample_id: int) -> dict[str, Any]:
        """The chunk stored as sample `sample_id`, from this process's cache when it holds it."""
        cache = self._chunks.get(ChunkCache)
        chunk = cache.get(sample_id)
        if chunk is None:
            chunk = super().read_sample(ds, sample_id)
            for value in chunk.values():
                if isinstance(value, np.ndarray):
                    # Kept for later windows: one cut as a view of it must not be writable (a
                    # decoder's new array, a widened integer chunk, would be), or the tensor
                    # made of it would share the cache's memory (see `to_tensor`).
                    value.flags.writeable = False
            cache.put(sample_id, chunk)
        return chunk

    def _window_grid(self) -> WindowGrid:
        return self.slots.settings.grid

    def _prepare(self, ids: np.ndarray, epoch: int) -> tuple[int, Located]:
        return epoch, self.slots(epoch).locate(ids)

    def _what(self, i: int, sample_id: int, context: Any) -> str:
        epoch, where = context
        chunks = [int(where.sample[i])] + ([int(where.sample[i]) + 1] if where.crosses[i] else [])
        return f"window {sample_id} of epoch {epoch} (stored samples {chunks})"

    def _stored_id(self, i: int, sample_id: int, context: Any) -> int:
        return int(context[1].sample[i])

    def _read_one(self, ds: Dataset, i: int, sample_id: int, context: Any) -> dict[str, Any]:
        epoch, where = context
        first = int(where.sample[i])
        chunks = [self.read_sample(ds, first)]
        if where.crosses[i]:
            chunks.append(self.read_sample(ds, first + 1))
        offset = int(where.offset_bins[i])
        self._check_chunks(chunks, first, self.slots.settings.timeline.keys[int(where.session[i])],
                           float(where.start_s[i]) - offset * self.slots.settings.timeline.bin_s)
        window: dict[str, Any] = {"__key__": f"{chunks[0]['__key__']}+{offset}"}
        for field, cut in zip(ds.manifest.fields, ds.cuts):
            if cut is None:
                continue
            try:
                window[field.name] = cut([c[field.name] for c in chunks], offset)
            except NeurocodecError:
                raise
            except Exception as exc:  # chunks at odds with each other or the manifest, a damaged block
                # the window and its chunks are named by SampleSource.read
                raise ShardError(f"field {field.name!r}: {type(exc).__name__}: {exc}") from None
        window[layout.METADATA_FIELD] = window_metadata(
            [c[layout.METADATA_FIELD] for c in chunks], float(where.start_s[i]), float(where.stop_s[i]),
            {"slot": sample_id, "epoch": epoch, "mode": self.slots.settings.mode,
             "chunks": [first + n for n in range(len(chunks))], "offset_bins": offset})
        return window


    @staticmethod
    def _check_chunks(chunks: list[dict[str, Any]], first: int, session: str, start: float) -> None:
        """The stored samples must be the chunks the timeline says (a crafted or stale timeline
        would otherwise cut windows across sessions): ShardError naming the sample."""
        expected = [(session, start)]
        if len(chunks) > 1:
            expected.append((session, _time(chunks[0], "stop_time")))
        for n, (chunk, (key, at)) in enumerate(zip(chunks, expected)):
            meta = chunk.get(layout.METADATA_FIELD)
            got = (meta.get("session") if isinstance(meta, Mapping) else None, _time(chunk, "start_time"))
            if got[0] != key or got[1] is None or at is None or abs(got[1] - at) > 1e-6:
                raise ShardError(f"stored sample {first + n} holds session {got[0]!r} from {got[1]!r} s; the "
                                 f"manifest's timeline says session {key!r} from {at!r} s (timeline and shards "
                                 "do not match)", sample=first + n)


def _time(chunk: Mapping[str, Any], name: str) -> float | None:
    meta = chunk.get(layout.METADATA_FIELD)
    value = meta.get(name) if isinstance(meta, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ChunkCache:
    """Chunks by stored sample id, least recently used first out, within CHUNK_CACHE_BYTES."""

    def __init__(self, limit: int = CHUNK_CACHE_BYTES) -> None:
        self.limit, self.used = limit, 0
        self._entries: OrderedDict[int, tuple[dict[str, Any], int]] = OrderedDict()

    def get(self, sample_id: int) -> dict[str, Any] | None:
        entry = self._entries.get(sample_id)
        if entry is None:
            return None
        self._entries.move_to_end(sample_id)
        return entry[0]

    def put(self, sample_id: int, chunk: dict[str, Any]) -> None:
        size = _footprint(chunk)
        if size > self.limit:
            return
        while self._entries and self.used + size > self.limit:
            self.used -= self._entries.popitem(last=False)[1][1]
        self._entries[sample_id] = (chunk, size)
        self.used += size


def _footprint(value: Any, seen: set[int] | None = None) -> int:
    """Bytes a chunk's values hold on to: the buffers of its arrays and memoryviews (each once:
    the payloads of one chunk are views of one read), walking tuples, lists, dicts and objects'
    attributes one level down."""
    seen = set() if seen is None else seen
    if isinstance(value, np.ndarray):
        base = value
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) in seen:
            return 0
        seen.add(id(base))
        return base.nbytes + (_footprint(base.base, seen) if base.base is not None else 0)
    if isinstance(value, memoryview):
        return _footprint(value.obj, seen) if isinstance(value.obj, np.ndarray) else value.nbytes
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_footprint(v, seen) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_footprint(v, seen) for v in value)
    attributes = getattr(value, "__dict__", None)
    return 0 if attributes is None else sum(_footprint(v, seen) for v in attributes.values())


SESSION_KEYS = ("session", "source_file", "session_id", "subject_id", "source")


def window_metadata(chunks: list[Mapping[str, Any]], start: float, stop: float,
                    window: Mapping[str, Any]) -> dict[str, Any]:
    """A window's metadata from its chunks': the session's keys, the window's own times, the
    interval rows of either chunk overlapping [start, stop) (once each, by start time), the
    trials overlapping it, the fields either chunk lacked, and `window` (slot, epoch, mode,
    chunks, offset)."""
    # copies: the chunks may be cached for the next windows, which a transform must not change
    meta = {key: copy.deepcopy(chunks[0][key]) for key in SESSION_KEYS if key in chunks[0]}
    meta.update(start_time=start, stop_time=stop)
    tables: dict[str, list[Any]] = {}
    for chunk in chunks:
        for table, rows in (chunk.get("intervals") or {}).items():
            kept = tables.setdefault(table, [])
            seen = {json.dumps(r, sort_keys=True) for r in kept}
            kept.extend(copy.deepcopy(r) for r in rows
                        if _overlaps(r, start, stop) and json.dumps(r, sort_keys=True) not in seen)
    for rows in tables.values():
        rows.sort(key=lambda r: r.get("start_time"))
    meta["intervals"] = tables
    if "trials" in tables:
        meta["trials"] = [r.get("id") for r in tables["trials"]]
    else:  # ids only: those of either chunk, in order (a superset of the window's)
        meta["trials"] = list(dict.fromkeys(t for c in chunks for t in c.get("trials", [])))
    truncated = {}
    for chunk in chunks:
        for table, count in (chunk.get("intervals_truncated") or {}).items():
            truncated[table] = max(truncated.get(table, 0), count)
    if truncated:
        meta["intervals_truncated"] = truncated
    meta["missing"] = list(dict.fromkeys(f for c in chunks for f in c.get("missing", [])))
    meta["window"] = dict(window)
    return meta


def _overlaps(row: Any, start: float, stop: float) -> bool:
    """Whether an interval row overlaps [start, stop) (a row without both times overlaps nothing)."""
    if not isinstance(row, Mapping):
        return False
    a, b = row.get("start_time"), row.get("stop_time")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    return a < stop and b > start
