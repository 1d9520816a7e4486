"""Labels and context (issue 13): interval tables in every window's metadata, and the units and
electrodes tables once per session, so that a model can look up the brain region of every unit
and channel of a window. Files are written with pynwb; expected values are read with h5py."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from pynwb import NWBHDF5IO
from pynwb.ecephys import ElectricalSeries
from pynwb.epoch import TimeIntervals

from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.format.layout import MANIFEST_PATH as MANIFEST
from neurocodec.format.manifest import MAX_MANIFEST_BYTES
from neurocodec.nwb import NWBError
from neurocodec.nwb.context import MAX_WINDOW_ROWS, IntervalIndex
from neurocodec.nwb.converter import NWBToWebDatasetConverter

import nwbfiles
from test_nwb_real import real_files  # noqa: F401 (the fixture)

pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'manufacturer' field is deprecated:DeprecationWarning",  # the real files' older pynwb
)
SECONDS = 20.0
ELECTRODE_IDS = [100, 101, 102, 103, 104, 105]
ELECTRODE_PLACES = ["CA1", "CA1", "CA3", "PFC", "PFC", "PFC"]
LFP_ROWS = [5, 0, 3, 1]  # the LFP's channels are these rows of the electrodes table, in this order


def add_electrodes(nwb, ids=ELECTRODE_IDS, places=ELECTRODE_PLACES):
    """Two shanks (hippocampus, prefrontal) and one electrode per entry, with x/y/z and impedance."""
    device = nwb.create_device("probe")
    groups = {"hpc": nwb.create_electrode_group("hpc", description="shank 0", location="hippocampus", device=device),
              "pfc": nwb.create_electrode_group("pfc", description="shank 1", location="PFC", device=device)}
    nwb.add_electrode_column("imp", "impedance")
    for i, (eid, place) in enumerate(zip(ids, places)):
        group = groups["pfc" if place == "PFC" else "hpc"]
        nwb.add_electrode(id=eid, group=group, location=place, x=float(i), y=10.0 + i, z=np.nan if i == 2 else -float(i),
                          imp=1e6 * (i + 1))
    return groups


def add_lfp(nwb, rows=LFP_ROWS, rate=1000.0):
    region = nwb.create_electrode_table_region(list(rows), "LFP channels")
    data = np.random.default_rng(0).standard_normal((int(SECONDS * rate), len(rows))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nwbfiles.add_lfp(nwb, ElectricalSeries(name="lfp", data=data, electrodes=region, rate=rate,
                                               starting_time=0.0, description="hippocampal LFP", conversion=2e-6))


def add_labels(nwb):
    """Trials with extra columns (and references to the LFP, left out), sleep/wake epochs, ripples
    in /intervals, spindles in a processing module (with a 2-D column, left out), invalid_times."""
    lfp = nwb.processing["ecephys"]["LFP"].electrical_series["lfp"]
    nwb.add_trial_column("correct", "answered right")
    nwb.add_trial_column("stimulus", "side")
    nwb.add_trial_column("reward", "ml")
    for i, (a, z) in enumerate([(1.0, 2.5), (4.0, 4.5), (9.5, 12.0), (15.0, 15.2)]):
        nwb.add_trial(start_time=a, stop_time=z, correct=bool(i % 2), stimulus=["left", "right"][i % 2],
                      reward=np.nan if i == 3 else 0.1 * i, timeseries=[lfp])
    nwb.add_epoch(start_time=0.0, stop_time=8.0, tags=["sleep"])
    nwb.add_epoch(start_time=8.0, stop_time=SECONDS, tags=["wake", "run"])
    nwb.add_invalid_time_interval(start_time=13.0, stop_time=13.5)
    ripples = TimeIntervals(name="ripples", description="sharp-wave ripples")
    ripples.add_column("peak_time", "peak")
    ripples.add_column("power", "power")
    # not in time order in the table: the metadata lists rows by start time
    for a in [6.3, 0.2, 0.9, 3.99, 7.0, 12.1, 18.5]:
        ripples.add_row(start_time=a, stop_time=a + 0.08, peak_time=a + 0.04, power=a * 10)
    nwb.add_time_intervals(ripples)
    spindles = TimeIntervals(name="spindles", description="spindles")
    spindles.add_column("channel", "channel")
    spindles.add_column("envelope", "2-D")
    for i, a in enumerate([2.0, 11.0]):
        spindles.add_row(start_time=a, stop_time=a + 1.5, channel=i, envelope=np.arange(3.0) + i)
    module = nwb.processing.get("ecephys") or nwb.create_processing_module("ecephys", "extracellular")
    module.add(spindles)


def labelled_session(path: Path) -> Path:
    """Units with location (one left empty), quality, firing rate (one NaN), electrode groups and
    electrodes; an electrodes table; an LFP; every kind of interval table."""
    nwb = nwbfiles.new_file(identifier="labelled", session_id="labelled", subject_id="rat9")
    groups = add_electrodes(nwb)
    add_lfp(nwb)
    add_labels(nwb)
    nwb.add_unit_column("location", "brain region")
    nwb.add_unit_column("quality", "sorting quality")
    nwb.add_unit_column("firing_rate", "Hz")
    rng = np.random.default_rng(1)
    for u, (place, group, electrodes) in enumerate([("CA1", "hpc", [0]), ("", "pfc", [3, 4]), ("CA3", "hpc", [2]),
                                                    ("PFC", "pfc", [5])]):
        nwb.add_unit(id=10 + u, spike_times=np.sort(rng.uniform(0, SECONDS, 200)), location=place,
                     quality=["good", "mua"][u % 2], firing_rate=np.nan if u == 2 else 10.0 * (u + 1),
                     electrode_group=groups[group], electrodes=electrodes, obs_intervals=[[0.0, SECONDS]])
    return nwbfiles.write(nwb, path)


def electrodes_only_session(path: Path) -> Path:
    """Units without location or electrode group: only their electrodes say where they are; and
    two interval tables named "ripples" (one in /intervals, one in a processing module)."""
    nwb = nwbfiles.new_file(identifier="regions", session_id="regions", subject_id="rat9")
    add_electrodes(nwb)
    for u, electrodes in enumerate([[0, 1], [3], [1, 3], []]):
        nwb.add_unit(spike_times=np.linspace(0.5, SECONDS - 0.5, 50 + u), electrodes=electrodes)
    for holder in (nwb, nwb.create_processing_module("ecephys", "extracellular")):
        ripples = TimeIntervals(name="ripples", description="ripples")
        ripples.add_row(start_time=1.0, stop_time=1.1)
        holder.add_time_intervals(ripples) if holder is nwb else holder.add(ripples)
    return nwbfiles.write(nwb, path)


def convert(tmp_path, files, modalities, name="out", **kwargs):
    kwargs = {"bin_size_ms": 50, "sequence_length": 40, "overlap": 0.5, "progress": False, "fsync": False, **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 100, modalities, **kwargs)
    converter.convert_nwb_files(files)
    summary = converter.finalize()
    return summary, Dataset(tmp_path / name)


def text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def ragged(f, at: str, name: str) -> list[list]:
    ends = f[f"{at}/{name}_index"][:].tolist()
    flat = f[f"{at}/{name}"][:]
    return [flat[a:b].tolist() for a, b in zip([0, *ends[:-1]], ends)]


def expected_rows(path: Path, at: str, start: float, stop: float) -> list[dict]:
    """The rows of the table at `at` overlapping [start, stop), by start time, read with h5py."""
    with h5py.File(path, "r") as f:
        group = f[at]
        ids, a, z = group["id"][:], group["start_time"][:], group["stop_time"][:]
        columns = {"id": ids.tolist(), "start_time": a.tolist(), "stop_time": z.tolist()}
        for name, item in group.items():
            if name in columns or name.endswith("_index") or f"{name}_index" in group or item.ndim != 1:
                continue
            values = item[:]
            columns[name] = text(values) if values.dtype.kind in "OS" else \
                [None if isinstance(v, float) and np.isnan(v) else v for v in values.tolist()]
        if "tags_index" in group:
            columns["tags"] = [text(t) for t in ragged(f, at, "tags")]
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return sorted([r for r in rows if r["start_time"] < stop and r["stop_time"] > start], key=lambda r: r["start_time"])


@pytest.fixture()
def labelled(tmp_path) -> Path:
    return labelled_session(tmp_path / "labelled.nwb")


TABLES = {"trials": "/intervals/trials", "epochs": "/intervals/epochs", "invalid_times": "/intervals/invalid_times",
          "ripples": "/intervals/ripples", "spindles": "/processing/ecephys/spindles"}


def test_every_interval_table_reaches_each_window(tmp_path, labelled):
    _, ds = convert(tmp_path, [labelled], ["spikes", "lfp"])
    assert len(ds) == 19
    seen = {key: 0 for key in TABLES}
    for i in range(len(ds)):
        meta = ds[i]["metadata"]
        start, stop = meta["start_time"], meta["stop_time"]
        assert set(meta["intervals"]) == set(TABLES)
        for key, at in TABLES.items():
            expected = expected_rows(labelled, at, start, stop)
            if key == "spindles":  # its 2-D column is left out
                expected = [{k: v for k, v in r.items() if k != "envelope"} for r in expected]
            assert meta["intervals"][key] == expected, (key, start)
            seen[key] += len(expected)
        assert meta["trials"] == [r["id"] for r in meta["intervals"]["trials"]]  # kept for compatibility
    assert all(seen.values())  # every table had rows in some window
    # spot checks of what the rows look like
    first = ds[0]["metadata"]["intervals"]
    assert first["epochs"] == [{"id": 0, "start_time": 0.0, "stop_time": 8.0, "tags": ["sleep"]}]
    assert [r["start_time"] for r in first["ripples"]] == [0.2, 0.9]  # by start time, not table order
    assert first["trials"][0] == {"id": 0, "start_time": 1.0, "stop_time": 2.5, "correct": False,
                                  "stimulus": "left", "reward": 0.0}
    assert [r["tags"] for r in ds[7]["metadata"]["intervals"]["epochs"]] == [["sleep"], ["wake", "run"]]  # [7, 9)
    assert [r["id"] for r in ds[12]["metadata"]["intervals"]["invalid_times"]] == [0]  # [12, 14)


def test_sessions_describe_tables_and_electrodes(tmp_path, labelled):
    _, ds = convert(tmp_path, [labelled], ["spikes", "lfp"])
    session = ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]
    tables = session["intervals"]
    assert {k: t["path"] for k, t in tables.items()} == TABLES
    assert tables["spindles"]["skipped_columns"] == {"envelope": "multi-dimensional (3 values per row)"}
    assert tables["trials"]["skipped_columns"] == {"timeseries": "references to time series"}
    assert tables["ripples"]["rows"] == 7 and tables["ripples"]["columns"] == [
        "id", "start_time", "stop_time", "peak_time", "power"]
    electrodes = session["electrodes"]["columns"]
    with h5py.File(labelled, "r") as f:
        at = f["/general/extracellular_ephys/electrodes"]
        assert electrodes["id"] == at["id"][:].tolist() == ELECTRODE_IDS
        assert electrodes["location"] == text(at["location"][:])
        assert electrodes["group"] == [f[ref].name.rsplit("/", 1)[1] for ref in at["group"][:]]
        assert electrodes["group_name"] == text(at["group_name"][:])
        for axis in "xyz":
            assert electrodes[axis] == [None if np.isnan(v) else v for v in at[axis][:].tolist()]
        assert electrodes["imp"] == at["imp"][:].tolist()
    assert electrodes["z"][2] is None  # NaN: null in the manifest (strict JSON)
    lfp = session["series"]["lfp"]
    assert lfp["unit"] == "volts" and lfp["conversion"] == 2e-6 and lfp["description"] == "hippocampal LFP"
    units = session["series"]["spikes"]
    assert units["skipped_columns"] == {}
    assert units["location_from"] == {"location": 3, "electrode_group": 1, "electrodes": 0, "none": 0}


def test_brain_region_of_every_unit_and_channel_of_a_window(tmp_path, labelled):
    """What a model does with a converted dataset: the region of each spikes column and each lfp
    channel, from the manifest alone (read_manifest), against the file read with h5py."""
    convert(tmp_path, [labelled], ["spikes", "lfp"])
    manifest = read_manifest(tmp_path / "out")
    ds = Dataset(tmp_path / "out")
    sample = ds[3]
    session = manifest.extra["sessions"][sample["metadata"]["session"]]
    ids = session["ids"]["spikes"]
    unit_regions = [ids["unit_columns"]["location"][j] for j in range(sample["spikes"].shape[1])]
    electrodes = session["electrodes"]["columns"]
    row_of = {eid: row for row, eid in enumerate(electrodes["id"])}
    channel_regions = [electrodes["location"][row_of[c]] for c in session["ids"]["lfp"]["channel_ids"]]
    assert sample["lfp"].shape[1] == len(channel_regions)

    with h5py.File(labelled, "r") as f:
        own = text(f["/units/location"][:])
        group_places = [text([f[ref].attrs["location"]])[0] for ref in f["/units/electrode_group"][:]]
        expected_units = [o or g for o, g in zip(own, group_places)]
        assert ids["unit_ids"] == f["/units/id"][:].tolist() == [10, 11, 12, 13]
        assert ids["unit_columns"]["quality"] == text(f["/units/quality"][:])
        assert ids["unit_columns"]["firing_rate"] == [None if np.isnan(v) else v for v in f["/units/firing_rate"][:]]
        assert ids["unit_columns"]["electrodes"] == [
            [ELECTRODE_IDS[r] for r in rows] for rows in ragged(f, "/units", "electrodes")]
        rows = f["/processing/ecephys/LFP/lfp/electrodes"][:]
        expected_channels = text(f["/general/extracellular_ephys/electrodes/location"][:][rows])
    assert unit_regions == expected_units == ["CA1", "PFC", "CA3", "PFC"]  # unit 11: its group's location
    assert channel_regions == expected_channels == ["PFC", "CA1", "PFC", "CA1"]
    assert "unit_columns" not in sample["metadata"] and "electrodes" not in sample["metadata"]  # once per session


def test_units_located_by_their_electrodes(tmp_path):
    path = electrodes_only_session(tmp_path / "regions.nwb")
    _, ds = convert(tmp_path, [path], ["spikes"], intervals=["/intervals/ripples"])
    session = ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]
    columns = session["ids"]["spikes"]["unit_columns"]
    assert columns["location"] == ["CA1", "PFC", "CA1, PFC", None]
    assert columns["electrodes"] == [[100, 101], [103], [101, 103], []]
    assert session["series"]["spikes"]["location_from"] == {"location": 0, "electrode_group": 0,
                                                            "electrodes": 3, "none": 1}
    # two tables named "ripples": each is keyed by its path, and a name alone is ambiguous
    assert set(session["intervals"]) == {"/intervals/ripples"}
    assert ds[0]["metadata"]["intervals"] == {"/intervals/ripples": [{"id": 0, "start_time": 1.0, "stop_time": 1.1}]}
    with pytest.raises(NWBError, match=r"regions\.nwb: 2 interval tables are named 'ripples'; name one by its path: "
                                       r"/intervals/ripples, /processing/ecephys/ripples"):
        convert(tmp_path, [path], ["spikes"], name="ambiguous", intervals=["ripples"])


def test_intervals_setting_selects_tables(tmp_path, labelled):
    _, ds = convert(tmp_path, [labelled], ["lfp"], intervals=["epochs", "/processing/ecephys/spindles"])
    for i in range(len(ds)):
        meta = ds[i]["metadata"]
        assert set(meta["intervals"]) == {"epochs", "spindles"}
        assert meta["trials"] == [r["id"] for r in expected_rows(labelled, "/intervals/trials",
                                                                 meta["start_time"], meta["stop_time"])]
    assert ds.manifest.extra["conversion"]["intervals"] == ["epochs", "/processing/ecephys/spindles"]
    _, none = convert(tmp_path, [labelled], ["lfp"], name="none", intervals=[])
    assert none[0]["metadata"]["intervals"] == {} and none.manifest.extra["sessions"][
        none[0]["metadata"]["session"]]["intervals"] == {}


def test_an_unknown_interval_table_is_an_error_listing_the_tables(tmp_path, labelled):
    with pytest.raises(NWBError) as caught:
        convert(tmp_path, [labelled], ["lfp"], intervals=["epochs", "sleep"])
    assert str(caught.value) == (f"{labelled}: no interval table named 'sleep'; tables: /intervals/epochs, "
                                 "/intervals/invalid_times, /intervals/ripples, /intervals/trials, "
                                 "/processing/ecephys/spindles")
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_rows_per_window_are_bounded(tmp_path):
    """A table of short events under long windows: MAX_WINDOW_ROWS rows, and the count."""
    nwb = nwbfiles.new_file()
    add_electrodes(nwb)
    add_lfp(nwb, rate=100.0)
    events = TimeIntervals(name="licks", description="licks")
    count = MAX_WINDOW_ROWS + 500
    for k in range(count):
        events.add_row(start_time=1.0 + k * 0.004, stop_time=1.001 + k * 0.004)
    nwb.add_time_intervals(events)
    path = nwbfiles.write(nwb, tmp_path / "licks.nwb")
    _, ds = convert(tmp_path, [path], ["lfp"], bin_size_ms=100, sequence_length=100, overlap=0.0)
    first = ds[0]["metadata"]
    assert first["intervals_truncated"] == {"licks": count}
    assert [r["id"] for r in first["intervals"]["licks"]] == list(range(MAX_WINDOW_ROWS))
    assert "intervals_truncated" not in ds[1]["metadata"] and ds[1]["metadata"]["intervals"]["licks"] == []


def test_interval_index_against_a_plain_scan():
    rng = np.random.default_rng(3)
    starts = rng.uniform(0, 100, 400)
    stops = starts + rng.exponential(0.5, 400)
    stops[::50] += 30.0  # a few long intervals
    starts[7] = np.nan
    stops[9] = np.nan
    index = IntervalIndex(starts, stops)
    for a in np.arange(-1.0, 140.0, 0.37):
        expected = [i for i in np.argsort(starts, kind="stable") if starts[i] < a + 2.0 and stops[i] > a]
        assert index.overlapping(a, a + 2.0).tolist() == expected
    assert IntervalIndex(np.zeros(0), np.zeros(0)).overlapping(0.0, 1.0).tolist() == []


@pytest.mark.slow
def test_ten_thousand_units_fit_the_manifest(tmp_path):
    """A session of 10k units (location, quality, firing rate, group, electrodes): its columns
    stay a small part of the manifest cap, and every unit's region can be looked up."""
    nwb = nwbfiles.new_file(identifier="many", session_id="many")
    groups = add_electrodes(nwb)
    n = 10_000
    for name in ("location", "quality", "firing_rate"):
        nwb.add_unit_column(name, name)
    group_list = [groups["hpc"], groups["pfc"]]
    for u in range(n):
        nwb.add_unit(spike_times=[0.5 + u * 1e-4, 9.0], location=["CA1", "PFC", "RSC"][u % 3],
                     quality="good" if u % 7 else "noise", firing_rate=u / 10, electrode_group=group_list[u % 2],
                     electrodes=[u % 6])
    path = nwbfiles.write(nwb, tmp_path / "many.nwb")
    convert(tmp_path, [path], ["spikes"], bin_size_ms=500, sequence_length=4, overlap=0.0)
    size = (tmp_path / "out" / MANIFEST).stat().st_size
    assert size < MAX_MANIFEST_BYTES // 4
    manifest = read_manifest(tmp_path / "out")
    (session,) = manifest.extra["sessions"].values()
    columns = session["ids"]["spikes"]["unit_columns"]
    assert len(columns["location"]) == n and columns["location"][:4] == ["CA1", "PFC", "RSC", "CA1"]
    assert columns["firing_rate"][9999] == 999.9 and columns["electrode_group"][:2] == ["hpc", "pfc"]
    json.dumps(session, allow_nan=False)


