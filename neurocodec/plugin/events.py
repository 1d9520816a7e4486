"""Spike events: each window's spikes as integer ticks and unit indices, binned at load time.

Two value classes a writer accepts and a reader gives back, and two codecs (registered by the
built-in spikes plugin):

- `SpikeEvents`: spike times in seconds from the window's start (float64, sorted) with the unit
  index of each. Codec `spike-events` stores them as integer ticks at the value's own tick rate;
  by default it decodes to counts (bins, units) in the field's dtype, at the bin size of the
  codec config or at any `bin_size_ms` given at load time, or back to events (`as="events"`).
- `ObservedIntervals`: when each unit was observed, as [start, stop) intervals in seconds from
  the window's start. Codec `spike-observed` stores them in ticks and decodes to the boolean
  (bins, units) mask: bin k of unit u is observed when it lies wholly inside the union of u's
  intervals. Its config says `"follows": "<spikes field>"`, so the reader bins it at the bin
  size chosen for the spikes.

The tick rate travels in every payload (sessions recorded on different clocks merge into one
dataset); the codec config holds what is the same for every sample: the default bin size, the
bin count and the counts' dtype. Payloads are specified byte for byte in
docs/format.md (section 7.7). Every decode checks the header against the payload's length and
the manifest's shape and sizes before allocating anything that depends on it.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from fractions import Fraction
from typing import Any, Callable

import attrs
import numpy as np

from neurocodec.format.manifest import FieldSpec
from neurocodec.plugin.codecs import CodecError

DEFAULT_TICK_HZ = 1_000_000
"""Ticks per second of values that do not say (1 µs): exact for times written to 6 decimals."""
MAX_TICKS = 2**32 - 1
"""The most ticks a window may span (so every tick, delta and count fits 32 bits)."""
EVENTS_MAGIC, OBSERVED_MAGIC = b"NCSE", b"NCSO"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIIII")  # magic, version, 3 widths, tick_hz, window, units, count, grid
HEADER_BYTES = HEADER.size
TRAILER_BYTES = 4  # CRC-32 of everything before it
COMMON_CLOCKS = (1000, 2000, 2500, 5000, 10000, 20000, 24000, 25000, 30000, 32000, 40000, 44100, 48000,
                 50000, 100000)
"""Acquisition clocks: spike ticks of a finer rate mostly on one of these are stored as steps of
that clock plus a remainder (see `choose_grid`), and the NWB reader tries them as session clocks."""
AS_VALUES = ("counts", "events")


def _float64_vector(value: Any) -> np.ndarray:
    array = np.array(value, dtype=np.float64, copy=True).reshape(-1)
    array.flags.writeable = False
    return array


def _int64_vector(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.size and array.dtype.kind not in "iu":
        raise TypeError(f"unit indices must be integers, got {array.dtype}")
    array = np.array(array, dtype=np.int64, copy=True).reshape(-1)
    array.flags.writeable = False
    return array


def _check_units(units: np.ndarray, unit_count: int, length: int, what: str) -> None:
    if type(unit_count) is not int or unit_count < 0:
        raise ValueError(f"unit_count must be a non-negative int, got {unit_count!r}")
    if len(units) != length:
        raise ValueError(f"{what} and units differ in length ({length} and {len(units)})")
    if len(units) and (units.min() < 0 or units.max() >= unit_count):
        raise ValueError(f"unit indices must lie in 0..{unit_count - 1}, got {units.min()}..{units.max()}")


def _check_tick_hz(tick_hz: Any) -> None:
    if type(tick_hz) is not int or not 0 < tick_hz <= MAX_TICKS:
        raise ValueError(f"tick_hz must be an int in 1..{MAX_TICKS}, got {tick_hz!r}")


@attrs.frozen(slots=True, eq=False)
class SpikeEvents:
    """One window's spikes: `times` in seconds from the window's start (float64, sorted, >= 0),
    the unit index of each (`units`, 0 <= unit < `unit_count`), and the resolution they are
    stored at (`tick_hz` ticks per second: each time is stored as round(time * tick_hz)).
    Simultaneous spikes are put in unit order, the order they decode in."""

    times: np.ndarray = attrs.field(converter=_float64_vector)
    units: np.ndarray = attrs.field(converter=_int64_vector)
    unit_count: int
    tick_hz: int = DEFAULT_TICK_HZ

    def __attrs_post_init__(self) -> None:
        _check_tick_hz(self.tick_hz)
        _check_units(self.units, self.unit_count, len(self.times), "times")
        if len(self.times) and not (np.all(np.isfinite(self.times)) and self.times[0] >= 0):
            raise ValueError("spike times must be finite and >= 0 (seconds from the window's start)")
        if len(self.times) > 1 and np.any(self.times[1:] < self.times[:-1]):
            raise ValueError("spike times must be sorted")
        if len(self.times) > 1 and np.any(self.times[1:] == self.times[:-1]):
            order = np.lexsort((self.units, self.times))  # simultaneous spikes: by unit, as decoded
            for name in ("times", "units"):
                array = getattr(self, name)[order]
                array.flags.writeable = False
                object.__setattr__(self, name, array)

    @classmethod
    def from_ticks(cls, ticks: np.ndarray, units: np.ndarray, unit_count: int, tick_hz: int) -> "SpikeEvents":
        """Events at integer `ticks` (sorted) of `tick_hz`: times are exactly ticks / tick_hz."""
        return cls(np.asarray(ticks, dtype=np.float64) / tick_hz, units, unit_count, tick_hz)

    def __eq__(self, other: object) -> bool:
        return (type(other) is SpikeEvents and self.unit_count == other.unit_count
                and self.tick_hz == other.tick_hz and np.array_equal(self.times, other.times)
                and np.array_equal(self.units, other.units))

    def __len__(self) -> int:
        return len(self.times)


@attrs.frozen(slots=True, eq=False)
class ObservedIntervals:
    """When each unit of one window was observed: rows of `intervals` are [start, stop) in
    seconds from the window's start, `units` the unit of each row; a unit with no row was not
    observed in the window. Stored at `tick_hz` (each bound as round(seconds * tick_hz))."""

    intervals: np.ndarray = attrs.field(converter=lambda v: _float64_vector(v).reshape(-1, 2))
    units: np.ndarray = attrs.field(converter=_int64_vector)
    unit_count: int
    tick_hz: int = DEFAULT_TICK_HZ

    def __attrs_post_init__(self) -> None:
        _check_tick_hz(self.tick_hz)
        _check_units(self.units, self.unit_count, len(self.intervals), "intervals")
        if not np.all(np.isfinite(self.intervals)):
            raise ValueError("observation intervals must be finite")

    @classmethod
    def from_ticks(cls, bounds: np.ndarray, units: np.ndarray, unit_count: int, tick_hz: int) -> "ObservedIntervals":
        """Intervals at integer tick `bounds` (n, 2) of `tick_hz`."""
        return cls(np.asarray(bounds, dtype=np.float64).reshape(-1, 2) / tick_hz, units, unit_count, tick_hz)

    def __eq__(self, other: object) -> bool:
        return (type(other) is ObservedIntervals and self.unit_count == other.unit_count
                and self.tick_hz == other.tick_hz and np.array_equal(self.intervals, other.intervals)
                and np.array_equal(self.units, other.units))


# -- bin sizes ------------------------------------------------------------------------------------
def exact_ms(value: Any, what: str) -> Fraction:
    """A positive number of milliseconds as an exact fraction (a float as the decimal it prints
    as: 0.1 is 1/10)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of milliseconds, got {value!r}")
    return Fraction(value) if isinstance(value, int) else Fraction(repr(float(value)))


