"""The NWB workload: one session written with pynwb, and h5py reading its arrays raw.

The session holds one series per modality the benchmark converts, all starting at t=0:

- spikes: 96 units firing at ~5 Hz (`units/spike_times`, float64, and its index);
- lfp: 64 channels at 1 kHz, float32, in processing/ecephys/LFP;
- behavior: a 2-d Position at 50 Hz, float32, in processing/behavior;
- calcium: 500 ROIs at 30 Hz, float32 (time, rois), a RoiResponseSeries in
  processing/ophys/DfOverF (with its imaging plane and plane segmentation).

The converter's default windows (10 ms bins, 100 bins) make one sample per second without
overlap: spikes (100, 96), lfp (1000, 64), behavior (50, 2), calcium (30, 500).
`ARRAYS` names, per modality, the HDF5 datasets a conversion of that modality reads: the
bytes these hold are what the benchmark's MB/s counts.
"""

from __future__ import annotations

import datetime
import shutil
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

UNITS, CHANNELS, LFP_RATE, POSITION_RATE, FIRING_HZ = 96, 64, 1000.0, 50.0, 5.0
ROIS, IMAGING_RATE = 500, 30.0
MODALITIES = ("spikes", "lfp", "behavior", "calcium")
ARRAYS: dict[str, tuple[str, ...]] = {
    "spikes": ("units/spike_times", "units/spike_times_index"),
    "lfp": ("processing/ecephys/LFP/lfp/data",),
    "behavior": ("processing/behavior/Position/xy/data",),
    "calcium": ("processing/ophys/DfOverF/dff/data",),
}
DESCRIPTION = {
    "spikes": f"{UNITS} units at ~{FIRING_HZ:g} Hz (spike times, float64)",
    "lfp": f"LFP {CHANNELS} ch @ {LFP_RATE / 1000:g} kHz float32",
    "behavior": f"2-d position @ {POSITION_RATE:g} Hz float32",
    "calcium": f"dF/F {ROIS} ROIs @ {IMAGING_RATE:g} Hz float32",
}


def make_session(path: Path, seconds: float, copies: Sequence[Path] = ()) -> dict[str, Any]:
    """Write the session to `path` (and byte-identical copies to `copies`); return the bytes of
    each modality's arrays (`bytes`) and the file's size."""
    from pynwb import NWBHDF5IO, NWBFile

    rng = np.random.default_rng(7)
    nwb = NWBFile(session_description="neurocodec benchmark", identifier="bench0",
                  session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                  session_id="bench0")
    _add_units(nwb, rng, seconds)
    _add_lfp(nwb, rng, seconds)
    _add_position(nwb, rng, seconds)
    _add_calcium(nwb, rng, seconds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    for copy in copies:
        shutil.copyfile(path, copy)
    return {"bytes": {m: array_bytes(path, m) for m in MODALITIES}, "file_bytes": path.stat().st_size}


def _add_units(nwb: Any, rng: np.random.Generator, seconds: float) -> None:
    for _ in range(UNITS):
        nwb.add_unit(spike_times=np.sort(rng.uniform(0.0, seconds, rng.poisson(FIRING_HZ * seconds))))


def _add_lfp(nwb: Any, rng: np.random.Generator, seconds: float) -> None:
    from pynwb.ecephys import LFP, ElectricalSeries

    device = nwb.create_device("probe")
    group = nwb.create_electrode_group("shank0", description="shank", location="CA1", device=device)
    for _ in range(CHANNELS):
        nwb.add_electrode(group=group, location="CA1")
    region = nwb.create_electrode_table_region(list(range(CHANNELS)), "all electrodes")
    lfp = rng.standard_normal((int(seconds * LFP_RATE), CHANNELS), dtype=np.float32)
    series = ElectricalSeries(name="lfp", data=lfp, electrodes=region, rate=LFP_RATE, starting_time=0.0)
    nwb.create_processing_module("ecephys", "extracellular").add(LFP(electrical_series=[series]))


def _add_position(nwb: Any, rng: np.random.Generator, seconds: float) -> None:
    from pynwb.behavior import Position, SpatialSeries

    xy = np.cumsum(rng.standard_normal((int(seconds * POSITION_RATE), 2), dtype=np.float32), axis=0,
                   dtype=np.float32)
    position = SpatialSeries(name="xy", data=xy, reference_frame="arena corner", rate=POSITION_RATE,
                             starting_time=0.0)
    nwb.create_processing_module("behavior", "behavior").add(Position(spatial_series=[position]))


def _add_calcium(nwb: Any, rng: np.random.Generator, seconds: float) -> None:
    from pynwb.ophys import DfOverF, ImageSegmentation, OpticalChannel, RoiResponseSeries

    channel = OpticalChannel(name="green", description="GCaMP emission", emission_lambda=510.0)
    plane = nwb.create_imaging_plane(
        name="plane0", optical_channel=channel, imaging_rate=IMAGING_RATE, description="layer 2/3",
        device=nwb.create_device("microscope"), excitation_lambda=920.0, indicator="GCaMP6f", location="V1")
    ophys = nwb.create_processing_module("ophys", "optical physiology")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    cells = segmentation.create_plane_segmentation(name="cells", description="suite2p-like ROIs",
                                                   imaging_plane=plane)
    for i in range(ROIS):
        cells.add_roi(pixel_mask=[(i % 64, i // 64, 1.0)])
    rois = cells.create_roi_table_region(region=list(range(ROIS)), description="every ROI")
    traces = rng.standard_normal((int(seconds * IMAGING_RATE), ROIS), dtype=np.float32)
    dff = RoiResponseSeries(name="dff", data=traces, rois=rois, unit="n.a.", rate=IMAGING_RATE, starting_time=0.0)
    ophys.add(DfOverF(roi_response_series=[dff]))


def array_bytes(path: Path, modality: str) -> int:
    """Bytes the modality's arrays hold in the file (as read into memory)."""
    import h5py

    with h5py.File(path, "r") as f:
        return sum(f[name].size * f[name].dtype.itemsize for name in ARRAYS[modality])


def read_hdf5(path: Path, modalities: Sequence[str]) -> int:
    """Read the arrays of `modalities` with h5py in blocks of `RAW_BLOCK` bytes, each into one
    reused buffer (`read_direct`): the fastest way h5py reads them. (Reading each array whole
    into a new array varied between 0.4 and 3 GB/s from one fresh process to the next here: the
    first touch of a fresh allocation of hundreds of MB, not the read.) Return the bytes read."""
    import h5py

    total = 0
    with h5py.File(path, "r") as f:
        for modality in modalities:
            for name in ARRAYS[modality]:
                total += _read_blocks(f[name])
    return total


RAW_BLOCK = 8 << 20


def _read_blocks(dataset: Any) -> int:
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))
    rows = max(1, RAW_BLOCK // max(row_bytes, 1))
    buffer = np.empty((min(rows, dataset.shape[0]), *dataset.shape[1:]), dtype=dataset.dtype)
    for start in range(0, dataset.shape[0], rows):
        count = min(rows, dataset.shape[0] - start)
        dataset.read_direct(buffer, np.s_[start:start + count], np.s_[0:count])
    return dataset.shape[0] * row_bytes
