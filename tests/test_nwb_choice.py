"""Which series a modality takes from an NWB file: video frames or fMRI volumes by what an
ImageSeries declares (never a silent guess between the two), `series=` over every compatible
TimeSeries of the file, and the documented meaning of spike counts outside obs_intervals. Files
are written with pynwb; converted values are checked against the file read with h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from pynwb.image import ImageSeries, OpticalSeries

import nwbfiles
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import NWBError
from neurocodec.nwb.converter import NWBToWebDatasetConverter

RATE = 10.0  # images per second; windows of 1 s hold 10 of them


def convert(tmp_path, files, modalities, name="out", **kwargs):
    """Convert `files` into tmp_path/name; return (summary, Dataset)."""
    kwargs = {"bin_size_ms": 100, "sequence_length": 10, "overlap": 0.0, "progress": False, "fsync": False,
              **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 16, modalities, **kwargs)
    converter.convert_nwb_files(files)
    return converter.finalize(), Dataset(tmp_path / name)


def chosen(summary, path):
    """The series the summary says were chosen from `path` (keyed by its path or file name)."""
    series = summary["series"]
    return series[str(path)] if str(path) in series else series[path.name]


def session_of(ds):
    """The manifest's entry for the session of the dataset's first window."""
    return ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]


def check_windows(ds, field, path, object_path, per_window):
    """Every window of `field` holds the next `per_window` samples of `object_path`'s data as h5py
    reads them from `path` (windows start at the series' start, without overlap)."""
    with h5py.File(path, "r") as f:
        data = f[object_path]["data"][:]
    assert len(ds) == len(data) // per_window
    for i in range(len(ds)):
        got = ds[i][field]
        assert got.dtype == data.dtype
        np.testing.assert_array_equal(got, data[per_window * i:per_window * (i + 1)])


# -- video frames or fMRI volumes -----------------------------------------------------------------
def image_series(name, data, **kwargs):
    """An in-file ImageSeries at RATE Hz."""
    return ImageSeries(name=name, data=data, unit="a.u.", rate=RATE, starting_time=0.0, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_three_slice_volumes_declared_by_dimension_are_fmri(tmp_path, rng, dtype):
    volumes = (rng.standard_normal((40, 6, 5, 3)) * 300).astype(dtype)  # (time, x, y, z=3 slices)
    frames = rng.integers(0, 256, (40, 4, 7, 3), dtype=np.uint8)  # (time, height, width, RGB)
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("bold", volumes, dimension=[6, 5, 3]))
    nwb.add_acquisition(image_series("camera", frames, dimension=[7, 4]))  # [width, height]
    path = nwbfiles.write(nwb, tmp_path / "three_slices.nwb")
    summary, ds = convert(tmp_path, [path], ["video", "fmri"])
    assert chosen(summary, path) == {"video": "/acquisition/camera", "fmri": "/acquisition/bold"}
    check_windows(ds, "fmri", path, "/acquisition/bold", 10)
    check_windows(ds, "video", path, "/acquisition/camera", 10)
    described = session_of(ds)["series"]
    assert described["fmri"]["image"] == {"holds": "volumes", "because": "its dimension [6, 5, 3] declares 3-D "
                                          "volumes", "chosen_by": "default"}
    assert described["video"]["image"]["because"] == "its dimension [7, 4] declares 2-D frames"


def test_optical_series_holds_frames(tmp_path, rng):
    frames = rng.integers(0, 256, (30, 4, 5, 3), dtype=np.uint8)
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(OpticalSeries(name="screen", data=frames, unit="n.a.", rate=RATE, starting_time=0.0,
                                      distance=0.5, field_of_view=[0.2, 0.1], orientation="up"))
    path = nwbfiles.write(nwb, tmp_path / "optical.nwb")
    summary, ds = convert(tmp_path, [path], ["video"])
    assert chosen(summary, path) == {"video": "/acquisition/screen"}
    check_windows(ds, "video", path, "/acquisition/screen", 10)
    with pytest.raises(NWBError, match="holds no fmri data"):
        convert(tmp_path, [path], ["fmri"], name="fmri")


@pytest.fixture
def undeclared(tmp_path, rng):
    """One 4-D uint8 ImageSeries ending in 3 with no dimension, format or telling class."""
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("scan", rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)))
    return nwbfiles.write(nwb, tmp_path / "undeclared.nwb")


