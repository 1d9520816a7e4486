"""The modality extractors on hand-built NWB files: spikes against an independent computation,
each continuous and image modality, series choice, coverage policies, per-window metadata and
bad input."""

from __future__ import annotations

import os
import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO

import nwbfiles
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import NWBError, WindowSpec
from neurocodec.nwb.converter import NWBToWebDatasetConverter


def convert(tmp_path, files, modalities, name="out", **kwargs):
    """Convert `files` into tmp_path/name; return (summary, Dataset)."""
    kwargs = {"bin_size_ms": 10, "sequence_length": 50, "overlap": 0.5, "progress": False, "fsync": False, **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 16, modalities, **kwargs)
    converter.convert_nwb_files(files)
    return converter.finalize(), Dataset(tmp_path / name)


def read_nwb(path):
    """An open NWBHDF5IO (callers use it as a context manager)."""
    return NWBHDF5IO(str(path), "r")


def reference_counts(units, unit_index: int, start: float, bin_size: float, bins: int) -> np.ndarray:
    """Counts per half-open bin, one bin at a time, from pynwb's get_unit_spike_times."""
    times = np.asarray(units.get_unit_spike_times(unit_index))
    edges = start + np.arange(bins + 1) * bin_size
    return np.array([np.count_nonzero((times >= edges[k]) & (times < edges[k + 1])) for k in range(bins)])


# -- spikes ---------------------------------------------------------------------------------------
T0, SECONDS = 37.5, 10.0
GAPPY = [[T0, T0 + 4.0], [T0 + 6.0, T0 + 8.0]]  # unit 2 is observed only here


@pytest.fixture(scope="module")
def spikes_file(tmp_path_factory):
    """Six units from t0 = 37.5 s (ids 10..15): unit 11 never fires, unit 12 is observed in two
    intervals and fires only inside them."""
    rng = np.random.default_rng(7)
    spikes = nwbfiles.random_spikes(rng, 6, T0, T0 + SECONDS, mean=300)
    inside = np.sort(np.concatenate([rng.uniform(a, z, 150) for a, z in GAPPY]))
    spikes[2] = inside
    spikes[4] = np.concatenate((spikes[4], [T0 + 0.25, T0 + 0.5]))  # exactly on bin edges
    spikes[4].sort()
    intervals = [[[T0, T0 + SECONDS]]] * 6
    intervals[2] = GAPPY
    nwb = nwbfiles.new_file(identifier="spikes", session_id="spk-session", subject_id="rat7")
    nwbfiles.add_units(nwb, spikes, intervals, ids=range(10, 16))
    return nwbfiles.write(nwb, tmp_path_factory.mktemp("spikes") / "spikes.nwb")


def test_spike_counts_match_pynwb_per_unit_and_bin(tmp_path, spikes_file):
    summary, ds = convert(tmp_path, [spikes_file], ["spikes"], bin_size_ms=20, sequence_length=25, overlap=0.2)
    assert len(ds) == (500 - 25) // 20 + 1 and summary["skipped_windows"] == 0
    with read_nwb(spikes_file) as io:
        units = io.read().units
        for i in range(len(ds)):
            sample = ds[i]
            start = sample["metadata"]["start_time"]
            assert start == pytest.approx(T0 + i * 20 * 0.02, abs=1e-9)
            assert sample["spikes"].shape == (25, 6)
            for u in range(6):
                np.testing.assert_array_equal(sample["spikes"][:, u], reference_counts(units, u, start, 0.02, 25))


