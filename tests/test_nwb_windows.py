"""Window and bin arithmetic (neurocodec.nwb.windows) and its effect on converted NWB sessions:
half-open bins, edges, t0 != 0, overlap, window counts, native-rate sample counts, alignment of
several rates in one file."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nwbfiles
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import (
    LazySorted, WindowSpec, bin_spikes, bin_spikes_by_unit, first_index_at, samples_per_window,
)
from neurocodec.nwb.converter import NWBToWebDatasetConverter


def brute_force_starts(begin: float, end: float, spec: WindowSpec) -> list[float]:
    """Window starts found by walking the bin grid one window at a time."""
    starts, k = [], 0
    while True:
        start = begin + k * spec.step * spec.bin_size
        if start + spec.duration > end + 1e-9:
            return starts
        starts.append(start)
        k += 1


# -- WindowSpec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("length, overlap, step", [
    (100, 0.5, 50), (100, 0.0, 100), (10, 0.3, 7), (10, 0.25, 8), (7, 0.5, 4), (10, 0.99, 1), (1, 0.0, 1),
])
def test_step_is_an_integer_number_of_bins(length, overlap, step):
    spec = WindowSpec.from_user(10, length, overlap)
    assert spec.step == step and type(spec.step) is int
    assert spec.bin_size == pytest.approx(0.01) and spec.duration == pytest.approx(length * 0.01)


@pytest.mark.parametrize("args", [(0, 10, 0.5), (-1, 10, 0.5), (float("nan"), 10, 0.5), (10, 0, 0.5),
                                  (10, 2.5, 0.5), (10, 10, 1.0), (10, 10, -0.1), (10, True, 0.5)])
def test_bad_window_parameters_are_refused(args):
    with pytest.raises(ValueError):
        WindowSpec.from_user(*args)


@pytest.mark.parametrize("begin, end, length, overlap", [
    (0.0, 10.0, 100, 0.5), (3.25, 13.25, 100, 0.5), (3.25, 13.2549, 50, 0.0), (1234.567, 1300.0, 64, 0.75),
    (0.1, 0.3, 10, 0.5), (7.0, 7.99, 100, 0.0), (2.0, 3.0, 100, 0.0), (0.0, 1.0, 3, 0.34),
])
def test_window_count_formula(begin, end, length, overlap):
    spec = WindowSpec.from_user(10, length, overlap)
    starts = spec.starts(begin, end)
    nbins = math.floor((end - begin) / spec.bin_size + 1e-9)
    expected = 0 if nbins < length else (nbins - length) // spec.step + 1
    assert len(starts) == expected
    np.testing.assert_allclose(starts, brute_force_starts(begin, end, spec), rtol=0, atol=1e-9)
    if len(starts):
        assert starts[0] == begin and starts[-1] + spec.duration <= end + 1e-9


def test_window_count_random(rng):
    for _ in range(300):
        begin = float(rng.uniform(-50, 5000))
        spec = WindowSpec.from_user(float(rng.choice([1, 2.5, 10, 20])), int(rng.integers(1, 120)),
                                    float(rng.uniform(0, 0.95)))
        end = begin + float(rng.uniform(0, 3))
        assert len(spec.starts(begin, end)) == len(brute_force_starts(begin, end, spec))


# -- binning --------------------------------------------------------------------------------------
@pytest.mark.parametrize("t0", [0.0, 3.25, 1200.125, -2.0])
def test_bins_are_half_open_at_every_edge(t0):
    b, n = 0.01, 100
    edges = t0 + np.arange(n + 1) * b
    counts = bin_spikes(edges, t0, b, n)  # a spike exactly on every edge, the window end included
    np.testing.assert_array_equal(counts, np.ones(n))  # edge k lands in bin k; the end is dropped
    just_below = np.nextafter(edges[1:], -np.inf)
    np.testing.assert_array_equal(bin_spikes(just_below - 1e-7, t0, b, n), np.ones(n))


def test_spike_at_window_end_and_outside_is_dropped():
    counts = bin_spikes(np.array([-0.5, -1e-6, 0.0, 0.999999, 1.0, 1.0, 2.0]), 0.0, 0.1, 10)
    assert counts.shape == (10,) and counts.sum() == 2
    assert counts[0] == 1 and counts[9] == 1


def test_bins_match_loop_count_with_nonzero_t0(rng):
    for t0 in (0.0, 17.3, 981.0):
        times = np.sort(rng.uniform(t0 - 1, t0 + 3, 5000))
        b, n = 0.005, 400
        counts = bin_spikes(times, t0, b, n)
        edges = t0 + np.arange(n + 1) * b
        reference = [int(np.sum((times >= edges[k]) & (times < edges[k + 1]))) for k in range(n)]
        np.testing.assert_array_equal(counts, reference)


def test_binning_all_units_at_once_is_binning_each_unit(rng):
    b, n = 0.01, 100
    for t0 in (0.0, 3.25, 1200.125):
        edges = t0 + np.arange(n + 1) * b
        units = [np.sort(rng.uniform(t0 - 0.2, t0 + 1.2, int(rng.integers(0, 300)))) for _ in range(7)]
        units += [np.zeros(0), edges, np.nextafter(edges, -np.inf), np.full(5, t0 + 0.5)]
        counts = bin_spikes_by_unit(units, t0, b, n)
        assert counts.shape == (n, len(units))
        for u, times in enumerate(units):
            np.testing.assert_array_equal(counts[:, u], bin_spikes(times, t0, b, n))
    assert bin_spikes_by_unit([], 0.0, b, n).shape == (n, 0)


# -- native-rate sample indices -------------------------------------------------------------------
@pytest.mark.parametrize("rate, duration, count", [(1000, 0.5, 500), (30, 0.5, 15), (30, 0.25, 8), (50, 1.0, 50),
                                                   (29.97, 1.0, 30), (0.5, 10.0, 5)])
def test_samples_per_window(rate, duration, count):
    assert samples_per_window(rate, duration) == count


def test_first_index_at_is_first_sample_at_or_after(rng):
    for _ in range(2000):
        s = float(rng.uniform(-10, 100))
        r = float(rng.choice([30.0, 50.0, 1000.0, 29.97, 1250.0]))
        t = s + float(rng.uniform(-1, 50))
        i = first_index_at(s, r, t)
        assert s + i / r >= t - 1e-9 and s + (i - 1) / r < t - 1e-12
    # a time exactly on a sample gives that sample despite rounding (3.25 + 0.75 with 1 kHz)
    assert first_index_at(3.25, 1000.0, 4.0) == 750
    assert first_index_at(0.1, 30.0, 0.1 + 7 / 30) == 7


def test_lazy_sorted_matches_numpy(rng):
    data = np.sort(rng.uniform(0, 100, 50_000))
    lazy = LazySorted(data, block=64)
    for value in np.concatenate((rng.uniform(-1, 101, 300), data[rng.integers(0, len(data), 100)])):
        assert lazy.searchsorted(value) == np.searchsorted(data, value, side="left")
    window = LazySorted(data, lo=1000, hi=2000, block=16)
    assert len(window) == 1000 and window.searchsorted(data[1500]) == 500
    np.testing.assert_array_equal(window.read(0, 3), data[1000:1003])


# -- converted sessions ---------------------------------------------------------------------------
def convert(tmp_path, files, modalities, name="out", **kwargs):
    """Convert `files` and open the dataset."""
    kwargs = {"bin_size_ms": 10, "sequence_length": 50, "overlap": 0.5, "progress": False, "fsync": False, **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 16, modalities, **kwargs)
    converter.convert_nwb_files(files)
    return converter.finalize(), Dataset(tmp_path / name)


@pytest.fixture(scope="module")
def multirate(tmp_path_factory):
    """A session from t0 = 3.25 s: lfp 1 kHz (rate), behavior 50 Hz (timestamps), video 30 Hz."""
    return nwbfiles.multirate_session(tmp_path_factory.mktemp("multirate") / "multirate.nwb", t0=3.25, seconds=12.0)


def test_several_rates_cover_the_same_window(tmp_path, multirate):
    summary, ds = convert(tmp_path, [multirate], ["spikes", "lfp", "behavior", "video"])
    t0, seconds = 3.25, 12.0
    assert len(ds) == (int(seconds / 0.01) - 50) // 25 + 1 == 47
    for i in range(len(ds)):
        sample = ds[i]
        start, stop = sample["metadata"]["start_time"], sample["metadata"]["stop_time"]
        assert start == pytest.approx(t0 + i * 0.25, abs=1e-9) and stop == pytest.approx(start + 0.5, abs=1e-9)
        assert sample["spikes"].shape == (50, 4)
        # lfp: data hold the sample index; 1 kHz from t0 -> 500 samples from the first at/after start
        lfp_index = sample["lfp"][:, 0]
        assert sample["lfp"].shape == (500, 2)
        np.testing.assert_array_equal(np.diff(lfp_index), 1)
        first = t0 + lfp_index[0] / 1000.0
        assert start - 1e-9 <= first < start + 1e-3
        # behavior: data hold the timestamps; 50 Hz -> 25 samples
        times = sample["behavior"][:, 0]
        assert sample["behavior"].shape == (25, 2)
        assert start - 1e-9 <= times[0] < start + 0.02 and times[-1] < stop
        # video: frames hold their index; 30 Hz -> 15 frames
        frames = nwbfiles.frame_index(sample["video"])
        assert sample["video"].shape == (15, 4, 5) and sample["video"].dtype == np.uint8
        np.testing.assert_array_equal(np.diff(frames), 1)
        assert start - 1e-9 <= t0 + frames[0] / 30.0 < start + 1 / 30.0
        assert t0 + frames[-1] / 30.0 < stop
    assert summary["skipped_windows"] == 0
    assert ds[len(ds) - 1]["metadata"]["stop_time"] == pytest.approx(t0 + seconds, abs=1e-9)


def test_overlapping_windows_share_exact_bins(tmp_path, multirate):
    _, ds = convert(tmp_path, [multirate], ["spikes", "lfp"], sequence_length=40, overlap=0.25)
    step = 30
    for i in range(len(ds) - 1):
        a, b = ds[i], ds[i + 1]
        assert b["metadata"]["start_time"] - a["metadata"]["start_time"] == pytest.approx(step * 0.01, abs=1e-9)
        np.testing.assert_array_equal(a["spikes"][step:], b["spikes"][:40 - step])
        np.testing.assert_array_equal(a["lfp"][step * 10:], b["lfp"][:(40 - step) * 10])


def test_jittered_timestamps_keep_a_fixed_count(tmp_path, rng):
    t0, n = 100.0, 3000
    times = t0 + np.arange(n) / 120.0 + rng.uniform(-1e-4, 1e-4, n)  # a tracker at ~120 Hz with jitter
    nwb = nwbfiles.new_file()
    nwbfiles.add_units(nwb, [np.sort(rng.uniform(t0, t0 + 25, 300))], [[[t0, t0 + 25]]])
    nwb.add_acquisition(nwbfiles.spatial_series("pos", np.stack([times, np.zeros(n)], 1), timestamps=times))
    path = nwbfiles.write(nwb, tmp_path / "jitter.nwb")
    summary, ds = convert(tmp_path, [path], ["spikes", "behavior"], sequence_length=25, overlap=0.0)
    assert summary["series"]["jitter.nwb"]["behavior"] == "/acquisition/pos"
    assert len(ds) > 50
    for i in range(len(ds)):
        sample = ds[i]
        start = sample["metadata"]["start_time"]
        assert sample["behavior"].shape == (30, 2)
        stamps = sample["behavior"][:, 0]
        assert stamps[0] >= start - 1e-9 and stamps[0] < start + 1 / 120 + 2e-4
        # the samples in [start, stop), resampled by rank to 30 when jitter puts 29 or 31 there
        inside = times[(times >= start - 1e-9) & (times < start + 0.25 - 1e-9)]
        assert abs(len(inside) - 30) <= 1
        np.testing.assert_array_equal(stamps, inside[(2 * np.arange(30) + 1) * len(inside) // 60])
