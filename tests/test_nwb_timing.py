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
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import GAP_TOLERANCE, TimeSeriesReader, WindowSpec
from neurocodec.nwb import windows
from neurocodec.nwb.windows import BlockCursor, TimestampCursor
from neurocodec.nwb.converter import NWBToWebDatasetConverter

STAMPS = "/processing/behavior/BehavioralTimeSeries/running_speed"


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
                         "description": "running speed", "resampled_windows": 0, "channel_conversion": None,
                         "raw_integers": False}


# -- timestamped series: jitter, gaps, window edges (issue 13 defects 1 and 2) ---------------------
def stamped_file(tmp_path: Path, times: np.ndarray, name: str = "stamped.nwb") -> Path:
    """A 1-D behavior TimeSeries whose values are its own timestamps (so a window's values say
    which samples it holds), next to units spanning the same time."""
    nwb = nwbfiles.new_file()
    nwbfiles.add_units(nwb, [np.linspace(times[0], times[-1], 50)])
    series = TimeSeries(name="running_speed", data=times.copy(), unit="cm/s", timestamps=times)
    nwbfiles.behavior_module(nwb).add(nwbfiles.BehavioralTimeSeries(time_series=series))
    return nwbfiles.write(nwb, tmp_path / name)


def convert(tmp_path: Path, path: Path, **kwargs):
    """Convert behavior alone (10 ms bins, 50 per window, 50% overlap); (summary, Dataset)."""
    kwargs = {"bin_size_ms": 10, "sequence_length": 50, "overlap": 0.5, "progress": False, "fsync": False,
              **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / "out", 16, ["behavior"], **kwargs)
    converter.convert_nwb_file(path)
    return converter.finalize(), Dataset(tmp_path / "out")


def stored_timestamps(path: Path) -> np.ndarray:
    """The series' timestamps as h5py reads them."""
    with h5py.File(path, "r") as f:
        return f[STAMPS + "/timestamps"][()]


def check_windows(ds: Dataset, times: np.ndarray, count: int) -> list[float]:
    """Every window holds `count` samples, all of its own time span, and every sample of that
    span (one dropped per sample beyond `count`); return the window starts."""
    starts = []
    for i in range(len(ds)):
        sample = ds[i]
        start, stop = sample["metadata"]["start_time"], sample["metadata"]["stop_time"]
        values = sample["behavior"]
        assert values.shape == (count, 1) and values.dtype == np.float64
        assert np.isin(values[:, 0], times).all()
        assert (values >= start - 1e-9).all() and (values < stop).all()  # never one at or after stop
        inside = times[(times >= start - 1e-9) & (times < stop - 1e-9)]
        assert len(np.setdiff1d(inside, values)) == max(0, len(inside) - count)
        assert (np.diff(values[:, 0]) >= 0).all()
        starts.append(start)
    return starts


