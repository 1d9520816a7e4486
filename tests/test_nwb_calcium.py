"""The calcium modality from NWB: RoiResponseSeries as (time, rois), end to end.

Files are written with pynwb in the shapes real pipelines produce: suite2p's own export (one
Fluorescence container per kind, `Deconvolved/Deconvolved`, `Neuropil/Neuropil`, traces stored
transposed (rois, time)), neuroconv's (one Fluorescence container holding `RoiResponseSeries`,
`Deconvolved` and `Neuropil`), DfOverF next to them; plus the real suite2p and inscopix sessions
shipped in pynapple's sdist. Every window is checked against the file read with h5py.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import TimeSeries
from pynwb.ophys import DfOverF, Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

from neurocodec import Dataset, create_webdataset_dataloader
from neurocodec.dataset.reader import read_manifest
from neurocodec.nwb import NWBError
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec_plugins.nwb_ophys import TimeFirst, stored_transposed
from nwbfiles import new_file, write
from test_nwb_real import cache_dir, fetch_sdist, real_files  # noqa: F401 (real_files is a fixture)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*oriented incorrectly and should be transposed:UserWarning",
    "ignore:The 'manufacturer' field is deprecated:DeprecationWarning",
    "ignore:The linked table for DynamicTableRegion 'rois' does not share an ancestor:UserWarning",
    "ignore:.*Your data may be transposed:UserWarning",
)
INSCOPIX = "pynapple-0.11.4/tests/nwbfilestest/inscopix-cnmfe/pynapplenwb/A0634-210127.nwb"
ROI_IDS = [101, 102, 103, 104, 105]
ORDER = [4, 0, 2, 1, 3]  # the rois region's rows: trace column j is ROI ORDER[j]
SUITE2P = {"DfOverF": ("DfOverF", "DfOverF"), "Fluorescence": ("Fluorescence", "Fluorescence"),
           "Deconvolved": ("Deconvolved", "Deconvolved"), "Neuropil": ("Neuropil", "Neuropil")}
"""kind -> (container, series) as suite2p names them; each kind its own container."""


def ophys_file(path: Path, kinds=tuple(SUITE2P), *, layout=SUITE2P, rate: float = 10.0, seconds: float = 12.0,
               t0: float = 0.0, timestamps: bool = False, transposed: bool = False, extra=(),
               roi_ids=ROI_IDS, order=ORDER) -> Path:
    """An imaging session: one plane, ROIs `roi_ids`, a series per kind over the table rows
    `order` (random float32 traces)."""
    rng = np.random.default_rng(len(kinds) + len(roi_ids))
    nwb = new_file(identifier=path.stem, session_id=path.stem, subject_id="mouse7")
    device = nwb.create_device("Microscope")
    channel = OpticalChannel(name="green", description="GCaMP emission", emission_lambda=525.0)
    plane = nwb.create_imaging_plane(name="plane0", optical_channel=channel, imaging_rate=rate, device=device,
                                     description="V1 layer 2/3", excitation_lambda=920.0, indicator="GCaMP6s",
                                     location="VISp")
    module = nwb.create_processing_module("ophys", "optical physiology")
    segmentation = ImageSegmentation()
    module.add(segmentation)
    table = segmentation.create_plane_segmentation(name="PlaneSeg", description="suite2p", imaging_plane=plane)
    for roi in roi_ids:
        table.add_roi(id=roi, image_mask=np.zeros((4, 4)))
    n = round(seconds * rate)
    timing = {"timestamps": t0 + np.arange(n) / rate} if timestamps else {"rate": rate, "starting_time": t0}
    containers: dict[str, list] = {}
    for kind in kinds:
        container, name = layout[kind]
        data = rng.standard_normal((n, len(order))).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            region = table.create_roi_table_region(region=list(order), description="cells")
            containers.setdefault(container, []).append(RoiResponseSeries(  # pynwb warns when transposed
                name=name, data=data.T if transposed and not timestamps else data, rois=region, unit="a.u.",
                **timing))
    for container, series in containers.items():
        module.add((DfOverF if container == "DfOverF" else Fluorescence)(name=container, roi_response_series=series))
    for series in extra:
        nwb.add_acquisition(series)
    write(nwb, path)
    if transposed and timestamps:  # pynwb refuses to write these; older versions wrote them
        with h5py.File(path, "a") as f:
            for container, name in (layout[kind] for kind in kinds):
                group = f[f"/processing/ophys/{container}/{name}"]
                data = group["data"][:]
                del group["data"]
                group["data"] = data.T
    return path


def convert(tmp_path: Path, files, name: str = "out", **kwargs):
    """Convert with modalities=["calcium"], 1 s windows; (summary, Dataset)."""
    kwargs = {"bin_size_ms": 100, "sequence_length": 10, "overlap": 0.0, "progress": False, "fsync": False,
              "modalities": ["calcium"], **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 50, **kwargs)
    converter.convert_nwb_files([str(f) for f in files])
    return converter.finalize(), Dataset(tmp_path / name)


def session(ds: Dataset) -> dict:
    """The one session recorded in the dataset's manifest."""
    (only,) = ds.manifest.extra["sessions"].values()
    return only


