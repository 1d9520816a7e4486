"""Real recorded NWB files that no one on the team wrote: the sessions shipped as test data in the
pynapple 0.11.4 source distribution (fetched once with pip into a cache directory).

What they hold (checked with pynwb): neurosuite/A2929-200711 has 15 units (98,794 spikes over
1,200 s, no obs_intervals) and head tracking (Position x/y/z and CompassDirection rx/ry/rz, 1-D
SpatialSeries in acquisition, ~120 Hz timestamps) only over 670.6-1,200 s; basic/A2929-200711
has the tracking without units; phy/A8604-211122 has 3 units; the calcium files hold
RoiResponseSeries (the calcium modality, tests/test_nwb_calcium.py; suite2p's are stored transposed,
(rois, time)).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import subprocess
import sys
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from pynwb import NWBHDF5IO

from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import NWBError
from neurocodec.nwb.converter import NWBToWebDatasetConverter

pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'manufacturer' field is deprecated:DeprecationWarning",  # written by an older pynwb
    "ignore:.*oriented incorrectly and should be transposed:UserWarning",  # suite2p traces, see docstring
)
SDIST = "pynapple-0.11.4.tar.gz"
SDIST_SHA256 = "c46a7f98585417a60df59b023823aeb4f18a1672bb33a9c21cd380578f94d79f"
MEMBERS = {
    "neurosuite": "pynapple-0.11.4/tests/nwbfilestest/neurosuite/pynapplenwb/A2929-200711.nwb",
    "basic": "pynapple-0.11.4/tests/nwbfilestest/basic/pynapplenwb/A2929-200711.nwb",
    "phy": "pynapple-0.11.4/tests/nwbfilestest/phy/pynapplenwb/A8604-211122.nwb",
    "suite2p": "pynapple-0.11.4/tests/nwbfilestest/suite2p/pynapplenwb/2022_08_08.nwb",
}


def cache_dir() -> Path:
    """Where downloaded test data are kept ($NEUROCODEC_TEST_DATA, else ~/.cache/neurocodec-test-data)."""
    root = os.environ.get("NEUROCODEC_TEST_DATA") or Path.home() / ".cache" / "neurocodec-test-data"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def fetch_sdist(cache: Path) -> Path:
    """The pynapple sdist, downloaded with pip on first use; skip only when PyPI is unreachable."""
    sdist = cache / SDIST
    if not sdist.exists():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "pynapple==0.11.4", "-d", str(cache)],
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0 or not sdist.exists():
            if not registry_reachable():
                pytest.skip("real NWB files: PyPI cannot be reached to download the pynapple 0.11.4 sdist")
            pytest.fail(f"pip download pynapple==0.11.4 failed:\n{done.stderr[-2000:]}")
    if hashlib.sha256(sdist.read_bytes()).hexdigest() != SDIST_SHA256:
        sdist.unlink()
        pytest.fail(f"{sdist} does not have the expected SHA-256 (removed; the next run downloads it again)")
    return sdist


@pytest.fixture(scope="session")
def real_files() -> dict[str, Path]:
    """The NWB files of the pynapple sdist, extracted once into the cache."""
    cache = cache_dir()
    target = cache / "pynapple-0.11.4-nwb"
    paths = {name: target / member for name, member in MEMBERS.items()}
    # Test processes running side by side (pytest-xdist) fetch and extract one at a time, into
    # a temporary directory renamed into place: none sees a half-extracted file.
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.exists() for p in paths.values()):
            partial = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
            with tarfile.open(fetch_sdist(cache)) as tar:
                for member in MEMBERS.values():
                    tar.extract(member, partial, filter="data")
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
    return paths


def convert(tmp_path, files, modalities, name="out", **kwargs):
    kwargs = {"bin_size_ms": 50, "sequence_length": 40, "overlap": 0.0, "progress": False, "fsync": False, **kwargs}
    converter = NWBToWebDatasetConverter(tmp_path / name, 100, modalities, **kwargs)
    converter.convert_nwb_files(files)
    return converter.finalize(), Dataset(tmp_path / name)


def unit_spikes(path: Path) -> list[np.ndarray]:
    """Every unit's spike times through pynwb's own accessor."""
    with NWBHDF5IO(str(path), "r") as io:
        units = io.read().units
        return [np.asarray(units.get_unit_spike_times(i)) for i in range(len(units))]


def check_counts(ds: Dataset, spikes: list[np.ndarray], bin_size: float, bins: int, loop_every: int = 10) -> int:
    """Every window's counts against searchsorted on pynwb's spike times, and every
    `loop_every`-th window bin by bin with a plain comparison loop; returns the spikes counted.

    These recordings keep spike times and tracking timestamps on the same 0.1 ms grid, so many
    spikes lie exactly on a bin edge, and `start + k * bin` lands 1e-13 s beside the true edge:
    a spike within 1e-9 bin of an edge belongs to the bin that starts there (half-open bins).
    """
    tolerance = 1e-9 * bin_size
    total = 0
    for i in range(len(ds)):
        sample = ds[i]
        edges = sample["metadata"]["start_time"] + np.arange(bins + 1) * bin_size - tolerance
        counts = sample["spikes"]
        assert counts.shape == (bins, len(spikes))
        for u, times in enumerate(spikes):
            np.testing.assert_array_equal(counts[:, u], np.diff(np.searchsorted(times, edges, side="left")))
            if i % loop_every == 0:
                looped = [np.count_nonzero((times >= edges[k]) & (times < edges[k + 1])) for k in range(bins)]
                np.testing.assert_array_equal(counts[:, u], looped)
        total += int(counts.sum())
    return total


def test_spikes_on_bin_edges_in_real_data(real_files):
    """The case check_counts' tolerance is for exists in these files (so the tolerance is needed)."""
    spikes = np.concatenate(unit_spikes(real_files["neurosuite"]))
    start = 670.6407 + 2.0  # a window start on the tracking grid
    edges = start + np.arange(41) * 0.05
    on_edge = np.abs((spikes[:, None] - edges[None, :]) / 0.05) < 1e-9
    assert on_edge.any()
    assert np.any(spikes[on_edge.any(axis=1)] < edges[on_edge.argmax(axis=1)[on_edge.any(axis=1)]])