def test_real_epochs_and_ripples_in_metadata(tmp_path, real_files):
    """pynapple's real sessions: epochs (sleep 0-600 s, wake 600-1200 s) and sleep_ripples (594
    rows) reach the windows; the units' regions (adn, ca1) reach the session."""
    path = real_files["neurosuite"]
    with NWBHDF5IO(str(path), "r") as io:
        found = sorted(t.name for t in io.read().objects.values() if isinstance(t, TimeIntervals))
    assert found == ["epochs", "position_time_support", "sleep_ripples", "sleep_ripples_timesupport"]
    _, ds = convert(tmp_path, [path], ["spikes"], bin_size_ms=100, sequence_length=100, overlap=0.0)
    ripples = 0
    for i in range(len(ds)):
        meta = ds[i]["metadata"]
        start, stop = meta["start_time"], meta["stop_time"]
        assert set(meta["intervals"]) == set(found)
        for key in found:
            assert meta["intervals"][key] == expected_rows(path, f"/intervals/{key}", start, stop), (key, start)
        tags = [r["tags"] for r in meta["intervals"]["epochs"]]
        assert tags == ([["sleep"]] if stop <= 600 else [["wake"]] if start >= 600 else [["sleep"], ["wake"]])
        ripples += len(meta["intervals"]["sleep_ripples"])
    assert ripples >= 594 - 5  # every ripple inside the converted span is in some window
    session = ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]
    with h5py.File(path, "r") as f:
        assert session["ids"]["spikes"]["unit_columns"]["location"] == text(f["/units/location"][:])
        assert session["electrodes"]["columns"]["location"] == text(
            f["/general/extracellular_ephys/electrodes/location"][:])


