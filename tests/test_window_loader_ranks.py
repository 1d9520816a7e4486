"""Load-time windows (issue 15, points 1 and 6) on gloo ranks, across worker counts, on S3, and
against bad arguments and a hostile timeline.

The dataset (tests/window_util.py): two simple sessions and one with a gap, converted in 0.5 s
chunks (16 chunks in 4 shards), read in jittered 370 ms windows (37 of 50 bins: windows cross
chunk and shard edges). The reference is the same loader in one process without workers; every
other configuration must hand out exactly its windows (keys, slots, values) in its order. The
seed is chosen, from the timeline, so that epochs 0 and 1 have different slot counts and no
epoch's tail makes a rank repeat a window (the documented remainder policy, tested elsewhere).
"""

from __future__ import annotations

import bisect
import json
import uuid
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
from loader_util import run_ranks
from storage_servers import BUCKET, moto_server, s3_options
from window_util import (
    WINDOW_BINS, WINDOW_MS, chunked_dataset, convert, epoch_records, flat, holed_session, records, run_epochs,
    simple_session, slot_counts,
)

from neurocodec import WebDatasetLoader, create_webdataset_dataloader
from neurocodec.errors import DatasetError, ShardError
from neurocodec.loader.lookahead import ShardLookahead
from neurocodec.storage import ShardCache

B, WORLD, EPOCHS = 3, 2, 3
STOP_TWO, STOP_ONE = 2, 3  # batches read before stopping: by each of 2 ranks, by 1 rank
RANK_MAIN = Path(__file__).parent / "window_rank_main.py"


def pick_seed(path: Path) -> int:
    """The first seed whose epochs 0 and 1 differ in slot count and whose epochs (and the rest of
    epoch 0 after STOP_ONE batches of one rank) leave no single window for two ranks."""
    step = B * WORLD
    for seed in range(1000):
        counts = slot_counts(path, seed, EPOCHS)
        if counts[0] != counts[1] and all(n % step != 1 for n in counts) \
                and (counts[0] - STOP_ONE * B) % step != 1:
            return seed
    raise AssertionError("no seed fits")  # pragma: no cover - 20 slots, phases spread over 37 bins


@pytest.fixture(scope="module")
def chunked(tmp_path_factory) -> Path:
    return chunked_dataset(tmp_path_factory.mktemp("windows") / "chunked")


@pytest.fixture(scope="module")
def seed(chunked) -> int:
    return pick_seed(chunked)


def windowed(path, seed: int, **kw):
    """The DataLoader every test compares: jittered 370 ms windows, batches of B."""
    return create_webdataset_dataloader(path, batch_size=B, seed=seed, window_ms=WINDOW_MS, **kw)


@pytest.fixture(scope="module")
def reference(chunked, seed) -> list[list[list[dict]]]:
    """Records per batch of epochs 0..EPOCHS-1, one process, no workers, world size 1."""
    loader = windowed(chunked, seed, num_workers=0)
    epochs = [epoch_records(loader) for _ in range(EPOCHS)]
    assert [len(flat(e)) for e in epochs] == slot_counts(chunked, seed, EPOCHS)
    for e, batches in enumerate(epochs):
        windows = flat(batches)
        assert sorted(r["slot"] for r in windows) == list(range(len(windows)))
        assert {r["epoch"] for r in windows} == {e}
    return epochs


# -- gloo ranks ---------------------------------------------------------------------------------

def launch(server, tmp: Path, **cfg) -> list[dict]:
    """Run WORLD rank processes of one gloo group (forked from `server`, the session's
    rank_server); their reports by rank."""
    return run_ranks(RANK_MAIN, cfg, WORLD, tmp / "report", timeout=240, server=server)


