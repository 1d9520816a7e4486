"""The codecs of spike events: `spike-events` (spikes) and `spike-observed` (observation mask).

See `neurocodec.plugin.events` for the values they store and docs/format.md (section 7.7) for
the payloads byte for byte.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Mapping

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.format import limits
from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.codecs import Codec, CodecError
from neurocodec.plugin.windowing import WindowGrid, Windowed
from neurocodec.plugin.event_windows import events_windowed, interval_mask, observed_throughout, observed_windowed
from neurocodec.plugin.events import (
    AS_VALUES, EVENTS_MAGIC, HEADER, HEADER_BYTES, MAX_TICKS, OBSERVED_MAGIC, VERSION, Binning, ObservedIntervals,
    SpikeEvents, check_units, choose_grid, exact_ms, ms_text, read_header, refusing, sealed, shuffled,
    stored_field_problem, unshuffled, width_of,
)

Decoder = Callable[[bytes | memoryview], Any]


class BinnedCodec(Codec):
    """What both codecs share: a config of `bins` bins of `bin_size_ms` (the default decode),
    the load-time option `bin_size_ms`, and values stored in ticks whose rate each payload
    carries (so sessions on different clocks share one config)."""

    kind = "array"
    extension = "bin"
    value_type: ClassVar[type]
    dtype: np.dtype

    def __init__(self, bins: int | None = None, bin_size_ms: float | None = None) -> None:
        if bins is not None and (type(bins) is not int or bins < 1):
            raise CodecError(f"codec {self.codec_id!r}: bins must be a positive int, got {bins!r}")
        try:
            self.bin_ms = None if bin_size_ms is None else exact_ms(bin_size_ms, "bin_size_ms")
        except ValueError as exc:
            raise CodecError(f"codec {self.codec_id!r}: {exc}") from None
        self.bins, self.bin_size_ms = bins, bin_size_ms

    def get_config(self) -> dict[str, Any]:
        """Id, bins and bin size."""
        return {"id": self.codec_id, "bins": self.bins, "bin_size_ms": self.bin_size_ms}

    def binning(self, asked: Any = None) -> Binning:
        """The config's window, binned at `asked` ms (None: the config's bin size)."""
        if self.bins is None or self.bin_ms is None:
            raise CodecError(f"codec {self.codec_id!r} needs bins and bin_size_ms in its config "
                             f"(e.g. {{'id': {self.codec_id!r}, 'bins': 100, 'bin_size_ms': 10}})")
        return Binning.of(self.bins, self.bin_ms, asked)

    def window_ticks(self, tick_hz: int) -> int:
        """The window in ticks of `tick_hz`, which must be whole, as must a bin (CodecError)."""
        binning = self.binning()
        window = binning.bins * binning.bin_ms * tick_hz / 1000
        if window.denominator != 1 or not 0 < window <= MAX_TICKS:
            raise CodecError(f"a window of {ms_text(binning.bins * binning.bin_ms)} ms is not a whole number of "
                             f"ticks of 1/{tick_hz} s from 1 to {MAX_TICKS}; store the values at another tick_hz")
        binning.ticks(tick_hz, window.numerator)
        return window.numerator

    def describe_value(self, value: Any) -> tuple[np.dtype, tuple[int, ...]] | None:
        """The (bins, units) array a value decodes to by default."""
        if not isinstance(value, self.value_type):
            return None
        return self.dtype, (self.binning().bins, value.unit_count)

    def rebinned(self, field: FieldSpec, asked: Any) -> tuple[Binning, int]:
        """The binning at `asked` ms and the largest value it decodes to (the field's unit axis,
        else as many units as its value bound admits at the stored bin size); CodecError when a
        bin size asked for would make values larger than the per-member ceiling."""
        binning = self.binning(asked)
        itemsize = self.dtype.itemsize
        units = field.shape[1] if field.shape is not None and len(field.shape) == 2 else None
        most = units if units is not None else field.value_bound // max(1, binning.default_bins * itemsize)
        value = max(1, binning.bins * most * itemsize)
        ceiling = limits.max_member_bytes()
        if asked is not None and value > ceiling:
            raise CodecError(f"bin_size_ms={asked!r} makes values of up to {value} bytes ({binning.bins} bins of "
                             f"{most} units), above the ceiling of {ceiling} bytes ({limits.ENV_MAX_MEMBER_BYTES})")
        return binning, value

    def decoded_field(self, field: FieldSpec, options: Mapping[str, Any]) -> FieldSpec:
        """(bins, units) at the bin size asked for, with `max_value_bytes` scaled to it."""
        binning, value = self.rebinned(field, options.get("bin_size_ms"))
        units = field.shape[1] if field.shape is not None and len(field.shape) == 2 else None
        return attrs.evolve(field, shape=(binning.bins, units), max_value_bytes=value)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> Any:
        """Decode at the config's bin size (what `decoder(field)` does)."""
        return self.decoder(field)(data)


