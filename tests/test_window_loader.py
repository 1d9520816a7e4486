"""Load-time windows through the loaders (issue 15, point 1): windows cut from chunks equal the
same windows converted directly, jittered windows tile each epoch and cover the recording over
epochs, resume is exact after any batch with another worker count, and transforms see the same
windows for any worker count. Values are checked against the NWB file with h5py."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurocodec import (
    Dataset, NWBToWebDatasetConverter, RandomAccessWebDataset, WebDatasetLoader, create_webdataset_dataloader,
)
from neurocodec.errors import DatasetError
from neurocodec.loader.window_slots import Timeline

sys.path.insert(0, str(Path(__file__).parent))
import nwbfiles  # noqa: E402
from window_util import digest  # noqa: E402

MODALITIES = ["spikes", "lfp", "behavior"]
WINDOW = 30  # bins of 10 ms: 0.3 s windows over 0.5 s chunks, so many windows cross a chunk edge


def rich_session(path: Path, *, t0: float, seconds: float, seed: int) -> Path:
    """Spikes (unit 1 observed only over part of the session, so masks change inside chunks),
    a 500 Hz LFP of scaled integers, a 30 Hz behavior series (rows per chunk not a multiple of bins) and trials."""
    rng = np.random.default_rng(seed)
    nwb = nwbfiles.new_file(identifier=f"rich{seed}", session_id=f"rich{seed}", subject_id=f"rat{seed}")
    observed = [[[t0, t0 + seconds]], [[t0 + 0.72, t0 + 2.93]], [[t0, t0 + 1.0], [t0 + 1.0, t0 + seconds]]]
    nwbfiles.add_units(nwb, nwbfiles.random_spikes(rng, 3, t0, t0 + seconds, mean=60), observed)
    lfp = rng.integers(-2000, 2000, (int(seconds * 500), 4)).astype(np.int16)  # stored as integers, blocked
    nwbfiles.add_lfp(nwb, nwbfiles.electrical_series(nwb, "lfp", lfp, rate=500.0, starting_time=t0, conversion=2.5e-6,
                                                     channel_conversion=[1.0, 0.5, 2.0, 1.25]))
    speed = rng.random((int(seconds * 30), 2)).astype(np.float32)
    nwbfiles.behavior_module(nwb).add(nwbfiles.behavioral_timeseries("speed", speed, rate=30.0, starting_time=t0))
    for start in np.arange(t0 + 0.2, t0 + seconds - 0.5, 0.7):
        nwb.add_trial(start_time=float(start), stop_time=float(start + 0.45))
    return nwbfiles.write(nwb, path)


def convert(out: Path, files: list[Path], *, codecs: str = "neural", modalities=MODALITIES, **kwargs) -> Path:
    kwargs.setdefault("sequence_length", 50)
    with NWBToWebDatasetConverter(out, 4, list(modalities), 10.0, codecs=codecs, progress=False, fsync=False,
                                  **kwargs) as converter:
        converter.convert_nwb_files(files)
        converter.finalize()
    return out


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("sessions")
    return [rich_session(root / "a.nwb", t0=0.0, seconds=4.0, seed=1),
            rich_session(root / "b.nwb", t0=100.25, seconds=3.0, seed=2)]


@pytest.fixture(scope="module", params=["neural", "npy"])
def converted(request, sessions, tmp_path_factory) -> tuple[Path, Path, str]:
    """(chunked dataset, the same files converted directly in windows of WINDOW bins, codecs)."""
    root = tmp_path_factory.mktemp(f"conv-{request.param}")
    chunked = convert(root / "chunks", sessions, codecs=request.param, chunk_seconds=0.5)
    direct = convert(root / "direct", sessions, codecs=request.param, sequence_length=WINDOW, overlap=0.0)
    return chunked, direct, request.param


def by_start(samples) -> dict[tuple[str, float], dict]:
    return {(s["metadata"]["session"], round(s["metadata"]["start_time"], 6)): s for s in samples}


def numpy_of(sample: dict) -> dict:
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}


@pytest.mark.parametrize("decode", [None, {"spikes": {"bin_size_ms": 30}}, {"spikes": {"as": "events"}}])
def test_grid_windows_equal_a_direct_conversion(converted, decode):
    chunked, direct, codecs = converted
    if decode is not None and codecs == "npy":
        pytest.skip("dense counts take no decode options")
    loader = WebDatasetLoader(chunked, shuffle=False, window_bins=WINDOW, decode=decode)
    assert loader.stream.windows.mode == "grid"
    windows = by_start(numpy_of(s) for s in loader)
    with Dataset(direct, decode=decode) as ds:
        expected = by_start(ds)
    assert windows.keys() == expected.keys() and len(windows) == 13 + 10  # 4 s and 3 s in 0.3 s windows
    crossing = 0
    for key, want in expected.items():
        got = windows[key]
        crossing += len(got["metadata"]["window"]["chunks"]) == 2
        for field in ("lfp", "behavior", "spikes", "spikes_observed"):
            if decode and "as" in decode["spikes"] and field == "spikes":
                assert got[field] == want[field]  # SpikeEvents, exactly
            else:
                np.testing.assert_array_equal(got[field], want[field], err_msg=f"{field} at {key}")
        meta, ref = got["metadata"], want["metadata"]
        for name in ("session", "session_id", "subject_id", "source_file", "trials", "intervals", "missing"):
            assert meta[name] == ref[name], (name, key)
        assert meta["stop_time"] == pytest.approx(ref["stop_time"], abs=1e-9)
    assert crossing >= 8  # windows across a chunk edge


def test_jittered_windows_hold_the_recordings_values(tmp_path, sessions):
    """LFP rows (the stored integers, decoded from the blocks the window overlaps) and spike
    times of jittered windows, against the NWB files read with h5py."""
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    sources = {}
    for path in sessions:
        with h5py.File(path, "r") as f:
            lfp = f["/processing/ecephys/LFP/lfp"]
            units = f["/units"]
            spikes = np.split(units["spike_times"][:], units["spike_times_index"][:][:-1])
            sources[path.name] = (float(lfp["starting_time"][()]), lfp["data"][:], spikes)
    loader = WebDatasetLoader(chunked, window_ms=370, seed=3, decode={"spikes": {"as": "events"}, "lfp": {"raw": True}})
    for epoch in range(2):
        seen = 0
        for sample in loader:
            meta = sample["metadata"]
            t0, lfp, spikes = sources[meta["source_file"]]
            start, stop = meta["start_time"], meta["stop_time"]
            assert stop == pytest.approx(start + 0.37)
            row = round((start - t0) * 500)
            np.testing.assert_array_equal(sample["lfp"].numpy(), lfp[row:row + 185])
            events = sample["spikes"]
            for unit, times in enumerate(spikes):
                inside = times[(times >= start - 1e-7) & (times < stop - 1e-7)]
                np.testing.assert_allclose(events.times[events.units == unit] + start, inside, atol=2e-6)
            seen += 1
        assert seen == loader.stream.epoch_samples(epoch)
    phases = [WebDatasetLoader(chunked, window_ms=370, seed=3, epoch=e).stream.slots(e).phases for e in range(4)]
    assert len({tuple(p) for p in phases}) > 1  # the windows move from epoch to epoch


def test_counts_and_events_are_the_same_spikes(converted):
    chunked, _, codecs = converted
    if codecs == "npy":
        pytest.skip("dense counts have no events")
    counts = WebDatasetLoader(chunked, window_ms=300, seed=5, decode={"spikes": {"bin_size_ms": 5}})
    events = WebDatasetLoader(chunked, window_ms=300, seed=5, decode={"spikes": {"as": "events"}})
    for a, b in zip(counts, events):
        assert a["__key__"] == b["__key__"]
        ev = b["spikes"]
        binned = np.zeros((60, ev.unit_count), dtype=np.int64)
        np.add.at(binned, (np.rint(ev.times * ev.tick_hz).astype(np.int64) // (ev.tick_hz // 200), ev.units), 1)
        np.testing.assert_array_equal(a["spikes"].numpy(), binned)


def window_spans(loader) -> list[tuple[str, float, float, int]]:
    return [(s["metadata"]["session"], s["metadata"]["start_time"], s["metadata"]["stop_time"],
             s["metadata"]["window"]["slot"]) for s in loader]


def test_jitter_tiles_each_epoch_and_covers_every_position_over_epochs(tmp_path, sessions):
    holed = nwbfiles_holed(tmp_path / "holed.nwb")
    chunked = convert(tmp_path / "chunks", [*sessions, holed], chunk_seconds=0.5, modalities=["spikes", "lfp"])
    timeline = Timeline.from_manifest(Dataset(chunked).manifest)
    bins = 5
    loader = create_webdataset_dataloader(chunked, window_bins=bins, batch_size=7, num_workers=0, seed=11)
    covered = {key: set() for key in timeline.keys}
    stretches = stretch_bounds(timeline)
    for epoch in range(30):
        spans = [(m["session"], m["start_time"], m["stop_time"], m["window"]["slot"])
                 for batch in loader for m in batch["metadata"]]
        assert sorted(s[3] for s in spans) == list(range(loader.stream.epoch_samples(epoch)))  # each slot once
        for session in timeline.keys:
            mine = sorted((a, b) for s, a, b, _ in spans if s == session)
            assert all(b1 <= a2 + 1e-9 for (_, b1), (a2, _) in zip(mine, mine[1:]))  # disjoint
            for a, b in mine:  # inside one stretch: never across a session or a gap
                assert any(lo - 1e-9 <= a and b <= hi + 1e-9 for lo, hi in stretches[session])
                first = round(a * 100)
                covered[session].update(range(first, first + bins))
    for session in timeline.keys:  # every bin of every stretch, over the epochs
        want = {b for lo, hi in stretches[session] for b in range(round(lo * 100), round(hi * 100))}
        assert covered[session] == want


def nwbfiles_holed(path: Path) -> Path:
    """Spikes over 6 s and a 500 Hz LFP with no sample in [2.2, 3.1): a recording with a gap."""
    from test_timeline import holed_session

    return holed_session(path, hole=(2.2, 3.1))


def stretch_bounds(timeline: Timeline) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for s, key in enumerate(timeline.keys):
        lo, hi = timeline.offsets[s], timeline.offsets[s + 1]
        spans = []
        for start, stop in zip(timeline.starts[lo:hi], timeline.stops[lo:hi]):
            if spans and abs(spans[-1][1] - start) < 1e-9:
                spans[-1] = (spans[-1][0], stop)
            else:
                spans.append((start, stop))
        out[key] = spans
    return out


def keys_and_values(batches) -> list[tuple[str, bytes]]:
    return [(k, lfp.numpy().tobytes()) for b in batches for k, lfp in zip(b["__key__"], b["lfp"])]


@pytest.mark.multiprocess
def test_resume_after_any_batch_with_another_worker_count(tmp_path, sessions):
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)

    def make(workers: int):
        return create_webdataset_dataloader(chunked, window_ms=370, batch_size=5, num_workers=workers, seed=2,
                                            buffer_size=16)

    reference = make(2)
    epochs = [keys_and_values(reference) for _ in range(2)]
    assert epochs[0] != epochs[1]
    flat = epochs[0] + epochs[1]
    per_epoch = len(epochs[0])
    batches = -(-per_epoch // 5)
    for k in (0, 1, batches // 2, batches - 1, batches):
        first = make(0)
        taken = []
        iterator = iter(first)
        for _ in range(k):
            taken += keys_and_values([next(iterator)])
        state = first.state_dict()
        resumed = make(3)
        resumed.load_state_dict(state)
        rest = keys_and_values(resumed)
        if k == batches:  # the state said "end of epoch 0": the next iteration reads epoch 1
            assert rest == [] or rest == epochs[1]
            rest = rest or keys_and_values(resumed)
            assert taken + rest == flat
        else:
            assert taken + rest == epochs[0]
    assert state["windows"].startswith("jitter:37:")


def dropped_spikes(sample: dict, rng: np.random.Generator) -> dict:
    """Drop each spike with probability 1/2 (a transform run in the workers)."""
    events = sample["spikes"]
    keep = rng.random(len(events)) < 0.5
    sample["spikes"] = type(events)(events.times[keep], events.units[keep], events.unit_count, events.tick_hz)
    sample["slot"] = np.array(sample["metadata"]["window"]["slot"])
    return sample


@pytest.mark.multiprocess
def test_transforms_are_the_same_for_any_worker_count(tmp_path, sessions):
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    runs = []
    for workers in (0, 2):
        loader = create_webdataset_dataloader(chunked, window_ms=250, batch_size=4, num_workers=workers, seed=9,
                                              decode={"spikes": {"as": "events"}}, transform=dropped_spikes)
        runs.append([[(int(slot), e.times.tobytes(), e.units.tobytes()) for slot, e in zip(b["slot"], b["spikes"])]
                     for _ in range(2) for b in loader])
    assert runs[0] == runs[1]


def test_errors_speak_the_arguments(tmp_path, sessions):
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    with pytest.raises(ValueError, match="window_ms=12.5 is not a whole number of the dataset's 10 ms bins"):
        WebDatasetLoader(chunked, window_ms=12.5)
    with pytest.raises(ValueError, match="longer than the dataset's chunks"):
        create_webdataset_dataloader(chunked, window_ms=600)
    with pytest.raises(ValueError, match="not both"):
        WebDatasetLoader(chunked, window_ms=300, window_bins=30)
    with pytest.raises(ValueError, match="window_mode applies"):
        WebDatasetLoader(chunked, window_mode="grid")
    with pytest.raises(ValueError, match="window_mode must be"):
        WebDatasetLoader(chunked, window_ms=300, window_mode="random")
    with pytest.raises(ValueError, match="bin_size_ms=70 does not divide the window of 300 ms"):
        WebDatasetLoader(chunked, window_ms=300, decode={"spikes": {"bin_size_ms": 70}})
    overlapping = convert(tmp_path / "overlap", sessions[:1], overlap=0.5)
    with pytest.raises(DatasetError, match="no timeline"):
        WebDatasetLoader(overlapping, window_ms=300)
    state = WebDatasetLoader(chunked, window_ms=300).state_dict()
    for other in (WebDatasetLoader(chunked), WebDatasetLoader(chunked, window_ms=200),
                  WebDatasetLoader(chunked, window_ms=300, window_mode="grid")):
        with pytest.raises(ValueError, match="windows"):
            other.load_state_dict(state)


@pytest.mark.multiprocess
def test_tokens_of_windows_are_their_events(tmp_path, sessions):
    """SpikeTokens (varlen, vocabulary indices) over jittered windows, in workers, against the
    same windows' events read by a second loader with the same seed."""
    from neurocodec import SpikeTokens, Vocabulary

    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    vocabulary = Vocabulary.build(chunked)
    options = dict(window_ms=300, batch_size=6, seed=4, decode={"spikes": {"as": "events"}})
    tokens = create_webdataset_dataloader(chunked, num_workers=2, **options,
                                          collate_fn=SpikeTokens(mode="varlen", unit_index=vocabulary.unit_index))
    events = WebDatasetLoader(chunked, **options)
    samples = iter(events)
    count = 0
    for batch in tokens:
        starts = batch["spikes_cu_seqlens"].tolist()
        for b in range(len(starts) - 1):
            sample = next(samples)
            ev, session = sample["spikes"], sample["metadata"]["session"]
            lo, hi = starts[b], starts[b + 1]
            np.testing.assert_array_equal(batch["spikes_timestamps"][lo:hi].numpy(), ev.times.astype(np.float32))
            np.testing.assert_array_equal(batch["spikes_unit_index"][lo:hi].numpy(),
                                          vocabulary.unit_index(session)[ev.units])
            count += 1
    assert count == events.stream.epoch_samples(0) > 10


