"""A reader for any regularly sampled NWB TimeSeries (rate or timestamps): lfp, eeg, behavior,
calcium, in-file video frames and fMRI volumes all use it.

Which samples a window holds (rate or timestamps, jitter, gaps) is documented in
`neurocodec.nwb.windows`. Every output is at least 2-D, time first: (time, channels/dims); a
1-D series gives (time, 1). Values are returned in the series' physical units: when the series
declares a `conversion`, `offset` or per-channel `channel_conversion`, samples become
`data * conversion (* channel_conversion) + offset` computed in float64 and stored as float32
(float64 for float64 data); otherwise the stored dtype is kept. The source is read in blocks
of a few MiB with a forward cursor (`neurocodec.nwb.windows.BlockCursor`), never whole.

Integer series with such a scale may instead be kept as they are stored: after
`keep_integers(...)` (see `KeepIntegers`, which the built-in continuous modalities use when the
converter asks for neural codecs), `read` gives `ScaledSignal` values (the raw integers of the
window and the session's scale) and `codecs()` declares the `scaled-int` codec for them, which
decodes to exactly the float32 values above, or to the raw integers on request.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.nwb.extract import ModalityReader, NWBError, object_path
from neurocodec.nwb.windows import (
    EPS, GAP_TOLERANCE, BlockCursor, TimestampCursor, WindowSpec, first_index_at, physical, rank_resample,
    samples_per_window,
)

TIMESTAMP_BLOCK = 1 << 20
MAX_NDIM = 32


def _finite(value: Any, what: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def _conversion(value: Any) -> float:
    return _finite(value, "conversion")


def _offset(value: Any) -> float:
    return _finite(value, "offset")


def _factors(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    factors = np.asarray(value, dtype=np.float64).reshape(-1)
    if factors.flags.writeable:  # a copy nobody else holds; a read-only float64 array is kept as is
        factors = factors.copy()
        factors.flags.writeable = False
    if not np.all(np.isfinite(factors)):
        raise ValueError("channel_conversion must hold finite numbers")
    return factors


@attrs.frozen(slots=True, eq=False)
class ScaledSignal:
    """Raw integer samples (time first, at least 1-D) and their scale to physical units:
    `raw * conversion (* channel_conversion along axis 1) + offset`, computed in float64 and
    stored as float32 (`physical()`).

    What `TimeSeriesReader` gives for an integer series kept as stored (`keep_integers`), and the
    value a writer takes for a field stored with the `scaled-int` codec, which keeps the integers
    and decodes to `physical()` by default or to `raw` on request.
    """

    raw: np.ndarray = attrs.field()
    conversion: float = attrs.field(default=1.0, converter=_conversion)
    offset: float = attrs.field(default=0.0, converter=_offset)
    channel_conversion: np.ndarray | None = attrs.field(default=None, converter=_factors)

    @raw.validator
    def _check_raw(self, attribute: Any, raw: Any) -> None:
        if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "iu" or not npy.is_storable_dtype(raw.dtype):
            raise TypeError(f"ScaledSignal.raw must be a numpy array of integers, got "
                            f"{getattr(raw, 'dtype', type(raw).__name__)}")
        if not 1 <= raw.ndim <= MAX_NDIM:
            raise ValueError(f"ScaledSignal.raw must have 1 to {MAX_NDIM} dimensions, got shape {raw.shape}")

    def __attrs_post_init__(self) -> None:
        factors = self.channel_conversion
        if factors is not None and (self.raw.ndim < 2 or len(factors) != self.raw.shape[1]):
            raise ValueError(f"channel_conversion has {len(factors)} factors but the samples have shape "
                             f"{self.raw.shape}: one factor per channel (axis 1) is needed")

    def physical(self) -> np.ndarray:
        """The samples in physical units (float32), as the `scaled-int` codec decodes them."""
        if not self.raw.size:  # `physical` steps along axis 0 even when another axis is empty
            return np.zeros(self.raw.shape, np.float32)
        return physical(self.raw, self.conversion, self.channel_conversion, self.offset)


class TimeSeriesReader(ModalityReader):
    """Windows of a TimeSeries at its native rate, a fixed number of samples per window.

    `data`, when given, stands in for `series.data`: an array-like, time first, with `shape`,
    `dtype`, `__len__` and `__getitem__(slice)` (e.g. an adapter over traces stored transposed);
    samples are only ever read from it as `data[i0:i1]`.

    The arrays `read` returns are read-only: they are usually views of the block of the source
    read for several windows (copy one to change it).
    """

    def __init__(self, modality: str, series: Any, path: Path, nan_policy: str = "error",
                 ids: Mapping[str, Any] | None = None, data: Any = None) -> None:
        self.modality, self.series, self.path, self.nan_policy = modality, series, path, nan_policy
        self.object_path = object_path(series)
        self._ids = dict(ids or {})
        self.data = series.data if data is None else data
        self.length = len(self.data)
        if self.length == 0:
            raise NWBError(f"{path}: {self.object_path} holds no samples")
        if series.rate is not None:
            self._time_by_rate(series)
        else:
            self._time_by_timestamps(series)
        self.conversion = float(getattr(series, "conversion", 1.0) or 1.0)
        self.offset = float(getattr(series, "offset", 0.0) or 0.0)
        cc = getattr(series, "channel_conversion", None)
        self.channel_conversion = None if cc is None else np.asarray(cc[:], dtype=np.float64)
        if self.channel_conversion is not None:
            self.channel_conversion.flags.writeable = False  # shared by every ScaledSignal read
        self.resampled_windows = 0
        self._integer_codec: dict[str, Any] | None = None  # set by keep_integers
        self._rows = BlockCursor(self.data, self._transform)

    def _time_by_rate(self, series: Any) -> None:
        self.rate = float(series.rate)
        self.start = float(series.starting_time or 0.0)
        self.timestamps = None
        if not self.rate > 0:
            raise NWBError(f"{self.path}: {self.object_path} has rate {self.rate}, not positive")
        self.end = self.start + self.length / self.rate

    def _time_by_timestamps(self, series: Any) -> None:
        self.timestamps = series.timestamps
        if self.timestamps is None or len(self.timestamps) != self.length:
            raise NWBError(f"{self.path}: {self.object_path} has neither a rate nor one timestamp per sample")
        self._check_timestamps()
        head = np.asarray(self.timestamps[: min(self.length, 10001)], dtype=np.float64)
        interval = float(np.median(np.diff(head))) if len(head) > 1 else 0.0
        if not interval > 0:
            raise NWBError(f"{self.path}: {self.object_path}: cannot estimate a sampling rate from its timestamps")
        self.rate, self.interval = 1.0 / interval, interval
        self.start = float(head[0])
        self.end = float(self.timestamps[self.length - 1]) + 1.0 / self.rate
        self._times = TimestampCursor(self.timestamps, self.length)

    def _check_timestamps(self) -> None:
        previous = -np.inf
        for i0 in range(0, self.length, TIMESTAMP_BLOCK):
            block = np.asarray(self.timestamps[i0:i0 + TIMESTAMP_BLOCK], dtype=np.float64)
            if not np.all(np.isfinite(block)):
                bad = i0 + int(np.argmin(np.isfinite(block)))
                raise NWBError(f"{self.path}: {self.object_path} timestamp {bad} is not finite")
            steps = np.diff(np.concatenate(([previous], block)))
            if np.any(steps < 0):
                bad = i0 + int(np.argmax(steps < 0))
                raise NWBError(f"{self.path}: {self.object_path} timestamps are not monotonic at index {bad} "
                               f"({previous if bad == i0 else block[bad - i0 - 1]} then {block[bad - i0]})")
            previous = block[-1]

    def span(self) -> tuple[float, float]:
        """[first sample time, last sample time + one interval)."""
        return self.start, self.end

    def read(self, start: float, spec: WindowSpec) -> Mapping[str, np.ndarray] | None:
        """The window's samples (time first, at least 2-D), or None if the series does not cover it."""
        count = self._count(spec)
        if self.timestamps is None:
            values = self._rate_rows(start, count)
        else:
            values = self._stamped_rows(start, start + spec.duration, count)
        if values is None:
            return None
        if self._rows.has_nan and np.isnan(values).any():
            if self.nan_policy == "error":
                raise NWBError(f"{self.path}: {self.object_path} holds NaN in the window "
                               f"[{start:.6f}, {start + spec.duration:.6f}) s (nan_policy='skip_window' "
                               "skips such windows, 'keep' stores them)")
            if self.nan_policy == "skip_window":
                return None
        values.flags.writeable = False  # usually a view of the block neighbouring windows share
        if self._integer_codec is not None:
            return {self.modality: ScaledSignal(values, self.conversion, self.offset, self.channel_conversion)}
        return {self.modality: values}

    def _count(self, spec: WindowSpec) -> int:
        count = samples_per_window(self.rate, spec.duration)
        if count < 1:
            raise NWBError(f"{self.path}: {self.object_path} at {self.rate:g} Hz has no sample in a "
                           f"window of {spec.duration:g} s; use longer windows")
        return count

    def _rate_rows(self, start: float, count: int) -> np.ndarray | None:
        i0 = first_index_at(self.start, self.rate, start)
        if i0 < 0 or i0 + count > self.length:
            return None
        return self._rows.rows(i0, i0 + count)

    def _stamped_rows(self, start: float, stop: float, count: int) -> np.ndarray | None:
        """The samples in [start, stop) resampled by rank to `count`; None where not covered."""
        if start < self.start - EPS or stop > self.end + EPS:
            return None
        i0, i1, around = self._times.locate(start, stop)
        if i1 == i0 or self._gap_in(around, start, stop):
            return None
        rows = self._rows.rows(i0, i1)
        if i1 - i0 == count:
            return rows
        self.resampled_windows += 1
        return rows[rank_resample(i1 - i0, count)]

    def _gap_in(self, around: np.ndarray, start: float, stop: float) -> bool:
        """Whether a gap overlaps [start, stop): between samples a and b more than GAP_TOLERANCE
        intervals apart, the time [a + interval, b) that no sample stands for."""
        big = np.diff(around) > GAP_TOLERANCE * self.interval
        if not big.any():
            return False
        before, after = around[:-1][big], around[1:][big]
        return bool(np.any((before + self.interval < stop - EPS) & (after > start + EPS)))

    def blank(self, spec: WindowSpec) -> Mapping[str, Any]:
        """Zeros of the shape and dtype `read` returns (kept integers: zeros with scale 1 and
        offset 0, which decode to the same float32 zeros)."""
        count = samples_per_window(self.rate, spec.duration)
        sample = self._transform(np.zeros((1, *self.data.shape[1:]), dtype=self.data.dtype))
        zeros = np.zeros((count, *sample.shape[1:]), dtype=sample.dtype)
        return {self.modality: zeros if self._integer_codec is None else ScaledSignal(zeros)}

    @property
    def scaled_integers(self) -> bool:
        """Whether the series stores integers with a scale to physical units (a conversion,
        offset or channel_conversion other than the identity, all finite, one factor per channel)
        that `keep_integers` can keep as stored."""
        if np.dtype(self.data.dtype).kind not in "iu" or not self._scaled():
            return False
        cc = self.channel_conversion
        finite = math.isfinite(self.conversion) and math.isfinite(self.offset) and \
            (cc is None or bool(np.all(np.isfinite(cc))))
        channels = self.data.shape[1] if len(self.data.shape) > 1 else 1
        return finite and (cc is None or len(cc) == channels)

    def keep_integers(self, codec: Mapping[str, Any]) -> bool:
        """Read windows as `ScaledSignal`s (the raw integers and the scale) instead of physical
        floats, and declare `codec` (a `scaled-int` config) for them in `codecs()`, when the series
        has `scaled_integers`; whether it does. Call it before the first `read`."""
        if self._rows.current is not None:
            raise RuntimeError(f"{self.object_path}: keep_integers must be called before the first read")
        if not self.scaled_integers:
            return False
        self._integer_codec = dict(codec)
        return True

    def codecs(self) -> Mapping[str, Mapping[str, Any]]:
        """The `scaled-int` config of the modality's field when integers are kept, else none."""
        return {} if self._integer_codec is None else {self.modality: dict(self._integer_codec)}

    def _scaled(self) -> bool:
        return not (self.conversion == 1.0 and self.offset == 0.0 and self.channel_conversion is None)

    def _transform(self, raw: np.ndarray) -> np.ndarray:
        """Stored rows as returned: (time, 1) for a 1-D series, in physical units unless the
        integers are kept."""
        rows = raw.reshape(len(raw), 1) if raw.ndim == 1 else raw
        if self._integer_codec is not None or not self._scaled():
            return rows
        return physical(rows, self.conversion, self.channel_conversion, self.offset)

    def ids(self) -> Mapping[str, Any]:
        """Channel ids, when known."""
        return self._ids

    def describe(self) -> Mapping[str, Any]:
        """Object path, name, rate, timing source, shape, dtype, the series' unit, conversion,
        offset, channel_conversion (None, or one factor per channel) and description, whether its
        integers are stored as they are (`raw_integers`: then this is the scale the values
        decode with), and how many windows so far were resampled by rank (JSON-ready)."""
        cc = self.channel_conversion
        return {"object": self.object_path, "name": str(self.series.name), "rate_hz": self.rate,
                "timing": "rate" if self.timestamps is None else "timestamps",
                "shape": [int(n) for n in self.data.shape], "dtype": str(self.data.dtype),
                "unit": _text(getattr(self.series, "unit", None)), "conversion": _json_number(self.conversion),
                "offset": _json_number(self.offset),
                "channel_conversion": None if cc is None else [_json_number(v) for v in cc.tolist()],
                "raw_integers": self._integer_codec is not None,
                "description": _text(getattr(self.series, "description", None)),
                "resampled_windows": self.resampled_windows}


def _json_number(value: float) -> float | str:
    """A float for JSON: finite as it is, else its name ('nan', 'inf', '-inf'), since the
    manifest is strict JSON."""
    return value if math.isfinite(value) else str(value)


def _text(value: Any) -> str:
    """An NWB text attribute as str ('' when absent; bytes decoded)."""
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def electrode_ids(series: Any) -> list[int]:
    """The electrode table ids of an ElectricalSeries' channels (stable per session)."""
    region = getattr(series, "electrodes", None)
    if region is None:
        return []
    rows = np.asarray(region.data[:], dtype=np.int64)
    table_ids = np.asarray(region.table.id[:], dtype=np.int64)
    return table_ids[rows].tolist()