def traces(path: Path, object_path: str) -> tuple[np.ndarray, np.ndarray]:
    """(values as (time, rois) in physical units, sample times), straight from h5py."""
    with h5py.File(path, "r") as f:
        group = f[object_path]
        data = group["data"][:]
        rois = len(group["rois"]) if "rois" in group else None
        if "timestamps" in group:
            times = group["timestamps"][:]
        else:
            start = group["starting_time"]
            times = start[()] + np.arange(max(data.shape)) / start.attrs["rate"]
        conversion = group["data"].attrs.get("conversion", 1.0)
    if data.ndim == 2 and data.shape[0] == rois and data.shape[1] == len(times) != rois:
        data = data.T
    data = data.reshape(len(times), -1)
    return (data if conversion == 1.0 else (data * conversion).astype(np.float32)), times


def check_windows(ds: Dataset, path: Path, object_path: str, count: int) -> None:
    """Every window equals the `count` samples from the first at or after its start."""
    values, times = traces(path, object_path)
    assert len(ds) > 0
    for i in range(len(ds)):
        sample = ds[i]
        start = sample["metadata"]["start_time"]
        i0 = int(np.searchsorted(times, start - 1e-9))
        assert sample["calcium"].shape == (count, values.shape[1])
        np.testing.assert_array_equal(sample["calcium"], values[i0:i0 + count])
        assert times[i0] < start + 0.5 * (times[1] - times[0])


def chosen(summary: dict) -> str:
    """The object the summary reports for calcium (one file converted)."""
    (per_file,) = summary["series"].values()
    return per_file["calcium"]


# -- the default choice --------------------------------------------------------------------------

@pytest.mark.parametrize("kinds, expected", [
    (("Neuropil", "Deconvolved", "Fluorescence", "DfOverF"), "/processing/ophys/DfOverF/DfOverF"),
    (("Neuropil", "Deconvolved", "Fluorescence"), "/processing/ophys/Fluorescence/Fluorescence"),
    (("Neuropil", "Deconvolved"), "/processing/ophys/Deconvolved/Deconvolved"),
    (("Neuropil",), "/processing/ophys/Neuropil/Neuropil"),
])
def test_default_prefers_dff_then_fluorescence_then_deconvolved_then_neuropil(tmp_path, kinds, expected):
    path = ophys_file(tmp_path / "s.nwb", kinds)
    summary, ds = convert(tmp_path, [path])
    assert chosen(summary) == expected
    described = session(ds)["series"]["calcium"]
    assert described["object"] == expected and described["kind"] == expected.rsplit("/", 1)[1]
    check_windows(ds, path, expected, 10)


def test_neuroconv_layout_kinds_come_from_series_names(tmp_path):
    """One Fluorescence container holds all three: by path Deconvolved and Neuropil come first,
    but the raw fluorescence is the default."""
    layout = {"Fluorescence": ("Fluorescence", "RoiResponseSeries"), "Deconvolved": ("Fluorescence", "Deconvolved"),
              "Neuropil": ("Fluorescence", "Neuropil")}
    path = ophys_file(tmp_path / "s.nwb", tuple(layout), layout=layout)
    summary, ds = convert(tmp_path, [path])
    assert chosen(summary) == "/processing/ophys/Fluorescence/RoiResponseSeries"
    check_windows(ds, path, "/processing/ophys/Fluorescence/RoiResponseSeries", 10)