def test_observation_intervals_mask(tmp_path, spikes_file):
    _, ds = convert(tmp_path, [spikes_file], ["spikes"], bin_size_ms=10, sequence_length=100, overlap=0.0)
    seen_false = 0
    for i in range(len(ds)):
        sample = ds[i]
        mask, counts = sample["spikes_observed"], sample["spikes"]
        assert mask.dtype == bool and mask.shape == counts.shape == (100, 6)
        edges = sample["metadata"]["start_time"] + np.arange(101) * 0.01
        inside = np.zeros(100, dtype=bool)
        for a, z in GAPPY:
            inside |= (edges[:-1] >= a - 1e-9) & (edges[1:] <= z + 1e-9)
        np.testing.assert_array_equal(mask[:, 2], inside)
        assert np.all(mask[:, [0, 1, 3, 4, 5]])
        assert np.all(counts[~mask[:, 2], 2] == 0)
        seen_false += int((~mask[:, 2]).sum())
        np.testing.assert_array_equal(counts[:, 1], 0)  # the silent unit: zero counts, observed
    assert seen_false == 200 + 200  # [t0+4, t0+6) and [t0+8, t0+10) unobserved


def test_unit_ids_stored_once_per_session(tmp_path, spikes_file):
    other = tmp_path / "three_units.nwb"
    nwb = nwbfiles.new_file(identifier="three", session_id="other-session", subject_id="rat8")
    nwbfiles.add_units(nwb, nwbfiles.random_spikes(np.random.default_rng(3), 3, 0.0, 5.0), ids=[101, 7, 55])
    nwbfiles.write(nwb, other)
    summary, ds = convert(tmp_path, [spikes_file, other], ["spikes"])
    sessions = ds.manifest.extra["sessions"]
    assert len(sessions) == 2
    by_id = {s["session_id"]: (key, s) for key, s in sessions.items()}
    assert by_id["spk-session"][1]["ids"]["spikes"]["unit_ids"] == list(range(10, 16))
    assert by_id["other-session"][1]["ids"]["spikes"]["unit_ids"] == [101, 7, 55]
    for key, s in sessions.items():
        assert s["key"] == key and s["series"]["spikes"]["object"] == "/units"
    units_of = {key: len(s["ids"]["spikes"]["unit_ids"]) for key, s in sessions.items()}
    seen = set()
    for i in range(len(ds)):
        sample = ds[i]
        key = sample["metadata"]["session"]
        seen.add(key)
        assert "unit_ids" not in sample["metadata"]  # referenced, not repeated per window
        assert sample["spikes"].shape == (50, units_of[key])
    assert seen == set(sessions)
    assert summary["series"] == {"spikes.nwb": {"spikes": "/units"}, "three_units.nwb": {"spikes": "/units"}}


def test_mock_file_converts(tmp_path):
    path = nwbfiles.mock_session(tmp_path / "mock.nwb")
    summary, ds = convert(tmp_path, [path], ["spikes", "eeg", "behavior"], bin_size_ms=100, sequence_length=10)
    assert summary["series"]["mock.nwb"] == {"spikes": "/units", "eeg": "/acquisition/EEG",
                                             "behavior": "/acquisition/Position/pos"}
    with read_nwb(path) as io:
        nwb = io.read()
        eeg = nwb.acquisition["EEG"].data[:]
        for i in range(len(ds)):
            sample = ds[i]
            start = sample["metadata"]["start_time"]
            first = int(np.ceil(start * 200 - 1e-6))
            np.testing.assert_array_equal(sample["eeg"], eeg[first:first + 200])
            for u in range(len(nwb.units)):
                np.testing.assert_array_equal(sample["spikes"][:, u], reference_counts(nwb.units, u, start, 0.1, 10))


