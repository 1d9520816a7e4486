"""Window and bin arithmetic shared by every NWB extractor.

A window is `sequence_length` bins of `bin_size` seconds; consecutive windows start
`step = round(sequence_length * (1 - overlap))` bins apart, so overlapping windows share exact
bins. Bin `k` of a window starting at `t0` covers the half-open `[t0 + k*b, t0 + (k+1)*b)`, up to
a tolerance of `BIN_EPS` bins for float rounding.

Modalities at other rates keep their native rate with a fixed sample count per window:
`count = round(duration * rate)` samples starting at the first sample at or after the window's
start (`ceil((t0 - s) * rate - eps)` for a series with `starting_time` s; the first timestamp
>= t0 - eps for timestamped series, whose rate is estimated from the median sample interval).
A window is available for a modality only if all `count` samples exist.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

EPS = 1e-9
BIN_EPS = 1e-6
"""Tolerance in bins: a spike within a millionth of a bin below an edge counts in the next bin.

Relative rather than absolute, because spike and window times of late sessions (t ~ 1e5 s)
carry rounding errors of ~1e-11 s, larger than 1e-9 of a 1 ms bin.
"""


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
