"""Normalisation statistics (issue 16, point 3): the numbers against numpy over the rows written
(and over the NWB file read with h5py), only training rows used, overlapping windows counted
once, pooled statistics, the file refused when crafted, the converter's split= and stats=, and
the command line in the words of its flags."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from neurocodec import (Dataset, DatasetError, NWBToWebDatasetConverter, WebDatasetWriter, compute_stats, make_split,
                        read_split, read_stats)
from neurocodec.cli import main
from neurocodec.dataset import stats as stats_module
from neurocodec.dataset.stats import QUANTILES, MAX_SUBSAMPLE_ROWS
from neurocodec.dataset.stats_compute import Subsample

sys.path.insert(0, str(Path(__file__).parent))
from test_window_loader import rich_session  # noqa: E402

RATE = 100.0
WINDOW, STEP = 40, 20  # rows: windows overlap by half


def signals(seed: int, rows: int, channels: int) -> dict[str, np.ndarray]:
    """A session's continuous fields: a float (time, channels) signal with NaN and an infinity,
    a 1-D speed, integer counts, (time, 2, 3) frames, and a bool mask and a label (no statistics)."""
    rng = np.random.default_rng(seed)
    signal = (rng.normal(size=(rows, channels)) * np.arange(1, channels + 1) + 3.0 * seed).astype(np.float32)
    signal[rng.random(rows) < 0.05, 0] = np.nan
    signal[7, -1] = np.inf
    return {"signal": signal, "speed": rng.random(rows).astype(np.float64),
            "counts": rng.poisson(2.0, (rows, channels)).astype(np.int32),
            "frames": rng.integers(0, 255, (rows, 2, 3)).astype(np.uint8),
            "mask": rng.random((rows, channels)) < 0.5}


def write_windows(path: Path, sessions: dict[str, tuple[float, dict[str, np.ndarray]]],
                  changed_after: float | None = None) -> Path:
    """Windows of WINDOW rows every STEP rows of each session's signals, with the metadata a
    conversion writes (session, start_time, stop_time); a label per window. With
    `changed_after`, every row at or after that fraction of a session is replaced by other values."""
    with WebDatasetWriter(path, shard_size=7, fsync=False, overwrite=True) as writer:
        for key, (t0, fields) in sessions.items():
            rows = len(fields["signal"])
            if changed_after is not None:
                cut = int(rows * changed_after)
                fields = {k: np.concatenate([v[:cut], v[cut:][::-1] * 3]) if v.dtype.kind == "f" else v
                          for k, v in fields.items()}
            for n, start in enumerate(range(0, rows - WINDOW + 1, STEP)):
                sample = {k: v[start:start + WINDOW] for k, v in fields.items()}
                sample["label"] = np.int64(n)
                writer.write_sample(sample, metadata={"session": key, "subject_id": key,
                                                      "start_time": t0 + start / RATE,
                                                      "stop_time": t0 + (start + WINDOW) / RATE})
    return path


SESSIONS = {"s1": (0.0, signals(1, 400, 3)), "s2": (50.0, signals(2, 300, 3))}


@pytest.fixture(scope="module")
def windows(tmp_path_factory) -> Path:
    return write_windows(tmp_path_factory.mktemp("stats") / "windows", SESSIONS)


def expected(values: np.ndarray, per_channel: bool = True) -> dict[str, np.ndarray]:
    """The numbers, by numpy, over the finite values."""
    table = values.reshape(len(values), -1).astype(np.float64) if per_channel else values.reshape(-1, 1).astype(np.float64)
    out = {k: [] for k in ("count", "mean", "std", "min", "max", "quantiles")}
    for column in table.T:
        finite = column[np.isfinite(column)]
        out["count"].append(len(finite))
        out["mean"].append(finite.mean())
        out["std"].append(finite.std())
        out["min"].append(finite.min())
        out["max"].append(finite.max())
        out["quantiles"].append(np.quantile(finite, QUANTILES))
    return {k: np.array(v).T if k == "quantiles" else np.array(v) for k, v in out.items()}


def same(summary, want: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(summary.count, want["count"])
    np.testing.assert_allclose(summary.mean, want["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(summary.std, want["std"], rtol=1e-12)
    np.testing.assert_array_equal(summary.min, want["min"])
    np.testing.assert_array_equal(summary.max, want["max"])
    np.testing.assert_allclose(summary.quantiles, want["quantiles"], rtol=1e-12, atol=1e-12)


def test_every_number_is_numpy_over_the_rows_written_each_counted_once(windows):
    stats = compute_stats(windows, split=None, overwrite=True)
    assert (stats.split, stats.part, stats.split_fingerprint, stats.total_samples) == (None, None, None, 19 + 14)
    assert sorted(stats.fields) == ["counts", "frames", "signal", "speed"]  # no bool mask, no per-sample label
    for key, (_, fields) in SESSIONS.items():
        rows = len(fields["signal"])  # every row once, although every row but the first and last 20 is stored twice
        for name in ("signal", "speed", "counts"):
            assert stats.fields[name].sessions[key].rows == rows
            same(stats.fields[name].sessions[key], expected(fields[name]))
        same(stats.fields["frames"].sessions[key], expected(fields["frames"], per_channel=False))
    for name in ("signal", "speed", "counts"):  # pooled per channel: every session has 3 channels
        same(stats.fields[name].dataset, expected(np.concatenate([f[name] for _, f in SESSIONS.values()])))
    assert stats.fields["frames"].dataset.channels == 1 and stats.fields["frames"].ndim == 3
    assert stats.fields["counts"].dtype == "<i4" and stats.fields["speed"].ndim == 1
    assert read_stats(windows, None).to_dict() == stats.to_dict() == read_stats(windows, "all").to_dict()


def test_only_the_training_rows_count(windows, tmp_path):
    """Two datasets that differ only after 70% of every session: their training statistics are
    the same, their statistics of every sample are not."""
    changed = write_windows(tmp_path / "changed", SESSIONS, changed_after=0.7)
    for path in (windows, changed):
        make_split(path, by="time", fractions={"train": 0.6, "test": 0.4}, overwrite=True)
    train = [compute_stats(p, "train", overwrite=True) for p in (windows, changed)]
    assert train[0].to_dict()["fields"] == train[1].to_dict()["fields"]
    assert compute_stats(windows, None, overwrite=True).to_dict()["fields"] != \
        compute_stats(changed, None, overwrite=True).to_dict()["fields"]
    split = read_split(windows)
    assert (train[0].split, train[0].part, train[0].split_fingerprint) == ("default", "train", split.fingerprint("train"))
    assert train[0].total_samples == len(split.sample_ids("train"))
    for key, (t0, fields) in SESSIONS.items():  # exactly the rows of the part's windows
        [(a, b)] = split.ranges["train"][key]
        last = max(int(round((s - t0) * RATE)) for s in np.arange(t0, b, STEP / RATE) if s + WINDOW / RATE <= b + 1e-9)
        same(train[0].fields["signal"].sessions[key], expected(fields["signal"][:last + WINDOW]))


def test_a_session_without_statistics_of_its_own_and_channel_counts_that_differ(tmp_path):
    sessions = {"wide": (0.0, signals(3, 100, 4)), "narrow": (9.0, signals(4, 80, 2))}
    stats = compute_stats(write_windows(tmp_path / "ds", sessions), None)
    pooled = stats.fields["signal"].dataset
    assert pooled.channels == 1  # 4 and 2 channels: one value over every channel
    same(pooled, expected(np.concatenate([f["signal"].ravel() for _, f in sessions.values()]), per_channel=False))
    assert stats.summary("signal", "held-out") is pooled and stats.summary("signal", "wide").channels == 4
    mean, std = stats.mean_std("held-out")["signal"]
    assert mean.shape == std.shape == (1,)


def test_quantiles_come_from_every_kth_row():
    rows = np.arange(3 * MAX_SUBSAMPLE_ROWS + 5, dtype=np.float64)[:, None]
    sub = Subsample()
    for chunk in np.array_split(rows, 37):
        sub.add(chunk)
    kept = np.concatenate(sub.parts)
    assert sub.k == 4 and np.array_equal(kept, rows[::4]) and len(kept) <= MAX_SUBSAMPLE_ROWS
    few = Subsample()
    few.add(rows[:10])
    assert few.k == 1 and np.array_equal(np.concatenate(few.parts), rows[:10])


def crafted(windows: Path, edit) -> Path:
    compute_stats(windows, None, overwrite=True)
    target = windows / ".neurocodec" / "stats" / "all.json"
    doc = json.loads(target.read_text())
    text = edit(doc)
    target.write_text(text if isinstance(text, str) else json.dumps(doc))
    return target


@pytest.mark.parametrize("edit, words", [
    (lambda d: "{not json", "not a valid statistics file"),
    (lambda d: json.dumps(d).replace('"mean": [', '"mean": [NaN, ', 1), "NaN is not a number"),
    (lambda d: d["fields"]["signal"]["dataset"]["mean"].pop(), "one per channel"),
    (lambda d: d["fields"]["signal"]["sessions"]["s1"].update(std=[-1.0, 1.0, 1.0]), "std below 0"),
    (lambda d: json.dumps({**d, "fields": {**d["fields"], "signal": {**d["fields"]["signal"], "dataset": {
        **d["fields"]["signal"]["dataset"], "max": ["big", 1.0, 1.0]}}}}).replace('"big"', "1e400"),
     "not a finite number"),
    (lambda d: d["fields"]["signal"]["sessions"]["s1"].update(count=[3, -1, 2]), "non-negative integers"),
    (lambda d: d["fields"]["frames"]["sessions"]["s1"].update({k: v * 2 for k, v in d["fields"]["frames"]["sessions"]["s1"].items() if k != "rows"}), "one value per session"),
    (lambda d: d["fields"]["signal"].update(dtype="|O"), "dtype must be"),
    (lambda d: d.update(version=2), "version must be 1"),
    (lambda d: d.update(manifest_sha256="x" * 64), "hex digits"),
])
def test_a_crafted_file_is_refused_naming_it(windows, edit, words):
    target = crafted(windows, edit)
    with pytest.raises(DatasetError, match=words) as info:
        read_stats(windows, None)
    assert str(target) in str(info.value)


def test_a_file_over_the_size_cap_is_refused_unread(windows, monkeypatch):
    compute_stats(windows, None, overwrite=True)
    monkeypatch.setattr(stats_module, "MAX_STATS_BYTES", 100)
    with pytest.raises(DatasetError, match="more than a statistics file may hold"):
        read_stats(windows, None)


def test_errors_in_words(windows, tmp_path):
    compute_stats(windows, None, overwrite=True)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        compute_stats(windows, None)
    arrays = write_windows(tmp_path / "nosplit", {"s": (0.0, signals(5, 60, 1))})
    with pytest.raises(DatasetError, match="no split 'default'.*split=None"):
        compute_stats(arrays)
    make_split(windows, by="session", fractions={"train": 0.5, "test": 0.5}, name="all", overwrite=True)
    with pytest.raises(ValueError, match="stats/all.json"):
        compute_stats(windows, "all/train")
    make_split(windows, by="time", fractions={"train": 0.6, "test": 0.4}, overwrite=True)
    with pytest.raises(ValueError, match="has parts"):
        compute_stats(windows, "default/nope", overwrite=True)


# -- the converter and the command line -------------------------------------------------------

@pytest.fixture(scope="module")
def nwb(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("stats-nwb")
    return [rich_session(root / "a.nwb", t0=0.0, seconds=4.0, seed=1),
            rich_session(root / "b.nwb", t0=100.25, seconds=3.0, seed=2)]


def lfp_of(path: Path) -> tuple[float, np.ndarray]:
    """(t0, the LFP in volts) read directly from the NWB file."""
    with h5py.File(path, "r") as f:
        series = f["/processing/ecephys/LFP/lfp"]
        data = series["data"][:].astype(np.float64) * series["data"].attrs["conversion"]
        return float(series["starting_time"][()]), data * series["channel_conversion"][:]


def spike_counts(path: Path, t0: float, bins: int) -> np.ndarray:
    with h5py.File(path, "r") as f:
        times, ends = f["/units/spike_times"][:], f["/units/spike_times_index"][:]
    edges = t0 + np.arange(bins + 1) * 0.01
    return np.stack([np.histogram(u, edges)[0] for u in np.split(times, ends[:-1])], axis=1)


def test_the_converter_makes_the_split_and_the_statistics_of_its_training_part(nwb, tmp_path):
    with NWBToWebDatasetConverter(tmp_path / "ds", 8, ["spikes", "lfp"], 10.0, 40, 0.5, progress=False, fsync=False,
                                  split={"by": "time", "fractions": {"train": 0.75, "test": 0.25}},
                                  stats=True) as converter:
        converter.convert_nwb_files(nwb)
        summary = converter.finalize()
    assert summary["stats"] == str(tmp_path / "ds" / ".neurocodec" / "stats" / "default.json")
    stats, split = read_stats(tmp_path / "ds"), read_split(tmp_path / "ds")
    assert stats.split_fingerprint == split.fingerprint("train")
    with Dataset(tmp_path / "ds") as ds:
        train = [ds[int(i)]["metadata"] for i in split.sample_ids("train")]
    for file in nwb:
        t0, lfp = lfp_of(file)
        [key] = {m["session"] for m in train if m["source_file"] == file.name}
        starts = sorted(m["start_time"] for m in train if m["session"] == key)
        assert starts[0] == t0 and np.allclose(np.diff(starts), 0.2)  # windows of 0.4 s every 0.2 s
        rows = int(round((starts[-1] + 0.4 - t0) * 500))  # 500 Hz, from the first window to the last one's end
        got = stats.fields["lfp"].sessions[key]
        assert got.rows == rows and rows < len(lfp)
        np.testing.assert_array_equal(got.count, [rows] * 4)
        np.testing.assert_allclose(got.mean, lfp[:rows].mean(axis=0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(got.std, lfp[:rows].std(axis=0), rtol=1e-5)
        counts = spike_counts(file, t0, rows // 5)  # 10 ms bins: every spike of the training rows, counted once
        np.testing.assert_allclose(stats.fields["spikes"].sessions[key].mean, counts.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(stats.fields["spikes"].sessions[key].std, counts.std(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="make_split's arguments"):
        NWBToWebDatasetConverter(tmp_path / "other", split={"by": "time", "fractions_": {}})
    with pytest.raises(ValueError, match="fractions must add up to 1"):
        NWBToWebDatasetConverter(tmp_path / "other", split={"fractions": {"train": 0.5}})


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_command_line_speaks_flags(nwb, windows, tmp_path, capsys):
    status, out, err = run(capsys, "convert", "--input", *map(str, nwb), "--output", str(tmp_path / "cli"),
                           "--modalities", "spikes", "lfp", "--sequence-length", "40", "--overlap", "0",
                           "--split-by", "time", "--split-fractions", "train=0.8,test=0.2", "--stats",
                           "--no-progress")
    assert status == 0, err
    assert f"stats: {tmp_path / 'cli' / '.neurocodec' / 'stats' / 'default.json'}" in out
    assert read_stats(tmp_path / "cli").part == "train"
    status, out, err = run(capsys, "stats", str(tmp_path / "cli"), "--all")
    assert status == 0 and "from every sample" in out and "lfp: 2 session(s), 4 value(s) pooled" in out
    for args, words in [(("stats", str(tmp_path / "cli"), "--all"), "pass --overwrite"),
                        (("stats", str(windows), "--split", "nope/train"), "or pass --all"),
                        (("stats", str(windows), "--split", "a/b/c"), "--split must be"),
                        (("convert", "--input", str(nwb[0]), "--output", str(tmp_path / "x"), "--split-seed", "2"),
                         "give --split-by too"),
                        (("convert", "--input", str(nwb[0]), "--output", str(tmp_path / "x"), "--split-by", "time",
                          "--split-fractions", "train=0.5"), "--split-fractions must add up to 1"),
                        (("convert", "--input", str(nwb[0]), "--output", "s3://bucket/x", "--stats"),
                         "--stats needs a local --output")]:
        status, out, err = run(capsys, *args)
        assert status == 1 and words in err and "Traceback" not in err, (args, err)