def test_random_access_windows_are_the_loaders(tmp_path, sessions):
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    grid = RandomAccessWebDataset(chunked, window_ms=300)
    loader = WebDatasetLoader(chunked, window_ms=300, shuffle=False)
    assert len(grid) == len(loader) == 23
    for i, sample in enumerate(loader):
        mine = grid[i]
        assert mine["__key__"] == sample["__key__"] and mine["metadata"]["window"]["slot"] == i
        assert torch.equal(mine["lfp"], sample["lfp"]) and torch.equal(mine["spikes"], sample["spikes"])
    assert grid[-1]["__key__"] == grid[22]["__key__"]
    with pytest.raises(IndexError, match="23 windows"):
        grid[23]
    jitter = RandomAccessWebDataset(chunked, window_ms=300, window_mode="jitter", seed=3, epoch=1)
    shuffled = WebDatasetLoader(chunked, window_ms=300, seed=3, epoch=1)
    by_slot = {s["metadata"]["window"]["slot"]: s["__key__"] for s in shuffled}
    assert [jitter[i]["__key__"] for i in range(len(jitter))] == [by_slot[i] for i in range(len(by_slot))]


def spike_field(codec) -> "FieldSpec":
    from neurocodec.format.manifest import FieldSpec

    return FieldSpec(name="spikes", modality="spikes", kind="array", codec=codec.get_config(), extension="bin",
                     plugin="spikes", plugin_version="0", dtype="<i4", shape=(50, None), max_raw_bytes=10**6,
                     max_stored_bytes=10**6, max_value_bytes=10**6)


