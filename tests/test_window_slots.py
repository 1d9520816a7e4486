"""Window slots over a timeline (neurocodec.loader.window_slots): lookup by slot number against a
plain enumeration, the closed-form counts, sessions and gaps never crossed, grid and jitter
phases (deterministic across processes), coverage, and real conversions read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec.dataset.reader import Dataset
from neurocodec.errors import DatasetError
from neurocodec.loader import window_slots
from neurocodec.loader.window_slots import Timeline, WindowSlots, session_phase

sys.path.insert(0, str(Path(__file__).parent))
from loader_util import line_events  # noqa: E402
from test_timeline import convert, holed_session  # noqa: E402
from nwbfiles import simple_session  # noqa: E402

BIN = 0.01


def synthetic(sessions: dict[str, tuple[int, float, list[int]]], chunk_bins: int = 100) -> dict:
    """A timeline doc: per session (first_sample, t0, stretch lengths in chunks); stretches are
    separated by a gap of 3.5 chunks."""
    chunk_s = chunk_bins * BIN
    doc = {"chunk_s": chunk_s, "bin_s": BIN, "sessions": {}}
    for key, (first, t0, stretches) in sessions.items():
        chunks, t = [], t0
        for length in stretches:
            for _ in range(length):
                chunks.append([t, t + chunk_s])
                t += chunk_s
            t += 3.5 * chunk_s
        doc["sessions"][key] = {"first_sample": first, "chunks": chunks}
    return doc


DOC = synthetic({"b-session": (9, 100.25, [3, 1, 2]), "a-session": (0, 0.0, [5, 4]),
                 "c-session": (15, 7.0, [1]), "d-session": (16, 8.0, [2])})
# d-session starts where c-session stops: only the session boundary separates their stretches


def enumerate_slots(doc: dict, window_bins: int, phases: dict[str, int]) -> list[tuple]:
    """Every slot, the plain way: sessions by first sample, stretches where stop == next start,
    windows at p + k*L bins while they fit. (session key, start_s, sample, offset_bins, crosses)."""
    out = []
    chunk_bins = round(doc["chunk_s"] / doc["bin_s"])
    for key, record in sorted(doc["sessions"].items(), key=lambda kv: kv[1]["first_sample"]):
        chunks, first = record["chunks"], record["first_sample"]
        stretch = [0]
        for i in range(1, len(chunks) + 1):
            if i == len(chunks) or abs(chunks[i][0] - chunks[i - 1][1]) > 1e-9:
                at = phases[key]
                while at + window_bins <= len(stretch) * chunk_bins:
                    c, off = stretch[0] + at // chunk_bins, at % chunk_bins
                    out.append((key, chunks[c][0] + off * doc["bin_s"], first + c, off,
                                off + window_bins > chunk_bins))
                    at += window_bins
                stretch = [i]
            else:
                stretch.append(i)
    return out


def located(slots: WindowSlots, numbers) -> list[tuple]:
    where = slots.locate(numbers)
    keys = slots.timeline.keys
    return [(keys[s], t, int(n), int(o), bool(c)) for s, t, n, o, c in
            zip(where.session, where.start_s, where.sample, where.offset_bins, where.crosses)]


@pytest.mark.parametrize("mode", ["grid", "jitter"])
@pytest.mark.parametrize("window_bins", [1, 37, 60, 100])
def test_lookup_equals_enumeration(mode, window_bins):
    timeline = Timeline.from_dict(DOC)
    for epoch in range(4):
        slots = WindowSlots(timeline, window_bins=window_bins, seed=5, epoch=epoch, mode=mode)
        phases = dict(zip(timeline.keys, slots.phases.tolist()))
        expected = enumerate_slots(DOC, window_bins, phases)
        got = located(slots, np.arange(len(slots)))
        assert len(slots) == len(expected)
        assert [g[0] for g in got] == [e[0] for e in expected]
        assert [g[2:] for g in got] == [e[2:] for e in expected]
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=0, atol=1e-9)
        for n in np.random.default_rng(epoch).integers(0, len(slots), 20).tolist():  # one at a time
            assert located(slots, n) == [got[n]]


def test_counts_are_the_closed_form():
    timeline = Timeline.from_dict(DOC)
    slots = WindowSlots(timeline, window_bins=37, seed=1, epoch=2)
    p = slots.phases[slots.stretch_session]
    assert slots.stretch_chunks.tolist() == [5, 4, 3, 1, 2, 1, 2]
    assert slots.counts.tolist() == ((slots.stretch_chunks * 100 - p) // 37).tolist()
    assert slots.session_counts().sum() == len(slots)
    assert slots.session_counts().tolist() == [
        int(slots.counts[slots.stretch_session == s].sum()) for s in range(4)]


def test_windows_never_cross_sessions_or_gaps():
    doc = DOC
    timeline = Timeline.from_dict(doc)
    by_sample = {rec["first_sample"] + i: (key, c) for key, rec in doc["sessions"].items()
                 for i, c in enumerate(rec["chunks"])}
    for mode in ("grid", "jitter"):
        for window_bins in (30, 100):
            slots = WindowSlots(timeline, window_bins=window_bins, seed=3, epoch=1, mode=mode)
            where = slots.locate(np.arange(len(slots)))
            for s, n, start, stop, crosses in zip(where.session, where.sample, where.start_s, where.stop_s,
                                                  where.crosses):
                key, (a, b) = by_sample[int(n)]
                assert key == timeline.keys[s] and a - 1e-9 <= start < b
                if crosses:  # the next sample is the same session's next chunk, touching this one
                    key2, (a2, b2) = by_sample[int(n) + 1]
                    assert key2 == key and a2 == b and stop <= b2 + 1e-9
                else:
                    assert stop <= b + 1e-9


def test_grid_mode_phase_zero_and_absolute_starts():
    timeline = Timeline.from_dict(DOC)
    slots = WindowSlots(timeline, window_s=0.6, seed=9, epoch=3, mode="grid")
    assert slots.window_bins == 60 and not slots.phases.any()
    where = slots.locate(np.arange(len(slots)))
    stretch_start = timeline.starts[slots.stretch_first[where.stretch]]
    np.testing.assert_allclose(where.start_s, stretch_start + where.k * 0.6, rtol=0, atol=1e-9)
    assert where.start_s[0] == 0.0  # first session by sample order, its first stretch
    again = WindowSlots(timeline, window_s=0.6, seed=1, epoch=0, mode="grid").locate(np.arange(len(slots)))
    assert np.array_equal(again.start_s, where.start_s)  # no dependence on seed or epoch


def test_jitter_phases_differ_per_epoch_and_session():
    keys = [f"session-{i}" for i in range(12)]
    table = np.array([[session_phase(k, 7, e, 1000) for k in keys] for e in range(6)])
    assert ((0 <= table) & (table < 1000)).all()
    assert all(len(set(row)) > 8 for row in table)  # per session
    assert all(len(set(col)) > 3 for col in table.T)  # per epoch
    assert session_phase("session-0", 8, 0, 1000) != table[0, 0] or session_phase("session-1", 8, 0, 1000) != table[0, 1]
    assert table.tolist() == [[session_phase(k, 7, e, 1000) for k in keys] for e in range(6)]  # same again


@pytest.mark.multiprocess
def test_jitter_identical_in_other_processes():
    timeline = Timeline.from_dict(DOC)
    code = ("import json, sys; import numpy as np; from neurocodec.loader.window_slots import Timeline, WindowSlots;"
            "doc = json.loads(sys.stdin.read()); t = Timeline.from_dict(doc);"
            "s = WindowSlots(t, window_bins=37, seed=11, epoch=4); w = s.locate(np.arange(len(s)));"
            "print(json.dumps([s.phases.tolist(), w.start_s.tolist(), w.sample.tolist()]))")
    mine = WindowSlots(timeline, window_bins=37, seed=11, epoch=4)
    where = mine.locate(np.arange(len(mine)))
    expected = [mine.phases.tolist(), where.start_s.tolist(), where.sample.tolist()]
    for hash_seed in ("1", "12345"):
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(DOC), capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True)
        assert json.loads(done.stdout) == expected


def test_coverage_is_exact():
    timeline = Timeline.from_dict(DOC)
    for epoch in range(3):
        slots = WindowSlots(timeline, window_bins=37, seed=2, epoch=epoch)
        where = slots.locate(np.arange(len(slots)))
        covered = slots.covered()
        for st in range(len(slots.counts)):
            mine = where.stretch == st
            start, stop = np.sort(where.start_s[mine]), np.sort(where.stop_s[mine])
            if not mine.any():
                assert covered[st, 0] == covered[st, 1]
                continue
            np.testing.assert_allclose(start[1:], stop[:-1], atol=1e-9)  # disjoint and touching
            np.testing.assert_allclose([start[0], stop[-1]], covered[st], atol=1e-9)
            s0 = timeline.starts[slots.stretch_first[st]]
            end = s0 + slots.stretch_chunks[st] * timeline.chunk_s
            assert s0 - 1e-9 <= start[0] < s0 + 0.37 and end - 0.37 < stop[-1] <= end + 1e-9


def test_large_timelines_without_per_chunk_or_per_slot_python_work():
    big = synthetic({"s": (0, 0.0, [7] * (100_000 // 7))})
    small = synthetic({"s": (0, 0.0, [7] * 2)})
    tl_big, tl_small = Timeline.from_dict(big), Timeline.from_dict(small)
    assert len(tl_big.starts) >= 99_995
    build = [line_events(window_slots, lambda t=t: WindowSlots(t, window_bins=30, seed=1, epoch=1))
             for t in (tl_small, tl_big)]
    assert build[0] == build[1]  # building costs the same Python work for 14 chunks and 10^5
    slots = WindowSlots(tl_big, window_bins=30, seed=1, epoch=1)
    assert len(slots) > 300_000
    lookups = [line_events(window_slots, lambda n=n: slots.locate(np.arange(n))) for n in (10, len(slots))]
    assert lookups[0] == lookups[1]
    last = slots.locate(len(slots) - 1)
    assert int(last.sample[0]) == len(tl_big.starts) - 1 or bool(last.crosses[0])


@pytest.mark.parametrize("mutate, words", [
    (lambda d: d.pop("sessions"), "'sessions'"),
    (lambda d: d.update(chunk_s=0.123), "whole number"),
    (lambda d: d.update(bin_s=float("nan")), "bin_s must be a positive number"),
    (lambda d: d["sessions"]["a-session"].update(first_sample=-1), "first_sample"),
    (lambda d: d["sessions"]["a-session"].update(first_sample=10), "same samples"),
    (lambda d: d["sessions"]["a-session"]["chunks"].reverse(), "out of time order"),
    (lambda d: d["sessions"]["a-session"]["chunks"][0].append(1.0), "pairs|finite"),
    (lambda d: d["sessions"]["a-session"].update(chunks="x"), "pairs|finite"),
    (lambda d: d["sessions"]["a-session"]["chunks"][0].__setitem__(1, 0.5), "not 1.0 s long"),
])
def test_malformed_timelines_refused(mutate, words):
    doc = json.loads(json.dumps(DOC))
    mutate(doc)
    with pytest.raises(DatasetError, match=words):
        Timeline.from_dict(doc)


def test_bad_windows_refused_in_plain_words():
    timeline = Timeline.from_dict(DOC)
    with pytest.raises(ValueError, match="whole number of the dataset's 0.01 s bins"):
        WindowSlots(timeline, window_s=0.0125)
    with pytest.raises(ValueError, match="longer than the dataset's chunks"):
        WindowSlots(timeline, window_bins=101)
    with pytest.raises(ValueError, match="exactly one"):
        WindowSlots(timeline)
    with pytest.raises(ValueError, match="mode"):
        WindowSlots(timeline, window_bins=10, mode="random")
    with pytest.raises(IndexError):
        WindowSlots(timeline, window_bins=10).locate(10**9)
    with pytest.raises(DatasetError, match="no timeline"):
        Timeline.from_manifest({"extra": {}, "total_samples": 3})
    with pytest.raises(DatasetError, match="reach sample"):
        Timeline.from_manifest({"extra": {"timeline": DOC}, "total_samples": 17})


def test_real_conversion_slots_read_back(tmp_path):
    files = [simple_session(tmp_path / "a.nwb", seconds=4.0, seed=0),
             holed_session(tmp_path / "holed.nwb", hole=(2.2, 3.1))]
    manifest = convert(tmp_path / "out", files, chunk_seconds=0.5, shard_size=3)
    timeline = Timeline.from_manifest(manifest)
    with Dataset(tmp_path / "out") as ds:
        meta = [s["metadata"] for s in ds]
        assert Timeline.from_manifest(ds.manifest).keys == timeline.keys
    for mode, epoch in (("grid", 0), ("jitter", 0), ("jitter", 1)):
        slots = WindowSlots(timeline, window_s=0.3, seed=4, epoch=epoch, mode=mode)
        where = slots.locate(np.arange(len(slots)))
        assert len(slots) > 10 and where.crosses.any()
        for s, n, off, start, crosses in zip(where.session, where.sample, where.offset_bins, where.start_s,
                                             where.crosses):
            chunk = meta[n]
            assert chunk["session"] == timeline.keys[s]
            assert start == pytest.approx(chunk["start_time"] + off * 0.01, abs=1e-9)
            if crosses:
                following = meta[n + 1]
                assert following["session"] == chunk["session"] and following["start_time"] == chunk["stop_time"]
        hole = (where.start_s < 3.1) & (where.stop_s > 2.0) & (where.session == timeline.keys.index(
            next(m["session"] for m in meta if m["source_file"] == "holed.nwb")))
        assert not hole.any()  # nothing read across the gap


def test_field_rows_stay_in_the_chunks_a_window_reads():
    from neurocodec.plugin.windowing import field_rows

    for chunk_bins in (1, 3, 10, 12):
        for rows in (1, 2, 3, 7, 10, 30, 36):
            for window in range(1, chunk_bins + 1):
                offsets = np.arange(chunk_bins)
                first, count = field_rows(offsets, window, chunk_bins, rows)
                assert count == int(np.floor(window * rows / chunk_bins + 0.5))
                ends_inside = offsets + window <= chunk_bins
                assert (first + count <= rows)[ends_inside].all()
                assert (first + count <= 2 * rows).all() and (first >= 0).all() and (first < rows).all()
                if rows % chunk_bins == 0:  # whole rows per bin: exact times
                    per_bin = rows // chunk_bins
                    assert (first == offsets * per_bin).all() and count == window * per_bin


def test_field_rows_on_a_real_lfp_chunk(tmp_path):
    """LFP at 500 Hz in 0.5 s chunks (250 rows, 50 bins): the rows a slot names hold exactly the
    samples of its window, across a chunk edge too (checked against the source file with h5py)."""
    import h5py

    from neurocodec.plugin.windowing import field_rows

    path = simple_session(tmp_path / "a.nwb", seconds=3.0, lfp_rate=500.0)
    manifest = convert(tmp_path / "out", [path], chunk_seconds=0.5, shard_size=4)
    with h5py.File(path, "r") as f:
        source = f["/processing/ecephys/LFP/lfp/data"][:]
    slots = WindowSlots(Timeline.from_manifest(manifest), window_s=0.37, seed=3, epoch=1)
    where = slots.locate(np.arange(len(slots)))
    first, count = field_rows(where.offset_bins, slots.window_bins, 50, 250)
    assert count == 185 and where.crosses.any() and not where.crosses.all()
    with Dataset(tmp_path / "out") as ds:
        for n, row, start, crosses in zip(where.sample, first, where.start_s, where.crosses):
            rows = ds.read(int(n))["lfp"]
            if crosses:
                rows = np.concatenate([rows, ds.read(int(n) + 1)["lfp"]])
            at = round(start * 500)
            np.testing.assert_array_equal(rows[row:row + count], source[at:at + count])