def test_within_a_kind_the_first_by_path(tmp_path):
    layout = {"DfOverF": ("DfOverF", "plane1"), "Fluorescence": ("DfOverF", "plane0")}
    path = ophys_file(tmp_path / "s.nwb", tuple(layout), layout=layout)
    summary, _ = convert(tmp_path, [path])
    assert chosen(summary) == "/processing/ophys/DfOverF/plane0"


# -- series= -------------------------------------------------------------------------------------

@pytest.mark.parametrize("requested", ["Neuropil", "/processing/ophys/Neuropil/Neuropil"])
def test_series_picks_any_roi_response_series_by_name_or_path(tmp_path, requested):
    path = ophys_file(tmp_path / "s.nwb")
    summary, ds = convert(tmp_path, [path], series={"calcium": requested})
    assert chosen(summary) == "/processing/ophys/Neuropil/Neuropil"
    assert session(ds)["series"]["calcium"]["kind"] == "Neuropil"
    check_windows(ds, path, "/processing/ophys/Neuropil/Neuropil", 10)


def test_series_picks_another_time_series_by_name(tmp_path):
    signal = np.arange(120, dtype=np.float64)
    extra = [TimeSeries(name="sleep_ripples", data=signal, unit="a.u.", rate=10.0, starting_time=0.0)]
    path = ophys_file(tmp_path / "s.nwb", ("Fluorescence",), extra=extra)
    summary, ds = convert(tmp_path, [path], series={"calcium": "sleep_ripples"})
    assert chosen(summary) == "/acquisition/sleep_ripples"
    assert session(ds)["ids"]["calcium"] == {} and session(ds)["series"]["calcium"]["kind"] == "TimeSeries"
    check_windows(ds, path, "/acquisition/sleep_ripples", 10)
    assert ds[3]["calcium"].shape == (10, 1) and ds[3]["calcium"][0, 0] == 30.0


def test_series_not_found_lists_the_candidates(tmp_path):
    path = ophys_file(tmp_path / "s.nwb", ("Fluorescence", "Neuropil"))
    with pytest.raises(NWBError, match=r"s\.nwb: .*calcium.*'nope'.*/processing/ophys/Fluorescence/Fluorescence, "
                                       r"/processing/ophys/Neuropil/Neuropil"):
        convert(tmp_path, [path], series={"calcium": "nope"})


def test_file_without_imaging_says_so(tmp_path):
    path = write(new_file(), tmp_path / "empty.nwb")
    with pytest.raises(NWBError, match=r"empty\.nwb: holds no calcium data"):
        convert(tmp_path, [path])


# -- storage orientation and timing ---------------------------------------------------------------

@pytest.mark.parametrize("timestamps", [False, True], ids=["rate", "timestamps"])
@pytest.mark.parametrize("transposed", [False, True], ids=["time_first", "rois_first"])
def test_traces_come_out_time_first(tmp_path, timestamps, transposed):
    path = ophys_file(tmp_path / "s.nwb", ("Fluorescence",), rate=20.0, t0=3.25, timestamps=timestamps,
                      transposed=transposed)
    with h5py.File(path, "r") as f:
        stored = f["/processing/ophys/Fluorescence/Fluorescence/data"].shape
    assert stored == ((5, 240) if transposed else (240, 5))
    _, ds = convert(tmp_path, [path])
    described = session(ds)["series"]["calcium"]
    assert described["stored_transposed"] is transposed and described["shape"] == [240, 5]
    assert described["timing"] == ("timestamps" if timestamps else "rate")
    assert described["rate_hz"] == pytest.approx(20.0)
    assert len(ds) == 12 and ds[0]["metadata"]["start_time"] == pytest.approx(3.25)
    check_windows(ds, path, "/processing/ophys/Fluorescence/Fluorescence", 20)


def test_the_transposition_rule():
    assert stored_transposed((5, 240), rois=5, timestamps=None)
    assert not stored_transposed((240, 5), rois=5, timestamps=None)
    assert not stored_transposed((5, 5), rois=5, timestamps=None)  # square: as NWB says, time first
    assert stored_transposed((5, 240), rois=5, timestamps=240)
    assert not stored_transposed((5, 240), rois=5, timestamps=5)
    assert not stored_transposed((240,), rois=1, timestamps=None)


