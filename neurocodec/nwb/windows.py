"""Window and bin arithmetic shared by every NWB extractor.

A window is `sequence_length` bins of `bin_size` seconds; consecutive windows start
`step = round(sequence_length * (1 - overlap))` bins apart, so overlapping windows share exact
bins. Bin `k` of a window starting at `t0` covers the half-open `[t0 + k*b, t0 + (k+1)*b)`, up to
a tolerance of `BIN_EPS` bins for float rounding.

Modalities at other rates keep their native rate with a fixed sample count per window,
`n = round(duration * rate)`, and are always at least 2-D: (time, channels/dims), a 1-D series
giving (time, 1).

Series timed by a rate (and `starting_time` s): the `n` samples from the first at or after the
window's start, `ceil((t0 - s) * rate - eps)`. The window is available only if all `n` exist.

Series timed by timestamps (rate estimated from the median sample interval): a window
[t0, t1) holds exactly the samples whose timestamps lie in it (`t0 - EPS <= t < t1 - EPS`:
never one at or after its stop, never one before its start). Jitter makes that count `m`
differ from `n` now and then; the `m` samples are then resampled by rank to `n`: sample
`floor((k + 0.5) * m / n)` for k = 0..n-1 (`rank_resample`: the identity when m == n, one
sample repeated or dropped, evenly spread, per unit of difference). A window is unavailable
only where the series does not cover it: it starts before the first timestamp or ends after
the last one plus one interval, it holds no sample, or the recording has a real gap in it. A gap
lies between two consecutive samples `a < b` (among those from the one before the window to the
one after it) more than `GAP_TOLERANCE` median intervals apart; it is the time
`[a + interval, b)` that no sample stands for (each sample stands for one interval from its
timestamp, as the span [first, last + interval) of the series does), and exactly the windows
overlapping it are unavailable.

Series are read in blocks of about `BLOCK_BYTES` (or one window, if larger) with a forward
cursor (`BlockCursor`, `TimestampCursor`): windows arrive in increasing start order, so one
read per block replaces one small read per window, and physical units are applied once per
block. Memory stays bounded by one block; a window before the current block (a backwards
jump) simply reads a new block from there.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import numpy as np

EPS = 1e-9
BIN_EPS = 1e-6
"""Tolerance in bins: a spike within a millionth of a bin below an edge counts in the next bin.

Relative rather than absolute, because spike and window times of late sessions (t ~ 1e5 s)
carry rounding errors of ~1e-11 s, larger than 1e-9 of a 1 ms bin.
"""

GAP_TOLERANCE = 1.5
"""Two consecutive timestamps more than this many median intervals apart are a gap in the
recording: windows overlapping it are unavailable. Ordinary jitter stays well below it."""


@attrs.frozen(slots=True)
class WindowSpec:
    """Bin size (seconds), window length (bins) and step between windows (bins)."""

    bin_size: float
    sequence_length: int
    step: int

    @classmethod
    def from_user(cls, bin_size_ms: float, sequence_length: int, overlap: float) -> "WindowSpec":
        """Validate the guide's parameters and derive the integer step."""
        if not (isinstance(bin_size_ms, (int, float)) and bin_size_ms > 0 and math.isfinite(bin_size_ms)):
            raise ValueError(f"bin_size_ms must be a positive number, got {bin_size_ms!r}")
        if type(sequence_length) is not int or sequence_length < 1:
            raise ValueError(f"sequence_length must be a positive integer, got {sequence_length!r}")
        if not (isinstance(overlap, (int, float)) and 0 <= overlap < 1):
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        step = max(1, round(sequence_length * (1 - overlap)))
        return cls(bin_size=bin_size_ms / 1000.0, sequence_length=sequence_length, step=step)

    @property
    def duration(self) -> float:
        """Seconds one window covers."""
        return self.sequence_length * self.bin_size

    def starts(self, begin: float, end: float) -> np.ndarray:
        """Start times of every window that fits in [begin, end), on the grid anchored at `begin`."""
        total_bins = math.floor((end - begin) / self.bin_size + BIN_EPS)
        if total_bins < self.sequence_length:
            return np.zeros(0)
        count = (total_bins - self.sequence_length) // self.step + 1
        return begin + np.arange(count) * self.step * self.bin_size


def _bin_of(times: np.ndarray, start: float, bin_size: float) -> np.ndarray:
    return np.floor((np.asarray(times, dtype=np.float64) - start) / bin_size + BIN_EPS).astype(np.int64)


def bin_spikes(times: np.ndarray, start: float, bin_size: float, n_bins: int) -> np.ndarray:
    """Counts of `times` in `n_bins` half-open bins from `start` (spikes outside are dropped)."""
    k = _bin_of(times, start, bin_size)
    k = k[(k >= 0) & (k < n_bins)]
    return np.bincount(k, minlength=n_bins)