def stepped(runs: list[dict], expected: list[dict], whole: bool = True) -> None:
    """Every rank took the same number of batches (also by all_reduce), no window twice, and the
    ranks' batches step by step are `expected` in order (so also as a multiset)."""
    counts = {run["count"] for run in runs}
    assert len(counts) == 1, counts
    count = counts.pop()
    assert all(run["max"] == run["min"] == count for run in runs)
    if whole:
        assert all(run["len"] == count for run in runs)
    got = [rec for t in range(count) for run in runs for rec in run["batches"][t]]
    assert Counter(r["key"] for r in got) == Counter(r["key"] for r in expected)
    assert len({r["slot"] for r in got}) == len(got), "a window handed out twice"
    assert got == expected


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_gloo_ranks_share_jittered_epochs_and_resume_across_world_sizes(rank_server, chunked, seed, reference,
                                                                       tmp_path):
    # one rank stopped after STOP_ONE batches: its state goes to the group of two
    single = windowed(chunked, seed, num_workers=0)
    first = [rec for _, batch in zip(range(STOP_ONE), single) for rec in records(batch)]
    assert first == flat(reference[0])[:STOP_ONE * B]
    (tmp_path / "one.json").write_text(json.dumps(single.state_dict()))

    reports = launch(rank_server, tmp_path, path=str(chunked), batch=B, seed=seed, window_ms=WINDOW_MS, epochs=EPOCHS,
                     workers=2, stop=STOP_TWO, stop_workers=1, state_out=str(tmp_path / "two"),
                     resume_from=str(tmp_path / "one.json"))
    assert [r["rank"] for r in reports] == list(range(WORLD))
    for e in range(EPOCHS):
        stepped([r["epochs"][e] for r in reports], flat(reference[e]))

    # both ranks stopped after STOP_TWO batches, resumed by one process (world size 1)
    stepped([r["stopped"] for r in reports], flat(reference[0])[:STOP_TWO * B * WORLD], whole=False)
    states = [json.loads((tmp_path / f"two.{r}").read_text()) for r in range(WORLD)]
    assert states[0] == states[1] == reports[0]["state"]
    assert (states[0]["epoch"], states[0]["position"]) == (0, STOP_TWO * B * WORLD)
    assert states[0]["windows"].startswith(f"jitter:{WINDOW_BINS}:")
    alone = windowed(chunked, seed, num_workers=2)
    alone.load_state_dict(states[0])
    assert run_epochs(alone, 2) == flat(reference[0])[STOP_TWO * B * WORLD:] + flat(reference[1])

    # one rank's state resumed by two: the rest of epoch 0, then the whole of epoch 1
    stepped([r["resumed"] for r in reports], flat(reference[0])[STOP_ONE * B:], whole=False)
    stepped([r["next"] for r in reports], flat(reference[1]))


# -- worker counts ------------------------------------------------------------------------------

@pytest.mark.multiprocess
@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")  # on 2-core machines
@pytest.mark.parametrize("before, after", [(0, 2), (2, 3)])
def test_resume_after_every_batch_with_another_worker_count(chunked, seed, reference, before, after):
    expected = flat(reference[0]) + flat(reference[1])
    assert len(flat(reference[0])) != len(flat(reference[1]))  # the epochs differ in slot count
    loader = windowed(chunked, seed, num_workers=before)
    got, states = [], [(0, loader.state_dict())]
    while loader.epoch < 2:
        for batch in loader:
            got += records(batch)
            states.append((len(got), loader.state_dict()))  # taken with the workers running ahead
        states.append((len(got), loader.state_dict()))  # the epoch's end, as the next epoch's start
    assert got == expected
    assert len(states) == len(reference[0]) + len(reference[1]) + 3
    for done, state in states[:-1]:
        resumed = windowed(chunked, seed, num_workers=after)
        resumed.load_state_dict(json.loads(json.dumps(state)))
        assert got[:done] + run_epochs(resumed, 2) == expected, (done, state)


# -- S3 on loopback -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as ep:
        yield ep


@pytest.fixture(scope="module")
def remote(endpoint, chunked) -> str:
    """The chunked dataset uploaded file by file (the manifest last)."""
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/ds"
    fs = fsspec.filesystem("s3", **s3_options(endpoint))
    files = [f for f in chunked.rglob("*") if f.is_file()]
    for f in sorted(files, key=lambda f: f.name == "dataset_metadata.json"):
        fs.put_file(str(f), f"{url.removeprefix('s3://')}/{f.relative_to(chunked).as_posix()}")
    return url


