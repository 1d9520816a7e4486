"""TimeSeriesReader: which samples a window holds (rate and timestamps, jitter and real gaps),
its output shape, the `data=` stand-in for a series' data and what describe() reports.

Values are checked against the file read independently with h5py.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO, TimeSeries

import nwbfiles
from neurocodec.nwb import TimeSeriesReader, WindowSpec


def write_series(tmp_path: Path, name: str, data: np.ndarray, **timing) -> Path:
    """A file holding one acquisition TimeSeries `name`."""
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(TimeSeries(name=name, data=data, unit="cm/s", description="running speed",
                                   conversion=timing.pop("conversion", 1.0), **timing))
    return nwbfiles.write(nwb, tmp_path / f"{name}.nwb")


class Transposed:
    """A (rois, time) h5py dataset seen time first; records every index it is read with."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.shape = dataset.shape[::-1]
        self.dtype = dataset.dtype
        self.keys: list = []

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        self.keys.append(key)
        return self.dataset[:, key].T


def test_data_stands_in_for_the_series_data(tmp_path):
    stored = np.arange(3 * 400, dtype=np.float32).reshape(3, 400)  # (rois, time), as some pipelines store
    path = write_series(tmp_path, "traces", stored, rate=100.0, starting_time=2.0)
    spec = WindowSpec.from_user(10, 20, 0.0)
    with NWBHDF5IO(str(path), "r") as io:
        series = io.read().acquisition["traces"]
        adapter = Transposed(series.data)
        reader = TimeSeriesReader("calcium", series, path, data=adapter)
        assert reader.span() == (2.0, 6.0)
        for k in range(19):
            start = 2.0 + 0.2 * k
            window = reader.read(start, spec)["calcium"]
            np.testing.assert_array_equal(window, stored.T[20 * k:20 * k + 20])
        assert reader.blank(spec)["calcium"].shape == (20, 3)
        assert reader.describe()["shape"] == [400, 3]
    assert adapter.keys and all(type(key) is slice and key.step is None for key in adapter.keys)


def test_describe_reports_the_series(tmp_path):
    path = write_series(tmp_path, "speed", np.arange(100, dtype=np.int16), rate=10.0, conversion=0.5)
    with NWBHDF5IO(str(path), "r") as io:
        described = TimeSeriesReader("behavior", io.read().acquisition["speed"], path).describe()
    assert described == {"object": "/acquisition/speed", "name": "speed", "rate_hz": 10.0, "timing": "rate",
                         "shape": [100], "dtype": "int16", "unit": "cm/s", "conversion": 0.5, "offset": 0.0,
                         "description": "running speed"}
