"""Named fields from any series (`fields=`, `--field`): pynapple-style 1-D position series combined
into columns, several behavioral series at once, every choice in the summary, the manifest and the
conversion report; bad specifications refused in the words of the interface used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import TimeSeries
from pynwb.behavior import BehavioralTimeSeries, CompassDirection, Position

import nwbfiles
from test_nwb_real import real_files  # noqa: F401  (the real sessions, fetched once)
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import NWBError
from neurocodec.nwb.converter import NWBToWebDatasetConverter

pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'manufacturer' field is deprecated:DeprecationWarning")  # the real files' older pynwb
ROOT = Path(__file__).resolve().parents[1]
RATE = 50.0
SECONDS = 6.0


def tracking_session(path, *, jitter: bool = False, z_rate: float | None = None):
    """Position as three 1-D SpatialSeries x, y, z sharing one timestamps dataset (as pynapple's real
    files keep them), CompassDirection rx next to it, running speed in BehavioralTimeSeries and
    pupil radius in acquisition; plus units so the default modalities have something."""
    rng = np.random.default_rng(3)
    n = int(SECONDS * RATE)
    stamps = 1.0 + np.arange(n) / RATE
    if jitter:
        stamps = stamps + rng.uniform(-0.1, 0.1, n) / RATE
    nwb = nwbfiles.new_file(identifier="tracking")
    nwbfiles.add_units(nwb, nwbfiles.random_spikes(rng, 2, 1.0, 1.0 + SECONDS, mean=40))
    x = nwbfiles.spatial_series("x", (np.arange(n) * 1.0).astype(np.float32), timestamps=stamps)
    position = Position(spatial_series=[x])
    for name, scale in (("y", 2.0), ("z", 3.0)):
        if name == "z" and z_rate is not None:
            position.add_spatial_series(nwbfiles.spatial_series(name, (np.arange(n) * scale).astype(np.float32),
                                                                rate=z_rate, starting_time=1.0))
        else:
            position.add_spatial_series(nwbfiles.spatial_series(name, (np.arange(n) * scale).astype(np.float32),
                                                                timestamps=x))
    nwb.add_acquisition(position)
    nwb.add_acquisition(CompassDirection(spatial_series=nwbfiles.spatial_series(
        "rx", np.linspace(0, 6, n).astype(np.float32), timestamps=x)))
    nwb.add_acquisition(TimeSeries(name="pupil_radius", data=rng.random(n).astype(np.float32), unit="mm",
                                   rate=RATE, starting_time=1.0))
    nwbfiles.behavior_module(nwb).add(BehavioralTimeSeries(time_series=TimeSeries(
        name="running_speed", data=rng.random(n).astype(np.float32), unit="cm/s", rate=RATE, starting_time=1.0)))
    nwb.add_epoch(start_time=1.0, stop_time=4.0, tags=["wake"])
    nwb.add_epoch(start_time=4.0, stop_time=1.0 + SECONDS, tags=["sleep"])
    return nwbfiles.write(nwb, path)


def _column(path, dataset_path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f[dataset_path][:], dtype=np.float64)


def test_three_1d_position_series_become_three_columns(tmp_path):
    source = tracking_session(tmp_path / "tracking.nwb")
    converter = NWBToWebDatasetConverter(
        tmp_path / "out", 50, bin_size_ms=20.0, sequence_length=25, overlap=0.0, progress=False,
        fields={"position": ("behavior", ["x", "y", "z"]), "running": ("behavior", "running_speed"),
                "pupil": ("behavior", "/acquisition/pupil_radius"), "head": ("behavior", "rx")})
    converter.convert_nwb_files([source])
    summary = converter.finalize()
    x = _column(source, "/acquisition/Position/x/data")
    y = _column(source, "/acquisition/Position/y/data")
    z = _column(source, "/acquisition/Position/z/data")
    stamps = _column(source, "/acquisition/Position/x/timestamps")
    running = _column(source, "/processing/behavior/BehavioralTimeSeries/running_speed/data")
    with Dataset(tmp_path / "out") as ds:
        assert {f.name for f in ds.manifest.modalities} == {"position", "running", "pupil", "head"}
        assert len(ds) == int(SECONDS / 0.5)
        for i in range(len(ds)):
            sample = ds[i]
            start = sample["metadata"]["start_time"]
            first = int(np.searchsorted(stamps, start - 1e-9))
            assert sample["position"].shape == (25, 3)
            np.testing.assert_array_equal(sample["position"], np.stack([x, y, z], 1)[first:first + 25])
            assert sample["running"].reshape(25).tolist() == running[first:first + 25].astype(np.float32).tolist()
            assert sample["head"].shape[0] == 25 and sample["pupil"].shape[0] == 25
        session = next(iter(ds.manifest.extra["sessions"].values()))
        settings = ds.manifest.extra["conversion"]
    expected = {"position": ["/acquisition/Position/x", "/acquisition/Position/y", "/acquisition/Position/z"],
                "running": "/processing/behavior/BehavioralTimeSeries/running_speed",
                "pupil": "/acquisition/pupil_radius", "head": "/acquisition/CompassDirection/rx"}
    assert summary["series"] == {"tracking.nwb": expected}
    assert {f: d["object"] for f, d in session["series"].items()} == expected
    assert [c["object"] for c in session["ids"]["position"]["columns"]] == expected["position"]
    assert settings["series"]["position"] == ["x", "y", "z"]
    assert settings["modalities"] == {"position": "behavior", "running": "behavior", "pupil": "behavior",
                                      "head": "behavior"}
    report = json.loads((tmp_path / "out" / ".neurocodec" / "conversion-report.json").read_text())
    assert report["files"] == [{"file": str(source), "windows": 12, "skipped_windows": 0, "series": expected}]
    assert report["skipped_files"] == []


def test_fields_next_to_modalities(tmp_path):
    source = tracking_session(tmp_path / "tracking.nwb")
    converter = NWBToWebDatasetConverter(tmp_path / "out", 50, ["spikes"], 20.0, 25, 0.0, progress=False,
                                         fields={"xy": ("behavior", ["x", "y"])})
    converter.convert_nwb_files([source])
    converter.finalize()
    with Dataset(tmp_path / "out") as ds:
        assert {f.name for f in ds.manifest.modalities} == {"spikes", "spikes_observed", "xy"}
        assert ds[0]["xy"].shape == (25, 2)


def test_series_with_different_timing_cannot_be_combined(tmp_path):
    source = tracking_session(tmp_path / "tracking.nwb", z_rate=RATE / 2)
    converter = NWBToWebDatasetConverter(tmp_path / "out", 50, bin_size_ms=20.0, sequence_length=25,
                                         progress=False, fields={"position": ("behavior", ["x", "z"])})
    with pytest.raises(NWBError, match=r"tracking.nwb: series /acquisition/Position/x and /acquisition/Position/z"
                                       r".*only series sharing their timing can be combined"):
        converter.convert_nwb_files([source])
    assert not (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").exists()


def test_a_list_of_series_not_in_the_file_is_named(tmp_path):
    source = tracking_session(tmp_path / "tracking.nwb")
    converter = NWBToWebDatasetConverter(tmp_path / "out", 50, progress=False,
                                         fields={"position": ("behavior", ["x", "w"])})
    with pytest.raises(NWBError, match=r"no behavior series named 'w'"):
        converter.convert_nwb_files([source])
    converter.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"fields": {"p": ("behavior",)}}, r"fields\['p'\] must be \(modality, series\)"),
    ({"fields": {"p": ("behavior", 3)}}, r"series of field 'p' must be a name"),
    ({"fields": {"p": ("behavior", [])}}, r"series of field 'p' must be a name"),
    ({"fields": {"spikes": "spikes"}, "modalities": ["spikes"]}, r"named both in modalities and in fields"),
    ({"fields": {"p": ("behavior", "x")}, "series": {"p": "y"}}, r"given both in fields and in series"),
    ({"fields": {"p": ("behavior", "x")}, "series": {"q": "y"}}, r"series names fields that are not converted"),
    ({"fields": {}, "modalities": []}, r"must name at least one field"),
])
def test_bad_field_specifications(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        NWBToWebDatasetConverter(tmp_path / "out", progress=False, **kwargs)


def test_cli_fields(tmp_path):
    source = tracking_session(tmp_path / "tracking.nwb", jitter=True)
    done = subprocess.run(
        [sys.executable, "-m", "neurocodec", "convert", "--input", str(source), "--output", str(tmp_path / "out"),
         "--bin-size-ms", "20", "--sequence-length", "25", "--overlap", "0", "--no-progress",
         "--field", "position=behavior:x,y,z", "--field", "running=behavior:running_speed"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert ("position <- /acquisition/Position/x, /acquisition/Position/y, /acquisition/Position/z; "
            "running <- /processing/behavior/BehavioralTimeSeries/running_speed") in done.stdout
    assert f"report: {tmp_path / 'out' / '.neurocodec' / 'conversion-report.json'}" in done.stdout
    with Dataset(tmp_path / "out") as ds:
        assert {f.name for f in ds.manifest.modalities} == {"position", "running"}
        assert ds[0]["position"].shape == (25, 3)


@pytest.mark.parametrize("flag", ["position", "position=behavior:", "position=behavior:x,,y", "=behavior"])
def test_cli_bad_field_is_one_line_in_cli_words(tmp_path, flag):
    source = tracking_session(tmp_path / "tracking.nwb")
    done = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(source), "--output",
                           str(tmp_path / "out"), "--field", flag], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0
    assert "--field takes NAME=MODALITY or NAME=MODALITY:SERIES[,SERIES...]" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_pynapple_tracking_as_two_fields(tmp_path, real_files):
    """pynapple's neurosuite session keeps Position as 1-D x, y, z and CompassDirection as 1-D rx,
    ry, rz, each with its own copy of the same timestamps: two fields of three columns each."""
    source = real_files["neurosuite"]
    converter = NWBToWebDatasetConverter(
        tmp_path / "out", 200, ["spikes"], bin_size_ms=50.0, sequence_length=40, overlap=0.0, progress=False,
        fsync=False, fields={"position": ("behavior", ["x", "y", "z"]), "head": ("behavior", ["rx", "ry", "rz"])})
    converter.convert_nwb_files([source])
    summary = converter.finalize()
    assert summary["series"]["A2929-200711.nwb"]["head"] == [
        "/acquisition/CompassDirection/rx", "/acquisition/CompassDirection/ry", "/acquisition/CompassDirection/rz"]
    with h5py.File(source, "r") as f:
        stamps = f["/acquisition/Position/x/timestamps"][:]
        position = np.stack([f[f"/acquisition/Position/{c}/data"][:] for c in "xyz"], 1)
        head = np.stack([f[f"/acquisition/CompassDirection/{c}/data"][:] for c in ("rx", "ry", "rz")], 1)
    exact = 0
    with Dataset(tmp_path / "out") as ds:
        assert len(ds) > 100
        for i in range(len(ds)):
            sample = ds[i]
            start, stop = sample["metadata"]["start_time"], sample["metadata"]["stop_time"]
            a, z = np.searchsorted(stamps, [start, stop])  # the samples inside [start, stop)
            rows = sample["position"].shape[0]
            assert sample["position"].shape == sample["head"].shape == (rows, 3)
            if z - a == rows:  # no jitter at the edges: exactly the samples of the window
                np.testing.assert_array_equal(sample["position"], position[a:z])
                np.testing.assert_array_equal(sample["head"], head[a:z])
                exact += 1
            else:  # every row is one of the window's own samples, in time order
                inside = {tuple(r) for r in position[a:z]}
                assert all(tuple(r) in inside for r in sample["position"])
        assert exact > len(ds) // 2


def test_a_name_shared_by_two_series_asks_for_a_path(tmp_path):
    n = 100
    nwb = nwbfiles.new_file(identifier="twice")
    nwb.add_acquisition(TimeSeries(name="speed", data=np.ones(n, np.float32), unit="m/s", rate=RATE))
    nwbfiles.behavior_module(nwb).add(BehavioralTimeSeries(time_series=TimeSeries(
        name="speed", data=np.full(n, 2.0, np.float32), unit="m/s", rate=RATE)))
    source = nwbfiles.write(nwb, tmp_path / "twice.nwb")
    converter = NWBToWebDatasetConverter(tmp_path / "out", 50, bin_size_ms=20.0, sequence_length=10,
                                         progress=False, fields={"speed": ("behavior", "speed")})
    with pytest.raises(NWBError, match=r"twice.nwb: 2 behavior series are named 'speed' \(/acquisition/speed, "
                                       r"/processing/behavior/BehavioralTimeSeries/speed\); give its HDF5 path"):
        converter.convert_nwb_files([source])
    converter.close()
    converter = NWBToWebDatasetConverter(
        tmp_path / "out", 50, bin_size_ms=20.0, sequence_length=10, progress=False,
        fields={"speed": ("behavior", "/processing/behavior/BehavioralTimeSeries/speed")})
    converter.convert_nwb_files([source])
    converter.finalize()
    with Dataset(tmp_path / "out") as ds:
        assert np.all(ds[0]["speed"] == 2.0)


def pose_session(path, frames: int = 300):
    """ndx-pose keypoints (PoseEstimationSeries, (time, 2) each) as DeepLabCut writes them."""
    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons

    nwb = nwbfiles.new_file(identifier="pose")
    nodes = ["nose", "ear_left", "ear_right"]
    skeleton = Skeleton(name="mouse", nodes=nodes, edges=np.array([[0, 1], [0, 2]], dtype="uint8"))
    series = [PoseEstimationSeries(
        name=name, description=name, data=np.arange(frames)[:, None] + np.array([[k, 10.0 * k]], np.float32),
        unit="pixels", reference_frame="top left", rate=30.0, starting_time=0.0, confidence=np.ones(frames),
        confidence_definition="likelihood") for k, name in enumerate(nodes)]
    module = nwbfiles.behavior_module(nwb)
    module.add(Skeletons(skeletons=[skeleton]))
    module.add(PoseEstimation(name="PoseEstimation", pose_estimation_series=series, description="dlc",
                              source_software="DeepLabCut", skeleton=skeleton))
    return nwbfiles.write(nwb, path)


def test_pose_keypoints_from_ndx_pose(tmp_path):
    """Extension types (ndx-pose) are read through the namespace cached in the file: the CLI process
    never imports ndx_pose."""
    source = pose_session(tmp_path / "pose.nwb")
    done = subprocess.run(
        [sys.executable, "-m", "neurocodec", "convert", "--input", str(source), "--output", str(tmp_path / "out"),
         "--bin-size-ms", "100", "--sequence-length", "10", "--overlap", "0", "--no-progress",
         "--field", "nose=behavior:nose", "--field", "ears=behavior:ear_left,ear_right"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    with h5py.File(source, "r") as f:
        nose = f["/processing/behavior/PoseEstimation/nose/data"][:]
        ears = np.concatenate([f[f"/processing/behavior/PoseEstimation/{k}/data"][:]
                               for k in ("ear_left", "ear_right")], axis=1)
    with Dataset(tmp_path / "out") as ds:
        assert len(ds) == 10
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i]["nose"], nose[30 * i:30 * i + 30])
            np.testing.assert_array_equal(ds[i]["ears"], ears[30 * i:30 * i + 30])
