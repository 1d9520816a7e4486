"""NWB to shards: the public API for the converter and for modality plugins' extractors.

Plugin authors implement `NWBExtractor` (returned from the hook `neurocodec_nwb_extractor`) and
`ModalityReader`, usually by reusing `TimeSeriesReader` and the window helpers below.
"""

from neurocodec.nwb.context import read_column, table_columns
from neurocodec.nwb.extract import (
    NAN_POLICIES, ExtractOptions, ModalityReader, NWBError, NWBExtractor, find_objects, object_path, pick_series,
)
from neurocodec.nwb.series import TimeSeriesReader, electrode_ids
from neurocodec.nwb.windows import (
    EPS, GAP_TOLERANCE, LazySorted, WindowSpec, bin_spikes, bin_spikes_by_unit, first_index_at, rank_resample,
    samples_per_window,
)

__all__ = [
    "EPS", "ExtractOptions", "GAP_TOLERANCE", "LazySorted", "ModalityReader", "NAN_POLICIES", "NWBError",
    "NWBExtractor", "TimeSeriesReader", "WindowSpec", "bin_spikes", "bin_spikes_by_unit", "electrode_ids",
    "find_objects", "first_index_at", "object_path", "pick_series", "rank_resample", "read_column",
    "samples_per_window", "table_columns",
]