class SpikeEventsCodec(BinnedCodec):
    """`SpikeEvents` as ticks grouped by unit; decoded to counts (bins, units) of `dtype` (at the
    config's bin size or `bin_size_ms`) or, with `as="events"`, to `SpikeEvents`."""

    codec_id = "spike-events"
    value_type = SpikeEvents
    decode_options = {
        "bin_size_ms": "bin size of the counts in ms (must divide the window; default: the stored bin size)",
        "as": "'counts' (default): binned counts (bins, units); 'events': SpikeEvents (times in s, units)",
    }

    def __init__(self, bins: int | None = None, bin_size_ms: float | None = None, dtype: str = "<i4") -> None:
        super().__init__(bins, bin_size_ms)
        if dtype not in npy.DTYPES or np.dtype(dtype).kind not in "iu":
            raise CodecError(f"codec 'spike-events': dtype must be an integer dtype such as '<i4', got {dtype!r}")
        self.dtype = np.dtype(dtype)

    def get_config(self) -> dict[str, Any]:
        """Id, bins, bin size and the counts' dtype."""
        return {**super().get_config(), "dtype": self.dtype.str}

    def encode(self, value: SpikeEvents) -> bytes:
        """Header, spikes per unit, then each unit's tick deltas (byte planes)."""
        if not isinstance(value, SpikeEvents):
            raise CodecError(f"codec 'spike-events' stores SpikeEvents, got {type(value).__name__}")
        hz, units = value.tick_hz, value.unit_count
        window = self.window_ticks(hz)
        ticks = np.rint(value.times * hz)
        if len(ticks) and ticks[-1] >= window:
            raise CodecError(f"a spike at {value.times[-1]!r} s lies at or after the window's end "
                             f"({window} ticks of 1/{hz} s)")
        if units > MAX_TICKS or len(ticks) > MAX_TICKS:
            raise CodecError(f"{units} units and {len(ticks)} spikes: at most {MAX_TICKS} of each per window")
        order = np.argsort(value.units, kind="stable")  # by unit; each unit's ticks stay sorted
        grouped = ticks.astype(np.int64)[order]
        grid = choose_grid(grouped, hz)
        steps, rest = np.divmod(grouped, grid)
        counts = np.bincount(value.units, minlength=units)
        deltas = steps.copy()
        deltas[1:] -= steps[:-1]
        firsts = (np.cumsum(counts) - counts)[counts > 0]
        deltas[firsts] = steps[firsts]
        tick_bytes = width_of(int(deltas.max()) if len(deltas) else 0)
        count_bytes = width_of(int(counts.max()) if units else 0)
        rest_bytes = 0 if grid == 1 else width_of(grid - 1)
        header = HEADER.pack(EVENTS_MAGIC, VERSION, tick_bytes, count_bytes, rest_bytes, hz, window, units,
                              len(ticks), grid)
        parts = [header, shuffled(counts, count_bytes), shuffled(deltas, tick_bytes)]
        return sealed(b"".join(parts + ([shuffled(rest, rest_bytes)] if rest_bytes else [])))

    def decoder(self, field: FieldSpec, options: Mapping[str, Any] | None = None) -> Decoder:
        """Counts at the bin size asked for, or events."""
        options = dict(options or {})
        form = options.get("as", "counts")
        if form not in AS_VALUES:
            raise CodecError(f"as must be 'counts' or 'events', got {form!r}")
        if form == "events" and "bin_size_ms" in options:
            raise CodecError("bin_size_ms applies to counts; leave it out with as='events'")
        binning, stored = self.rebinned(field, options.get("bin_size_ms"))[0], self.binning()
        problem = stored_field_problem(field, binning.default_bins, self.dtype)
        if problem:  # a manifest at odds with its own codec config
            return refusing(problem)
        if form == "events":
            return lambda data: self._events(data, field, stored)
        return lambda data: self._counts(data, field, stored, binning)

    def decoded_field(self, field: FieldSpec, options: Mapping[str, Any]) -> FieldSpec:
        """Counts: (bins, units) at the bin size asked for; events: a list per batch (kind "events")."""
        if options.get("as", "counts") == "events":
            return attrs.evolve(field, kind="events", dtype=None, shape=None, max_value_bytes=0)
        return super().decoded_field(field, options)

    def parse_payload(self, data: bytes | memoryview, field: FieldSpec, stored: Binning) -> tuple[int, int, np.ndarray,
                                                                                            np.ndarray]:
        """(tick_hz, window, spikes per unit, ticks grouped by unit) after checking every header
        count against the payload's length and the field (`stored`: its config's binning)."""
        view, (tick_bytes, count_bytes, rest_bytes, hz, window, units, spikes, grid) = \
            read_header(data, EVENTS_MAGIC)
        if tick_bytes not in (1, 2, 4) or count_bytes not in (1, 2, 4) or not 1 <= grid <= window \
                or rest_bytes != (0 if grid == 1 else width_of(grid - 1)):
            raise CodecError(f"payload declares widths {tick_bytes}/{count_bytes}/{rest_bytes} and a step of "
                             f"{grid} ticks, which do not fit together or the window of {window} ticks")
        check_units(field, units, stored.bins, self.dtype.itemsize)
        stored.ticks(hz, window)
        expected = HEADER_BYTES + units * count_bytes + spikes * (tick_bytes + rest_bytes)
        if len(view) != expected:
            raise CodecError(f"payload holds {len(view)} bytes before its CRC-32; its header ({units} units, "
                             f"{spikes} spikes) says {expected}")
        at = HEADER_BYTES + units * count_bytes
        counts = unshuffled(view[HEADER_BYTES:at], units, count_bytes)
        if int(counts.sum(dtype=np.uint64)) != spikes:  # each < 2**32, fewer than 2**32: no wrap-around
            raise CodecError(f"spikes per unit add up to {int(counts.sum(dtype=np.uint64))}, the header says {spikes}")
        steps = np.empty(spikes + 1, dtype=np.uint64)
        steps[0] = 0
        np.cumsum(unshuffled(view[at:at + spikes * tick_bytes], spikes, tick_bytes), dtype=np.uint64, out=steps[1:])
        # each unit's deltas run on from the previous unit's last step: take that away
        starts = np.cumsum(counts, dtype=np.intp) - counts
        steps = steps[1:] - np.repeat(steps[starts], counts)
        if spikes and int(steps.max()) > (window - 1) // grid:
            raise CodecError(f"a spike at step {int(steps.max())} of {grid} ticks lies beyond the window of "
                             f"{window} ticks")
        ticks = steps.astype(np.intp)  # below 2**32 now
        if rest_bytes:
            rest = unshuffled(view[at + spikes * tick_bytes:], spikes, rest_bytes)
            if spikes and int(rest.max()) >= grid:
                raise CodecError(f"a remainder {int(rest.max())} is not below the step of {grid} ticks")
            ticks *= grid
            ticks += rest
            if spikes and int(ticks.max()) >= window:
                raise CodecError(f"a spike at tick {int(ticks.max())} lies beyond the window of {window} ticks")
        return hz, window, counts, ticks

    def windowed(self, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
        """Counts or events of each window, cut from its chunks' ticks (see `event_windows`)."""
        return events_windowed(self, field, options, grid)

    def _counts(self, data: bytes | memoryview, field: FieldSpec, stored: Binning, binning: Binning) -> np.ndarray:
        hz, window, counts, ticks = self.parse_payload(data, field, stored)
        units = len(counts)
        flat = ticks // binning.ticks(hz, window)  # the same window, in bins of the size asked for
        flat *= units
        flat += np.repeat(np.arange(units, dtype=np.intp), counts)
        binned = np.bincount(flat, minlength=binning.bins * units).reshape(binning.bins, units)
        if len(ticks) > np.iinfo(self.dtype).max and binned.max() > np.iinfo(self.dtype).max:
            raise CodecError(f"a bin holds {binned.max()} spikes, more than {self.dtype} holds")
        return binned.astype(self.dtype)

    def _events(self, data: bytes | memoryview, field: FieldSpec, stored: Binning) -> SpikeEvents:
        hz, _, counts, ticks = self.parse_payload(data, field, stored)
        order = np.argsort(ticks, kind="stable")  # ties keep unit order
        units = np.repeat(np.arange(len(counts), dtype=np.int64), counts.astype(np.intp))
        return SpikeEvents.from_ticks(ticks[order], units[order], len(counts), hz)


class SpikeObservedCodec(BinnedCodec):
    """`ObservedIntervals` in ticks, decoded to the boolean (bins, units) mask: bin k of unit u
    is True when [k*b, (k+1)*b) lies wholly inside the union of u's intervals. `follows` names the
    spikes field whose `bin_size_ms` it takes at load time."""

    codec_id = "spike-observed"
    value_type = ObservedIntervals
    dtype = np.dtype("|b1")
    decode_options = {"bin_size_ms": "bin size of the mask in ms (default: the stored bin size)"}

    def __init__(self, bins: int | None = None, bin_size_ms: float | None = None, follows: str | None = None) -> None:
        super().__init__(bins, bin_size_ms)
        if follows is not None and not isinstance(follows, str):
            raise CodecError(f"codec 'spike-observed': follows must name a field, got {follows!r}")
        self.follows = follows

    def get_config(self) -> dict[str, Any]:
        """Id, bins, bin size and the field it follows."""
        config = super().get_config()
        if self.follows is not None:
            config["follows"] = self.follows
        return config

    def encode(self, value: ObservedIntervals) -> bytes:
        """Header, then the units, starts and stops (uint32 each) of the intervals that hold a
        tick, clipped to the window, sorted."""
        if not isinstance(value, ObservedIntervals):
            raise CodecError(f"codec 'spike-observed' stores ObservedIntervals, got {type(value).__name__}")
        hz, units = value.tick_hz, value.unit_count
        window = self.window_ticks(hz)
        if units > MAX_TICKS:
            raise CodecError(f"{units} units: at most {MAX_TICKS} per window")
        bounds = np.clip(np.rint(value.intervals * hz), 0, window).astype(np.int64)
        keep = bounds[:, 1] > bounds[:, 0]
        bounds, unit = bounds[keep], value.units[keep]
        order = np.lexsort((bounds[:, 1], bounds[:, 0], unit))
        header = HEADER.pack(OBSERVED_MAGIC, VERSION, 4, 0, 0, hz, window, units, len(order), 1)
        return sealed(b"".join((header, unit[order].astype("<u4").tobytes(), bounds[order, 0].astype("<u4").tobytes(),
                                bounds[order, 1].astype("<u4").tobytes())))

    def decoder(self, field: FieldSpec, options: Mapping[str, Any] | None = None) -> Decoder:
        """The mask at the bin size asked for."""
        binning, stored = self.rebinned(field, dict(options or {}).get("bin_size_ms"))[0], self.binning()
        problem = stored_field_problem(field, binning.default_bins, self.dtype)
        if problem:
            return refusing(problem)
        return lambda data: self._mask(data, field, stored, binning)

    def _mask(self, data: bytes | memoryview, field: FieldSpec, stored: Binning, binning: Binning) -> np.ndarray:
        hz, window, units, intervals = self.parse_intervals(data, field, stored)
        per_bin = binning.ticks(hz, window)
        if intervals is None:
            return observed_throughout(binning.bins, units)  # units without obs_intervals: the usual case
        return interval_mask(*intervals, units, per_bin, binning.bins)

    def parse_intervals(self, data: bytes | memoryview, field: FieldSpec, stored: Binning
                        ) -> tuple[int, int, int, tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """(tick_hz, window ticks, units, (unit, start, stop) of the intervals in ticks) after
        checking the payload; None for the intervals when every unit is observed throughout."""
        view, (width, zero1, zero2, hz, window, units, count, grid) = read_header(data, OBSERVED_MAGIC)
        if (width, zero1, zero2, grid) != (4, 0, 0, 1):
            raise CodecError(f"payload declares widths {width}/{zero1}/{zero2} and step {grid}, not 4/0/0 and 1")
        check_units(field, units, stored.bins, 1)
        stored.ticks(hz, window)
        if len(view) != HEADER_BYTES + 12 * count:
            raise CodecError(f"payload holds {len(view)} bytes before its CRC-32; its header ({count} intervals) "
                             f"says {HEADER_BYTES + 12 * count}")
        if count == units and view[HEADER_BYTES:] == _whole_windows(units, window):
            return hz, window, units, None
        rows = np.frombuffer(view, dtype="<u4", offset=HEADER_BYTES).reshape(3, count).astype(np.int64)
        unit, start, stop = rows
        if count and (unit.max() >= units or np.any(start >= stop) or stop.max() > window):
            raise CodecError(f"an interval has a unit outside 0..{units - 1} or bounds outside 0 <= start < "
                             f"stop <= {window}")
        return hz, window, units, (unit, start, stop)

    def windowed(self, field: FieldSpec, options: Mapping[str, Any], grid: WindowGrid) -> Windowed:
        """The mask of each window, from the intervals of its chunks (see `event_windows`)."""
        return observed_windowed(self, field, options, grid)


@functools.lru_cache(maxsize=64)
def _whole_windows(units: int, window: int) -> bytes:
    """The body of a payload in which every unit is observed over the whole window."""
    rows = np.stack([np.arange(units), np.zeros(units, np.int64), np.full(units, window)])
    return rows.astype("<u4").tobytes()