def bin_spikes_by_unit(times: list[np.ndarray], start: float, bin_size: float, n_bins: int) -> np.ndarray:
    """Counts (n_bins, units) of each unit's `times`, binned as `bin_spikes` does, in one pass
    over all units (per-unit calls cost more than the binning itself)."""
    units = len(times)
    every = np.concatenate(times) if units else np.zeros(0)
    unit = np.repeat(np.arange(units, dtype=np.int64), [len(t) for t in times])
    k = _bin_of(every, start, bin_size)
    inside = (k >= 0) & (k < n_bins)
    return np.bincount(k[inside] * units + unit[inside], minlength=n_bins * units).reshape(n_bins, units)


def samples_per_window(rate: float, duration: float) -> int:
    """The fixed number of native-rate samples in a window of `duration` seconds."""
    return int(round(duration * rate))


def rank_resample(m: int, n: int) -> np.ndarray:
    """Indices `floor((k + 0.5) * m / n)`, k = 0..n-1: `m` samples resampled by rank to `n`
    (the identity when m == n). Exact integer arithmetic."""
    return (2 * np.arange(n, dtype=np.int64) + 1) * m // (2 * n)


def first_index_at(start_time: float, rate: float, t: float) -> int:
    """Index of the first sample at or after time `t` of a series sampled at `rate` from `start_time`."""
    return math.ceil((t - start_time) * rate - EPS * max(1.0, rate))


class LazySorted:
    """`searchsorted` over a sorted 1-D h5py dataset (or array) without loading it whole.

    Reads one element per bisection step, then the final block, so memory stays bounded by
    `block` values however long the series is.
    """

    def __init__(self, data, lo: int = 0, hi: int | None = None, block: int = 4096) -> None:
        self.data = data
        self.lo = lo
        self.hi = len(data) if hi is None else hi
        self.block = block

    def __len__(self) -> int:
        return self.hi - self.lo

    def _at(self, i: int) -> float:
        return float(self.data[self.lo + i])

    def searchsorted(self, value: float) -> int:
        """Number of values < `value` (numpy's side='left'), relative to `lo`."""
        lo, hi = 0, len(self)
        while hi - lo > self.block:
            mid = (lo + hi) // 2
            if self._at(mid) < value:
                lo = mid + 1
            else:
                hi = mid
        chunk = np.asarray(self.data[self.lo + lo:self.lo + hi], dtype=np.float64)
        return lo + int(np.searchsorted(chunk, value, side="left"))

    def read(self, i0: int, i1: int) -> np.ndarray:
        """Values i0..i1-1 (relative to `lo`)."""
        return np.asarray(self.data[self.lo + i0:self.lo + i1], dtype=np.float64)


# -- block reads ----------------------------------------------------------------------------------
BLOCK_BYTES = 8 << 20
PIECE_VALUES = 1 << 15
"""Values converted to physical units at a time: float64 scratch that stays in cache."""


@attrs.frozen(slots=True)
class _Block:
    """Rows [lo, hi) of a series, transformed, and whether they hold NaN."""

    lo: int
    hi: int
    rows: np.ndarray
    has_nan: bool

    def holds(self, i0: int, i1: int) -> bool:
        """Whether rows i0..i1-1 all lie in this block."""
        return self.lo <= i0 and i1 <= self.hi