def test_time_first_view_reads_plain_slices_only():
    stored = np.arange(12).reshape(3, 4)
    view = TimeFirst(stored, transposed=True)
    assert view.shape == (4, 3) and len(view) == 4 and view.dtype == stored.dtype
    np.testing.assert_array_equal(view[1:3], stored[:, 1:3].T)
    one = TimeFirst(np.arange(5.0), transposed=False)
    assert one.shape == (5, 1) and one[2:4].tolist() == [[2.0], [3.0]]
    with pytest.raises(TypeError):
        view[[0, 2]]


def test_columns_that_match_no_roi_count_are_an_error(tmp_path):
    path = ophys_file(tmp_path / "s.nwb", ("Fluorescence",))
    with h5py.File(path, "a") as f:
        group = f["/processing/ophys/Fluorescence/Fluorescence"]
        del group["data"]
        group["data"] = np.zeros((120, 7), np.float32)
    with pytest.raises(NWBError, match=r"s\.nwb: /processing/ophys/Fluorescence/Fluorescence has data of shape "
                                       r"\(120, 7\) but its rois region names 5 ROIs"):
        convert(tmp_path, [path])


def test_float16_on_request(tmp_path):
    path = ophys_file(tmp_path / "s.nwb", ("DfOverF",))
    _, ds = convert(tmp_path, [path], modality_options={"calcium": {"dtype": "float16"}})
    values, _ = traces(path, "/processing/ophys/DfOverF/DfOverF")
    assert ds[2]["calcium"].dtype == np.float16
    np.testing.assert_array_equal(ds[2]["calcium"], values[20:30].astype(np.float16))


# -- stored once per session -----------------------------------------------------------------------

def test_roi_ids_and_imaging_plane_in_the_manifest(tmp_path):
    path = ophys_file(tmp_path / "s.nwb", transposed=True)
    _, ds = convert(tmp_path, [path])
    with h5py.File(path, "r") as f:
        rows = f["/processing/ophys/DfOverF/DfOverF/rois"][:]
        ids = f["/processing/ophys/ImageSegmentation/PlaneSeg/id"][:][rows].tolist()
        plane = f["/general/optophysiology/plane0"]
        indicator, location = plane["indicator"][()].decode(), plane["location"][()].decode()
    assert ids == [105, 101, 103, 102, 104]
    manifest = read_manifest(tmp_path / "out")
    (recorded,) = manifest.extra["sessions"].values()
    assert recorded["ids"]["calcium"] == {"roi_ids": ids}
    described = recorded["series"]["calcium"]
    assert described["plane_segmentation"] == "PlaneSeg"
    assert described["imaging_plane"] == {
        "name": "plane0", "description": "V1 layer 2/3", "indicator": indicator, "location": location,
        "imaging_rate_hz": 10.0, "excitation_lambda_nm": 920.0, "device": "Microscope"}
    assert (indicator, location) == ("GCaMP6s", "VISp")
    check_windows(ds, path, "/processing/ophys/DfOverF/DfOverF", 10)  # column j is ROI ids[j]


def test_sessions_with_different_roi_counts_batch_with_a_mask(tmp_path):
    five = ophys_file(tmp_path / "five.nwb", ("Fluorescence",))
    three = ophys_file(tmp_path / "three.nwb", ("Fluorescence",), roi_ids=[7, 8, 9], order=[2, 0, 1])
    _, ds = convert(tmp_path, [five, three])
    assert len(ds) == 24
    (field,) = [f for f in ds.fields if f.name == "calcium"]
    assert field.shape == (10, None)
    assert sorted(s["ids"]["calcium"]["roi_ids"] for s in ds.manifest.extra["sessions"].values()) == [
        [9, 7, 8], [105, 101, 103, 102, 104]]
    loader = create_webdataset_dataloader(tmp_path / "out", batch_size=24, num_workers=0, shuffle=False)
    (batch,) = list(loader)
    assert tuple(batch["calcium"].shape) == (24, 10, 5) and tuple(batch["calcium_mask"].shape) == (24, 5)
    for row, source in enumerate(batch["metadata"]):
        values, times = traces(tmp_path / source["source_file"], "/processing/ophys/Fluorescence/Fluorescence")
        i0 = int(np.searchsorted(times, source["start_time"] - 1e-9))
        rois = values.shape[1]
        np.testing.assert_array_equal(batch["calcium"][row, :, :rois].numpy(), values[i0:i0 + 10])
        assert not batch["calcium"][row, :, rois:].any()
        assert batch["calcium_mask"][row].tolist() == [True] * rois + [False] * (5 - rois)