@pytest.mark.parametrize("modality, other", [("video", "fmri"), ("fmri", "video")])
def test_undeclared_rgb_or_slices_is_neither_guessed(tmp_path, undeclared, modality, other):
    with pytest.raises(NWBError) as err:
        convert(tmp_path, [undeclared], [modality])
    message = str(err.value)
    assert str(undeclared) in message and "/acquisition/scan" in message
    assert "colour channels (video) or slices (fmri)" in message and "declares neither" in message
    assert f"series={{'{modality}': 'scan'}}" in message and f"series={{'{other}': 'scan'}}" in message
    assert "`dimension`" in message and "[x, y, z]" in message


@pytest.mark.parametrize("modality", ["video", "fmri"])
@pytest.mark.parametrize("pick", ["scan", "/acquisition/scan"])
def test_series_takes_an_undeclared_series_either_way(tmp_path, undeclared, modality, pick):
    summary, ds = convert(tmp_path, [undeclared], [modality], series={modality: pick})
    assert chosen(summary, undeclared) == {modality: "/acquisition/scan"}
    image = session_of(ds)["series"][modality]["image"]
    assert image["holds"] == "ambiguous" and image["chosen_by"] == "series="
    check_windows(ds, modality, undeclared, "/acquisition/scan", 10)


def test_series_overrides_a_declared_kind_both_ways(tmp_path, rng):
    volumes = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (20, 4, 7, 3), dtype=np.uint8)
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("bold", volumes, dimension=[6, 5, 3]))
    nwb.add_acquisition(image_series("camera", frames, dimension=[4, 7]))
    path = nwbfiles.write(nwb, tmp_path / "swap.nwb")
    summary, ds = convert(tmp_path, [path], ["video", "fmri"], series={"video": "bold", "fmri": "camera"})
    assert chosen(summary, path) == {"video": "/acquisition/bold", "fmri": "/acquisition/camera"}
    check_windows(ds, "video", path, "/acquisition/bold", 10)
    check_windows(ds, "fmri", path, "/acquisition/camera", 10)


def test_dimension_that_disagrees_with_the_data_is_not_trusted(tmp_path, rng):
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("scan", rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8),
                                     dimension=[64, 64]))
    path = nwbfiles.write(nwb, tmp_path / "wrong_dimension.nwb")
    with pytest.raises(NWBError, match=r"dimension \[64, 64\] does not match the data shape"):
        convert(tmp_path, [path], ["video"])


def test_unambiguous_series_is_taken_next_to_an_undeclared_one(tmp_path, rng):
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("a_scan", rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)))
    nwb.add_acquisition(image_series("bold", rng.integers(-9, 9, (30, 6, 5, 8), dtype=np.int16)))
    path = nwbfiles.write(nwb, tmp_path / "both.nwb")
    summary, ds = convert(tmp_path, [path], ["fmri"])  # 8 slices: volumes by shape alone
    assert chosen(summary, path) == {"fmri": "/acquisition/bold"}
    check_windows(ds, "fmri", path, "/acquisition/bold", 10)
    with pytest.raises(NWBError, match="/acquisition/a_scan may hold video data"):
        convert(tmp_path, [path], ["video"], name="video")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_as_video_say_what_to_do(tmp_path, rng, dtype):
    images = rng.random((30, 6, 5)).astype(dtype)
    nwb = nwbfiles.new_file()
    nwb.add_acquisition(image_series("camera", images))
    path = nwbfiles.write(nwb, tmp_path / "float_video.nwb")
    with pytest.raises(NWBError) as err:
        convert(tmp_path, [path], ["video"])
    message = str(err.value)
    assert str(path) in message and "/acquisition/camera" in message and "kinds" not in message
    assert f"holds {np.dtype(dtype).name} images" in message and "integers or booleans" in message
    assert "convert the frames to uint8" in message and "series={'fmri': 'camera'}" in message
    summary, ds = convert(tmp_path, [path], ["fmri"], name="as_fmri", series={"fmri": "camera"})  # as advised
    check_windows(ds, "fmri", path, "/acquisition/camera", 10)


# -- series= over every compatible TimeSeries -----------------------------------------------------
SERIES_RATE, SERIES_SAMPLES = 100.0, 400  # 4 s at 100 Hz: 8 windows of 0.5 s