def ms_text(ms: Fraction) -> str:
    """Milliseconds as a user wrote them: 10, 0.5."""
    return str(ms.numerator) if ms.denominator == 1 else repr(ms.numerator / ms.denominator)


def allowed_bin_sizes(window_ms: Fraction) -> str:
    """The whole-millisecond bin sizes that divide a window, for error messages."""
    if window_ms.denominator != 1 or window_ms.numerator > 10**7:
        return f"any size dividing {ms_text(window_ms)} ms"
    w = window_ms.numerator
    sizes = [d for d in range(1, math.isqrt(w) + 1) if w % d == 0]
    sizes = sorted(set(sizes + [w // d for d in sizes]))
    return ", ".join(map(str, sizes)) + " ms (and other sizes dividing the window)"


@attrs.frozen(slots=True)
class Binning:
    """The window of a field's config (`bins` of `bin_size_ms`) and the bin size asked for."""

    bins: int
    bin_ms: Fraction
    default_bins: int

    @classmethod
    def of(cls, bins: int, bin_size_ms: Fraction, asked: Any = None) -> "Binning":
        """The bins of `asked` ms (None: the config's own), which must divide the window."""
        if asked is None:
            return cls(bins, bin_size_ms, bins)
        asked_ms = exact_ms(asked, "bin_size_ms")
        window = bins * bin_size_ms
        count = window / asked_ms
        if count.denominator != 1:
            raise ValueError(f"bin_size_ms={asked!r} does not divide the window of {ms_text(window)} ms into "
                             f"whole bins; allowed: {allowed_bin_sizes(window)}, each a whole number of ticks")
        return cls(count.numerator, asked_ms, bins)

    def ticks(self, tick_hz: int, window_ticks: int) -> int:
        """Ticks per bin at `tick_hz`, checking the payload's window against the config's."""
        per_bin, problem = _bin_ticks(self.bins, self.bin_ms.numerator, self.bin_ms.denominator, tick_hz,
                                      window_ticks)
        if problem:
            raise CodecError(problem)
        return per_bin


@functools.lru_cache(maxsize=256)
def _bin_ticks(bins: int, numerator: int, denominator: int, tick_hz: int, window_ticks: int) -> tuple[int, str]:
    """(ticks per bin, "") or (0, why not), in exact fractions, once per clock a dataset uses
    (cached by plain ints: hashing fractions on every payload would cost more than decoding)."""
    bin_ms = Fraction(numerator, denominator)
    window = bins * bin_ms * tick_hz / 1000
    if window != window_ticks:
        return 0, (f"payload spans {window_ticks} ticks of 1/{tick_hz} s; the field's window of "
                   f"{ms_text(bins * bin_ms)} ms is {ms_text(window)} ticks")
    per_bin = bin_ms * tick_hz / 1000
    if per_bin.denominator != 1:
        return 0, (f"bin size {ms_text(bin_ms)} ms is not a whole number of ticks at this sample's "
                   f"resolution of {tick_hz} ticks/s; choose a bin size that is")
    return per_bin.numerator, ""


# -- payload helpers ------------------------------------------------------------------------------
def width_of(maximum: int) -> int:
    """The fewest bytes (1, 2 or 4) holding unsigned `maximum`."""
    return 1 if maximum < 1 << 8 else 2 if maximum < 1 << 16 else 4


def shuffled(values: np.ndarray, width: int) -> bytes:
    """`values` as `width`-byte little-endian integers, stored byte plane by byte plane."""
    raw = values.astype(f"<u{width}").view(np.uint8).reshape(-1, width)
    return raw.T.tobytes()


def unshuffled(data: memoryview, count: int, width: int) -> np.ndarray:
    """Inverse of `shuffled`: `count` unsigned integers (a read-only view for one byte each)."""
    planes = np.frombuffer(data, dtype=np.uint8, count=count * width)
    if width == 1:
        return planes
    return np.ascontiguousarray(planes.reshape(width, count).T).view(f"<u{width}").reshape(count)


def choose_grid(ticks: np.ndarray, tick_hz: int) -> int:
    """The coarsest step (ticks of one of `COMMON_CLOCKS` dividing `tick_hz`, else 1) on which
    at least 7/8 of `ticks` lie: the payload then stores steps and (mostly zero) remainders."""
    steps = sorted((tick_hz // c for c in COMMON_CLOCKS if tick_hz % c == 0 and tick_hz > c), reverse=True)
    for step in steps:
        if 8 * int(np.count_nonzero(ticks % step)) <= len(ticks):
            return step
    return 1


def sealed(payload: bytes) -> bytes:
    """`payload` followed by its CRC-32 (zlib's), a u32: damage is caught even unverified."""
    return payload + struct.pack("<I", zlib.crc32(payload))


def read_header(data: bytes | memoryview, magic: bytes) -> tuple[memoryview, tuple[int, ...]]:
    """The payload without its CRC-32 trailer, as a memoryview, and its header fields after the
    magic and version; CodecError unless its magic, version and CRC-32 are right."""
    view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    if len(view) < HEADER_BYTES + TRAILER_BYTES:
        raise CodecError(f"payload of {len(view)} bytes is shorter than the {HEADER_BYTES}-byte header and "
                         f"{TRAILER_BYTES}-byte CRC-32")
    got, version, *rest = HEADER.unpack_from(view)
    if got != magic:
        raise CodecError(f"payload does not start with {magic!r} (got {bytes(got)!r})")
    if version != VERSION:
        raise CodecError(f"payload version {version} is not one this neurocodec reads ({VERSION})")
    body = view[:-TRAILER_BYTES]
    if zlib.crc32(body) != int.from_bytes(view[-TRAILER_BYTES:], "little"):
        raise CodecError("payload does not match its CRC-32 (damaged)")
    tick_hz, window = rest[3], rest[4]
    if tick_hz == 0 or window == 0:
        raise CodecError(f"payload declares {tick_hz} ticks/s and a window of {window} ticks")
    return body, tuple(rest)


def check_units(field: FieldSpec, units: int, bins: int, itemsize: int) -> None:
    """The payload's unit count against the field's shape and value bound, before allocating."""
    shape = field.shape
    if shape is not None and len(shape) == 2 and shape[1] is not None and units != shape[1]:
        raise CodecError(f"payload holds {units} units, the manifest declares {shape[1]}")
    bound = field.value_bound
    if bound and bins * units * itemsize > bound:
        raise CodecError(f"payload declares {units} units, a value of {bins * units * itemsize} bytes at the "
                         f"stored bin size, above the manifest's {bound}")


def stored_field_problem(field: FieldSpec, bins: int, dtype: np.dtype) -> str | None:
    """Why the manifest's `field` is not one this codec decodes (an array of the config's dtype
    and shape (bins, units)), or None."""
    if field.kind != "array" or field.dtype != dtype.str:
        return f"field {field.name!r} must be an array of {dtype.str}, the manifest says {field.kind} {field.dtype}"
    if field.shape is None or len(field.shape) != 2 or field.shape[0] != bins:
        return f"field {field.name!r} must have shape ({bins}, units), the manifest says {field.shape}"
    return None


def refusing(problem: str) -> Callable[[bytes | memoryview], Any]:
    """A decoder refusing every payload because of `problem` with the field itself: each read
    then fails as the reader reports payload errors (ShardError naming shard and member)."""
    def decode(data: bytes | memoryview) -> Any:
        raise CodecError(problem)
    return decode