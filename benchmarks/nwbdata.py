"""The NWB workload: one session written with pynwb (units, LFP, position) and its raw HDF5 read.

The session has 96 units firing at ~5 Hz, 64 LFP channels at 1 kHz (float32, in
processing/ecephys/LFP) and a 2-d Position at 50 Hz (float32, in processing/behavior), all
starting at t=0. The converter's default windows (10 ms bins, 100 bins, 50% overlap) make one
sample per half second: spikes (100, 96), lfp (1000, 64), behavior (50, 2).
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import numpy as np

UNITS, CHANNELS, LFP_RATE, POSITION_RATE, FIRING_HZ = 96, 64, 1000.0, 50.0, 5.0


def make_session(path: Path, seconds: float) -> dict[str, Any]:
    """Write the session to `path`; return the bytes of its data arrays."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.behavior import Position, SpatialSeries
    from pynwb.ecephys import LFP, ElectricalSeries

    rng = np.random.default_rng(7)
    nwb = NWBFile(session_description="neurocodec benchmark", identifier="bench0",
                  session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
                  session_id="bench0")
    spike_bytes = 0
    for _ in range(UNITS):
        times = np.sort(rng.uniform(0.0, seconds, rng.poisson(FIRING_HZ * seconds)))
        spike_bytes += times.nbytes
        nwb.add_unit(spike_times=times)
    device = nwb.create_device("probe")
    group = nwb.create_electrode_group("shank0", description="shank", location="CA1", device=device)
    for _ in range(CHANNELS):
        nwb.add_electrode(group=group, location="CA1")
    region = nwb.create_electrode_table_region(list(range(CHANNELS)), "all electrodes")
    lfp = rng.standard_normal((int(seconds * LFP_RATE), CHANNELS), dtype=np.float32)
    series = ElectricalSeries(name="lfp", data=lfp, electrodes=region, rate=LFP_RATE, starting_time=0.0)
    nwb.create_processing_module("ecephys", "extracellular").add(LFP(electrical_series=[series]))
    xy = np.cumsum(rng.standard_normal((int(seconds * POSITION_RATE), 2), dtype=np.float32), axis=0,
                   dtype=np.float32)
    position = SpatialSeries(name="xy", data=xy, reference_frame="arena corner", rate=POSITION_RATE,
                             starting_time=0.0)
    nwb.create_processing_module("behavior", "behavior").add(Position(spatial_series=[position]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return {"data_bytes": spike_bytes + lfp.nbytes + xy.nbytes, "file_bytes": path.stat().st_size}


def read_hdf5(path: Path) -> int:
    """Read the session's LFP, position and spike times whole with h5py; return the bytes read."""
    import h5py

    total = 0
    with h5py.File(path, "r") as f:
        for name in ("processing/ecephys/LFP/lfp/data", "processing/behavior/Position/xy/data",
                     "units/spike_times", "units/spike_times_index"):
            total += f[name][()].nbytes
    return total