@pytest.fixture(scope="module")
def many_series(tmp_path_factory):
    """A session as real rigs write it: LFP in its container, a raw ElectricalSeries, running
    speed in BehavioralTimeSeries, wheel, licks and sleep_ripples as plain acquisition TimeSeries,
    an OptogeneticSeries, and a camera ImageSeries (never a continuous candidate)."""
    from pynwb import TimeSeries
    from pynwb.ogen import OptogeneticSeries

    rng = np.random.default_rng(5)
    n, timing = SERIES_SAMPLES, {"rate": SERIES_RATE, "starting_time": 0.0}
    nwb = nwbfiles.new_file(identifier="many", session_id="many", subject_id="mouse-m")
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", rng.standard_normal((n, 4)).astype(np.float32),
                                                     **timing))
    nwb.add_acquisition(nwbfiles.electrical_series(nwb, "raw", rng.integers(-500, 500, (n, 4), dtype=np.int16),
                                                   **timing))
    nwbfiles.behavior_module(nwb).add(nwbfiles.behavioral_timeseries("running_speed", rng.random(n), **timing))
    nwb.add_acquisition(TimeSeries(name="running_speed", data=rng.random(n) + 10, unit="cm/s", **timing))
    nwb.add_acquisition(TimeSeries(name="wheel", data=rng.integers(0, 1024, n, dtype=np.int32), unit="ticks",
                                   **timing))
    nwb.add_acquisition(TimeSeries(name="licks", data=rng.random(n) > 0.9, unit="n.a.", **timing))
    nwb.add_acquisition(TimeSeries(name="sleep_ripples", data=rng.standard_normal((n, 2)), unit="V", **timing))
    device = nwb.create_device("laser")
    site = nwb.create_ogen_site(name="site", device=device, description="ChR2", excitation_lambda=473.0,
                                location="VISp")
    nwb.add_acquisition(OptogeneticSeries(name="opto", data=rng.random(n) * 0.01, site=site, **timing))
    nwb.add_acquisition(image_series("camera", rng.integers(0, 256, (40, 4, 5), dtype=np.uint8)))
    return nwbfiles.write(nwb, tmp_path_factory.mktemp("many") / "many.nwb")


def check_series(ds, field, path, object_path):
    """Window i of `field` holds samples [50 i, 50 i + 50) of `object_path`, read with h5py."""
    with h5py.File(path, "r") as f:
        data = f[object_path]["data"][:]
    assert len(ds) == SERIES_SAMPLES // 50
    for i in range(len(ds)):
        got, want = ds[i][field], data[50 * i:50 * i + 50]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.reshape(50, -1), want.reshape(50, -1))


SERIES_SETTINGS = {"bin_size_ms": 10, "sequence_length": 50}


def test_defaults_stay_as_documented(tmp_path, many_series):
    summary, ds = convert(tmp_path, [many_series], ["lfp", "behavior"], **SERIES_SETTINGS)
    assert chosen(summary, many_series) == {"lfp": "/processing/ecephys/LFP/lfp",
                                            "behavior": "/processing/behavior/BehavioralTimeSeries/running_speed"}
    check_series(ds, "lfp", many_series, "/processing/ecephys/LFP/lfp")
    with pytest.raises(NWBError, match="no ElectricalSeries is named like EEG"):
        convert(tmp_path, [many_series], ["eeg"], name="eeg", **SERIES_SETTINGS)


@pytest.mark.parametrize("modality, pick, path", [
    ("lfp", "raw", "/acquisition/raw"),
    ("eeg", "raw", "/acquisition/raw"),
    ("lfp", "sleep_ripples", "/acquisition/sleep_ripples"),
    ("eeg", "/acquisition/opto", "/acquisition/opto"),
    ("behavior", "/processing/behavior/BehavioralTimeSeries/running_speed",
     "/processing/behavior/BehavioralTimeSeries/running_speed"),
    ("behavior", "/acquisition/running_speed", "/acquisition/running_speed"),
    ("behavior", "wheel", "/acquisition/wheel"),
    ("behavior", "licks", "/acquisition/licks"),
    ("behavior", "opto", "/acquisition/opto"),
])
def test_series_names_any_compatible_timeseries(tmp_path, many_series, modality, pick, path):
    summary, ds = convert(tmp_path, [many_series], [modality], series={modality: pick}, **SERIES_SETTINGS)
    assert chosen(summary, many_series) == {modality: path}
    check_series(ds, modality, many_series, path)
    session = session_of(ds)
    if pick == "raw":  # an ElectricalSeries keeps its electrodes' ids
        assert session["ids"][modality] == {"channel_ids": [0, 1, 2, 3]}