def test_command_line_converts_calcium(tmp_path):
    path = ophys_file(tmp_path / "s.nwb", transposed=True)
    done = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(path), "--output",
                           str(tmp_path / "out"), "--format", "nwb", "--modalities", "calcium", "--series",
                           "calcium=Neuropil", "--bin-size-ms", "100", "--sequence-length", "10", "--overlap", "0",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Dataset(tmp_path / "out") as ds:
        assert session(ds)["series"]["calcium"]["object"] == "/processing/ophys/Neuropil/Neuropil"
        check_windows(ds, path, "/processing/ophys/Neuropil/Neuropil", 10)


# -- real sessions ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def inscopix_file() -> Path:
    """The inscopix CNMF-E session of the pynapple sdist, extracted once into the cache."""
    target = cache_dir() / "pynapple-0.11.4-nwb"
    path = target / INSCOPIX
    if not path.exists():
        with tarfile.open(fetch_sdist(cache_dir())) as tar:
            tar.extract(INSCOPIX, target, filter="data")
    return path


def test_real_suite2p_session(tmp_path, real_files):  # noqa: F811
    path = real_files["suite2p"]
    summary, ds = convert(tmp_path, [path], bin_size_ms=500, sequence_length=4)
    expected = "/processing/ophys/Fluorescence/Fluorescence"  # no DfOverF in the file
    assert chosen(summary) == expected
    with h5py.File(path, "r") as f:
        stored = f[expected + "/data"]
        assert stored.shape == (219, 2000)  # suite2p writes (rois, time)
        rows = f[expected + "/rois"][:]
        ids = f["/processing/ophys/ImageSegmentation/PlaneSegmentation/id"][:][rows].tolist()
        plane = f["/general/optophysiology/ImagingPlane"]
        indicator, rate = plane["indicator"][()].decode(), float(plane["imaging_rate"][()])
    assert len(ds) == 100 and ds[0]["calcium"].shape == (20, 219) and ds[0]["calcium"].dtype == np.float32
    check_windows(ds, path, expected, 20)
    recorded = session(ds)
    assert recorded["ids"]["calcium"]["roi_ids"] == ids and len(ids) == 219
    described = recorded["series"]["calcium"]
    assert described["stored_transposed"] is True and described["kind"] == "Fluorescence"
    assert described["imaging_plane"]["indicator"] == indicator == "GCaMP"
    assert described["imaging_plane"]["imaging_rate_hz"] == rate == 10.0
    assert described["imaging_plane"]["location"] == "V1" and described["plane_segmentation"] == "PlaneSegmentation"


def test_real_suite2p_deconvolved_by_name(tmp_path, real_files):  # noqa: F811
    path = real_files["suite2p"]
    summary, ds = convert(tmp_path, [path], series={"calcium": "Deconvolved"}, bin_size_ms=500, sequence_length=4)
    assert chosen(summary) == "/processing/ophys/Deconvolved/Deconvolved"
    assert session(ds)["series"]["calcium"]["kind"] == "Deconvolved"
    # Its rois is a link to the Fluorescence series' region: the same ROI ids.
    assert len(session(ds)["ids"]["calcium"]["roi_ids"]) == 219
    check_windows(ds, path, "/processing/ophys/Deconvolved/Deconvolved", 20)


def test_real_inscopix_session(tmp_path, inscopix_file):
    summary, ds = convert(tmp_path, [inscopix_file], bin_size_ms=100, sequence_length=20)
    expected = "/processing/ophys/Fluorescence/RoiResponseSeries"
    assert chosen(summary) == expected
    values, times = traces(inscopix_file, expected)
    steps = np.diff(times)
    assert steps.max() < 1.5 * np.median(steps)  # no gap: every window of the span is kept
    count = round(2.0 / np.median(steps))
    starts = times[0] + 2.0 * np.arange(int((times[-1] - times[0]) / 2.0) + 1)
    fits = np.searchsorted(times, starts - 1e-9) + count <= len(times)
    assert len(ds) == int(fits.sum()) > 500
    check_windows(ds, inscopix_file, expected, count)
    recorded = session(ds)
    assert recorded["ids"]["calcium"] == {"roi_ids": list(range(10))}
    assert recorded["series"]["calcium"]["imaging_plane"]["indicator"] == "GCAMP"
    assert recorded["series"]["calcium"]["timing"] == "timestamps"
