"""Reading spikes from an NWB Units table (used by the spikes plugin): each window's spike events
(`SpikeEvents`, ticks of the session's clock, see neurocodec_plugins.nwb_spike_ticks) when the
converter asks for neural codecs, else binned counts.

Counts use half-open bins, `k = floor((t - t0) / bin + eps)`. Each unit's spike times are read
through a forward cursor in blocks (windows arrive in time order), so memory holds one block
per unit, never the whole table.

Units with `obs_intervals` are observed only inside them: `spikes_observed[bin, unit]` is True
when the bin lies wholly inside the union of the unit's intervals (always True for units without
intervals; intervals that touch or overlap count as one). The counts themselves are not masked:
every spike time the file holds in a bin is counted, observed or not. In a bin that is not observed (or only partly) the count is whatever
spikes the file has there, usually 0 because recordings keep no spikes outside their
observation intervals; such a 0 means "not observed", not "silent", so read counts together
with the mask. The spikes cover the extent of the observation intervals (the earliest start to
the latest stop of any unit), or without intervals the first to the last spike.

With events, the mask is stored as each unit's observation intervals in ticks of the window
(`ObservedIntervals`, codec `spike-observed`), which decode to exactly this mask at the
conversion's bin size and by the same rule at any other; counts decode from the events exactly
as they are binned here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from neurocodec.nwb import (
    EPS, ExtractOptions, ModalityReader, NWBError, NWBExtractor, WindowSpec, bin_spikes_by_unit,
)
from neurocodec_plugins.nwb_spike_ticks import ClockFinder, TickWindow, bin_ms, declared_clocks, tick_rate
from neurocodec_plugins.nwb_units import unit_columns

BLOCK = 4096
COUNT_DTYPE = np.int32
MASK_FIELD = "spikes_observed"


class _UnitCursor:
    """Spike times of one unit in [lo, hi) of the flat dataset, read forward in blocks."""

    def __init__(self, flat: Any, lo: int, hi: int) -> None:
        self.flat, self.next, self.hi = flat, lo, hi
        self.buffer = np.zeros(0)

    def between(self, t0: float, t1: float) -> np.ndarray:
        """Spike times in [t0, t1) (t0 never decreases between calls)."""
        # ndarray.searchsorted, not np.searchsorted: this runs once per unit per window, and
        # numpy's dispatch wrapper cost more than the search.
        self.buffer = self.buffer[self.buffer.searchsorted(t0 - EPS):]
        while self.next < self.hi and (not len(self.buffer) or self.buffer[-1] < t1):
            block = np.asarray(self.flat[self.next:min(self.hi, self.next + BLOCK)], dtype=np.float64)
            self.next += len(block)
            self.buffer = np.concatenate((self.buffer, block[block >= t0 - EPS]))
        return self.buffer[: self.buffer.searchsorted(t1 + EPS)]


class UnitsReader(ModalityReader):
    """Windows of spike events, or of binned counts (time bins, units), and the observation mask.

    Events need the converter's `window` (the WindowSpec its codec configs describe); without
    it the reader gives counts."""

    modality = "spikes"

    def __init__(self, units: Any, path: Any, *, window: WindowSpec | None = None,
                 clocks: tuple[int, ...] = ()) -> None:
        self.path = path
        self.window = window
        self._clocks = ClockFinder(clocks)
        self.object_path = "/units"
        self.unit_ids = np.asarray(units.id[:], dtype=np.int64).tolist()
        self.columns, self.skipped, self.location_from = unit_columns(units)
        ends = np.asarray(units.spike_times_index.data[:], dtype=np.int64)
        starts = np.concatenate(([0], ends[:-1]))
        self.flat = units.spike_times.data
        if len(ends) and (np.any(np.diff(ends) < 0) or ends[-1] > len(self.flat)):
            raise NWBError(f"{path}: /units spike_times_index is inconsistent with spike_times")
        self.bounds = list(zip(starts.tolist(), ends.tolist()))
        self.intervals = self._intervals(units)
        self._cursors: list[_UnitCursor] | None = None
        self._last_start = -np.inf
        self._span: tuple[float, float] | None = None
        self._check_sorted()
        self.clock, self.clock_from = self._clocks.clock()
        self.ticks = None if window is None else TickWindow.of(tick_rate(self.clock, window), window)

    def _intervals(self, units: Any) -> list[np.ndarray] | None:
        if "obs_intervals" not in units.colnames:
            return None
        ends = np.asarray(units.obs_intervals_index.data[:], dtype=np.int64)
        data = np.asarray(units.obs_intervals.data[:], dtype=np.float64).reshape(-1, 2)
        starts = np.concatenate(([0], ends[:-1]))
        return [merged(data[a:b]) for a, b in zip(starts, ends)]

    def _check_sorted(self) -> None:
        for unit, (lo, hi) in zip(self.unit_ids, self.bounds):
            for i0 in range(lo, hi, 1 << 20):
                block = np.asarray(self.flat[max(lo, i0 - 1):min(hi, i0 + (1 << 20))], dtype=np.float64)
                if not np.all(np.isfinite(block)):
                    raise NWBError(f"{self.path}: /units spike times of unit {unit} are not all finite")
                if np.any(np.diff(block) < 0):
                    raise NWBError(f"{self.path}: /units spike times of unit {unit} are not sorted")
                self._clocks.feed(block)

    def fields(self) -> tuple[str, ...]:
        """Counts and the observation mask."""
        return ("spikes", MASK_FIELD)

    def span(self) -> tuple[float, float]:
        """The observation intervals' extent, else first to last spike of any unit."""
        if self.intervals is not None and any(len(i) for i in self.intervals):
            every = np.concatenate([i for i in self.intervals if len(i)])
            return float(every[:, 0].min()), float(every[:, 1].max())
        firsts = [float(self.flat[lo]) for lo, hi in self.bounds if hi > lo]
        lasts = [float(self.flat[hi - 1]) for lo, hi in self.bounds if hi > lo]
        if not firsts:
            raise NWBError(f"{self.path}: /units holds no spikes and no observation intervals")
        return min(firsts), max(lasts) + 1e-6

    def read(self, start: float, spec: WindowSpec) -> Mapping[str, Any] | None:
        """Events and observation intervals (or counts (bins, units) as int32 and the mask) for
        the window at `start`; None when the window is not wholly inside `span()`
        (coverage="fill" then lists spikes as missing)."""
        if self._span is None:
            self._span = self.span()
        tolerance = 1e-6 * spec.bin_size  # float error of the window grid, far below a bin
        if start < self._span[0] - tolerance or start + spec.duration > self._span[1] + tolerance:
            return None
        if self._cursors is None or start < self._last_start:
            self._cursors = [_UnitCursor(self.flat, lo, hi) for lo, hi in self.bounds]
        self._last_start = start
        n, b = spec.sequence_length, spec.bin_size
        stop = start + spec.duration
        times = [cursor.between(start, stop) for cursor in self._cursors]
        if self._events(spec) is not None:
            return {"spikes": self.ticks.events(times, start), MASK_FIELD: self._observed_ticks(start)}
        counts = bin_spikes_by_unit(times, start, b, n).astype(COUNT_DTYPE)
        return {"spikes": counts, MASK_FIELD: self._observed(start, spec)}

    def _events(self, spec: WindowSpec) -> TickWindow | None:
        """The tick window when this reader gives events (for the window its codecs describe)."""
        if self.ticks is not None and spec != self.window:
            raise NWBError(f"{self.path}: /units was opened for windows {self.window}, read with {spec}")
        return self.ticks

    def _observed_ticks(self, start: float) -> Any:
        units = len(self.bounds)
        if self.intervals is None:
            return self.ticks.everything(units)
        every = [i for i in self.intervals if len(i)]
        bounds = np.concatenate(every) if every else np.zeros((0, 2))
        owner = np.repeat(np.arange(units), [len(i) for i in self.intervals])
        return self.ticks.observed(bounds, owner, units, start)

    def _observed(self, start: float, spec: WindowSpec) -> np.ndarray:
        n = spec.sequence_length
        mask = np.ones((n, len(self.bounds)), dtype=bool)
        if self.intervals is None:
            return mask
        edges = start + np.arange(n + 1) * spec.bin_size
        for u, intervals in enumerate(self.intervals):
            inside = np.zeros(n, dtype=bool)
            for a, z in intervals:
                inside |= (edges[:-1] >= a - EPS) & (edges[1:] <= z + EPS)
            mask[:, u] = inside
        return mask

    def blank(self, spec: WindowSpec) -> Mapping[str, np.ndarray]:
        """No spikes (or counts) and nothing observed."""
        if self._events(spec) is not None:
            events, observed = self.ticks.nothing(len(self.bounds))
            return {"spikes": events, MASK_FIELD: observed}
        shape = (spec.sequence_length, len(self.bounds))
        return {"spikes": np.zeros(shape, dtype=COUNT_DTYPE), MASK_FIELD: np.zeros(shape, dtype=bool)}

    def ids(self) -> Mapping[str, Any]:
        """The Units table ids, in column order of the counts, and the units' columns (see
        `unit_columns`), each a list in the same order."""
        return {"unit_ids": self.unit_ids, "unit_columns": self.columns}

    def describe(self) -> Mapping[str, Any]:
        """Units, whether observation intervals are used, the columns left out of `unit_columns`
        (with why) and how many units' location came from where."""
        described = {"object": self.object_path, "units": len(self.unit_ids),
                     "obs_intervals": self.intervals is not None, "skipped_columns": self.skipped,
                     "location_from": self.location_from}
        if self.ticks is not None:
            described.update(spike_events=True, tick_hz=self.ticks.hz, clock_hz=self.clock, clock=self.clock_from)
        return described

    def codecs(self) -> Mapping[str, Mapping[str, Any]]:
        """With events: `spike-events` for the spikes and `spike-observed` (following them) for
        the mask, described by the window alone (the tick rate travels in each payload)."""
        if self.window is None:
            return {}
        ms = bin_ms(self.window)
        size = ms.numerator if ms.denominator == 1 else float(ms)
        window = {"bins": self.window.sequence_length, "bin_size_ms": size}
        return {"spikes": {"id": "spike-events", **window, "dtype": np.dtype(COUNT_DTYPE).str},
                MASK_FIELD: {"id": "spike-observed", **window, "follows": "spikes"}}


