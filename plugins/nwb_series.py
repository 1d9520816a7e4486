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
"""

from __future__ import annotations

from typing import Any

from neurocodec.nwb import (
    ExtractOptions, NWBError, NWBExtractor, TimeSeriesReader, electrode_ids, find_objects, object_path, pick_series,
)


def _reader(modality: str, series: Any, options: ExtractOptions, **ids: Any) -> TimeSeriesReader:
    return TimeSeriesReader(modality, series, options.path, options.nan_policy, ids=ids)


class LFPExtractor(NWBExtractor):
    """ElectricalSeries in an LFP container."""

    modality = "lfp"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The chosen LFP series, or None when the file has no LFP container."""
        from pynwb.ecephys import LFP, ElectricalSeries

        candidates = [s for s in find_objects(nwbfile, (ElectricalSeries,)) if isinstance(s.parent, LFP)]
        series = pick_series(candidates, options.series, self.modality, options.path)
        return None if series is None else _reader("lfp", series, options, channel_ids=electrode_ids(series))


class EEGExtractor(NWBExtractor):
    """An ElectricalSeries chosen by name (NWB has no EEG type of its own)."""

    modality = "eeg"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The series named by `series`, else the first whose name contains "eeg"."""
        from pynwb.ecephys import ElectricalSeries

        every = find_objects(nwbfile, (ElectricalSeries,))
        if options.series is None:
            named = [s for s in every if "eeg" in s.name.lower()]
            if not named and every:
                raise NWBError(f"{options.path}: no ElectricalSeries is named like EEG; pick one with "
                               f"series={{'eeg': name}} from: {', '.join(object_path(s) for s in every)}")
            series = named[0] if named else None
        else:
            series = pick_series(every, options.series, self.modality, options.path)
        return None if series is None else _reader("eeg", series, options, channel_ids=electrode_ids(series))


class BehaviorExtractor(NWBExtractor):
    """SpatialSeries, and TimeSeries inside behavior containers, anywhere in the file."""

    modality = "behavior"

    def open(self, nwbfile: Any, options: ExtractOptions) -> TimeSeriesReader | None:
        """The chosen behavioral series (values of shape (time, dims))."""
        from pynwb import TimeSeries
        from pynwb.behavior import (
            BehavioralTimeSeries, CompassDirection, EyeTracking, Position, PupilTracking, SpatialSeries,
        )

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
        series = pick_series(candidates, options.series, self.modality, options.path)
        return None if series is None else _reader("behavior", series, options)