class BlockCursor:
    """Rows [i0, i1) of a time-first array-like, read as `data[lo:hi]` (plain slices only) in
    blocks aligned to its chunks and passed through `transform` (shape and physical units) once
    per block.

    The previous block is kept, so a window straddling two blocks is served from both: read in
    increasing order, every row of the source is read and transformed exactly once.
    """

    def __init__(self, data: Any, transform: Callable[[np.ndarray], np.ndarray],
                 block_bytes: int | None = None) -> None:
        self.data, self.transform = data, transform
        self.length = len(data)
        row_bytes = np.dtype(data.dtype).itemsize * math.prod(data.shape[1:])
        self.block_rows = max(1, (block_bytes or BLOCK_BYTES) // max(1, row_bytes))
        chunks = getattr(data, "chunks", None)  # h5py and zarr: a tuple of ints (None: contiguous)
        rows = chunks[0] if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int) else 1
        # blocks start and end on chunk boundaries, unless a chunk is longer than a block (e.g. a
        # series chunked by channel), which would make a block the whole series
        self.chunk_rows = rows if 0 < rows <= self.block_rows else 1
        self.current: _Block | None = None
        self.previous: _Block | None = None

    @property
    def has_nan(self) -> bool:
        """Whether the blocks held (those the last `rows` came from) hold any NaN."""
        return any(b is not None and b.has_nan for b in (self.current, self.previous))

    def rows(self, i0: int, i1: int) -> np.ndarray:
        """Transformed rows i0..i1-1 (0 <= i0 <= i1 <= length): a read-only view into a block,
        or a new array for a window straddling two blocks."""
        current, previous = self.current, self.previous
        if current is not None and current.lo <= i0 < current.hi < i1:  # runs past the block: read on
            self.previous, self.current = current, self._read(current.hi, i1)
            current, previous = self.current, self.previous
        if current is not None and current.holds(i0, i1):
            return current.rows[i0 - current.lo:i1 - current.lo]
        if previous is not None and previous.holds(i0, i1):
            return previous.rows[i0 - previous.lo:i1 - previous.lo]
        if previous is not None and current is not None and previous.lo <= i0 and previous.hi == current.lo \
                and i1 <= current.hi:
            return np.concatenate((previous.rows[i0 - previous.lo:], current.rows[:i1 - current.lo]))
        self.previous, self.current = None, None  # a jump: the old blocks go before a new one is read
        self.current = self._read(i0 - i0 % self.chunk_rows, i1)
        return self.current.rows[i0 - self.current.lo:i1 - self.current.lo]

    def _read(self, lo: int, i1: int) -> _Block:
        """The block from `lo` holding at least rows up to i1, ending on a chunk boundary."""
        hi = max(i1, lo + self.block_rows)
        hi = min(self.length, -(-hi // self.chunk_rows) * self.chunk_rows)
        rows = np.ascontiguousarray(self.transform(np.asarray(self.data[lo:hi])))
        rows.flags.writeable = False  # windows are views of it: none may change its neighbours
        return _Block(lo, hi, rows, rows.dtype.kind in "fc" and bool(np.isnan(rows).any()))


class TimestampCursor:
    """Which samples of a sorted timestamp dataset lie in a window, read in blocks."""

    def __init__(self, timestamps: Any, length: int, block_rows: int | None = None) -> None:
        self.timestamps, self.length = timestamps, length
        self.block_rows = max(2, block_rows or BLOCK_BYTES // 8)
        self.lo = self.hi = 0
        self.block = np.zeros(0)

    def locate(self, start: float, stop: float) -> tuple[int, int, np.ndarray]:
        """(i0, i1, around): samples i0..i1-1 have `start - EPS <= t < stop - EPS`; `around`
        holds the timestamps of samples i0-1 .. i1, clipped to the series."""
        if not self._holds(start):
            first = LazySorted(self.timestamps, hi=self.length).searchsorted(start - EPS)
            self._load(max(0, first - 1), self.block_rows)
        i0 = self.lo + int(np.searchsorted(self.block, start - EPS, side="left"))
        while self.hi < self.length and not self.block[-1] >= stop - EPS:
            # the window runs past the block: read again from just before it, larger if need be
            lo = max(0, i0 - 1)
            self._load(lo, max(self.block_rows, 2 * (self.hi - lo)))
        i1 = self.lo + int(np.searchsorted(self.block, stop - EPS, side="left"))
        around = self.block[max(0, i0 - 1) - self.lo:min(self.length, i1 + 1) - self.lo]
        return i0, i1, around

    def _holds(self, start: float) -> bool:
        """Whether the block holds the sample before `start` (or begins the series) and one at
        or after it (or ends the series)."""
        if self.hi == self.lo:
            return False
        before = self.lo == 0 or self.block[0] < start - EPS
        after = self.hi == self.length or self.block[-1] >= start - EPS
        return before and after

    def _load(self, lo: int, rows: int) -> None:
        hi = min(self.length, lo + rows)
        self.block = np.asarray(self.timestamps[lo:hi], dtype=np.float64)
        self.lo, self.hi = lo, hi


def physical(raw: np.ndarray, conversion: float, channel_conversion: np.ndarray | None,
             offset: float) -> np.ndarray:
    """`raw * conversion (* channel_conversion along axis 1) + offset`, computed in float64 and
    stored as float32 (float64 for float64 input), piece by piece so the scratch stays in
    cache. Each value is computed exactly as `(raw.astype(float64) * c * cc + o).astype(...)`."""
    out = np.empty(raw.shape, dtype=np.float64 if raw.dtype == np.float64 else np.float32)
    if out.size == 0:
        return out  # (2**52, 0) holds nothing: never step through its rows
    factors = None if channel_conversion is None else \
        channel_conversion.reshape((1, -1) + (1,) * (raw.ndim - 2))
    rows = max(1, PIECE_VALUES // max(1, math.prod(raw.shape[1:])))
    for a in range(0, len(raw), rows):
        piece = raw[a:a + rows].astype(np.float64)
        piece *= conversion
        if factors is not None:
            piece *= factors
        piece += offset
        out[a:a + rows] = piece
    return out
