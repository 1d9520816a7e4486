"""Spike tokens (neurocodec/plugin/tokens.py): `SpikeTokens` turns a spike-events field into
the token tensors of POYO-style models, padded to a multiple of 8 or chained for varlen
attention, with units mapped into a vocabulary.

Datasets are real shards written by `WebDatasetWriter` (two sessions on different clocks with
different unit counts, empty windows included), or converted from NWB files built with pynwb
(tests/nwbfiles.py), and read through real DataLoader workers. The expected tokens come from
numpy on the ticks the test drew or the spike times h5py reads from the NWB file, and from the
events read back with `Dataset(..., decode={"spikes": {"as": "events"}})`.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import nwbfiles as nf
from neurocodec import NWBToWebDatasetConverter
from neurocodec import Dataset, SpikeTokens, WebDatasetLoader, WebDatasetWriter, collate_webdataset
from neurocodec import create_webdataset_dataloader
from neurocodec.plugin import TOKEN_SPIKE, SpikeEvents

BINS, BIN_MS = 50, 20
EVENTS = {"id": "spike-events", "bins": BINS, "bin_size_ms": BIN_MS}
SESSIONS = {"s4": (4, 30_000), "s7": (7, 20_000)}  # session -> (units, clock in Hz)
EMPTY = range(4, 8)  # windows 4..7 have no spikes: with shuffle=False, batch 1 of 4 is empty
COUNT = 22
VOCAB = {"s4": np.array([10, 11, 12, 13]), "s7": np.array([20, 3, 26, 0, 24, 25, 21])}
EVENTS_DECODE = {"spikes": {"as": "events"}}


def draw(seed: int = 7) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(session, ticks, units) per window, ticks sorted by (tick, unit): ties, both window ends."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(COUNT):
        session = "s4" if i % 3 else "s7"
        units, hz = SESSIONS[session]
        window = hz * BINS * BIN_MS // 1000
        n = 0 if i in EMPTY else int(rng.integers(1, 60))
        ticks = rng.integers(0, window, n)
        ticks[:3] = [0, window - 1, window // 2][:n]
        unit = rng.integers(0, units, n)
        order = np.lexsort((unit, ticks))
        out.append((session, ticks[order], unit[order]))
    return out


@pytest.fixture(scope="module")
def drawn():
    return draw()


@pytest.fixture(scope="module")
def path(tmp_path_factory, drawn):
    out = tmp_path_factory.mktemp("tokens") / "ds"
    with WebDatasetWriter(out, 5, codecs={"spikes": EVENTS}, fsync=False) as writer:
        for i, (session, ticks, unit) in enumerate(drawn):
            units, hz = SESSIONS[session]
            writer.write_sample({"spikes": SpikeEvents.from_ticks(ticks, unit, units, hz),
                                 "behavior": np.full((BINS, 2), i, np.float32)},
                                metadata={"session": session, "index": i, "start_time": float(i)})
    return out


@pytest.fixture(scope="module")
def events(path):
    """The events of each window as `Dataset` reads them, by sample index."""
    with Dataset(path, decode=EVENTS_DECODE) as ds:
        return {ds[i]["metadata"]["index"]: ds[i]["spikes"] for i in range(len(ds))}


def expected(events: SpikeEvents, session: str, vocab=None) -> tuple[np.ndarray, np.ndarray]:
    """(unit index, float32 time) of each token of one window, by numpy."""
    units = events.units if vocab is None else vocab[session][events.units]
    return units, events.times.astype(np.float32)


def tokens_of(batch: dict, mode: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(unit index, time, type) per sample, cut out of a batch, checking its layout first."""
    size = len(batch["metadata"])
    units, times, types, mask = (batch[f"spikes_{k}"] for k in ("unit_index", "timestamps", "token_type", "mask"))
    assert (units.dtype, times.dtype, types.dtype, mask.dtype) == (torch.int64, torch.float32, torch.int64, torch.bool)
    if mode == "pad8":
        n = mask.sum(1).numpy()
        width = max(8, -(-int(n.max()) // 8) * 8)
        assert units.shape == times.shape == types.shape == mask.shape == (size, width)
        assert all(mask[b, :n[b]].all() and not mask[b, n[b]:].any() for b in range(size))
        pads = ~mask
        assert not units[pads].any() and not times[pads].any() and not types[pads].any()
        return [(units[b, :n[b]].numpy(), times[b, :n[b]].numpy(), types[b, :n[b]].numpy()) for b in range(size)]
    cu, index = batch["spikes_cu_seqlens"], batch["spikes_batch_index"]
    total = len(units)
    assert cu.dtype == torch.int32 and cu.shape == (size + 1,) and cu[0] == 0 and cu[-1] == total
    assert units.shape == times.shape == types.shape == mask.shape == index.shape == (total,) and mask.all()
    lengths = np.diff(cu.numpy())
    assert (lengths >= 0).all() and batch["spikes_max_seqlen"] == int(lengths.max(initial=0))
    assert index.dtype == torch.int64 and np.array_equal(index.numpy(), np.repeat(np.arange(size), lengths))
    return [(units[a:b].numpy(), times[a:b].numpy(), types[a:b].numpy()) for a, b in zip(cu[:-1], cu[1:])]


def check_batch(batch: dict, mode: str, events: dict, drawn: list, vocab=None) -> list[int]:
    """Every sample's tokens equal its events (and the drawn ticks); the other fields are as
    the loader collates them. Returns the sample indices of the batch."""
    indices = [m["index"] for m in batch["metadata"]]
    for i, (units, times, types) in zip(indices, tokens_of(batch, mode)):
        session, ticks, unit = drawn[i]
        want_units, want_times = expected(events[i], session, vocab)
        np.testing.assert_array_equal(units, want_units)
        np.testing.assert_array_equal(times, want_times)
        assert (types == TOKEN_SPIKE).all()
        # Independently of neurocodec: the drawn ticks in seconds, rounded to nearest float32.
        seconds = ticks / SESSIONS[session][1]
        np.testing.assert_array_equal(times, seconds.astype(np.float32))
        assert np.all(np.abs(times.astype(np.float64) - seconds) <= np.spacing(times) / 2)
        np.testing.assert_array_equal(units, unit if vocab is None else vocab[session][unit])
    np.testing.assert_array_equal(batch["behavior"].numpy(),
                                  np.stack([np.full((BINS, 2), i, np.float32) for i in indices]))
    assert "spikes" not in batch
    return indices


def run(loader) -> list[dict]:
    return list(loader)


@pytest.mark.parametrize("mode", ["pad8", "varlen"])
def test_tokens_equal_the_events_of_each_sample(path, drawn, events, mode):
    loader = create_webdataset_dataloader(path, batch_size=4, num_workers=0, seed=3, decode=EVENTS_DECODE,
                                          collate_fn=SpikeTokens(mode=mode))
    seen = [i for batch in loader for i in check_batch(batch, mode, events, drawn)]
    assert sorted(seen) == list(range(COUNT))


@pytest.mark.parametrize("mode", ["pad8", "varlen"])
def test_empty_windows_through_webdataset_loader_and_a_plain_collate(path, drawn, events, mode):
    loader = WebDatasetLoader(path, shuffle=False, batch_size=4, decode=EVENTS_DECODE)
    batches = list(torch.utils.data.DataLoader(loader, batch_size=4, collate_fn=SpikeTokens(mode=mode)))
    assert [i for b in batches for i in check_batch(b, mode, events, drawn)] == list(range(COUNT))
    empty = batches[1]
    assert [m["index"] for m in empty["metadata"]] == list(EMPTY)
    if mode == "pad8":
        assert empty["spikes_mask"].shape == (4, 8) and not empty["spikes_mask"].any()
    else:
        assert empty["spikes_unit_index"].shape == (0,) and empty["spikes_max_seqlen"] == 0
        assert empty["spikes_cu_seqlens"].tolist() == [0] * 5
    # Sessions of 4 and 7 units share batches; a batch mixing an empty window with others:
    mixed = SpikeTokens(mode=mode)(_samples(path, [3, 4, 8]))
    assert [len(u) for u, _, _ in tokens_of(mixed, mode)] == [len(events[i]) for i in (3, 4, 8)]


def _samples(path, indices) -> list[dict]:
    with Dataset(path, decode=EVENTS_DECODE) as ds:
        by_index = {ds[k]["metadata"]["index"]: k for k in range(len(ds))}
        return [ds[by_index[i]] for i in indices]


@pytest.mark.parametrize("mode", ["pad8", "varlen"])
def test_unit_index_maps_units_into_the_vocabulary(path, drawn, events, mode):
    as_dict = create_webdataset_dataloader(path, batch_size=5, num_workers=0, seed=1, decode=EVENTS_DECODE,
                                           collate_fn=SpikeTokens(mode=mode, unit_index=VOCAB))
    calls = []

    def lookup(session: str) -> np.ndarray:
        calls.append(session)
        return VOCAB[session]

    as_function = create_webdataset_dataloader(path, batch_size=5, num_workers=0, seed=1, decode=EVENTS_DECODE,
                                               collate_fn=SpikeTokens(mode=mode, unit_index=lookup))
    used = set()
    for a, b in zip(run(as_dict), run(as_function), strict=True):
        check_batch(a, mode, events, drawn, VOCAB)
        assert_same_batches([a], [b])
        used |= set(a["spikes_unit_index"][a["spikes_mask"]].tolist())
    assert used == {int(u) for v in VOCAB.values() for u in v}
    assert set(calls) == set(SESSIONS) and len(calls) <= 2 * 5  # looked up once per session and batch


def test_unit_index_errors_name_the_session_and_sample(path):
    samples = _samples(path, [0, 1])
    with pytest.raises(ValueError, match=r"no entry for session 's7'.*sample_"):
        SpikeTokens(unit_index={"s4": VOCAB["s4"]})(samples)
    def vocabulary(session: str) -> np.ndarray:
        raise KeyError(f"session {session!r} is in no dataset of this vocabulary; add it")

    with pytest.raises(ValueError, match=r"no entry for session 's7' \(sample .*\): session 's7' is in no dataset"):
        SpikeTokens(unit_index=vocabulary)(samples)
    with pytest.raises(ValueError, match=r"gives 3 units for session 's4'; field 'spikes' of sample .* has 4"):
        SpikeTokens(unit_index={"s4": np.arange(3), "s7": VOCAB["s7"]})(samples)
    with pytest.raises(ValueError, match=r"negative indices"):
        SpikeTokens(unit_index={"s4": np.array([0, -1, 2, 3]), "s7": VOCAB["s7"]})(samples)
    with pytest.raises(ValueError, match=r"1-D integer array"):
        SpikeTokens(unit_index=lambda s: np.zeros(7, np.float32))(samples)
    with pytest.raises(ValueError, match=r"no metadata\['session'\]"):
        SpikeTokens(unit_index=VOCAB)([{k: v for k, v in s.items() if k != "metadata"} for s in samples])


def test_counts_instead_of_events_and_bad_modes_are_refused_in_words(path):
    with Dataset(path) as ds:
        counts = [ds[0], ds[1]]
    with pytest.raises(TypeError, match=r"ndarray, not SpikeEvents; read it as events: decode=\{'spikes'"):
        SpikeTokens()(counts)
    with pytest.raises(ValueError, match=r"no field 'units'"):
        SpikeTokens(field="units")(_samples(path, [0]))
    with pytest.raises(ValueError, match=r"mode"):
        SpikeTokens(mode="pad16")


def test_other_fields_follow_the_modality_rules_with_fields(path):
    samples = _samples(path, [0, 1, 2])
    with Dataset(path, decode=EVENTS_DECODE) as ds:
        fields = ds.fields
    got = SpikeTokens(fields=fields)(samples)
    want = collate_webdataset([{k: v for k, v in s.items() if k != "spikes"} for s in samples],
                              [f for f in fields if f.name != "spikes"])
    assert set(got) - set(want) == {f"spikes_{k}" for k in ("unit_index", "timestamps", "token_type", "mask")}
    for key, value in want.items():
        assert torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
    # Through the DataLoader: every key but the spikes is the batch the loader collates itself.
    kw = dict(batch_size=4, num_workers=0, seed=9, decode=EVENTS_DECODE)
    plain = create_webdataset_dataloader(path, **kw)
    tokens = create_webdataset_dataloader(path, collate_fn=SpikeTokens(fields=fields), **kw)
    for a, b in zip(plain, tokens, strict=True):
        assert all(isinstance(e, SpikeEvents) for e in a.pop("spikes"))
        assert_same_batches([a], [{k: v for k, v in b.items() if not k.startswith("spikes_")}])


def test_counts_and_tokens_come_from_the_same_dataset_opened_twice(path, drawn):
    """Two loaders with one seed read the same windows in the same order: one as counts
    (the default decode), one as tokens; binning the tokens gives the counts."""
    kw = dict(batch_size=4, num_workers=0, seed=5)
    counts = create_webdataset_dataloader(path, **kw)
    tokens = create_webdataset_dataloader(path, decode=EVENTS_DECODE, collate_fn=SpikeTokens(mode="varlen"), **kw)
    for c, t in zip(counts, tokens, strict=True):
        assert c["__key__"] == t["__key__"]
        for b, (units, times, _) in enumerate(tokens_of(t, "varlen")):
            session = t["metadata"][b]["session"]
            unit_count, hz = SESSIONS[session]
            ticks = np.rint(times.astype(np.float64) * hz).astype(np.int64)  # exact: error << half a tick
            binned = np.zeros((BINS, unit_count), np.int64)
            np.add.at(binned, (ticks // (hz * BIN_MS // 1000), units), 1)
            np.testing.assert_array_equal(c["spikes"][b, :, :unit_count].numpy(), binned)
            assert c["spikes_mask"][b].sum() == unit_count


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["pad8", "varlen"])
@pytest.mark.parametrize("shuffle", [True, False])  # unshuffled, a worker builds the batch of empty windows
def test_two_workers_give_the_batches_of_zero_workers(path, drawn, events, mode, shuffle):
    def loader(workers: int):
        return create_webdataset_dataloader(path, batch_size=4, num_workers=workers, seed=11, shuffle=shuffle,
                                            decode=EVENTS_DECODE,
                                            collate_fn=SpikeTokens(mode=mode, unit_index=VOCAB))
    two = run(loader(2))
    assert_same_batches(two, run(loader(0)))
    assert sorted(i for b in two for i in check_batch(b, mode, events, drawn, VOCAB)) == list(range(COUNT))


@pytest.mark.multiprocess
def test_resume_after_a_state_dict_gives_the_same_tokens(path):
    def loader(workers: int):
        return create_webdataset_dataloader(path, batch_size=3, num_workers=workers, seed=2,
                                            decode=EVENTS_DECODE,
                                            collate_fn=SpikeTokens(mode="varlen", unit_index=VOCAB))
    reference = run(loader(0))
    first = loader(2)
    it = iter(first)
    head = [next(it) for _ in range(3)]
    state = first.state_dict()
    del it
    resumed = loader(1)
    resumed.load_state_dict(state)
    assert_same_batches(head + run(resumed), reference)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Two NWB sessions (3 and 5 units, the second starting at 1.5 s) converted with the
    converter's defaults (spikes stored as events)."""
    root = tmp_path_factory.mktemp("nwb")
    files = [nf.simple_session(root / "a.nwb", units=3, seed=1), nf.simple_session(root / "b.nwb", units=5, seed=2,
                                                                                   t0=1.5)]
    converter = NWBToWebDatasetConverter(root / "out", 64, ["spikes"], 10.0, 50, 0.0, progress=False, fsync=False)
    converter.convert_nwb_files([str(f) for f in files])
    converter.finalize()
    return root / "out"


def nwb_spikes(path) -> dict[int, np.ndarray]:
    """Unit id -> spike times, read from the NWB file with h5py."""
    with h5py.File(path, "r") as f:
        times, ends, ids = f["units/spike_times"][:], f["units/spike_times_index"][:], f["units/id"][:]
    return {int(u): times[a:b] for u, a, b in zip(ids, np.concatenate([[0], ends[:-1]]), ends)}


@pytest.mark.parametrize("mode", ["pad8", "varlen"])
def test_converted_nwb_sessions_as_tokens_in_a_global_vocabulary(converted, mode):
    """Units of every session get one id in a global vocabulary of `session/unit` strings,
    built from the manifest's session records; each window's tokens are the spikes the NWB file
    holds in it (read with h5py), as vocabulary ids."""
    with Dataset(converted, decode=EVENTS_DECODE) as ds:
        sessions = ds.manifest.extra["sessions"]
        samples = [ds[i] for i in range(len(ds))]
    events = {(s["metadata"]["window_index"], s["metadata"]["session"]): s["spikes"] for s in samples}
    names = {key: [f"{s['session_id']}/{u}" for u in s["ids"]["spikes"]["unit_ids"]] for key, s in sessions.items()}
    vocabulary = {name: i for i, name in enumerate(sorted(n for v in names.values() for n in v))}
    unit_index = {key: np.array([vocabulary[n] for n in v]) for key, v in names.items()}
    loader = create_webdataset_dataloader(converted, batch_size=6, num_workers=0, seed=4, decode=EVENTS_DECODE,
                                          collate_fn=SpikeTokens(mode=mode, unit_index=unit_index))
    files = {key: nwb_spikes(s["source"]["path"]) for key, s in sessions.items()}
    windows = 0
    for batch in loader:
        for meta, (units, times, _) in zip(batch["metadata"], tokens_of(batch, mode)):
            record = sessions[meta["session"]]
            hz, start, stop = record["series"]["spikes"]["tick_hz"], meta["start_time"], meta["stop_time"]
            want = []
            for unit_id, spikes in files[meta["session"]].items():
                inside = spikes[(spikes >= start) & (spikes < stop)]
                want += [(t - start, vocabulary[f"{record['session_id']}/{unit_id}"]) for t in inside]
            want.sort()
            np.testing.assert_array_equal(units, [u for _, u in want])
            # The converter stores each time as a whole tick of tick_hz (plugins/nwb_spike_ticks.py).
            np.testing.assert_allclose(times, [t for t, _ in want], rtol=0, atol=1 / hz + 2**-24)
            np.testing.assert_array_equal(times, events[meta["window_index"], meta["session"]].times.astype(np.float32))
            windows += 1
    assert windows == 20 * len(sessions)  # 10 s sessions in 0.5 s windows