def test_one_early_and_one_late_sample_lose_no_window(tmp_path):
    times = 5.0 + np.arange(2000) / 100.0
    times[500] -= 0.0005  # the sample at a window start (10.0 s) 0.5 ms early, the next one 0.5 ms late
    times[501] += 0.0005
    path = stamped_file(tmp_path, times)
    summary, ds = convert(tmp_path, path)
    grid = 5.0 + 0.25 * np.arange((2000 - 50) // 25 + 1)
    assert summary["skipped_windows"] == 0 and len(ds) == len(grid)
    np.testing.assert_allclose(check_windows(ds, stored_timestamps(path), 50), grid, atol=1e-9)
    window = ds[20]["behavior"][:, 0]  # [10.0, 10.5): 49 samples, one of them repeated
    assert ds[20]["metadata"]["start_time"] == pytest.approx(10.0)
    assert window[0] == times[501] and len(np.unique(window)) == 49


def test_ordinary_jitter_at_60_hz_loses_no_window(tmp_path):
    rng = np.random.default_rng(60)
    n = 60 * 300
    times = 20.0 + np.arange(n) / 60.0 + rng.normal(0, 0.03 / 60.0, n)  # 3 % of the interval
    path = stamped_file(tmp_path, times)
    summary, ds = convert(tmp_path, path)
    begin, end = times[0], times[-1] + 1 / 60.0
    assert summary["skipped_windows"] == 0
    assert len(ds) == len(WindowSpec.from_user(10, 50, 0.5).starts(begin, end)) > 1000
    check_windows(ds, stored_timestamps(path), 30)


def test_no_window_holds_a_sample_at_or_after_its_stop(tmp_path):
    # a stretch where the clock runs 2 % slow: 49 samples per half second, no gap
    intervals = np.concatenate((np.full(1000, 0.01), np.full(1000, 0.0102), np.full(1000, 0.01)))
    times = 3.0 + np.concatenate(([0.0], np.cumsum(intervals)))
    path = stamped_file(tmp_path, times)
    summary, ds = convert(tmp_path, path)
    check_windows(ds, stored_timestamps(path), 50)  # values < stop_time in every window
    assert summary["skipped_windows"] == 0


def test_a_real_gap_loses_exactly_the_windows_overlapping_it(tmp_path):
    rng = np.random.default_rng(7)
    nominal = 2.0 + np.arange(3000) / 100.0
    times = nominal + rng.normal(0, 0.0002, len(nominal))
    keep = (nominal < 12.13) | (nominal >= 14.87)  # nothing recorded in [12.13, 14.87)
    times = times[keep]
    path = stamped_file(tmp_path, times)
    summary, ds = convert(tmp_path, path)
    grid = WindowSpec.from_user(10, 50, 0.5).starts(times[0], times[-1] + 0.01)
    overlapping = (grid < 14.87) & (grid + 0.5 > 12.13)
    assert overlapping.sum() == 13 and summary["skipped_windows"] == 13
    np.testing.assert_allclose(check_windows(ds, stored_timestamps(path), 50), grid[~overlapping], atol=1e-9)


def test_gap_tolerance_is_relative_to_the_median_interval(tmp_path):
    times = np.arange(1000) / 100.0
    times[300:] += 0.004  # one interval of 14 ms: jitter, not a gap
    times[600:] += 0.0055  # one of 15.5 ms: more than 1.5 intervals, a gap
    assert GAP_TOLERANCE == 1.5
    path = stamped_file(tmp_path, times)
    spec = WindowSpec.from_user(10, 50, 0.5)
    with NWBHDF5IO(str(path), "r") as io:
        reader = TimeSeriesReader("behavior", io.read().processing["behavior"]["BehavioralTimeSeries"]
                                  ["running_speed"], path)
        missing = [s for s in spec.starts(*reader.span()) if reader.read(s, spec) is None]
        # samples 599 and 600 stand for [5.9995, 6.0095) and [6.0195, ...): [6.0095, 6.0195) is missing
        assert missing == pytest.approx([5.75, 6.0])


def test_jitter_is_resampled_by_rank_and_counted(tmp_path):
    times = np.arange(400) / 100.0
    times[100] = 1.0 + 0.0001  # window [1.0, 1.5) keeps 50; [0.5, 1.0) keeps 50
    times[150] = 1.5 - 0.0001  # [1.0, 1.5) now holds 51 samples, [1.5, 2.0) 49
    path = stamped_file(tmp_path, times)
    spec = WindowSpec.from_user(10, 50, 0.0)
    with NWBHDF5IO(str(path), "r") as io:
        series = io.read().processing["behavior"]["BehavioralTimeSeries"]["running_speed"]
        reader = TimeSeriesReader("behavior", series, path)
        full = reader.read(1.0, spec)["behavior"][:, 0]
        short = reader.read(1.5, spec)["behavior"][:, 0]
        assert reader.describe()["resampled_windows"] == 2
        np.testing.assert_array_equal(reader.read(0.5, spec)["behavior"][:, 0], times[50:100])
    inside = times[100:151]  # 51 samples: the one of rank floor((k + 0.5) * 51 / 50) for each k
    np.testing.assert_array_equal(full, inside[[int(np.floor((k + 0.5) * 51 / 50)) for k in range(50)]])
    assert len(np.unique(full)) == 50 and full[-1] == times[150]
    np.testing.assert_array_equal(np.unique(short), times[151:200])  # 49 samples, one repeated


def brute_force_window(times: np.ndarray, interval: float, start: float, stop: float, count: int):
    """The policy of neurocodec.nwb.windows, over the whole series: the sample indices a window
    holds, or None where the series does not cover it."""
    if start < times[0] - 1e-9 or stop > times[-1] + interval + 1e-9:
        return None
    for a, b in zip(times[:-1], times[1:]):
        if b - a > 1.5 * interval and a + interval < stop - 1e-9 and b > start + 1e-9:
            return None
    inside = np.flatnonzero((times >= start - 1e-9) & (times < stop - 1e-9))
    if len(inside) == 0:
        return None
    return inside[[int(np.floor((k + 0.5) * len(inside) / count)) for k in range(count)]]


def test_timestamp_policy_against_brute_force(tmp_path, monkeypatch):
    rng = np.random.default_rng(2024)
    intervals = np.full(3000, 0.02) + rng.normal(0, 0.002, 3000)
    intervals[rng.integers(0, 3000, 8)] += rng.uniform(0.01, 0.5, 8)  # gaps, a few near the tolerance
    intervals[1200:1210] = 0.0  # repeated timestamps
    times = 7.0 + np.concatenate(([0.0], np.cumsum(intervals)))
    path = stamped_file(tmp_path, times)
    monkeypatch.setattr(windows, "BLOCK_BYTES", 8 * 100)  # small blocks of timestamps and values
    spec = WindowSpec.from_user(10, 30, 0.5)
    with NWBHDF5IO(str(path), "r") as io:
        reader = TimeSeriesReader("behavior", io.read().processing["behavior"]["BehavioralTimeSeries"]
                                  ["running_speed"], path)
        interval = 1 / reader.rate
        assert interval == pytest.approx(np.median(np.diff(times)))
        starts = spec.starts(times[0] - 1.0, times[-1] + 1.0)
        for start in np.concatenate((starts, starts[::-5])):  # in order, then jumping backwards
            got = reader.read(float(start), spec)
            rows = brute_force_window(times, interval, start, start + spec.duration, 15)
            if rows is None:
                assert got is None, start
            else:
                np.testing.assert_array_equal(got["behavior"][:, 0], times[rows])


# -- shape: always (time, channels/dims) (issue 13 defect 4) -----------------------------------------
def test_one_dimensional_series_give_time_by_one(tmp_path):
    data = np.arange(1000, dtype=np.float32) * 0.5
    nwb = nwbfiles.new_file()
    nwbfiles.add_units(nwb, [np.linspace(0, 20, 50)])
    nwbfiles.behavior_module(nwb).add(nwbfiles.Position(spatial_series=nwbfiles.spatial_series(
        "x", data, rate=50.0, starting_time=2.0)))
    path = nwbfiles.write(nwb, tmp_path / "x.nwb")
    converter = NWBToWebDatasetConverter(tmp_path / "out", 16, ["spikes", "behavior"], bin_size_ms=10,
                                         sequence_length=50, overlap=0.5, progress=False, fsync=False,
                                         coverage="fill")
    converter.convert_nwb_file(path)
    converter.finalize()
    ds = Dataset(tmp_path / "out")
    with h5py.File(path, "r") as f:
        stored = f["/processing/behavior/Position/x/data"][()]
    assert stored.shape == (1000,)
    blanks = 0
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["behavior"].shape == (25, 1) and sample["behavior"].dtype == np.float32
        if "behavior" in sample["metadata"]["missing"]:
            blanks += 1
            assert not sample["behavior"].any()
        else:
            first = int(np.ceil((sample["metadata"]["start_time"] - 2.0) * 50 - 1e-6))
            np.testing.assert_array_equal(sample["behavior"][:, 0], stored[first:first + 25])
    assert blanks > 0


# -- block reads (issue 13 "Fast") ------------------------------------------------------------------
def test_block_cursor_gives_the_rows_asked_for_in_any_order(rng):
    data = rng.standard_normal((5000, 3)).astype(np.float32)
    loads = []
    cursor = BlockCursor(data, lambda raw: loads.append(len(raw)) or raw * 2, block_bytes=12 * 700)
    for i0 in [0, 10, 650, 690, 3000, 5, 4990, 4999, 0]:  # forward, across a block edge, backwards
        i1 = min(5000, i0 + int(rng.integers(0, 120)))
        np.testing.assert_array_equal(cursor.rows(i0, i1), data[i0:i1] * 2)
    assert max(loads) <= 700 and len(loads) < 9
    steps = BlockCursor(data, lambda raw: raw, block_bytes=12 * 1000)
    for i0 in range(0, 4900, 50):  # windows in increasing order: each row read about once
        np.testing.assert_array_equal(steps.rows(i0, i0 + 100), data[i0:i0 + 100])


class Chunked:
    """An array seen as a chunked dataset that records the slices read from it."""

    def __init__(self, array: np.ndarray, chunk_rows: int) -> None:
        self.array, self.chunks = array, (chunk_rows, *array.shape[1:])
        self.shape, self.dtype = array.shape, array.dtype
        self.reads: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: slice) -> np.ndarray:
        self.reads.append((key.start, key.stop))
        return self.array[key]