@pytest.mark.multiprocess  # with 0 workers too: the resumed loader has 2
@pytest.mark.parametrize("workers", [0, 2])
def test_remote_windows_equal_local(chunked, remote, endpoint, seed, reference, tmp_path, workers):
    options = s3_options(endpoint)
    loader = windowed(remote, seed, num_workers=workers, storage_options=options,
                      cache=ShardCache(tmp_path / "cache", "1G"))
    assert [epoch_records(loader) for _ in range(2)] == reference[:2]
    # resumed from a remote state, with a fresh cache: the same rest of the epoch
    loader = windowed(remote, seed, num_workers=workers, storage_options=options,
                      cache=ShardCache(tmp_path / "cache2", "1G"))
    head = [rec for _, batch in zip(range(2), loader) for rec in records(batch)]
    again = windowed(remote, seed, num_workers=2 if workers == 0 else 0, storage_options=options,
                     cache=ShardCache(tmp_path / "cache3", "1G"))
    again.load_state_dict(loader.state_dict())
    assert head + run_epochs(again, 1) == flat(reference[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_lookahead_names_the_shards_the_windows_read(chunked, seed, reference, workers):
    """The prefetch wish list of a remote loader maps each batch's slots to the shards of the
    chunks those windows read (as their metadata names them), worker by worker, epoch by epoch."""
    loader = windowed(chunked, seed, num_workers=0)
    stream = loader.stream
    starts = [s.first_sample for s in stream.manifest.shards]
    for epoch in range(2):
        loader.set_epoch(epoch)
        order, plan = stream.order(), stream.plan()
        for worker in range(workers):
            stored = stream._lookahead(order, plan, worker, workers).stored
            ahead = ShardLookahead(order, plan, worker, workers, np.array(starts), samples=B, stored=stored)
            for k in range(worker, len(plan), workers):
                read = {bisect.bisect_right(starts, c) - 1 for r in reference[epoch][k] for c in r["chunks"]}
                wish = ahead.shards_from(k)
                assert sorted(wish) == sorted(read), (epoch, worker, k)


# -- bad arguments, mismatched states, a hostile timeline ----------------------------------------

LOADERS = {
    "WebDatasetLoader": lambda path, **kw: WebDatasetLoader(path, **kw),
    "create_webdataset_dataloader": lambda path, **kw: create_webdataset_dataloader(path, num_workers=0, **kw),
}


@pytest.mark.parametrize("make", LOADERS.values(), ids=LOADERS.keys())
def test_dataset_without_timeline_says_so(tmp_path, make):
    path = simple_session(tmp_path / "a.nwb", seconds=1.0)
    convert(tmp_path / "overlap", [path], sequence_length=50, overlap=0.5)
    for kw in ({"window_ms": WINDOW_MS}, {"window_bins": 10, "window_mode": "grid"}):
        with pytest.raises(DatasetError, match="the dataset has no timeline"):
            make(tmp_path / "overlap", **kw)
    assert len(make(tmp_path / "overlap")) > 0  # stored samples still read


@pytest.mark.parametrize("make", LOADERS.values(), ids=LOADERS.keys())
@pytest.mark.parametrize("kw, words", [
    ({"window_ms": 375}, r"window_ms=375 is not a whole number of the dataset's 10 ms bins"),
    ({"window_ms": 0.5}, r"window_ms=0.5 is not a whole number"),
    ({"window_ms": 600}, r"a window of 60 bins is longer than the dataset's chunks \(50 bins, 0.5 s\)"),
    ({"window_bins": 51}, r"a window of 51 bins is longer than the dataset's chunks"),
    ({"window_ms": -10}, r"window_ms must be a positive number of milliseconds, got -10"),
    ({"window_ms": float("nan")}, r"window_ms must be a positive number of milliseconds, got nan"),
    ({"window_ms": True}, r"window_ms must be a positive number of milliseconds, got True"),
    ({"window_ms": "370"}, r"window_ms must be a positive number of milliseconds, got '370'"),
    ({"window_bins": 0}, r"window_bins must be a positive integer, got 0"),
    ({"window_bins": 2.0}, r"window_bins must be a positive integer, got 2.0"),
    ({"window_ms": 370, "window_bins": 37}, r"give window_ms= or window_bins=, not both"),
    ({"window_mode": "grid"}, r"window_mode applies to load-time windows: give window_ms= or window_bins="),
    ({"window_ms": 370, "window_mode": "random"}, r"window_mode must be one of \('grid', 'jitter'\), got 'random'"),
])
def test_bad_window_arguments_in_their_own_words(chunked, make, kw, words):
    with pytest.raises(ValueError, match=words):
        make(chunked, **kw)


@pytest.mark.parametrize("saved, restored", [
    ({"window_ms": WINDOW_MS}, {}),
    ({}, {"window_ms": WINDOW_MS}),
    ({"window_ms": WINDOW_MS}, {"window_ms": 360}),
    ({"window_ms": WINDOW_MS}, {"window_bins": 36}),
    ({"window_ms": WINDOW_MS}, {"window_ms": WINDOW_MS, "window_mode": "grid"}),
    ({"window_ms": WINDOW_MS, "window_mode": "grid"}, {"window_ms": WINDOW_MS, "window_mode": "jitter"}),
])
def test_state_of_other_windows_refused(chunked, saved, restored):
    loader = create_webdataset_dataloader(chunked, batch_size=B, num_workers=0, **saved)
    next(iter(loader))
    state = loader.state_dict()
    other = create_webdataset_dataloader(chunked, batch_size=B, num_workers=0, **restored)
    before = other.state_dict()
    with pytest.raises(ValueError, match="windows: state"):
        other.load_state_dict(state)
    assert other.state_dict() == before  # nothing restored
    same = create_webdataset_dataloader(chunked, batch_size=B, num_workers=0, **saved)
    same.load_state_dict(state)  # the loader it came from takes it
    assert same.state_dict() == state


def spliced(tmp_path: Path, second) -> Path:
    """Two sessions whose timeline a hostile manifest rewrites as one stretch: the second
    session's two chunks listed under the first session, right after its two (touching)."""
    files = [simple_session(tmp_path / "a.nwb", seconds=1.0, seed=0), second(tmp_path / "b.nwb")]
    doc = convert(tmp_path / "out", files, chunk_seconds=0.5, shard_size=4, coverage="all")
    sessions = doc["extra"]["timeline"]["sessions"]
    first, other = sessions
    assert (sessions[first]["first_sample"], sessions[other]["first_sample"]) == (0, 2)
    sessions[first]["chunks"] += [[1.0, 1.5], [1.5, 2.0]]
    del sessions[other]
    (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").write_text(json.dumps(doc))  # no checksum over it
    return tmp_path / "out"


SPLICES = {  # the first field whose chunks disagree: 3 vs 5 units, 4 vs 2 LFP channels
    "spikes": lambda p: simple_session(p, seconds=1.0, seed=1, units=5),
    "lfp": lambda p: holed_session(p, hole=(5.0, 6.0), seconds=1.0),
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("field", SPLICES)
def test_window_across_spliced_sessions_is_a_shard_error(tmp_path, field):
    path = spliced(tmp_path, SPLICES[field])
    # grid windows of 37 bins from 0: window 2 covers bins 74..111, chunk 1 (session a) and 2 (b)
    kw = dict(window_ms=WINDOW_MS, window_mode="grid", shuffle=False)
    for loader in (WebDatasetLoader(path, **kw),
                   create_webdataset_dataloader(path, batch_size=1, num_workers=2, **kw)):
        with pytest.raises(ShardError) as err:
            list(loader)
        message = str(err.value)
        # the stored chunk is another session's: caught before any field is cut (the fields'
        # own checks, units and channels, are in test_window_loader.py)
        assert "timeline and shards do not match" in message and "stored samples [1, 2]" in message, message
        assert "window 2 of epoch 0" in message and str(path) in message, message
    for loader in (WebDatasetLoader(path, on_error="skip", **kw),
                   create_webdataset_dataloader(path, batch_size=1, num_workers=2, on_error="skip", **kw)):
        keys = [s["__key__"] for s in loader]
        if not isinstance(loader, WebDatasetLoader):
            keys = [k for batch in keys for k in batch]
        # every window reading the second session's chunks (listed as the first's) is refused
        assert keys == ["sample_000000001+0", "sample_000000001+37"]
        state = loader.state_dict()
        assert (state["epoch"], state["skipped"], state["total_samples"]) == (1, 3, 5)