class UnitsExtractor(NWBExtractor):
    """Finds the file's Units table.

    With neural codecs its readers give spike events for the window the converter names in
    `ExtractOptions.window`, else for `window` given here (an extractor for one window spec,
    for a converter that does not name it); with neither, binned counts."""

    modality = "spikes"

    def __init__(self, window: WindowSpec | None = None) -> None:
        self.window = window

    def open(self, nwbfile: Any, options: ExtractOptions) -> UnitsReader | None:
        """The Units table (`series` may name another Units table in processing modules)."""
        from pynwb.misc import Units

        tables = [o for o in nwbfile.objects.values() if isinstance(o, Units)]
        if options.series is not None:
            tables = [t for t in tables if t.name == options.series]
            if not tables:
                raise NWBError(f"{options.path}: no Units table named {options.series!r}")
        elif nwbfile.units is not None:
            tables = [nwbfile.units]
        if not tables or tables[0].spike_times_index is None:
            return None
        # Events need the window their codec configs describe (ExtractOptions.window); without
        # it, or with codecs="npy", the reader bins counts as before.
        window = (getattr(options, "window", None) or self.window) if options.codecs == "neural" else None
        return UnitsReader(tables[0], options.path, window=window, clocks=tuple(declared_clocks(tables[0], nwbfile)))


def merged(intervals: np.ndarray) -> np.ndarray:
    """One unit's observation intervals (n, 2) as the fewest disjoint ones with the same union,
    by start: intervals that overlap or touch (within the 2 * EPS the mask's rule allows between
    them) are one, so that a bin across two of them is observed, as it is by the codec's rule."""
    if len(intervals) < 2:
        return intervals
    out: list[list[float]] = []
    for a, z in intervals[np.argsort(intervals[:, 0], kind="stable")].tolist():
        if out and a <= out[-1][1] + 2 * EPS:
            out[-1][1] = max(out[-1][1], z)
        else:
            out.append([a, z])
    return np.array(out, dtype=np.float64)
