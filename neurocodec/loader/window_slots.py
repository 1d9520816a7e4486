"""Load-time windows: an epoch's window slots over a chunked dataset, as a pure function.

A dataset converted with `chunk_seconds=` (or any conversion without overlap) holds each session
as consecutive chunks, listed in `manifest.extra["timeline"]` (see docs and
`neurocodec.nwb.timeline`). A *stretch* is a maximal run of chunks where each chunk's stop is the
next one's start; sessions and gaps (missing windows) separate stretches. All arithmetic is in
whole bins of the conversion (`bin_s`): a chunk is `C` bins, a window `L` bins (`L <= C`).

An epoch's slots, for (seed, epoch, mode):

- every session gets a phase `p` bins, `0 <= p < L`: 0 in mode "grid" (evaluation: windows at
  the stretch start plus multiples of the window, absolute times to stitch predictions), and in
  mode "jitter" `floor(u * L)` with `u` a 64-bit word of `SeedSequence([seed, epoch, 3, *sha256
  (session key)])`: a pure function of those (no Python hash, no clock, the same in every
  process, independent of which other sessions the dataset holds);
- in every stretch of `m` chunks, windows start at `p + k*L` bins from the stretch start for
  `k = 0 .. count-1`, `count = max(0, (m*C - p) // L)` (closed form). Windows never cross a
  session or a gap; a window may run from one chunk into the next (`crosses`), never further.
- slots are numbered session by session (timeline order: by first sample), stretch by stretch,
  `k` ascending. Slot -> (stretch, k) is one binary search in the prefix sums of the counts; a
  window then lies in chunk `(p + k*L) // C` of the stretch at offset `(p + k*L) % C` bins.

Coverage, exactly: in a stretch [S, E) an epoch's windows tile [S + p*b, S + p*b + count*L*b)
once (disjoint, touching); the head [S, S + p*b) (shorter than a window) and the tail (shorter
than a window) are not read that epoch. In grid mode only the tail is left out. Every point of
[S + L*b, E - L*b) is covered in every epoch exactly once; points nearer a stretch edge are
covered in the epochs whose phase reaches them.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.errors import DatasetError

MODES = ("grid", "jitter")
PHASE_STREAM = 3
"""Third seed word of the phase generator: apart from the epoch order's (0, 1) and the transforms' (2)."""
TOLERANCE_BINS = 1e-6
"""Times closer than this many bins are equal (float rounding of recorded times, as in nwb.windows)."""


@attrs.frozen(eq=False)
class Timeline:
    """A chunked dataset's timeline, validated: sessions in sample order, their chunks concatenated.

    Session `s` (key `keys[s]`) owns chunks `offsets[s] .. offsets[s+1]-1` of `starts`/`stops`
    (seconds), stored as samples `first_samples[s]`, `first_samples[s] + 1`, ...
    """

    chunk_s: float
    bin_s: float
    keys: tuple[str, ...]
    first_samples: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    stops: np.ndarray

    @property
    def chunk_bins(self) -> int:
        """Bins per chunk."""
        return round(self.chunk_s / self.bin_s)

    @classmethod
    def from_manifest(cls, manifest: Any) -> "Timeline":
        """The timeline of a manifest (`Manifest` or its dict); DatasetError if it has none or it is malformed."""
        extra = manifest.get("extra", {}) if isinstance(manifest, Mapping) else manifest.extra
        total = manifest.get("total_samples") if isinstance(manifest, Mapping) else manifest.total_samples
        if not isinstance(extra, Mapping) or "timeline" not in extra:
            raise DatasetError("the dataset has no timeline: load-time windows need a dataset converted with "
                               "chunk_seconds= (or overlap=0)")
        return cls.from_dict(extra["timeline"], total_samples=total)

    @classmethod
    def from_dict(cls, doc: Any, total_samples: int | None = None) -> "Timeline":
        """Parse and check `extra["timeline"]` (untrusted JSON): DatasetError saying what is wrong."""
        if not isinstance(doc, Mapping) or not isinstance(doc.get("sessions"), Mapping):
            raise DatasetError("timeline: not an object with 'sessions'")
        chunk_s, bin_s = _positive(doc.get("chunk_s"), "chunk_s"), _positive(doc.get("bin_s"), "bin_s")
        bins = round(chunk_s / bin_s)
        if bins < 1 or abs(bins * bin_s - chunk_s) > TOLERANCE_BINS * bin_s:
            raise DatasetError(f"timeline: chunk_s {chunk_s} is not a whole number of {bin_s} s bins")
        rows = sorted((_session(key, record, chunk_s, bin_s) for key, record in doc["sessions"].items()),
                      key=lambda row: row[1])
        keys = tuple(row[0] for row in rows)
        firsts = np.array([row[1] for row in rows], dtype=np.int64)
        counts = np.array([len(row[2]) for row in rows], dtype=np.int64)
        ends = firsts + counts
        if len(rows) > 1 and np.any(firsts[1:] < ends[:-1]):
            raise DatasetError("timeline: two sessions claim the same samples")
        if total_samples is not None and len(rows) and int(ends.max()) > total_samples:
            raise DatasetError(f"timeline: chunks reach sample {int(ends.max()) - 1}, the dataset has {total_samples}")
        chunks = np.concatenate([row[2] for row in rows]) if rows else np.zeros((0, 2))
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        return cls(chunk_s, bin_s, keys, firsts, offsets, chunks[:, 0].copy(), chunks[:, 1].copy())


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DatasetError(f"timeline: {name} must be a positive number, got {value!r}")
    return float(value)


def _session(key: Any, record: Any, chunk_s: float, bin_s: float) -> tuple[str, int, np.ndarray]:
    """(key, first sample, chunks (n, 2)) of one session record, checked."""
    if not isinstance(record, Mapping):
        raise DatasetError(f"timeline: session {key!r} is not an object")
    first = record.get("first_sample")
    if type(first) is not int or first < 0:
        raise DatasetError(f"timeline: session {key!r} has first_sample {first!r}, not a non-negative integer")
    try:
        chunks = np.asarray(record.get("chunks"), dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"timeline: session {key!r}: chunks are not [start, stop] pairs of numbers") from None
    if chunks.ndim != 2 or chunks.shape[1] != 2 or len(chunks) == 0 or not np.isfinite(chunks).all():
        raise DatasetError(f"timeline: session {key!r}: chunks must be a non-empty list of finite [start, stop]")
    tol = TOLERANCE_BINS * bin_s
    if np.any(np.abs(chunks[:, 1] - chunks[:, 0] - chunk_s) > tol):
        raise DatasetError(f"timeline: session {key!r} has a chunk not {chunk_s} s long")
    if np.any(chunks[1:, 0] < chunks[:-1, 1] - tol):
        raise DatasetError(f"timeline: session {key!r} has chunks out of time order or overlapping")
    return str(key), first, chunks


def session_phase(key: str, seed: int, epoch: int, window_bins: int) -> int:
    """The jitter phase in bins, in [0, window_bins), of session `key` for (seed, epoch): exact
    integer arithmetic on one 64-bit word of a SeedSequence keyed by those values."""
    digest = hashlib.sha256(key.encode("utf8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    word = int(np.random.SeedSequence([seed, epoch, PHASE_STREAM, *words]).generate_state(1, np.uint64)[0])
    return (word * window_bins) >> 64


@attrs.frozen(eq=False)
class Located:
    """Where slots lie, one entry per slot asked for (arrays; `session` indexes `Timeline.keys`).

    `sample`: the global index of the chunk the window starts in; `offset_bins`: where in it;
    `crosses`: the window runs on into the next chunk (sample + 1, same stretch); `start_s`,
    `stop_s`: the window's absolute times; `stretch`, `k`: its stretch and rank in it.
    """

    session: np.ndarray
    stretch: np.ndarray
    k: np.ndarray
    sample: np.ndarray
    offset_bins: np.ndarray
    crosses: np.ndarray
    start_s: np.ndarray
    stop_s: np.ndarray


class WindowSlots:
    """The window slots of one epoch (see the module documentation); `len()` slots, `locate(n)`."""

    def __init__(self, timeline: Timeline, *, window_s: float | None = None, window_bins: int | None = None,
                 seed: int = 0, epoch: int = 0, mode: str = "jitter",
                 ranges: Mapping[str, Sequence[Sequence[float]]] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if type(seed) is not int or type(epoch) is not int or seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be non-negative integers, got {seed!r} and {epoch!r}")
        self.timeline, self.seed, self.epoch, self.mode = timeline, seed, epoch, mode
        self.window_bins = window_length_bins(timeline, window_s, window_bins)
        self.phases = np.array([0 if mode == "grid" else session_phase(key, seed, epoch, self.window_bins)
                                for key in timeline.keys], dtype=np.int64)
        self._stretches(ranges)

    def _stretches(self, ranges: Mapping[str, Sequence[Sequence[float]]] | None) -> None:
        """Stretch arrays (first chunk, bins into it where the stretch starts, length in bins,
        session) and the slot prefix sums, vectorised; with `ranges`, each stretch cut to them."""
        t, n = self.timeline, len(self.timeline.starts)
        boundary = np.ones(n, dtype=bool)
        boundary[1:] = t.starts[1:] - t.stops[:-1] > TOLERANCE_BINS * t.bin_s
        boundary[t.offsets[:-1][t.offsets[:-1] < n]] = True  # every session starts a stretch
        first = np.flatnonzero(boundary).astype(np.int64)
        chunks = np.diff(np.append(first, n)).astype(np.int64)
        session = (np.searchsorted(t.offsets, first, side="right") - 1).astype(np.int64)
        start, length = np.zeros(len(first), dtype=np.int64), chunks * t.chunk_bins
        if ranges is not None:
            first, start, length, session = self._within(ranges, first, length, session)
        self.stretch_first, self.stretch_start, self.stretch_bins = first, start, length
        self.stretch_session = session
        self.stretch_chunks = -(-(start + length) // t.chunk_bins)
        phase = self.phases[self.stretch_session]
        self.counts = np.maximum(0, (length - phase) // self.window_bins)
        self.slot_first = np.cumsum(self.counts) - self.counts  # first slot of each stretch
        self._nonempty = np.flatnonzero(self.counts)  # searched: a stretch with no slot owns none
        self._nonempty_first = self.slot_first[self._nonempty]

    def __len__(self) -> int:
        return int(self.counts.sum())

    def session_counts(self) -> np.ndarray:
        """Slots per session (timeline order): the sizes an epoch order permutes, as shard sizes are today."""
        return np.bincount(self.stretch_session, weights=self.counts,
                           minlength=len(self.timeline.keys)).astype(np.int64)

    def locate(self, slots: Any) -> Located:
        """Where slots `slots` (an int or array of ints in [0, len)) lie: O(log stretches) each, vectorised."""
        slots = np.atleast_1d(np.asarray(slots, dtype=np.int64))
        if len(slots) and (slots.min() < 0 or slots.max() >= len(self)):
            raise IndexError(f"slot out of range: the epoch has {len(self)} slots")
        t, size = self.timeline, self.window_bins
        stretch = self._nonempty[np.searchsorted(self._nonempty_first, slots, side="right") - 1]
        k = slots - self.slot_first[stretch]
        session = self.stretch_session[stretch]
        at = self.stretch_start[stretch] + self.phases[session] + k * size  # bins from its first chunk's start
        chunk = self.stretch_first[stretch] + at // t.chunk_bins
        offset = at % t.chunk_bins
        start = t.starts[chunk] + offset * t.bin_s
        return Located(session=session, stretch=stretch, k=k,
                       sample=t.first_samples[session] + chunk - t.offsets[session],
                       offset_bins=offset, crosses=offset + size > t.chunk_bins,
                       start_s=start, stop_s=start + size * t.bin_s)

    def covered(self) -> np.ndarray:
        """Per stretch, [from_s, to_s): the time its windows tile this epoch (empty when from == to)."""
        t = self.timeline
        start = t.starts[self.stretch_first] + (self.stretch_start + self.phases[self.stretch_session]) * t.bin_s
        return np.stack([start, start + self.counts * self.window_bins * t.bin_s], axis=1)

    def _within(self, ranges: Mapping[str, Sequence[Sequence[float]]], first: np.ndarray, length: np.ndarray,
                session: np.ndarray) -> tuple[np.ndarray, ...]:
        """The stretches cut to each session's `ranges` (seconds, a split's part): whole bins
        inside both, as (first chunk, start bins, length bins, session). One Python step per
        stretch and range, none per chunk."""
        t, tol = self.timeline, TOLERANCE_BINS
        out: list[tuple[int, int, int, int]] = []
        for f, m, s in zip(first.tolist(), length.tolist(), session.tolist()):
            origin = float(t.starts[f])
            for a, b in ranges.get(t.keys[s], ()):
                lo = max(0, math.ceil((a - origin) / t.bin_s - tol))
                hi = min(m, math.floor((b - origin) / t.bin_s + tol))
                if hi > lo:
                    out.append((f + lo // t.chunk_bins, lo % t.chunk_bins, hi - lo, s))
        columns = np.array(out, dtype=np.int64).reshape(-1, 4)
        return tuple(columns[:, i].copy() for i in range(4))


def window_length_bins(timeline: Timeline, window_s: float | None, window_bins: int | None) -> int:
    """The window length in bins from exactly one of `window_s`, `window_bins`; ValueError in plain
    words when it is not a whole number of the timeline's bins or is longer than a chunk."""
    if (window_s is None) == (window_bins is None):
        raise ValueError("give exactly one of window_s and window_bins")
    if window_s is not None:
        if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not window_s > 0:
            raise ValueError(f"window_s must be a positive number of seconds, got {window_s!r}")
        window_bins = round(window_s / timeline.bin_s)
        if window_bins < 1 or abs(window_bins * timeline.bin_s - window_s) > TOLERANCE_BINS * timeline.bin_s:
            raise ValueError(f"window_s {window_s!r} is not a whole number of the dataset's "
                             f"{timeline.bin_s!r} s bins")
    if type(window_bins) is not int or window_bins < 1:
        raise ValueError(f"window_bins must be a positive integer, got {window_bins!r}")
    if window_bins > timeline.chunk_bins:
        raise ValueError(f"a window of {window_bins} bins is longer than the dataset's chunks "
                         f"({timeline.chunk_bins} bins, {timeline.chunk_s} s): convert with longer chunks")
    return window_bins