# -- continuous modalities ------------------------------------------------------------------------
def test_lfp_physical_units(tmp_path, rng):
    raw = rng.integers(-2000, 2000, (5000, 4)).astype(np.int16)
    nwb = nwbfiles.new_file()
    cc = np.array([1.0, 2.0, 0.5, 4.0], dtype=np.float32)
    lfp = nwbfiles.electrical_series(nwb, "lfp_scaled", raw, rate=1250.0, starting_time=2.0, conversion=2.5e-6,
                                     channel_conversion=cc, offset=0.125)
    nwbfiles.add_lfp(nwb, lfp)
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "raw", raw, rate=1250.0, starting_time=2.0))  # not LFP
    path = nwbfiles.write(nwb, tmp_path / "lfp.nwb")
    summary, ds = convert(tmp_path, [path], ["lfp"], bin_size_ms=8, sequence_length=50)
    assert summary["series"]["lfp.nwb"]["lfp"] == "/processing/ecephys/LFP/lfp_scaled"
    assert ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]["ids"]["lfp"]["channel_ids"] == [0, 1, 2, 3]
    physical = raw.astype(np.float64) * 2.5e-6 * cc.astype(np.float64) + 0.125
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["lfp"].dtype == np.float32 and sample["lfp"].shape == (500, 4)
        first = int(np.ceil((sample["metadata"]["start_time"] - 2.0) * 1250 - 1e-6))
        np.testing.assert_allclose(sample["lfp"], physical[first:first + 500], rtol=1e-6)


def test_single_channel_lfp_keeps_time_first(tmp_path):
    nwb = nwbfiles.new_file()
    series = nwbfiles.ElectricalSeries(name="lfp", data=np.arange(2000, dtype=np.int16), rate=1000.0, conversion=0.5,
                                       channel_conversion=[3.0], electrodes=nwbfiles.electrodes(nwb, 1))
    nwbfiles.add_lfp(nwb, series)
    path = nwbfiles.write(nwb, tmp_path / "one_channel.nwb")
    _, ds = convert(tmp_path, [path], ["lfp"], overlap=0.0)
    for i in range(len(ds)):
        assert ds[i]["lfp"].shape == (500, 1) and ds[i]["lfp"].dtype == np.float32  # (time, channels)
        np.testing.assert_array_equal(ds[i]["lfp"][:, 0], (np.arange(500 * i, 500 * i + 500) * 1.5).astype(np.float32))


def eeg_file(tmp_path, names, name="eeg.nwb"):
    nwb = nwbfiles.new_file()
    for k, series_name in enumerate(names):
        data = np.full((2000, 3), k, dtype=np.float32)
        nwb.add_acquisition(nwbfiles.electrical_series(nwb, series_name, data, rate=250.0))
    return nwbfiles.write(nwb, tmp_path / name)


def test_eeg_chosen_by_name(tmp_path):
    path = eeg_file(tmp_path, ["ECoG", "scalp_EEG", "raw"])
    summary, ds = convert(tmp_path, [path], ["eeg"], name="default")
    assert summary["series"]["eeg.nwb"]["eeg"] == "/acquisition/scalp_EEG"
    assert np.all(ds[0]["eeg"] == 1) and ds[0]["eeg"].shape == (125, 3)
    summary, ds = convert(tmp_path, [path], ["eeg"], name="picked", series={"eeg": "raw"})
    assert summary["series"]["eeg.nwb"]["eeg"] == "/acquisition/raw" and np.all(ds[0]["eeg"] == 2)


def test_eeg_without_an_eeg_name_lists_candidates(tmp_path):
    path = eeg_file(tmp_path, ["ECoG", "raw"])
    with pytest.raises(NWBError) as err:
        convert(tmp_path, [path], ["eeg"])
    message = str(err.value)
    assert str(path) in message and "/acquisition/ECoG" in message and "/acquisition/raw" in message
    with pytest.raises(NWBError, match="no eeg series named 'EEG1'.*candidates: /acquisition/ECoG, /acquisition/raw"):
        convert(tmp_path, [path], ["eeg"], name="again", series={"eeg": "EEG1"})


