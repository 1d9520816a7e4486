"""NWB spikes converted as events (plugins/nwb_spikes.py, plugins/nwb_spike_ticks.py) decode to
exactly the counts and observation mask the dense conversion gives, at the conversion's bin size
and, binned at load time, at the other bin sizes a dense conversion would use.

Files are written with pynwb (tests/nwbfiles.py): start times != 0, spikes exactly at bin edges
and at window ends, spikes on a 30 kHz clock and spikes at arbitrary float times, units with
observation intervals that start and stop on and off bin edges. The real pynapple session
(tests/test_nwb_real.py) is converted with events and re-binned at load time at several bin
sizes, against numpy binning of the spike times read with h5py; its size is compared with the
dense conversion's.

The converter names the window to extractors through `ExtractOptions.window`; until it does,
these tests convert through a plugin whose spikes extractor is given the window
(`UnitsExtractor(window)`), with the real converter, parts and merge otherwise.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import nwbfiles as nf
from neurocodec import Dataset, create_webdataset_dataloader
from neurocodec.nwb import WindowSpec
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec.plugin import SpikeEvents, hookimpl
from neurocodec.testing import registry_with
from neurocodec.nwb import windows
from neurocodec_plugins import nwb_spike_ticks
from neurocodec_plugins.nwb_spikes import UnitsExtractor
from test_nwb_real import real_files  # noqa: F401 - the pytest fixture

pytestmark = pytest.mark.filterwarnings("ignore:The 'manufacturer' field is deprecated:DeprecationWarning")
T0 = 3.25
CLOCK = 30_000


class WindowedSpikes:
    """A plugin whose spikes extractor knows the conversion's window."""

    def __init__(self, window: WindowSpec) -> None:
        self.window = window

    @hookimpl
    def neurocodec_nwb_extractor(self, modality: str):
        return UnitsExtractor(self.window) if modality == "spikes" else None


def convert(out, files, bin_ms, length, *, overlap=0.0, events=True, compression="none", modalities=("spikes",),
            **kwargs):
    """Convert `files` (spikes only) with events or as dense counts; the Dataset's path."""
    window = WindowSpec.from_user(bin_ms, length, overlap)
    registry = registry_with(("windowed_spikes", WindowedSpikes(window))) if events else None
    converter = NWBToWebDatasetConverter(out, 64, list(modalities), bin_ms, length, overlap, compression=compression,
                                         progress=False, fsync=False, registry=registry,
                                         codecs="neural" if events else "npy", **kwargs)
    converter.convert_nwb_files(files)
    converter.finalize()
    return out


def clocked(times) -> np.ndarray:
    return np.round(np.asarray(times) * CLOCK) / CLOCK


@pytest.fixture(scope="module")
def edge_file(tmp_path_factory):
    """4 units from T0: spikes on a 30 kHz clock, at every 10 ms edge of unit 0's first second,
    at 0.5 s window ends, and obs_intervals on and off the bin edges (unit 2: two apart, unit 1
    two overlapping, unit 3 two touching inside a bin)."""
    rng = np.random.default_rng(11)
    edges = T0 + np.arange(0, 101) * 0.01
    ends = T0 + np.arange(0, 25) * 0.5
    spikes = [np.sort(np.concatenate([edges, ends, clocked(rng.uniform(T0, T0 + 12, 300))])),
              np.sort(clocked(rng.uniform(T0, T0 + 12, 150))),
              np.sort(np.concatenate([ends[::3], clocked(rng.uniform(T0, T0 + 12, 400))])),
              np.sort(clocked(rng.uniform(T0 + 2, T0 + 9, 80)))]
    intervals = [[[T0, T0 + 12]], [[T0 + 0.5033, T0 + 7.0], [T0 + 6.5, T0 + 11.2]],
                 [[T0, T0 + 4.0], [T0 + 5.0, T0 + 12]], [[T0 + 1.96, T0 + 4.005], [T0 + 4.005, T0 + 9.0]]]
    nwb = nf.new_file("edges")
    nf.add_units(nwb, spikes, intervals, ids=[7, 3, 12, 40])
    return nf.write(nwb, tmp_path_factory.mktemp("edges") / "edges.nwb")


@pytest.fixture(scope="module")
def float_file(tmp_path_factory):
    """Spike times at arbitrary floats (no clock) and obs_intervals from T0: the 1 MHz fallback."""
    return nf.multirate_session(tmp_path_factory.mktemp("float") / "float.nwb", t0=T0)


def samples(path, decode=None, *, first=0, step=1):
    with Dataset(path, decode=decode) as ds:
        return [ds[i] for i in range(first, len(ds), step)]


def assert_same_windows(events, dense):
    assert len(events) == len(dense) > 0
    for e, d in zip(events, dense):
        assert e["metadata"]["start_time"] == pytest.approx(d["metadata"]["start_time"], abs=1e-9)
        assert e["spikes"].dtype == d["spikes"].dtype == np.int32
        np.testing.assert_array_equal(e["spikes"], d["spikes"])
        np.testing.assert_array_equal(e["spikes_observed"], d["spikes_observed"])