def test_several_fields_by_name_in_one_conversion(tmp_path, many_series):
    fields = {"raw": "lfp", "running": "behavior", "wheel": "behavior", "stimulus": "lfp"}
    series = {"raw": "raw", "running": "/processing/behavior/BehavioralTimeSeries/running_speed",
              "wheel": "/acquisition/wheel", "stimulus": "opto"}
    _, ds = convert(tmp_path, [many_series], fields, series=series, **SERIES_SETTINGS)
    check_series(ds, "raw", many_series, "/acquisition/raw")
    check_series(ds, "running", many_series, "/processing/behavior/BehavioralTimeSeries/running_speed")
    check_series(ds, "wheel", many_series, "/acquisition/wheel")
    check_series(ds, "stimulus", many_series, "/acquisition/opto")


@pytest.mark.parametrize("modality", ["lfp", "eeg", "behavior"])
def test_a_name_not_found_lists_every_compatible_series(tmp_path, many_series, modality):
    with pytest.raises(NWBError) as err:
        convert(tmp_path, [many_series], [modality], series={modality: "pupil"}, **SERIES_SETTINGS)
    message = str(err.value)
    assert str(many_series) in message and f"no {modality} series named 'pupil'" in message
    listed = message.split("candidates: ")[1].split(", ")
    assert listed == ["/acquisition/licks", "/acquisition/opto", "/acquisition/raw", "/acquisition/running_speed",
                      "/acquisition/sleep_ripples", "/acquisition/wheel",
                      "/processing/behavior/BehavioralTimeSeries/running_speed", "/processing/ecephys/LFP/lfp"]


def test_a_name_two_compatible_series_share_asks_for_a_path(tmp_path, many_series):
    with pytest.raises(NWBError, match=r"many\.nwb: 2 behavior series are named 'running_speed' \(/acquisition/"
                                       r"running_speed, /processing/behavior/BehavioralTimeSeries/running_speed\)"):
        convert(tmp_path, [many_series], ["behavior"], series={"behavior": "running_speed"}, **SERIES_SETTINGS)


# -- spike counts outside obs_intervals -----------------------------------------------------------
def test_counts_are_not_masked_outside_observation_intervals(tmp_path):
    """As the spikes module documents: the mask says which bins are wholly observed; the counts
    hold every spike of the file in each bin, observed or not (here spikes the file keeps outside
    unit 0's intervals, and one in a bin only partly observed)."""
    intervals = [[[0.0, 2.005], [3.0, 5.0]], [[0.0, 5.0]]]
    spikes = [np.array([0.103, 1.0071, 2.001, 2.505, 2.515, 2.5171, 3.5042]), np.array([0.2551, 2.4053, 4.9012])]
    nwb = nwbfiles.new_file(identifier="outside", session_id="outside")
    nwbfiles.add_units(nwb, spikes, intervals)
    path = nwbfiles.write(nwb, tmp_path / "outside.nwb")
    _, ds = convert(tmp_path, [path], ["spikes"], bin_size_ms=10, sequence_length=50)
    with h5py.File(path, "r") as f:
        times, ends = f["/units/spike_times"][:], f["/units/spike_times_index"][:]
    per_unit = np.split(times, ends[:-1])
    assert len(ds) == 10  # the intervals' extent, [0, 5)
    counts = np.concatenate([ds[i]["spikes"] for i in range(len(ds))])
    observed = np.concatenate([ds[i]["spikes_observed"] for i in range(len(ds))])
    edges = np.arange(501) * 0.01
    for u in range(2):
        np.testing.assert_array_equal(counts[:, u], np.histogram(per_unit[u], edges)[0])
        inside = np.zeros(500, dtype=bool)
        for a, z in intervals[u]:
            inside |= (edges[:-1] >= a - 1e-9) & (edges[1:] <= z + 1e-9)
        np.testing.assert_array_equal(observed[:, u], inside)
    assert counts[200, 0] == 1 and not observed[200, 0]  # [2.00, 2.01): partly observed, its spike counted
    assert counts[250, 0] == 1 and counts[251, 0] == 2 and not observed[250:252, 0].any()  # unobserved spikes
    assert counts[~observed[:, 0], 0].sum() == 4 and counts[observed[:, 0], 0].sum() == 3