@pytest.mark.parametrize("where", ["position", "behavioral_timeseries", "acquisition"])
def test_behavior_locations(tmp_path, where):
    nwb = nwbfiles.new_file()
    data = np.arange(500 * 2, dtype=np.float64).reshape(500, 2)
    if where == "position":
        nwbfiles.behavior_module(nwb).add(nwbfiles.Position(spatial_series=nwbfiles.spatial_series(
            "xy", data, rate=50.0, starting_time=1.0)))
        expected = "/processing/behavior/Position/xy"
    elif where == "behavioral_timeseries":
        nwbfiles.behavior_module(nwb).add(nwbfiles.behavioral_timeseries("speed", data, rate=50.0, starting_time=1.0))
        expected = "/processing/behavior/BehavioralTimeSeries/speed"
    else:
        nwb.add_acquisition(nwbfiles.Position(spatial_series=nwbfiles.spatial_series(
            "xy", data, rate=50.0, starting_time=1.0)))
        expected = "/acquisition/Position/xy"
    nwb.add_acquisition(nwbfiles.TimeSeries(name="not_behavior", data=data, unit="V", rate=50.0))
    path = nwbfiles.write(nwb, tmp_path / "behavior.nwb")
    summary, ds = convert(tmp_path, [path], ["behavior"])
    assert summary["series"]["behavior.nwb"]["behavior"] == expected
    assert len(ds) == (1000 - 50) // 25 + 1
    for i in range(len(ds)):
        first = int(np.ceil((ds[i]["metadata"]["start_time"] - 1.0) * 50 - 1e-6))  # first at/after
        np.testing.assert_array_equal(ds[i]["behavior"], data[first:first + 25])


def test_several_behavior_candidates(tmp_path):
    nwb = nwbfiles.new_file()
    module = nwbfiles.behavior_module(nwb)
    module.add(nwbfiles.Position(spatial_series=nwbfiles.spatial_series("xy", np.zeros((500, 2)), rate=50.0)))
    module.add(nwbfiles.behavioral_timeseries("speed", np.ones((500, 1)), rate=50.0))
    path = nwbfiles.write(nwb, tmp_path / "two.nwb")
    summary, ds = convert(tmp_path, [path], ["behavior"], name="default")
    # default: Position is preferred over other behavioral series, whatever the path order
    assert summary["series"]["two.nwb"]["behavior"] == "/processing/behavior/Position/xy"
    assert ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]["series"]["behavior"]["timing"] == "rate"
    assert ds[0]["behavior"].shape == (25, 2) and not ds[0]["behavior"].any()
    for pick in ("speed", "/processing/behavior/BehavioralTimeSeries/speed"):
        summary, ds = convert(tmp_path, [path], ["behavior"], name=f"pick{len(pick)}", series={"behavior": pick})
        assert summary["series"]["two.nwb"]["behavior"] == "/processing/behavior/BehavioralTimeSeries/speed"
        assert ds[0]["behavior"].shape == (25, 1) and ds[0]["behavior"].all()


# -- image modalities -----------------------------------------------------------------------------
def test_video_frames_and_fmri_volumes_in_file(tmp_path, rng):
    nwb = nwbfiles.new_file()
    frames = rng.integers(0, 256, (120, 6, 8), dtype=np.uint8)
    volumes = rng.integers(-300, 300, (60, 5, 6, 7), dtype=np.int16)
    nwb.add_acquisition(nwbfiles.video_series("camera", frames, rate=20.0, starting_time=0.5))
    nwb.add_acquisition(nwbfiles.ImageSeries(name="bold", data=volumes, unit="a.u.", rate=10.0, starting_time=0.5))
    path = nwbfiles.write(nwb, tmp_path / "images.nwb")
    summary, ds = convert(tmp_path, [path], ["video", "fmri"], bin_size_ms=100, sequence_length=10, overlap=0.0)
    assert summary["series"]["images.nwb"] == {"video": "/acquisition/camera", "fmri": "/acquisition/bold"}
    assert len(ds) == 6
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["video"].dtype == np.uint8 and sample["video"].shape == (20, 6, 8)
        assert sample["fmri"].dtype == np.int16 and sample["fmri"].shape == (10, 5, 6, 7)
        np.testing.assert_array_equal(sample["video"], frames[20 * i:20 * i + 20])
        np.testing.assert_array_equal(sample["fmri"], volumes[10 * i:10 * i + 10])


