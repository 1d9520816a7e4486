"""The sessions' timeline in the manifest: `chunk_seconds=` / `--chunk-seconds`, checked against
every sample's own metadata on real conversions (two files, shards crossing sessions, a gap)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec.dataset.reader import Dataset
from neurocodec.nwb.converter import NWBToWebDatasetConverter

sys.path.insert(0, str(Path(__file__).parent))
from nwbfiles import add_lfp, add_units, electrical_series, new_file, random_spikes, simple_session, write  # noqa: E402


def convert(out: Path, files: list[Path], **kwargs) -> dict:
    kwargs.setdefault("modalities", ["spikes", "lfp"])
    with NWBToWebDatasetConverter(out, progress=False, fsync=False, **kwargs) as converter:
        converter.convert_nwb_files(files)
        converter.finalize()
    return json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())


def sample_times(out: Path) -> list[tuple[str, float, float]]:
    """(session, start_time, stop_time) of every sample, in dataset order, read from the shards."""
    with Dataset(out) as ds:
        return [(m["session"], m["start_time"], m["stop_time"]) for m in (s["metadata"] for s in ds)]


def timeline_samples(timeline: dict) -> dict[int, tuple[str, float, float]]:
    """Global sample index -> (session, start, stop) as the timeline states it."""
    out = {}
    for key, record in timeline["sessions"].items():
        for i, (start, stop) in enumerate(record["chunks"]):
            out[record["first_sample"] + i] = (key, start, stop)
    return out


def holed_session(path: Path, hole: tuple[float, float], seconds: float = 6.0) -> Path:
    """Spikes over [0, seconds) and a 500 Hz LFP timed by timestamps with no sample in `hole`."""
    rng = np.random.default_rng(7)
    nwb = new_file(identifier="holed", session_id="holed", subject_id="rat9")
    add_units(nwb, random_spikes(rng, 3, 0.0, seconds, mean=50), [[[0.0, seconds]]] * 3)
    times = np.arange(int(seconds * 500)) / 500.0
    times = times[(times < hole[0]) | (times >= hole[1])]
    add_lfp(nwb, electrical_series(nwb, "lfp", rng.standard_normal((len(times), 2)).astype(np.float32),
                                   timestamps=times))
    return write(nwb, path)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_two_sessions_chunks_map_to_samples_across_shards(tmp_path, compression):
    files = [simple_session(tmp_path / "a.nwb", seconds=4.0, seed=0),
             simple_session(tmp_path / "b.nwb", t0=100.25, seconds=3.0, seed=1)]
    manifest = convert(tmp_path / "out", files, chunk_seconds=0.5, shard_size=3, compression=compression)
    timeline = manifest["extra"]["timeline"]
    assert timeline["chunk_s"] == 0.5 and timeline["bin_s"] == 0.01
    assert manifest["extra"]["conversion"]["sequence_length"] == 50
    assert manifest["extra"]["conversion"]["step_bins"] == 50
    times = sample_times(tmp_path / "out")
    assert timeline_samples(timeline) == dict(enumerate(times))  # every sample, exactly
    records = list(timeline["sessions"].values())
    assert [r["first_sample"] for r in records] == [0, 8]
    for record in records:  # contiguous, no overlap, chunk_s long
        chunks = np.array(record["chunks"])
        np.testing.assert_allclose(chunks[:, 1] - chunks[:, 0], 0.5)
        assert np.array_equal(chunks[1:, 0], chunks[:-1, 1])
    assert records[1]["chunks"][0][0] == 100.25


def test_gap_where_windows_are_skipped(tmp_path):
    path = holed_session(tmp_path / "holed.nwb", hole=(2.2, 3.1))
    manifest = convert(tmp_path / "out", [path], chunk_seconds=0.5, shard_size=4, coverage="all")
    timeline = manifest["extra"]["timeline"]
    assert timeline_samples(timeline) == dict(enumerate(sample_times(tmp_path / "out")))
    (record,) = timeline["sessions"].values()
    chunks = np.array(record["chunks"])
    gaps = np.flatnonzero(chunks[1:, 0] != chunks[:-1, 1])
    assert len(gaps) == 1  # the windows over the hole are missing, and only those
    before, after = chunks[gaps[0]], chunks[gaps[0] + 1]
    # the hole [2.2, 3.1) overlaps the windows from 2.0, 2.5 and 3.0: exactly those are missing
    assert (before[1], after[0]) == pytest.approx((2.0, 3.5))


def test_overlapping_windows_get_no_timeline_and_overlap_zero_does(tmp_path):
    path = simple_session(tmp_path / "a.nwb", seconds=2.0)
    assert "timeline" not in convert(tmp_path / "o", [path], sequence_length=50, overlap=0.5)["extra"]
    manifest = convert(tmp_path / "z", [path], sequence_length=50, overlap=0)
    timeline = manifest["extra"]["timeline"]
    assert timeline["chunk_s"] == 0.5
    assert timeline_samples(timeline) == dict(enumerate(sample_times(tmp_path / "z")))


def test_defaults_unchanged_without_chunk_seconds(tmp_path):
    with NWBToWebDatasetConverter(tmp_path / "d", modalities=["spikes"], progress=False) as converter:
        window = converter.settings.window
    assert (window.sequence_length, window.step) == (100, 50)


@pytest.mark.parametrize("kwargs, words", [
    ({"overlap": 0.5}, "overlap 0.5 contradicts"),
    ({"sequence_length": 20}, "sequence_length 20 contradicts"),
    ({"chunk_seconds": 0.125}, "not a whole number of 10.0 ms bins"),
    ({"chunk_seconds": -1}, "positive number of seconds"),
    ({"chunk_seconds": True}, "positive number of seconds"),
])
def test_contradictions_refused_in_plain_words(tmp_path, kwargs, words):
    kwargs = {"chunk_seconds": 1.0, "bin_size_ms": 10.0, **kwargs}
    with pytest.raises(ValueError, match=words):
        NWBToWebDatasetConverter(tmp_path / "x", modalities=["spikes"], progress=False, **kwargs)


def test_agreeing_arguments_accepted(tmp_path):
    with NWBToWebDatasetConverter(tmp_path / "x", modalities=["spikes"], progress=False, chunk_seconds=2,
                                  bin_size_ms=20.0, sequence_length=100, overlap=0) as converter:
        window = converter.settings.window
    assert (window.sequence_length, window.step, window.bin_size) == (100, 100, 0.02)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--no-progress", *args],
                          capture_output=True, text=True)


def test_cli_chunk_seconds(tmp_path):
    path = simple_session(tmp_path / "a.nwb", seconds=3.0)
    done = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--modalities", "spikes", "lfp",
                   "--chunk-seconds", "1")
    assert done.returncode == 0, done.stderr
    timeline = json.loads((tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").read_text())["extra"]["timeline"]
    assert timeline["chunk_s"] == 1.0
    assert timeline_samples(timeline) == dict(enumerate(sample_times(tmp_path / "out")))
    (record,) = timeline["sessions"].values()
    assert record["chunks"] == [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]


def test_cli_contradiction_names_the_flags(tmp_path):
    path = simple_session(tmp_path / "a.nwb", seconds=1.0)
    done = run_cli("--input", str(path), "--output", str(tmp_path / "out"), "--chunk-seconds", "1",
                   "--overlap", "0.5")
    assert done.returncode != 0
    assert "--chunk-seconds" in done.stderr and "--overlap 0.5 contradicts" in done.stderr
    assert not (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").exists()


def test_metadata_read_alone_equals_full_read_and_is_checked(tmp_path):
    from neurocodec.errors import ShardError
    from neurocodec.nwb.timeline import part_metadata

    path = simple_session(tmp_path / "a.nwb", seconds=2.0)
    convert(tmp_path / "out", [path], chunk_seconds=0.5, shard_size=3, compression="gz")
    with Dataset(tmp_path / "out") as ds:
        assert list(part_metadata(tmp_path / "out")) == [s["metadata"] for s in ds]
        offset = int(ds.shard(1).rows[0, -1, 0])
        shard = tmp_path / "out" / ds.shards[1].name
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="metadata CRC-32 mismatch"):
        list(part_metadata(tmp_path / "out"))


@pytest.mark.multiprocess
def test_timeline_same_for_any_worker_count(tmp_path):
    files = [simple_session(tmp_path / f"{name}.nwb", t0=t0, seconds=2.0, seed=i)
             for i, (name, t0) in enumerate((("c", 5.0), ("a", 0.0), ("b", 1.25)))]
    one = convert(tmp_path / "one", files, chunk_seconds=0.5, shard_size=3)["extra"]["timeline"]
    two = convert(tmp_path / "two", files, chunk_seconds=0.5, shard_size=3, workers=2)["extra"]["timeline"]
    assert one == two
    in_order = sorted(one["sessions"].values(), key=lambda r: r["first_sample"])  # JSON keys are sorted
    assert [r["first_sample"] for r in in_order] == [0, 4, 8]
    assert [r["chunks"][0][0] for r in in_order] == [5.0, 0.0, 1.25]  # input order, not name order
    assert timeline_samples(two) == dict(enumerate(sample_times(tmp_path / "two")))