def test_chunks_that_do_not_fit_together_are_refused_in_words():
    """Each field's own checks, for chunks a timeline puts side by side that differ (the loader
    first checks that the chunks are the timeline's; these catch what that cannot)."""
    from fractions import Fraction

    from neurocodec.plugin import SpikeEvents
    from neurocodec.plugin.codecs import CodecError
    from neurocodec.plugin.event_codecs import SpikeEventsCodec
    from neurocodec.plugin.windowing import WindowGrid, cut_rows

    with pytest.raises(ValueError, match=r"neighbouring chunks hold float32 rows of \(4,\) and float32 rows of \(2,\)"):
        cut_rows([np.zeros((10, 4), np.float32), np.zeros((10, 2), np.float32)], 5, 8, 10)
    with pytest.raises(ValueError, match="not 10 rows"):
        cut_rows([np.zeros((9, 4), np.float32)], 0, 5, 10)
    codec = SpikeEventsCodec(bins=50, bin_size_ms=10)
    field = spike_field(codec)
    windowed = codec.windowed(field, {}, WindowGrid(30, 50, Fraction(10)))
    three = windowed.decoder(codec.encode(SpikeEvents([0.1, 0.45], [0, 2], 3)))
    five = windowed.decoder(codec.encode(SpikeEvents([0.01], [4], 5)))
    other_clock = windowed.decoder(codec.encode(SpikeEvents([0.01], [1], 3, tick_hz=30000)))
    counts = windowed.cut([three, three], 40)  # [0.4, 0.7) s: 0.45 s of the first chunk, 0.1 s of the next
    assert counts.shape == (30, 3) and counts.sum() == 2 and counts[5, 2] == counts[20, 0] == 1
    with pytest.raises(CodecError, match="neighbouring chunks hold 3 and 5 units"):
        windowed.cut([three, five], 40)
    with pytest.raises(CodecError, match="stored at 1000000 and 30000 ticks/s"):
        windowed.cut([three, other_clock], 40)