def test_external_video_that_does_not_exist(tmp_path):
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(nwbfiles.external_video("camera", ["videos/session.mp4"], rate=30.0, frames=300))
    (tmp_path / "data").mkdir()
    path = nwbfiles.write(nwb, tmp_path / "data" / "external.nwb")
    with pytest.raises(NWBError) as err:
        convert(tmp_path, [path], ["video"])
    message = str(err.value)
    assert str(path) in message and "/acquisition/camera" in message
    assert str(tmp_path / "data" / "videos" / "session.mp4") in message and "does not exist" in message


# -- coverage and metadata ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gappy_behavior(tmp_path_factory):
    """Spikes and lfp over [2, 14); behavior tracked over [4, 7) and [9.5, 12) only."""
    rng = np.random.default_rng(11)
    t0, seconds = 2.0, 12.0
    nwb = nwbfiles.new_file(identifier="gappy", session_id="gappy-session", subject_id="mouse-g")
    nwbfiles.add_units(nwb, nwbfiles.random_spikes(rng, 3, t0, t0 + seconds), [[[t0, t0 + seconds]]] * 3)
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", rng.standard_normal((12000, 2)).astype(np.float32),
                                                     rate=1000.0, starting_time=t0))
    times = np.concatenate((4.0 + np.arange(150) / 50.0, 9.5 + np.arange(125) / 50.0))
    nwbfiles.behavior_module(nwb).add(nwbfiles.Position(spatial_series=nwbfiles.spatial_series(
        "xy", np.stack([times, times], 1) + 1.0, timestamps=times)))
    for a, z in [(2.5, 4.5), (5.0, 5.5), (8.0, 10.0), (13.0, 13.99)]:
        nwb.add_trial(start_time=a, stop_time=z)
    return nwbfiles.write(nwb, tmp_path_factory.mktemp("gappy") / "gappy.nwb")