def test_real_file_without_regions(tmp_path, real_files):
    """phy/A8604-211122: one wake epoch; its units' and groups' locations are empty: null, said so."""
    path = real_files["phy"]
    _, ds = convert(tmp_path, [path], ["spikes"], bin_size_ms=100, sequence_length=100, overlap=0.0,
                    intervals=["epochs"])
    for i in range(len(ds)):
        assert [r["tags"] for r in ds[i]["metadata"]["intervals"]["epochs"]] == [["wake"]]
    session = ds.manifest.extra["sessions"][ds[0]["metadata"]["session"]]
    assert session["ids"]["spikes"]["unit_columns"]["location"] == [None, None, None]
    assert session["series"]["spikes"]["location_from"]["none"] == 3


def test_cli_intervals_option(tmp_path, labelled):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(labelled),
                               "--modalities", "lfp", "--bin-size-ms", "50", "--sequence-length", "40",
                               "--no-progress", *args], capture_output=True, text=True, timeout=300, check=False)

    done = run("--output", str(tmp_path / "out"), "--intervals", "epochs", "ripples")
    assert done.returncode == 0, done.stderr
    ds = Dataset(tmp_path / "out")
    for i in range(len(ds)):
        meta = ds[i]["metadata"]
        assert set(meta["intervals"]) == {"epochs", "ripples"}
        assert meta["intervals"]["ripples"] == expected_rows(labelled, "/intervals/ripples",
                                                             meta["start_time"], meta["stop_time"])
    failed = run("--output", str(tmp_path / "bad"), "--intervals", "sleep")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "no interval table named 'sleep'; tables: /intervals/epochs" in failed.stderr