@pytest.mark.parametrize("bin_ms,length,overlap", [(10, 50, 0.5), (5, 40, 0.25), (20, 25, 0.0), (2.5, 64, 0.5)])
@pytest.mark.parametrize("which", ["edge_file", "float_file"])
def test_events_decode_to_the_dense_conversion(tmp_path, request, which, bin_ms, length, overlap):
    nwb = request.getfixturevalue(which)
    events = convert(tmp_path / "events", [nwb], bin_ms, length, overlap=overlap, compression="zstd")
    dense = convert(tmp_path / "dense", [nwb], bin_ms, length, overlap=overlap, events=False)
    with Dataset(events) as ds:
        field = ds.manifest.fields[0]
        assert field.codec == {"id": "spike-events", "bins": length, "bin_size_ms": bin_ms, "dtype": "<i4"}
        assert ds.manifest.fields[1].codec["follows"] == "spikes"
    with Dataset(dense) as ds:
        assert ds.manifest.fields[0].codec["id"] == "npy"
    assert_same_windows(samples(events), samples(dense))


@pytest.mark.parametrize("events", [True, False])
def test_touching_or_overlapping_intervals_are_observed_as_one(tmp_path, edge_file, events):
    """Unit 3 is observed over [1.96, 4.005) and [4.005, 9.0): the bin [4.0, 4.01) is observed
    (the union's rule); unit 2's gap [4.0, 5.0) is not."""
    out = convert(tmp_path / "out", [edge_file], 10, 50, events=events)
    masks = {round(s["metadata"]["start_time"] - T0, 6): s["spikes_observed"] for s in samples(out)}
    window = masks[4.0]  # the window [4.0, 4.5) from the session's start
    assert window[:, 3].all() and not window[:, 2].any() and window[:, 1].all()
    assert masks[6.5][:, 1].all()  # the overlap of unit 1's intervals


@pytest.mark.parametrize("which", ["edge_file", "float_file"])
def test_binned_at_load_time_as_a_dense_conversion_at_that_size(tmp_path, request, which):
    nwb = request.getfixturevalue(which)
    events = convert(tmp_path / "events", [nwb], 10, 50)
    for bin_ms, length in ((5, 100), (20, 25), (50, 10), (1, 500), (2.5, 200)):
        # Off-clock times (float_file) are exact at the conversion's bin size always, at others
        # wherever no spike lies within BIN_EPS of a bin edge (random floats never do).
        dense = convert(tmp_path / f"dense{bin_ms}", [nwb], bin_ms, length, events=False)
        assert_same_windows(samples(events, {"spikes": {"bin_size_ms": bin_ms}}), samples(dense))


def session(out):
    with Dataset(out) as ds:
        (record,) = ds.manifest.extra["sessions"].values()
    return record


def test_the_session_clock_is_found_and_recorded(tmp_path, edge_file, float_file):
    for nwb, hz, clock in ((edge_file, CLOCK, "common rate"), (float_file, 1_000_000, "none found: default")):
        out = convert(tmp_path / nwb.stem, [nwb], 10, 50)
        series = session(out)["series"]["spikes"]
        assert (series["spike_events"], series["tick_hz"], series["clock"]) == (True, hz, clock)
        events = samples(out, {"spikes": {"as": "events"}})
        assert all(isinstance(s["spikes"], SpikeEvents) and s["spikes"].tick_hz == hz for s in events)


def test_a_clock_the_file_declares_is_tried_first(tmp_path):
    """Spikes on a 24,414 Hz clock (not a common rate), declared by an ElectricalSeries' rate."""
    rng = np.random.default_rng(3)
    nwb = nf.new_file("tdt")
    nf.add_units(nwb, [np.sort(np.unique(rng.integers(0, 24_414 * 6, 200))) / 24_414 + 1.0 for _ in range(2)])
    nf.add_lfp(nwb, nf.electrical_series(nwb, "raw", np.zeros((10, 2), np.int16), rate=24_414.0))
    path = nf.write(nwb, tmp_path / "tdt.nwb")
    out = convert(tmp_path / "out", [path], 10, 50)
    series = session(out)["series"]["spikes"]
    assert (series["clock_hz"], series["clock"]) == (24_414, "declared in the file")
    assert series["tick_hz"] == 12_207_000  # lcm(24414, 1000): every whole-ms bin is whole ticks
    dense = convert(tmp_path / "dense", [path], 10, 50, events=False)
    assert_same_windows(samples(out), samples(dense))
    assert_same_windows(samples(out, {"spikes": {"bin_size_ms": 1}}),
                        samples(convert(tmp_path / "dense1", [path], 1, 500, events=False)))


def test_sessions_on_different_clocks_convert_into_one_dataset(tmp_path, edge_file, float_file):
    """30 kHz and 1 MHz sessions: their parts' codec configs agree, so they merge."""
    out = convert(tmp_path / "events", [edge_file, float_file], 10, 50)
    assert_same_windows(samples(out), samples(convert(tmp_path / "dense", [edge_file, float_file], 10, 50,
                                                      events=False)))
    assert {s["spikes"].tick_hz for s in samples(out, {"spikes": {"as": "events"}})} == {CLOCK, 1_000_000}