def test_coverage_all_skips_windows_without_behavior(tmp_path, gappy_behavior):
    summary, ds = convert(tmp_path, [gappy_behavior], ["spikes", "lfp", "behavior"])
    starts = 4.0 + np.arange((800 - 50) // 25 + 1) * 0.25  # grid over [4, 12), the span all three cover
    covered = [s for s in starts if (s >= 4.0 - 1e-9 and s + 0.5 <= 7.0 + 1e-9) or s >= 9.5 - 1e-9]
    assert len(ds) == len(covered) and summary["skipped_windows"] == len(starts) - len(covered) > 0
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["metadata"]["start_time"] == pytest.approx(covered[i], abs=1e-9)
        assert sample["metadata"]["missing"] == []
        assert covered[i] - 1e-9 <= sample["behavior"][0, 0] - 1.0 < covered[i] + 0.02


def test_coverage_fill_zero_fills_and_says_so(tmp_path, gappy_behavior):
    summary, ds = convert(tmp_path, [gappy_behavior], ["spikes", "lfp", "behavior"], coverage="fill")
    assert len(ds) == (1200 - 50) // 25 + 1 and summary["skipped_windows"] == 0
    missing = 0
    for i in range(len(ds)):
        sample = ds[i]
        start = sample["metadata"]["start_time"]
        assert start == pytest.approx(2.0 + 0.25 * i, abs=1e-9)
        tracked = any(a - 1e-9 <= start and start + 0.5 <= z + 1e-9 for a, z in ((4.0, 7.0), (9.5, 12.0)))
        if tracked:
            assert sample["metadata"]["missing"] == []
            assert start - 1e-9 <= sample["behavior"][0, 0] - 1.0 < start + 0.02
        else:
            missing += 1
            assert sample["metadata"]["missing"] == ["behavior"]
            assert sample["behavior"].shape == (25, 2) and not sample["behavior"].any()
        assert sample["lfp"].shape == (500, 2) and sample["lfp"].any()
    assert missing > 0


def test_window_metadata(tmp_path, gappy_behavior):
    _, ds = convert(tmp_path, [gappy_behavior], ["spikes", "lfp"])
    key = ds[0]["metadata"]["session"]
    session = ds.manifest.extra["sessions"][key]
    assert session["file"] == "gappy.nwb" and session["identifier"] == "gappy"
    assert session["session_id"] == "gappy-session" and session["subject_id"] == "mouse-g"
    with read_nwb(gappy_behavior) as io:
        trials = io.read().trials
        t_start, t_stop, t_ids = trials["start_time"][:], trials["stop_time"][:], trials.id[:]
    overlapping_seen = set()
    for i in range(len(ds)):
        meta = ds[i]["metadata"]
        assert meta["source_file"] == "gappy.nwb" and meta["session"] == key and meta["window_index"] == i
        assert meta["session_id"] == "gappy-session" and meta["subject_id"] == "mouse-g"
        assert meta["stop_time"] - meta["start_time"] == pytest.approx(0.5, abs=1e-9)
        expected = [int(t) for a, z, t in zip(t_start, t_stop, t_ids)
                    if a < meta["stop_time"] and z > meta["start_time"]]
        assert meta["trials"] == expected
        overlapping_seen.update(expected)
        if meta["start_time"] == pytest.approx(4.5):  # trial 0 ends exactly where this window starts
            assert 0 not in meta["trials"]
    assert overlapping_seen == {0, 1, 2, 3}


def test_missing_session_and_subject_ids(tmp_path):
    nwb = nwbfiles.new_file(session_id=None, subject_id=None)
    nwbfiles.add_units(nwb, [np.linspace(0, 3, 40)])
    path = nwbfiles.write(nwb, tmp_path / "anonymous.nwb")
    _, ds = convert(tmp_path, [path], ["spikes"])
    meta = ds[0]["metadata"]
    assert meta["session_id"] == "anonymous" and meta["subject_id"] is None and meta["trials"] == []


# -- bad input ------------------------------------------------------------------------------------
def test_missing_modality_names_file_and_modality(tmp_path):
    path = nwbfiles.simple_session(tmp_path / "no_behavior.nwb")
    with pytest.raises(NWBError, match=r"no_behavior\.nwb: holds no behavior data"):
        convert(tmp_path, [path], ["spikes", "behavior"])


def test_not_nwb_files(tmp_path):
    text = tmp_path / "notes.nwb"
    text.write_text("this is not HDF5\n")
    plain = tmp_path / "plain.nwb"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(10)
    truncated = tmp_path / "truncated.nwb"
    good = nwbfiles.simple_session(tmp_path / "good.nwb")
    truncated.write_bytes(good.read_bytes()[:4096])
    for path in (text, plain, truncated, tmp_path / "absent.nwb"):
        with pytest.raises(NWBError) as err:
            convert(tmp_path, [path], ["spikes"], name=path.stem)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / path.stem / ".neurocodec" / "dataset_metadata.json").exists()


def test_non_monotonic_timestamps(tmp_path):
    nwb = nwbfiles.new_file()
    times = np.arange(500) / 50.0
    times[300], times[301] = times[301], times[300]
    nwb.add_acquisition(nwbfiles.Position(spatial_series=nwbfiles.spatial_series("xy", np.zeros((500, 2)),
                                                                                   timestamps=times)))
    path = nwbfiles.write(nwb, tmp_path / "shuffled.nwb")
    with pytest.raises(NWBError, match=r"shuffled\.nwb: /acquisition/Position/xy timestamps are not monotonic "
                                       r"at index 301"):
        convert(tmp_path, [path], ["behavior"])


def test_unsorted_or_nan_spike_times(tmp_path):
    for name, times in (("unsorted", [0.5, 0.2, 0.9, 2.0]), ("nan", [0.1, np.nan, 2.0])):
        nwb = nwbfiles.new_file()
        nwbfiles.add_units(nwb, [np.linspace(0, 3, 30), np.asarray(times)])
        path = nwbfiles.write(nwb, tmp_path / f"{name}.nwb")
        with pytest.raises(NWBError, match=rf"{name}\.nwb: /units spike times of unit 1 are not"):
            convert(tmp_path, [path], ["spikes"], name=name)