def test_windows_in_order_read_each_row_once_in_whole_chunks(rng):
    data = Chunked(rng.standard_normal((10_000, 4)).astype(np.float32), chunk_rows=300)
    cursor = BlockCursor(data, lambda raw: raw, block_bytes=16 * 1000)  # 1000 rows: not a chunk multiple
    for i0 in range(130, 9000, 250):  # windows of 700 rows, overlapping, straddling blocks
        np.testing.assert_array_equal(cursor.rows(i0, i0 + 700), data.array[i0:i0 + 700])
    assert data.reads[0][0] == 0 and all(a % 300 == 0 and (b % 300 == 0 or b == 10_000) for a, b in data.reads)
    assert all(b == a2 for (_, b), (a2, _) in zip(data.reads, data.reads[1:]))  # consecutive, no row twice
    assert data.reads[-1][1] >= 9570
    by_channel = Chunked(data.array, chunk_rows=10_000)  # chunks longer than a block: not aligned to
    cursor = BlockCursor(by_channel, lambda raw: raw, block_bytes=16 * 1000)
    np.testing.assert_array_equal(cursor.rows(4321, 4400), data.array[4321:4400])
    assert by_channel.reads == [(4321, 5321)]


def test_timestamp_cursor_matches_numpy(rng):
    times = np.cumsum(rng.exponential(0.01, 20_000)) + 3.0
    times[5000:5100] = times[5000]  # repeated timestamps
    cursor = TimestampCursor(times, len(times), block_rows=64)
    starts = np.sort(rng.uniform(2.0, times[-1] + 1, 400))
    for start in np.concatenate((starts, starts[::-7], times[rng.integers(0, len(times), 50)])):
        stop = start + float(rng.choice([0.001, 0.05, 0.5, 3.0]))
        i0, i1, around = cursor.locate(start, stop)
        assert i0 == np.searchsorted(times, start - 1e-9) and i1 == np.searchsorted(times, stop - 1e-9)
        np.testing.assert_array_equal(around, times[max(0, i0 - 1):min(len(times), i1 + 1)])