def test_the_tolerance_is_the_converters():
    assert nwb_spike_ticks.BIN_EPS == windows.BIN_EPS


def test_unit_ids_stay_in_the_manifest(tmp_path, edge_file):
    assert session(convert(tmp_path / "ids", [edge_file], 10, 50))["ids"]["spikes"]["unit_ids"] == [7, 3, 12, 40]


def test_npy_codecs_give_dense_counts(tmp_path, edge_file):
    out = convert(tmp_path / "npy", [edge_file], 10, 50, events=False)
    with Dataset(out) as ds:
        assert [f.codec["id"] for f in ds.manifest.fields] == ["npy", "npy", "json"]
        assert isinstance(ds[0]["spikes"], np.ndarray)


def test_windows_spikes_do_not_cover_are_filled_alike(tmp_path):
    """coverage="fill": behavior covers 12 s, the units only 2-8 s; windows outside are blank."""
    rng = np.random.default_rng(5)
    nwb = nf.new_file("fill")
    nf.add_units(nwb, [np.sort(clocked(rng.uniform(T0 + 2, T0 + 8, 90))) for _ in range(3)],
                 [[[T0 + 2, T0 + 8]]] * 3)
    times = T0 + np.arange(600) / 50
    nf.behavior_module(nwb).add(nf.Position(spatial_series=nf.spatial_series("xy", np.stack([times, times], 1),
                                                                             timestamps=times)))
    path = nf.write(nwb, tmp_path / "fill.nwb")
    kwargs = {"modalities": ["spikes", "behavior"], "coverage": "fill"}
    events = samples(convert(tmp_path / "events", [path], 10, 50, **kwargs))
    dense = samples(convert(tmp_path / "dense", [path], 10, 50, events=False, **kwargs))
    assert_same_windows(events, dense)
    blank = [s for s in events if "spikes" in s["metadata"]["missing"]]
    assert blank and all(not s["spikes"].any() and not s["spikes_observed"].any() for s in blank)


# -- the real session -----------------------------------------------------------------------------

def h5py_spikes(path):
    with h5py.File(path, "r") as f:
        times = f["units/spike_times"][:]
        ends = f["units/spike_times_index"][:]
    return times, np.repeat(np.arange(len(ends)), np.diff(np.concatenate(([0], ends))))


@pytest.mark.slow
def test_real_session_rebinned_at_load_time_matches_numpy(tmp_path, real_files):
    path = real_files["neurosuite"]
    events = convert(tmp_path / "events", [path], 10, 100, overlap=0.5, compression="zstd")
    dense = convert(tmp_path / "dense", [path], 10, 100, overlap=0.5, events=False, compression="zstd")
    assert_same_windows(samples(events), samples(dense))
    # times written to 1 us (2% lie 1 us off the 20 kHz clock): 1 MHz keeps them exact
    assert session(events)["series"]["spikes"]["tick_hz"] == 1_000_000
    times, units = h5py_spikes(path)
    by_time = np.argsort(times, kind="stable")
    times, units = times[by_time], units[by_time]
    # against the file's own spike times, each bin size on a third of the (some 2,400) windows
    for first, bin_ms in enumerate((5, 10, 20, 50)):
        bins = 1000 // bin_ms
        for sample in samples(events, {"spikes": {"bin_size_ms": bin_ms}}, first=first % 3, step=3):
            start = sample["metadata"]["start_time"]
            # the window's 1 s with a 1 ms margin each side; the mask below decides exactly
            lo, hi = np.searchsorted(times, [start - 0.001, start + 1.001])
            k = np.floor((times[lo:hi] - start) / (bin_ms / 1000) + 1e-6).astype(np.int64)
            inside = (k >= 0) & (k < bins)
            want = np.zeros((bins, 15), np.int64)
            np.add.at(want, (k[inside], units[lo:hi][inside]), 1)
            np.testing.assert_array_equal(sample["spikes"], want)
    # Every member of both takes one 512-byte block of data after its header (zstd), so the shards
    # and their indexes are the same size; the manifest is larger by the two codec configs and
    # the tick rate in the session record (about 200 bytes).
    data = lambda out: sum(p.stat().st_size for p in out.iterdir() if p.suffix in (".tar", ".idx"))
    total = lambda out: sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    assert data(events) <= data(dense)
    assert total(events) <= total(dense) + 1024, (total(events), total(dense))


@pytest.mark.multiprocess
def test_real_session_in_a_two_worker_dataloader(tmp_path, real_files):
    out = convert(tmp_path / "events", [real_files["neurosuite"]], 10, 100, overlap=0.5, compression="zstd")
    want = np.stack([s["spikes"] for s in samples(out, {"spikes": {"bin_size_ms": 20}})])
    loader = create_webdataset_dataloader(out, batch_size=64, shuffle=False, num_workers=2,
                                          decode={"spikes": {"bin_size_ms": 20}})
    got = np.concatenate([batch["spikes"].numpy() for batch in loader])
    assert got.shape == want.shape == (len(want), 50, 15)
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))
    assert key(got) == key(want)