def test_real_spikes_and_partial_behavior(tmp_path, real_files):
    path = real_files["neurosuite"]
    spikes = unit_spikes(path)
    assert len(spikes) == 15 and sum(map(len, spikes)) == 98794
    with NWBHDF5IO(str(path), "r") as io:
        x = io.read().acquisition["Position"]["x"]
        x_data, x_times = x.data[:], x.timestamps[:]
    summary, ds = convert(tmp_path, [path], ["spikes", "behavior"], series={"behavior": "x"})
    assert summary["series"]["A2929-200711.nwb"] == {"spikes": "/units", "behavior": "/acquisition/Position/x"}
    key = ds[0]["metadata"]["session"]
    session = ds.manifest.extra["sessions"][key]
    assert session["ids"]["spikes"]["unit_ids"] == list(range(15))
    assert session["session_id"] == "A2929-200711"  # the file has none: its stem
    assert session["series"]["behavior"]["timing"] == "timestamps"
    rate = session["series"]["behavior"]["rate_hz"]
    assert rate == pytest.approx(119.76, abs=0.01)
    # behavior exists only from 670.64 s: coverage "all" windows start there
    first = ds[0]["metadata"]["start_time"]
    assert first == pytest.approx(x_times[0], abs=1e-9)
    assert len(ds) == int((x_times[-1] + 1 / rate - x_times[0]) / 2.0)
    counted = check_counts(ds, spikes, 0.05, 40)
    stop = ds[len(ds) - 1]["metadata"]["stop_time"]
    tolerance = 1e-9 * 0.05
    inside = [np.count_nonzero((t >= first - tolerance) & (t < stop - tolerance)) for t in spikes]
    assert counted == sum(inside) > 30000
    count = round(2.0 * rate)
    resampled = 0
    for i in range(len(ds)):
        sample = ds[i]
        start, stop = sample["metadata"]["start_time"], sample["metadata"]["stop_time"]
        # exactly the samples inside [start, stop), resampled by rank to `count` where jitter
        # put one more or one fewer inside (sample floor((k + 0.5) * m / count) of the m inside)
        a, z = np.searchsorted(x_times, [start, stop])
        assert sample["behavior"].shape == (count, 1) and sample["behavior"].dtype == np.float64
        rows = a + np.floor((np.arange(count) + 0.5) * (z - a) / count).astype(int)
        np.testing.assert_array_equal(sample["behavior"][:, 0], x_data[rows])
        resampled += z - a != count
    assert resampled == session["series"]["behavior"]["resampled_windows"]
    assert 0 < resampled < len(ds) // 4  # real jitter: a few windows, none lost


def test_real_behavior_coverage_fill(tmp_path, real_files):
    path = real_files["neurosuite"]
    summary, ds = convert(tmp_path, [path], ["spikes", "behavior"], coverage="fill",
                          bin_size_ms=100, sequence_length=100)
    spikes = unit_spikes(path)
    begin = min(float(t[0]) for t in spikes)
    assert ds[0]["metadata"]["start_time"] == pytest.approx(begin, abs=1e-9)
    assert len(ds) == int((max(float(t[-1]) for t in spikes) - begin) / 10.0)
    # the default prefers Position (here stored as three 1-D series) over CompassDirection
    assert summary["series"]["A2929-200711.nwb"]["behavior"] == "/acquisition/Position/x"
    missing = [ds[i]["metadata"]["missing"] for i in range(len(ds))]
    starts = np.array([ds[i]["metadata"]["start_time"] for i in range(len(ds))])
    tracked = starts >= 670.6407 - 1e-6
    assert all(m == ["behavior"] for m, t in zip(missing, tracked) if not t)
    assert sum(m == [] for m in missing) >= int(tracked.sum()) - 1 > 40
    assert not ds[0]["behavior"].any() and ds[len(ds) - 1]["behavior"].any()
    check_counts(ds, spikes, 0.1, 100, loop_every=25)


def test_real_units_of_another_lab(tmp_path, real_files):
    path = real_files["phy"]
    spikes = unit_spikes(path)
    assert len(spikes) == 3 and sum(map(len, spikes)) == 21354
    _, ds = convert(tmp_path, [path], ["spikes"], bin_size_ms=20, sequence_length=50, overlap=0.5)
    check_counts(ds, spikes, 0.02, 50)


def test_real_file_without_units_or_behavior(tmp_path, real_files):
    with pytest.raises(NWBError, match=r"basic/pynapplenwb/A2929-200711\.nwb: holds no spikes data"):
        convert(tmp_path, [real_files["basic"]], ["spikes", "behavior"], name="nospikes")
    with pytest.raises(NWBError, match=r"2022_08_08\.nwb: holds no behavior data"):
        convert(tmp_path, [real_files["suite2p"]], ["behavior"], name="nobehavior")
    # two real files with the same name: distinct session keys in one dataset
    _, ds = convert(tmp_path, [real_files["basic"], real_files["neurosuite"]], ["behavior"],
                    series={"behavior": "y"})
    sessions = ds.manifest.extra["sessions"]
    assert len(sessions) == 2 and all(k.startswith("A2929-200711-") for k in sessions)
    assert {ds[i]["metadata"]["session"] for i in range(len(ds))} == set(sessions)
