"""NWB extractors for the continuous modalities: lfp, eeg and behavior.

Default choices when a file holds several candidates (reported in the converter's summary):

- lfp: the first ElectricalSeries inside an `LFP` container, by HDF5 path;
- eeg: the first ElectricalSeries whose name contains "eeg" (any case), by HDF5 path; with none
  so named, pick one with `series={"eeg": name}` (the error lists the candidates);
- behavior: SpatialSeries and TimeSeries inside behavior containers (Position,
  BehavioralTimeSeries, CompassDirection, PupilTracking, EyeTracking), anywhere in the file;
  by default the first, by HDF5 path, of the first kind present in this order: series in a
  Position container, other SpatialSeries, BehavioralTimeSeries, then the rest (so position is
  preferred over head direction or pupil size).

`series={modality: name or HDF5 path}` picks among every TimeSeries of a compatible kind in the
file, not only the default candidates (`compatible_series`): for lfp, eeg and behavior alike,
any TimeSeries with numeric data stored in the file that is not an ImageSeries, e.g. a raw
ElectricalSeries in acquisition (outside an `LFP` container), a `sleep_ripples` TimeSeries, an
OptogeneticSeries, or running speed, wheel or licks in acquisition or any container. A name that
matches none is an error listing every compatible series by path; a name several series share is
an error listing their paths (give the path). Channel ids are stored for series that have
electrodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neurocodec.nwb import (
    ExtractOptions, NWBError, NWBExtractor, TimeSeriesReader, electrode_ids, find_objects, object_path, pick_series,
)


def compatible_series(nwbfile: Any) -> list[Any]:
    """Every TimeSeries of the file that a continuous modality can read when named explicitly:
    numeric (or boolean) data stored in the file, not an ImageSeries; sorted by HDF5 path."""
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries

    return [s for s in find_objects(nwbfile, (TimeSeries,)) if not isinstance(s, ImageSeries) and _numeric(s)]


def _numeric(series: Any) -> bool:
    data = series.data
    dtype, shape = getattr(data, "dtype", None), getattr(data, "shape", None)
    return dtype is not None and np.dtype(dtype).kind in "biuf" and bool(shape) and shape[0] > 0


def _reader(modality: str, series: Any, options: ExtractOptions) -> TimeSeriesReader:
    ids = {"channel_ids": electrode_ids(series)} if getattr(series, "electrodes", None) is not None else {}
    return TimeSeriesReader(modality, series, options.path, options.nan_policy, ids=ids)


def _named(nwbfile: Any, options: ExtractOptions, modality: str) -> Any:
    """The series `options.series` names (by name or path) among every compatible series;
    NWBError listing them by path when none matches, or those sharing the name when several do."""
    return pick_series(compatible_series(nwbfile), options.series, modality, options.path)


class LFPExtractor(NWBExtractor):
    """An ElectricalSeries in an LFP container, or any compatible series by name."""

    modality = "lfp"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The series named by `series` (any compatible one), else the first in an LFP container;
        None when there is none."""
        from pynwb.ecephys import LFP, ElectricalSeries

        if options.series is not None:
            return _reader("lfp", _named(nwbfile, options, self.modality), options)
        candidates = [s for s in find_objects(nwbfile, (ElectricalSeries,)) if isinstance(s.parent, LFP)]
        return _reader("lfp", candidates[0], options) if candidates else None


class EEGExtractor(NWBExtractor):
    """An ElectricalSeries named like EEG, or any compatible series by name (NWB has no EEG type)."""

    modality = "eeg"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The series named by `series` (any compatible one), else the first ElectricalSeries
        whose name contains "eeg"."""
        from pynwb.ecephys import ElectricalSeries

        if options.series is not None:
            return _reader("eeg", _named(nwbfile, options, self.modality), options)
        every = find_objects(nwbfile, (ElectricalSeries,))
        named = [s for s in every if "eeg" in s.name.lower()]
        if not named and every:
            raise NWBError(f"{options.path}: no ElectricalSeries is named like EEG; pick one with "
                           f"series={{'eeg': name}} from: {', '.join(object_path(s) for s in every)}")
        return _reader("eeg", named[0], options) if named else None


class BehaviorExtractor(NWBExtractor):
    """SpatialSeries and TimeSeries inside behavior containers, or any compatible series by name."""

    modality = "behavior"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The series named by `series` (any compatible one), else the preferred behavioral
        series (values of shape (time, dims))."""
        from pynwb import TimeSeries
        from pynwb.behavior import (
            BehavioralTimeSeries, CompassDirection, EyeTracking, Position, PupilTracking, SpatialSeries,
        )

        if options.series is not None:
            return _reader("behavior", _named(nwbfile, options, self.modality), options)
        containers = (Position, BehavioralTimeSeries, CompassDirection, PupilTracking, EyeTracking)
        candidates = [s for s in find_objects(nwbfile, (TimeSeries,))
                      if isinstance(s, SpatialSeries) or isinstance(s.parent, containers)]

        def preference(s: Any) -> int:
            if isinstance(s.parent, Position):
                return 0
            if isinstance(s, SpatialSeries):
                return 1
            return 2 if isinstance(s.parent, BehavioralTimeSeries) else 3

        candidates.sort(key=preference)  # stable: path order within a kind
        return _reader("behavior", candidates[0], options) if candidates else None
