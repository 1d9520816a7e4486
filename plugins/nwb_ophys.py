"""NWB extractor for calcium imaging: RoiResponseSeries, as traces of shape (time, rois).

Candidates are every RoiResponseSeries anywhere in the file (in Fluorescence or DfOverF
containers, as suite2p, neuroconv and pynapple's inscopix/CNMF-E export write them). Each has a
kind:

- Deconvolved: the series' name or its container's name begins with "deconv" (any case);
- Neuropil: the series' name or its container's name begins with "neuropil" (any case);
- DfOverF: otherwise, a series in a DfOverF container;
- Fluorescence: otherwise (a Fluorescence container, or none).

By name because NWB has no type for either: suite2p writes `Deconvolved/Deconvolved` and
`Neuropil/Neuropil` as Fluorescence containers holding a series of the same name; neuroconv
writes series `Deconvolved` and `Neuropil` inside one `Fluorescence` container.

The default is the first, by HDF5 path, of the first kind present in the order DfOverF,
Fluorescence, Deconvolved, Neuropil. `series={"calcium": name_or_path}` picks any
RoiResponseSeries, or, named explicitly (name or path), any other TimeSeries that is not an
image series (its values then have shape (time, columns), no ROI ids, and its NWB type as kind).

Traces stored transposed, (rois, time), as suite2p's own NWB export does (pynwb warns about it),
are read as (time, rois). The rule: 2-D data is stored transposed when its first axis has as
many entries as the `rois` region names and its second does not, and, for a timestamped
series, the second axis has one entry per timestamp. A 1-D series (one ROI) becomes
(time, 1). Values come through `TimeSeriesReader` (physical units, window arithmetic).

Stored once per session in the manifest: `ids` holds `roi_ids` (the ids of the rois region's
table rows, in column order); the series' description adds `kind`, `stored_transposed`,
`plane_segmentation` (the table's name) and `imaging_plane`: `name`, `description`, `indicator`,
`location`, `imaging_rate_hz`, `excitation_lambda_nm`, `device` (None where the file has none).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from neurocodec.nwb import (
    ExtractOptions, NWBError, NWBExtractor, TimeSeriesReader, find_objects, object_path, pick_series,
)
from neurocodec_plugins.nwb_series import compatible_series

KINDS = ("DfOverF", "Fluorescence", "Deconvolved", "Neuropil")


def series_kind(series: Any) -> str:
    """The kind of a RoiResponseSeries (see the module docstring)."""
    from pynwb.ophys import DfOverF

    container = series.parent
    names = (series.name.lower(), str(getattr(container, "name", "")).lower())
    if any(n.startswith("deconv") for n in names):
        return "Deconvolved"
    if any(n.startswith("neuropil") for n in names):
        return "Neuropil"
    return "DfOverF" if isinstance(container, DfOverF) else "Fluorescence"


class TimeFirst:
    """A series' data seen with time on axis 0, for `TimeSeriesReader(data=...)`.

    Only plain slices along time are read: `view[i0:i1]` reads `data[:, i0:i1]` of data stored
    (rois, time) and returns it transposed, or `data[i0:i1]` of 1-D data as one column.
    """

    def __init__(self, data: Any, transposed: bool) -> None:
        self.stored, self.transposed = data, transposed
        shape = tuple(int(n) for n in data.shape)
        self.shape = shape[::-1] if transposed else (shape[0], 1)
        self.dtype = np.dtype(data.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"only plain slices along time are read, got {index!r}")
        if self.transposed:
            return np.ascontiguousarray(np.asarray(self.stored[:, index]).T)
        values = np.asarray(self.stored[index])
        return values.reshape(len(values), 1)


def stored_transposed(shape: tuple[int, ...], rois: int | None, timestamps: int | None) -> bool:
    """Whether 2-D data of `shape` is stored (rois, time) (the rule in the module docstring)."""
    if len(shape) != 2 or rois is None:
        return False
    first, second = shape
    return first == rois and second != rois and (timestamps is None or timestamps == second)


def roi_ids(region: Any) -> list[int]:
    """The ids of the rows a rois DynamicTableRegion names, in its order (the trace columns)."""
    rows = np.asarray(region.data[:], dtype=np.int64)
    ids = np.asarray(region.table.id[:], dtype=np.int64)
    return ids[rows].tolist()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    """A JSON-ready float: None for a missing or non-finite value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def plane_metadata(plane: Any) -> dict[str, Any]:
    """An ImagingPlane's metadata, JSON-ready."""
    device = getattr(plane, "device", None)
    return {"name": plane.name, "description": _text(plane.description), "indicator": _text(plane.indicator),
            "location": _text(plane.location), "imaging_rate_hz": _number(getattr(plane, "imaging_rate", None)),
            "excitation_lambda_nm": _number(plane.excitation_lambda),
            "device": None if device is None else _text(device.name)}