@pytest.mark.parametrize("dtype, one_dim", [(np.int16, False), (np.float32, False), (np.float64, False),
                                            (np.int32, True)])
def test_physical_units_are_bit_identical_to_per_window_arithmetic(tmp_path, monkeypatch, rng, dtype, one_dim):
    channels = 1 if one_dim else 5
    raw = (rng.standard_normal((6000, channels)) * 3000).astype(dtype)
    cc = np.array([1.5, 0.3, 2.0, 1e-3, 7.0][:channels], dtype=np.float32)
    nwb = nwbfiles.new_file()
    series = nwbfiles.electrical_series(nwb, "lfp", raw, rate=1250.0, starting_time=0.5, conversion=1.95e-7,
                                        offset=-0.0125, channel_conversion=cc)
    if one_dim:
        series = TimeSeries(name="lfp", data=raw[:, 0], unit="V", rate=1250.0, starting_time=0.5,
                            conversion=1.95e-7, offset=-0.0125)
        nwb.add_acquisition(series)
    else:
        nwbfiles.add_lfp(nwb, series)
    path = nwbfiles.write(nwb, tmp_path / "scaled.nwb")
    where = "/acquisition/lfp" if one_dim else "/processing/ecephys/LFP/lfp"
    with h5py.File(path, "r") as f:
        stored = f[where + "/data"][()].reshape(6000, channels)
        factors = f[where + "/channel_conversion"][()] if not one_dim else None
    monkeypatch.setattr(windows, "BLOCK_BYTES", 4096)  # many blocks, windows straddling their edges
    spec = WindowSpec.from_user(8, 25, 0.4)
    with NWBHDF5IO(str(path), "r") as io:
        nwbfile = io.read()
        reader = TimeSeriesReader("lfp", nwbfile.acquisition["lfp"] if one_dim else
                                  nwbfile.processing["ecephys"]["LFP"]["lfp"], path)
        starts = spec.starts(*reader.span())
        for start in np.concatenate((starts, starts[::-3])):
            i0 = int(np.ceil((start - 0.5) * 1250 - 1e-6))
            values = stored[i0:i0 + 250].astype(np.float64) * 1.95e-7  # as the reader always computed
            if factors is not None:
                values = values * factors.astype(np.float64).reshape(1, -1)
            expected = (values - 0.0125).astype(np.float64 if dtype == np.float64 else np.float32)
            got = reader.read(float(start), spec)["lfp"]
            assert got.dtype == expected.dtype and got.shape == (250, channels)
            np.testing.assert_array_equal(got, expected)


def test_windows_are_read_only(tmp_path):
    path = write_series(tmp_path, "speed", np.arange(1000, dtype=np.float32).reshape(500, 2), rate=100.0)
    spec = WindowSpec.from_user(10, 20, 0.5)
    with NWBHDF5IO(str(path), "r") as io:
        reader = TimeSeriesReader("behavior", io.read().acquisition["speed"], path)
        first = reader.read(0.0, spec)["behavior"]
        with pytest.raises(ValueError, match="read-only"):
            first[:] = -1  # a consumer changing its window in place would change the next one
        np.testing.assert_array_equal(reader.read(0.1, spec)["behavior"][:, 0], np.arange(20, 60, 2))
