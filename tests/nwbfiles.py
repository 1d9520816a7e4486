"""NWB files for the NWB tests, written with pynwb: hand-built sessions and pynwb.testing.mock ones.

Every builder returns the path it wrote. Times are in seconds. Values that let tests check which
sample landed where are encoded in the data (`index_lfp` holds each sample's index, behavior
holds its timestamp, video frames hold their index in pixels (0, 0) and (0, 1)).
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from collections.abc import Sequence

import numpy as np
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.behavior import BehavioralTimeSeries, Position, SpatialSeries
from pynwb.ecephys import LFP, ElectricalSeries
from pynwb.file import Subject
from pynwb.image import ImageSeries

START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def new_file(identifier: str = "id0", session_id: str | None = "sess0", subject_id: str | None = "mouse1") -> NWBFile:
    """An empty NWBFile with session and subject ids."""
    subject = None if subject_id is None else Subject(subject_id=subject_id)
    return NWBFile(session_description="neurocodec test", identifier=identifier, session_start_time=START,
                   session_id=session_id, subject=subject)


def write(nwb: NWBFile, path: str | Path) -> Path:
    """Write `nwb` to `path` (pynwb warnings about test-style data silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with NWBHDF5IO(str(path), "w") as io:
            io.write(nwb)
    return Path(path)


def electrodes(nwb: NWBFile, count: int):
    """`count` electrodes (added once per file) and a region over all of them."""
    if nwb.electrodes is None or len(nwb.electrodes) == 0:
        device = nwb.create_device("probe")
        group = nwb.create_electrode_group("shank0", description="shank", location="CA1", device=device)
        for _ in range(count):
            nwb.add_electrode(group=group, location="CA1")
    return nwb.create_electrode_table_region(list(range(count)), "all electrodes")


def add_units(nwb: NWBFile, spikes: Sequence[np.ndarray], obs_intervals: Sequence[Sequence] | None = None,
              ids: Sequence[int] | None = None) -> None:
    """One unit per array of spike times, with optional observation intervals and ids per unit."""
    for u, times in enumerate(spikes):
        kwargs = {}
        if obs_intervals is not None:
            kwargs["obs_intervals"] = np.asarray(obs_intervals[u], dtype=float).reshape(-1, 2)
        if ids is not None:
            kwargs["id"] = int(ids[u])
        nwb.add_unit(spike_times=np.asarray(times, dtype=float), **kwargs)


def electrical_series(nwb: NWBFile, name: str, data: np.ndarray, *, rate: float | None = None,
                      starting_time: float | None = None, timestamps: np.ndarray | None = None,
                      **kwargs) -> ElectricalSeries:
    """An ElectricalSeries over the first `data.shape[1]` electrodes (not yet added anywhere)."""
    timing = ({"timestamps": timestamps} if timestamps is not None
              else {"rate": rate, "starting_time": starting_time or 0.0})
    with warnings.catch_warnings():  # the region's table joins the file only when the series does
        warnings.simplefilter("ignore")
        return ElectricalSeries(name=name, data=data, electrodes=electrodes(nwb, data.shape[1]), **timing, **kwargs)


def add_lfp(nwb: NWBFile, *series: ElectricalSeries) -> None:
    """ElectricalSeries into processing/ecephys/LFP."""
    module = nwb.processing.get("ecephys") or nwb.create_processing_module("ecephys", "extracellular")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.add(LFP(electrical_series=list(series)))


def behavior_module(nwb: NWBFile):
    """processing/behavior, created on first use."""
    return nwb.processing.get("behavior") or nwb.create_processing_module("behavior", "behavior")


def spatial_series(name: str, data: np.ndarray, *, timestamps: np.ndarray | None = None, rate: float | None = None,
                   starting_time: float = 0.0) -> SpatialSeries:
    """A SpatialSeries timed by `timestamps` or `rate`."""
    timing = {"timestamps": timestamps} if timestamps is not None else {"rate": rate, "starting_time": starting_time}
    return SpatialSeries(name=name, data=data, reference_frame="arena corner", **timing)


def video_series(name: str, frames: np.ndarray, rate: float, starting_time: float = 0.0) -> ImageSeries:
    """An in-file ImageSeries of frames."""
    return ImageSeries(name=name, data=frames, unit="n.a.", rate=rate, starting_time=starting_time)


def index_frames(count: int, height: int = 4, width: int = 5) -> np.ndarray:
    """uint8 frames whose pixels (0, 0) and (0, 1) hold the frame index (low, high byte)."""
    frames = np.zeros((count, height, width), dtype=np.uint8)
    frames[:, 0, 0] = np.arange(count) % 256
    frames[:, 0, 1] = np.arange(count) // 256
    return frames


def frame_index(frames: np.ndarray) -> np.ndarray:
    """The indices `index_frames` encoded."""
    return frames[:, 0, 0].astype(np.int64) + 256 * frames[:, 0, 1].astype(np.int64)


def random_spikes(rng: np.random.Generator, units: int, begin: float, end: float, mean: int = 200) -> list[np.ndarray]:
    """Sorted uniform spike times per unit; unit 1 has none."""
    return [np.zeros(0) if u == 1 else np.sort(rng.uniform(begin, end, rng.integers(mean // 2, mean * 2)))
            for u in range(units)]


def multirate_session(path: str | Path, *, t0: float = 3.25, seconds: float = 12.0, seed: int = 0,
                      trials: Sequence[tuple[float, float]] = ((4.0, 5.5), (7.0, 9.0))) -> Path:
    """Spikes, LFP at 1 kHz (rate, data = sample index), behavior at 50 Hz (timestamps, data =
    timestamp) and video at 30 Hz (rate), all from `t0`."""
    rng = np.random.default_rng(seed)
    nwb = new_file(identifier=f"multirate{seed}", session_id=f"session{seed}", subject_id=f"mouse{seed}")
    add_units(nwb, random_spikes(rng, 4, t0, t0 + seconds), [[[t0, t0 + seconds]]] * 4)
    n_lfp = int(seconds * 1000)
    lfp = np.stack([np.arange(n_lfp), -np.arange(n_lfp)], axis=1).astype(np.int32)
    add_lfp(nwb, electrical_series(nwb, "lfp", lfp, rate=1000.0, starting_time=t0))
    times = t0 + np.arange(round(seconds * 50)) / 50.0
    xy = np.stack([times, times * 2], 1)
    behavior_module(nwb).add(Position(spatial_series=spatial_series("xy", xy, timestamps=times)))
    nwb.add_acquisition(video_series("camera", index_frames(int(seconds * 30)), rate=30.0, starting_time=t0))
    for a, z in trials:
        nwb.add_trial(start_time=a, stop_time=z)
    return write(nwb, path)


def simple_session(path: str | Path, *, t0: float = 0.0, seconds: float = 10.0, seed: int = 0, units: int = 3,
                   identifier: str | None = None, lfp_rate: float = 500.0) -> Path:
    """Spikes plus a random float32 LFP (rate-timed): a small, valid file for converter tests."""
    rng = np.random.default_rng(seed)
    nwb = new_file(identifier=identifier or f"simple{seed}", session_id=f"simple{seed}", subject_id=f"rat{seed}")
    add_units(nwb, random_spikes(rng, units, t0, t0 + seconds, mean=50), [[[t0, t0 + seconds]]] * units)
    n = int(seconds * lfp_rate)
    add_lfp(nwb, electrical_series(nwb, "lfp", rng.standard_normal((n, 4)).astype(np.float32),
                                   rate=lfp_rate, starting_time=t0))
    return write(nwb, path)


def mock_session(path: str | Path, *, seed: int = 0) -> Path:
    """A file built only from pynwb.testing.mock: Units, an ElectricalSeries and a Position."""
    from pynwb.testing.mock.behavior import mock_Position, mock_SpatialSeries
    from pynwb.testing.mock.ecephys import mock_ElectricalSeries, mock_Units
    from pynwb.testing.mock.file import mock_NWBFile

    nwb = mock_NWBFile(identifier=f"mock{seed}", session_id=f"mock{seed}")
    mock_Units(num_units=5, max_spikes_per_unit=40, seed=seed, nwbfile=nwb)
    mock_ElectricalSeries(name="EEG", data=np.random.default_rng(seed).standard_normal((2000, 5)),
                          rate=200.0, starting_time=0.0, nwbfile=nwb)
    mock_Position(spatial_series=mock_SpatialSeries(name="pos", data=np.ones((100, 2)), rate=10.0), nwbfile=nwb)
    return write(nwb, path)


def external_video(name: str, files: Sequence[str], rate: float, frames: int) -> ImageSeries:
    """An ImageSeries whose frames live in external files (paths relative to the NWB file)."""
    return ImageSeries(name=name, external_file=list(files), starting_frame=[0] * len(files), format="external",
                       rate=rate, unit="n.a.", num_samples=frames)


def behavioral_timeseries(name: str, data: np.ndarray, rate: float, starting_time: float = 0.0) -> BehavioralTimeSeries:
    """A BehavioralTimeSeries container with one rate-timed TimeSeries."""
    return BehavioralTimeSeries(time_series=TimeSeries(name=name, data=data, unit="a.u.", rate=rate,
                                                       starting_time=starting_time))


def big_lfp_session(path: str | Path, megabytes: int, channels: int = 64, rate: float = 1000.0) -> Path:
    """A session whose float32 LFP holds about `megabytes` MB, written block by block: pynwb
    writes a small resizable dataset, then h5py appends, so the data are never in memory at once.
    LFP sample i of channel c holds (i % 65536) + c / 1000 (exact in float32)."""
    from hdmf.backends.hdf5.h5_utils import H5DataIO

    samples = megabytes * 2**20 // (4 * channels)
    block = 2**15
    nwb = new_file(identifier="big", session_id="big", subject_id="big")
    add_units(nwb, [np.linspace(0.0, samples / rate, 1000)])
    first = np.zeros((block, channels), dtype=np.float32)
    data = H5DataIO(first, maxshape=(None, channels), chunks=(1024, channels))
    add_lfp(nwb, electrical_series(nwb, "lfp", data, rate=rate, starting_time=0.0))
    write(nwb, path)
    column = np.arange(channels, dtype=np.float32) / 1000
    with h5py_file(path) as f:
        dataset = f["/processing/ecephys/LFP/lfp/data"]
        dataset.resize((samples, channels))
        for i0 in range(0, samples, block):
            rows = np.arange(i0, min(samples, i0 + block))
            dataset[i0:i0 + len(rows)] = (rows % 65536).astype(np.float32)[:, None] + column
    return Path(path)


def h5py_file(path: str | Path):
    """The file opened for appending with h5py."""
    import h5py

    return h5py.File(path, "r+")