class CalciumReader(TimeSeriesReader):
    """A TimeSeriesReader whose description adds the series' kind, segmentation and plane."""

    def __init__(self, series: Any, options: ExtractOptions, data: Any, ids: Mapping[str, Any],
                 context: Mapping[str, Any]) -> None:
        super().__init__("calcium", series, options.path, options.nan_policy, ids=ids, data=data)
        self._context = dict(context)

    def describe(self) -> Mapping[str, Any]:
        """TimeSeriesReader's description plus kind, storage, plane segmentation and plane."""
        return {**super().describe(), **self._context}


class CalciumExtractor(NWBExtractor):
    """RoiResponseSeries anywhere in the file (see the module docstring for the default)."""

    modality = "calcium"

    def open(self, nwbfile: Any, options: ExtractOptions) -> CalciumReader | None:
        """A reader of the chosen series, or None when the file holds no RoiResponseSeries."""
        from pynwb.ophys import RoiResponseSeries

        candidates = find_objects(nwbfile, (RoiResponseSeries,))
        candidates.sort(key=lambda s: KINDS.index(series_kind(s)))  # stable: path order within a kind
        if options.series is not None:
            candidates += [s for s in compatible_series(nwbfile) if not isinstance(s, RoiResponseSeries)]
        series = pick_series(candidates, options.series, self.modality, options.path)
        return None if series is None else open_series(series, options)


def open_series(series: Any, options: ExtractOptions) -> CalciumReader:
    """A CalciumReader over `series`, read time first."""
    where = f"{options.path}: {object_path(series)}"
    shape = tuple(int(n) for n in series.data.shape)
    if len(shape) not in (1, 2):
        raise NWBError(f"{where} has data of shape {shape}; calcium traces are (time, rois)")
    region = getattr(series, "rois", None)
    try:
        ids = None if region is None else roi_ids(region)
    except (IndexError, KeyError, ValueError) as exc:
        raise NWBError(f"{where}: its rois region cannot be read ({type(exc).__name__}: {exc})") from None
    stamps = None if series.timestamps is None else len(series.timestamps)
    transposed = stored_transposed(shape, None if ids is None else len(ids), stamps)
    data = TimeFirst(series.data, transposed) if transposed or len(shape) == 1 else series.data
    if ids is not None and data.shape[1] != len(ids):
        raise NWBError(f"{where} has data of shape {shape} but its rois region names {len(ids)} ROIs "
                       "(neither axis matches)")
    context: dict[str, Any] = {"kind": series_kind(series) if region is not None else type(series).__name__,
                               "stored_transposed": transposed}
    table = None if region is None else region.table
    if table is not None:
        context["plane_segmentation"] = table.name
        plane = getattr(table, "imaging_plane", None)
        context["imaging_plane"] = None if plane is None else plane_metadata(plane)
    return CalciumReader(series, options, data, {} if ids is None else {"roi_ids": ids}, context)