def test_zarr_copy_gives_the_same_labels_and_context(tmp_path, labelled):
    """The same session exported by hdmf-zarr: every window's labels and the session's tables,
    units and electrodes are those of the HDF5 file (references read through Zarr too)."""
    pytest.importorskip("hdmf_zarr")
    from nwb_sources import manifest_sessions, window_metadata, zarr_copy

    from neurocodec.nwb import zarr_pickle

    zarr_pickle.install()  # hdmf-zarr reads back the references it pickles while exporting them
    folder = zarr_copy(labelled, tmp_path / "labelled.nwb.zarr")
    convert(tmp_path, [labelled], ["spikes", "lfp"], name="h5")
    convert(tmp_path, [folder], ["spikes", "lfp"], name="zarr")
    keep = ("trials", "intervals", "start_time", "stop_time")
    from_h5, from_zarr = window_metadata(tmp_path / "h5"), window_metadata(tmp_path / "zarr")
    assert [{k: m[k] for k in keep} for m in from_zarr] == [{k: m[k] for k in keep} for m in from_h5]
    assert sum(len(rows) for m in from_zarr for rows in m["intervals"].values()) > 20
    (h5_session,), (zarr_session,) = manifest_sessions(tmp_path / "h5").values(), manifest_sessions(tmp_path / "zarr").values()
    for key in ("intervals", "electrodes"):
        assert zarr_session[key] == h5_session[key]
    assert zarr_session["ids"]["spikes"] == h5_session["ids"]["spikes"]
    assert zarr_session["ids"]["spikes"]["unit_columns"]["location"] == ["CA1", "PFC", "CA3", "PFC"]