def test_chunk_cache_holds_what_its_bytes_allow():
    from neurocodec.loader.windows import ChunkCache, _footprint

    buffer = np.zeros(1000, dtype=np.uint8)
    chunk = {"a": buffer[:10], "b": memoryview(buffer)[500:], "m": {"x": [buffer[3:4]]}}
    assert _footprint(chunk) == 1000  # views of one read count once
    cache = ChunkCache(limit=2500)
    for n in range(3):
        cache.put(n, {"x": np.zeros(1000, np.uint8)})
    assert cache.get(0) is None and cache.get(1) is not None and cache.used == 2000
    cache.put(3, {"x": np.zeros(1000, np.uint8)})  # 1 was used last: 2 goes
    assert cache.get(2) is None and cache.get(1) is not None and cache.get(3) is not None
    cache.put(9, {"x": np.zeros(5000, np.uint8)})  # larger than the whole cache: not kept
    assert cache.get(9) is None and cache.used == 2000


class Scribbler:
    """A transform that records the metadata it is given, then changes it in place."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        import copy

        self.seen.append(copy.deepcopy(sample["metadata"]))
        for rows in sample["metadata"]["intervals"].values():
            for row in rows:
                row["start_time"] = -1.0
        sample["metadata"]["source"]["path"] = "changed"
        return sample


def test_transforms_cannot_change_the_chunks_later_windows_read(tmp_path, sessions):
    """Windows of 0.1 s: five from every cached chunk, each changed by the transform before the
    next is cut from the same chunk; each still gets the metadata it would get alone."""
    chunked = convert(tmp_path / "chunks", sessions, chunk_seconds=0.5)
    plain = [s["metadata"] for s in WebDatasetLoader(chunked, window_ms=100, shuffle=False)]
    scribbler = Scribbler()
    changed = [s["metadata"] for s in WebDatasetLoader(chunked, window_ms=100, shuffle=False, transform=scribbler)]
    assert scribbler.seen == plain and all(m["source"]["path"] == "changed" for m in changed)
    assert sum(bool(rows) for m in plain for rows in m["intervals"].values()) > 10  # trials overlap windows



def test_writing_into_window_tensors_cannot_change_later_windows(tmp_path, sessions):
    """Windows of plain `.npy` chunks are views of the cached chunk until they become tensors:
    a training loop writing into the tensors it is handed writes into copies, so the next
    epoch, cut from the same cached chunks, reads the recording's values again."""
    chunked = convert(tmp_path / "chunks", sessions, codecs="npy", chunk_seconds=0.5)
    arrays = ("lfp", "spikes")
    loader = WebDatasetLoader(chunked, window_ms=100, shuffle=False)
    epochs = []
    for _ in range(2):
        epochs.append([])
        for sample in loader:
            epochs[-1].append([digest(sample[name]) for name in arrays])
            for name in arrays:
                sample[name].fill_(-1)
    assert epochs[0] == epochs[1] and len(epochs[0]) > 20
