"""A reader for any regularly sampled NWB TimeSeries (rate or timestamps): lfp, eeg, behavior,
in-file video frames and fMRI volumes all use it.

Values are returned in the series' physical units: when the series declares a `conversion`,
`offset` or per-channel `channel_conversion`, samples become `data * conversion
(* channel_conversion) + offset` as float32 (float64 for float64 data); otherwise the stored
dtype is kept. Only the window's slice is ever read from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from neurocodec.nwb.extract import ModalityReader, NWBError, object_path
from neurocodec.nwb.windows import EPS, LazySorted, WindowSpec, first_index_at, samples_per_window

TIMESTAMP_BLOCK = 1 << 20


class TimeSeriesReader(ModalityReader):
    """Windows of a TimeSeries at its native rate, a fixed number of samples per window."""

    def __init__(self, modality: str, series: Any, path: Path, nan_policy: str = "error",
                 ids: Mapping[str, Any] | None = None, data: Any = None) -> None:
        self.modality, self.series, self.path, self.nan_policy = modality, series, path, nan_policy
        self.object_path = object_path(series)
        self._ids = dict(ids or {})
        # `data` stands in for series.data (time first), e.g. an adapter over a transposed dataset;
        # samples are only ever read from it as self.data[i0:i1] with plain slices.
        self.data = series.data if data is None else data
        self.length = len(self.data)
        if self.length == 0:
            raise NWBError(f"{path}: {self.object_path} holds no samples")
        if series.rate is not None:
            self.rate = float(series.rate)
            self.start = float(series.starting_time or 0.0)
            self.timestamps = None
            if not self.rate > 0:
                raise NWBError(f"{path}: {self.object_path} has rate {self.rate}, not positive")
        else:
            self.timestamps = series.timestamps
            if self.timestamps is None or len(self.timestamps) != self.length:
                raise NWBError(f"{path}: {self.object_path} has neither a rate nor one timestamp per sample")
            self._check_timestamps()
            head = np.asarray(self.timestamps[: min(self.length, 10001)], dtype=np.float64)
            interval = float(np.median(np.diff(head))) if len(head) > 1 else 0.0
            if not interval > 0:
                raise NWBError(f"{path}: {self.object_path}: cannot estimate a sampling rate from its timestamps")
            self.rate = 1.0 / interval
            self.start = float(head[0])
            self._search = LazySorted(self.timestamps)
        self.conversion = float(getattr(series, "conversion", 1.0) or 1.0)
        self.offset = float(getattr(series, "offset", 0.0) or 0.0)
        cc = getattr(series, "channel_conversion", None)
        self.channel_conversion = None if cc is None else np.asarray(cc[:], dtype=np.float64)

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
        if self.timestamps is None:
            return self.start, self.start + self.length / self.rate
        return self.start, float(self.timestamps[self.length - 1]) + 1.0 / self.rate

    def read(self, start: float, spec: WindowSpec) -> Mapping[str, np.ndarray] | None:
        """The window's samples (time first), or None if the series does not cover it."""
        count = samples_per_window(self.rate, spec.duration)
        if count < 1:
            raise NWBError(f"{self.path}: {self.object_path} at {self.rate:g} Hz has no sample in a "
                           f"window of {spec.duration:g} s; use longer windows")
        if self.timestamps is None:
            i0 = first_index_at(self.start, self.rate, start)
        else:
            i0 = self._search.searchsorted(start - EPS)
        i1 = i0 + count
        if i0 < 0 or i1 > self.length:
            return None
        if self.timestamps is not None:
            times = self._search.read(i0, i1)
            # A gap in the recording: the samples found do not lie inside the window.
            if times[0] - start > 1.0 / self.rate or times[-1] >= start + spec.duration + 1.0 / self.rate:
                return None
        values = self._physical(np.asarray(self.data[i0:i1]))
        if values.dtype.kind in "fc" and np.isnan(values).any():
            if self.nan_policy == "error":
                raise NWBError(f"{self.path}: {self.object_path} holds NaN in the window "
                               f"[{start:.6f}, {start + spec.duration:.6f}) s (nan_policy='skip_window' "
                               "skips such windows, 'keep' stores them)")
            if self.nan_policy == "skip_window":
                return None
        return {self.modality: values}

    def blank(self, spec: WindowSpec) -> Mapping[str, np.ndarray]:
        """Zeros of the shape and dtype `read` returns."""
        count = samples_per_window(self.rate, spec.duration)
        sample = self._physical(np.zeros((1, *self.data.shape[1:]), dtype=self.data.dtype))
        return {self.modality: np.zeros((count, *sample.shape[1:]), dtype=sample.dtype)}

    def _physical(self, raw: np.ndarray) -> np.ndarray:
        if self.conversion == 1.0 and self.offset == 0.0 and self.channel_conversion is None:
            return raw
        dtype = np.float64 if raw.dtype == np.float64 else np.float32
        values = raw.astype(np.float64) * self.conversion
        if self.channel_conversion is not None:
            # channels are axis 1; a 1-D series is one channel (its one factor broadcasts over time)
            shape = (1, -1) + (1,) * (raw.ndim - 2) if raw.ndim > 1 else (-1,)
            values = values * self.channel_conversion.reshape(shape)
        return (values + self.offset).astype(dtype)

    def ids(self) -> Mapping[str, Any]:
        """Channel ids, when known."""
        return self._ids

    def describe(self) -> Mapping[str, Any]:
        """Object path, name, rate, timing source, shape, dtype, and the series' unit,
        conversion, offset and description (JSON-ready)."""
        return {"object": self.object_path, "name": str(self.series.name), "rate_hz": self.rate,
                "timing": "rate" if self.timestamps is None else "timestamps",
                "shape": [int(n) for n in self.data.shape], "dtype": str(self.data.dtype),
                "unit": _text(getattr(self.series, "unit", None)), "conversion": self.conversion,
                "offset": self.offset, "description": _text(getattr(self.series, "description", None))}


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
