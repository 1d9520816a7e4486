"""Load-time windows of spike events and observation masks, cut from consecutive chunks.

A window starting `offset` ticks into its chunk and `L` ticks long takes the chunk's spikes at
ticks [offset, offset + L) and, when it runs on, the next chunk's spikes shifted by the chunk's
length; then bins them from the window's start at the bin size asked for (any size dividing the
window, a whole number of ticks) or hands them out as `SpikeEvents` (times from the window's
start). Counts are therefore exactly those of the same window converted directly.

Observation intervals are cut the same way, and the mask follows the codec's rule: bin k of unit
u is True when it lies wholly inside the union of u's intervals. An interval that the conversion
cut in two at a chunk's end is therefore one again: a bin across the chunk boundary is observed
when the recording observed it.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.codecs import CodecError
from neurocodec.plugin.events import AS_VALUES, Binning, SpikeEvents
from neurocodec.plugin.windowing import WindowGrid, Windowed


def window_binning(codec: Any, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Binning:
    """The window binned at the size asked for (default: the stored one). ValueError when the
    codec's chunk is not the timeline's or the size does not divide the window."""
    stored = codec.binning()
    if stored.bins != grid.chunk_bins or stored.bin_ms != grid.bin_ms:
        raise ValueError(f"its codec stores windows of {stored.bins} bins of {stored.bin_ms} ms, the timeline's "
                         f"chunks are {grid.chunk_bins} bins of {grid.bin_ms} ms")
    return Binning.of(grid.window_bins, grid.bin_ms, options.get("bin_size_ms"))


def _bound(codec: Any, field: FieldSpec, bins: int) -> tuple[int | None, int]:
    """(the field's unit count if fixed, bytes of the largest (bins, units) value)."""
    itemsize = codec.dtype.itemsize
    units = field.shape[1] if field.shape is not None and len(field.shape) == 2 else None
    most = units if units is not None else field.value_bound // max(1, codec.binning().bins * itemsize)
    return units, max(1, bins * most * itemsize)


def events_windowed(codec: Any, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
    """Spike counts (bins, units) at the bin size asked for, or `SpikeEvents` with `as="events"`."""
    form = options.get("as", "counts")
    if form not in AS_VALUES:
        raise ValueError(f"as must be 'counts' or 'events', got {form!r}")
    if form == "events" and "bin_size_ms" in options:
        raise ValueError("bin_size_ms applies to counts; leave it out with as='events'")
    binning = window_binning(codec, field, options, grid)
    stored = codec.binning()
    if form == "events":
        window_field = attrs.evolve(field, kind="events", dtype=None, shape=None, max_value_bytes=0)
    else:
        units, value = _bound(codec, field, binning.bins)
        window_field = attrs.evolve(field, shape=(binning.bins, units), max_value_bytes=value)

    def decode(data: bytes | memoryview) -> tuple[int, int, int, np.ndarray, np.ndarray]:
        return _time_ordered(*codec.parse_payload(data, field, stored))

    def cut(values: Sequence[Any], offset_bins: int) -> Any:
        hz, units, ticks, unit = _cut_ticks(values, offset_bins, grid)
        if form == "events":
            return SpikeEvents.from_ticks(ticks, unit, units, hz)
        per_bin = binning.ticks(hz, grid.window_bins * _bin_ticks(values[0], grid))
        flat = ticks // per_bin * units + unit
        counts = np.bincount(flat, minlength=binning.bins * units).reshape(binning.bins, units)
        if len(ticks) > np.iinfo(codec.dtype).max and counts.max() > np.iinfo(codec.dtype).max:
            raise CodecError(f"a bin holds {counts.max()} spikes, more than {codec.dtype} holds")
        return counts.astype(codec.dtype)

    return Windowed(decode, window_field, cut)


def _bin_ticks(value: tuple[Any, ...], grid: WindowGrid) -> int:
    """Ticks per stored bin of a parsed chunk (whole: the codec checked its bins)."""
    return value[1] // grid.chunk_bins


def _same_clock(values: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    hz, window = values[0][0], values[0][1]
    for other in values[1:]:
        if other[0] != hz or other[1] != window:
            raise CodecError(f"neighbouring chunks are stored at {hz} and {other[0]} ticks/s; "
                             "a window cannot run across them")
    return hz, window


def _time_ordered(hz: int, window: int, counts: np.ndarray, ticks: np.ndarray
                  ) -> tuple[int, int, int, np.ndarray, np.ndarray]:
    """A parsed chunk (ticks grouped by unit) as (tick_hz, window ticks, units, ticks, unit of
    each) in time order, simultaneous spikes by unit (the order the codec decodes events in):
    sorted once per chunk read, so that each window of it is two binary searches."""
    unit = np.repeat(np.arange(len(counts), dtype=np.int64), counts.astype(np.intp))
    order = np.argsort(ticks, kind="stable")
    return hz, window, len(counts), ticks[order].astype(np.int64), unit[order]


def _cut_ticks(values: Sequence[tuple[Any, ...]], offset_bins: int, grid: WindowGrid
               ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(tick_hz, units, ticks from the window's start, unit of each), in time order."""
    hz, chunk = _same_clock(values)
    per_bin = _bin_ticks(values[0], grid)
    start, stop = offset_bins * per_bin, (offset_bins + grid.window_bins) * per_bin
    units = values[0][2]
    ticks, unit = [], []
    for shift, (_, _, count, chunk_ticks, chunk_unit) in zip((0, chunk), values):
        if count != units:
            raise CodecError(f"neighbouring chunks hold {units} and {count} units")
        lo, hi = np.searchsorted(chunk_ticks, (start - shift, stop - shift))
        ticks.append(chunk_ticks[lo:hi] + (shift - start))
        unit.append(chunk_unit[lo:hi])
    return hz, units, np.concatenate(ticks), np.concatenate(unit)


def observed_windowed(codec: Any, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
    """The observation mask (bins, units) of each window at the bin size asked for."""
    binning = window_binning(codec, field, options, grid)
    stored = codec.binning()
    units, value = _bound(codec, field, binning.bins)
    window_field = attrs.evolve(field, shape=(binning.bins, units), max_value_bytes=value)

    def decode(data: bytes | memoryview) -> tuple[int, int, int, Any]:
        return codec.parse_intervals(data, field, stored)

    def cut(values: Sequence[Any], offset_bins: int) -> np.ndarray:
        hz, chunk = _same_clock(values)
        count = values[0][2]
        if any(v[2] != count for v in values):
            raise CodecError(f"neighbouring chunks hold {count} and {values[-1][2]} units")
        if all(v[3] is None for v in values):
            return observed_throughout(binning.bins, count)
        per_bin = _bin_ticks(values[0], grid)
        start, stop = offset_bins * per_bin, (offset_bins + grid.window_bins) * per_bin
        parts = [_intervals(v) for v in values]
        unit = np.concatenate([p[0] for p in parts])
        first = np.concatenate([p[1] + shift for p, shift in zip(parts, (0, chunk))])
        end = np.concatenate([p[2] + shift for p, shift in zip(parts, (0, chunk))])
        first, end = np.maximum(first, start) - start, np.minimum(end, stop) - start
        keep = end > first
        return interval_mask(unit[keep], first[keep], end[keep], count,
                             binning.ticks(hz, stop - start), binning.bins)

    return Windowed(decode, window_field, cut)


def _intervals(value: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit, start, stop) of a parsed chunk, every unit over the whole chunk when it said so."""
    _, chunk, units, intervals = value
    if intervals is not None:
        return intervals
    return np.arange(units, dtype=np.int64), np.zeros(units, np.int64), np.full(units, chunk, np.int64)


def interval_mask(unit: np.ndarray, start: np.ndarray, stop: np.ndarray, units: int, per_bin: int,
                  bins: int) -> np.ndarray:
    """The (bins, units) mask: bin k of unit u is True when ticks [k*per_bin, (k+1)*per_bin) lie
    wholly inside the union of u's intervals [start, stop) (intervals that touch or overlap
    count as one)."""
    unit, start, stop = merged_intervals(unit, start, stop)
    first, end = -(-start // per_bin), np.minimum(stop // per_bin, bins)  # bins wholly inside [start, stop)
    whole = end > first
    size = (bins + 1) * units
    edges = np.bincount(first[whole] * units + unit[whole], minlength=size) \
        - np.bincount(end[whole] * units + unit[whole], minlength=size)
    return np.cumsum(edges.reshape(bins + 1, units), axis=0)[:bins] > 0


def merged_intervals(unit: np.ndarray, start: np.ndarray, stop: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's intervals (ticks, start < stop) as the fewest disjoint, non-touching ones
    covering the same ticks, by unit then start."""
    if len(unit) < 2:
        return unit, start, stop
    order = np.lexsort((start, unit))
    unit, start, stop = unit[order], start[order], stop[order]
    span = int(stop.max()) + 1
    if int(unit[-1]) * span < 2**62:  # a running maximum per unit in one pass: units apart by `span`
        lifted = unit * span
        reach = np.maximum.accumulate(stop + lifted) - lifted
    else:  # pragma: no cover - more than 2**30 units or windows of more than 2**32 ticks
        reach = np.array([max(stop[i] for i in range(j + 1) if unit[i] == unit[j]) for j in range(len(unit))])
    new = np.ones(len(unit), dtype=bool)
    new[1:] = (unit[1:] != unit[:-1]) | (start[1:] > reach[:-1])
    firsts = np.flatnonzero(new)
    return unit[firsts], start[firsts], np.maximum.reduceat(stop, firsts)


@functools.lru_cache(maxsize=64)
def observed_throughout(bins: int, units: int) -> np.ndarray:
    """A read-only all-True (bins, units) mask, shared: decoded values are read-only views."""
    mask = np.ones((bins, units), dtype=bool)
    mask.flags.writeable = False
    return mask