@pytest.fixture
def nan_lfp(tmp_path, rng):
    data = rng.standard_normal((5000, 2)).astype(np.float32)
    data[1234, 1] = np.nan  # t = 1.234 s: inside the windows starting at 0.75 and 1.0 s
    nwb = nwbfiles.new_file()
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", data, rate=1000.0))
    return nwbfiles.write(nwb, tmp_path / "nan.nwb"), data


def test_nan_policies(tmp_path, nan_lfp):
    path, data = nan_lfp
    with pytest.raises(NWBError, match=r"nan\.nwb: /processing/ecephys/LFP/lfp holds NaN in the window \[0\.750000, "
                                       r"1\.250000\) s"):
        convert(tmp_path, [path], ["lfp"], name="error")
    assert not (tmp_path / "error" / ".neurocodec" / "dataset_metadata.json").exists()
    summary, ds = convert(tmp_path, [path], ["lfp"], name="skip", nan_policy="skip_window")
    assert summary["skipped_windows"] == 2 and len(ds) == 19 - 2
    assert [round(ds[i]["metadata"]["start_time"], 6) for i in range(5)] == [0.0, 0.25, 0.5, 1.25, 1.5]
    assert not any(np.isnan(ds[i]["lfp"]).any() for i in range(len(ds)))
    summary, ds = convert(tmp_path, [path], ["lfp"], name="keep", nan_policy="keep")
    assert summary["skipped_windows"] == 0 and len(ds) == 19
    for i in range(len(ds)):
        np.testing.assert_array_equal(ds[i]["lfp"], data[250 * i:250 * i + 500])  # NaN compare equal here
    assert np.isnan(ds[3]["lfp"][484, 1]) and np.isnan(ds[4]["lfp"][234, 1])


def test_modalities_that_never_overlap(tmp_path, rng):
    nwb = nwbfiles.new_file()
    nwbfiles.add_units(nwb, [np.sort(rng.uniform(0.0, 5.0, 100))], [[[0.0, 5.0]]])
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", np.ones((5000, 2), dtype=np.float32), rate=1000.0,
                                                     starting_time=10.0))
    path = nwbfiles.write(nwb, tmp_path / "apart.nwb")
    with pytest.raises(NWBError, match=r"apart\.nwb: no window of 0\.5 s is covered by every requested modality"):
        convert(tmp_path, [path], ["spikes", "lfp"], name="all")
    summary, ds = convert(tmp_path, [path], ["spikes", "lfp"], name="fill", coverage="fill")
    # windows over [0, 15): 19 in [0, 5) have spikes only, 19 in [10, 15) lfp only, the rest neither
    missing = [tuple(ds[i]["metadata"]["missing"]) for i in range(len(ds))]
    assert missing == [("lfp",)] * 19 + [("spikes",)] * 19
    assert summary["skipped_windows"] == len(WindowSpec.from_user(10, 50, 0.5).starts(0.0, 15.0)) - 38 > 0
    for i in range(19, 38):
        sample = ds[i]
        assert not sample["spikes"].any() and not sample["spikes_observed"].any() and sample["lfp"].all()


def test_values_the_modality_refuses_name_the_file(tmp_path):
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(nwbfiles.video_series("camera", np.full((100, 4, 4), 4095, dtype=np.uint16), rate=30.0))
    path = nwbfiles.write(nwb, tmp_path / "twelve_bit.nwb")
    with pytest.raises(NWBError, match=r"twelve_bit\.nwb: SampleError: .*video.*uint8"):
        convert(tmp_path, [path], ["video"], bin_size_ms=100, sequence_length=10)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = nwbfiles.simple_session(tmp_path / "locked.nwb")
    path.chmod(0)
    try:
        with pytest.raises(NWBError, match=r"locked\.nwb: cannot open as NWB"):
            convert(tmp_path, [path], ["spikes"])
    finally:
        path.chmod(0o644)
