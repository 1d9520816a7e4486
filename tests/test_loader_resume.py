"""Exact resume (issue 3, point 4): state after any number of consumed samples or batches,
restored into a new loader with other workers or world size, continues the uninterrupted stream."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loader_util import DatasetCache, batch_ids, flat_ids, sample_id, shard_sizes

from neurocodec import (
    EpochOrder,
    ResumableWebDatasetLoader,
    WebDatasetLoader,
    create_webdataset_dataloader,
)
from neurocodec.dataset.reader import ShardReader
from neurocodec.loader import order as order_module
from neurocodec.loader.plan import StepPlan

REAL = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STATE_KEYS = {"version", "order_version", "epoch", "position", "seed", "shuffle", "buffer_size", "chunk_size",
              "total_samples", "skipped"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> DatasetCache:
    return DatasetCache(tmp_path_factory.mktemp("resume"))


def roundtrip(state: dict) -> dict:
    """The state through JSON, after checking it is small and holds only settings and counters."""
    text = json.dumps(state)
    assert set(state) == STATE_KEYS
    assert all(type(v) in (int, bool) for v in state.values()), state
    assert len(text) < 300
    back = json.loads(text)
    assert back == state
    return back


def rank_stream(path, order_kw, *, rank, world, start_state=None):
    loader = WebDatasetLoader(path, rank=rank, world_size=world, **order_kw)
    if start_state is not None:
        loader.set_state(start_state)
    return [sample_id(s) for s in loader]


# --------------------------------------------------------------------------- sample level


@REAL
@given(n=st.integers(1, 80), shard_size=st.integers(1, 25), seed=st.integers(0, 10**6),
       buffer=st.integers(1, 40), shuffle=st.booleans(), data=st.data())
def test_sample_level_resume_is_exact(cache, n, shard_size, seed, buffer, shuffle, data):
    path = cache.get(n, shard_size)
    kw = dict(seed=seed, buffer_size=buffer, shuffle=shuffle)
    reference = [sample_id(s) for s in WebDatasetLoader(path, **kw)]
    k = data.draw(st.integers(0, n), label="stop point")
    batch_size = data.draw(st.integers(1, 5), label="batch size of the first loader")
    first = WebDatasetLoader(path, batch_size=batch_size, **kw)
    it = iter(first)
    assert [sample_id(s) for s in islice(it, k)] == reference[:k]
    state = roundtrip(first.get_state())
    assert (state["epoch"], state["position"]) == (0, k)
    # A new loader (other batch size) continues exactly; stopped after the epoch's last sample
    # (k == n, the iterator not exhausted), with the next epoch.
    second = WebDatasetLoader(path, batch_size=data.draw(st.integers(1, 5)), **kw)
    second.set_state(state)
    rest = [sample_id(s) for s in second]
    assert rest == (reference[k:] if k < n else [sample_id(s) for s in WebDatasetLoader(path, epoch=1, **kw)])
    assert second.get_state()["epoch"] == (1 if k < n else 2) and second.get_state()["position"] == 0


@REAL
@given(n=st.integers(1, 70), shard_size=st.integers(1, 20), seed=st.integers(0, 99),
       world=st.integers(1, 4), new_world=st.integers(1, 4), data=st.data())
def test_resume_with_another_world_size_covers_exactly_the_unseen(cache, n, shard_size, seed, world,
                                                                  new_world, data):
    path = cache.get(n, shard_size)
    kw = dict(seed=seed, buffer_size=16)
    order = EpochOrder(shard_sizes(n, shard_size), seed=seed, buffer_size=16).ids(0, n).tolist()
    loaders = [WebDatasetLoader(path, rank=r, world_size=world, **kw) for r in range(world)]
    steps = data.draw(st.integers(0, len(StepPlan(0, n, 1, world, 0))), label="samples per rank")
    iters = [iter(x) for x in loaders]
    seen = [sample_id(next(it)) for _ in range(steps) for it in iters]  # in global step order
    states = [roundtrip(x.get_state()) for x in loaders]
    assert len({json.dumps(s) for s in states}) == 1, "every rank reports the same state"
    p = states[0]["position"]
    if steps < len(StepPlan(0, n, 1, world, 0)):
        assert p == steps * world and seen == order[:p]
    else:  # stopped after the epoch's last sample: a resume reads the next epoch
        assert (states[0]["epoch"], p) == (0, n)
        order = EpochOrder(shard_sizes(n, shard_size), seed=seed, buffer_size=16, epoch=1).ids(0, n).tolist()
        p = 0
    rest = [rank_stream(path, kw, rank=r, world=new_world, start_state=states[0]) for r in range(new_world)]
    # Each new rank's stream is exactly its stripe of the remaining order.
    for r, got in enumerate(rest):
        plan = StepPlan(start=p, total=n, batch_size=1, world_size=new_world, rank=r)
        assert got == [order[int(q)] for k in range(len(plan)) for q in plan.positions(k)]
    counts = Counter(i for got in rest for i in got)
    assert set(counts) == set(order[p:])
    remaining = n - p
    if remaining % new_world == 0 or remaining % new_world >= new_world:  # no tail repeats
        assert sum(counts.values()) == remaining
    assert sum(counts.values()) - len(counts) <= new_world - 1


# --------------------------------------------------------------------------- through DataLoader


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "n,shard_size,b,world,k,workers,new_workers,new_world,new_b",
    [
        (53, 7, 4, 1, 5, 2, 0, 1, 4),
        (53, 7, 4, 1, 3, 0, 2, 1, 3),   # other batch size too: W=1 stream is flat
        (63, 10, 3, 2, 4, 2, 1, 3, 3),  # 2 ranks -> 3 ranks (39 left: 39 % 9 = 3, no repeats)
        (40, 40, 5, 1, 7, 2, 2, 1, 5),  # one shard, 2 workers
    ],
)
def test_dataloader_state_resume_with_other_workers_and_ranks(cache, n, shard_size, b, world, k, workers,
                                                              new_workers, new_world, new_b):
    path = cache.get(n, shard_size)
    kw = dict(buffer_size=16, seed=11)
    order = EpochOrder(shard_sizes(n, shard_size), **kw).ids(0, n).tolist()
    loaders = [create_webdataset_dataloader(path, batch_size=b, num_workers=workers, rank=r, world_size=world,
                                            prefetch_factor=2 if workers else None, **kw) for r in range(world)]
    seen = []
    iters = [iter(x) for x in loaders]
    for _ in range(k):
        for it in iters:
            seen += batch_ids(next(it))
    # Workers have prefetched more, but the state counts delivered batches only.
    states = [roundtrip(x.state_dict()) for x in loaders]
    assert all(s == states[0] for s in states)
    assert states[0]["position"] == k * b * world and states[0]["epoch"] == 0
    assert seen == order[: k * b * world]
    for it in iters:
        it.close()
    rest = []
    for r in range(new_world):
        resumed = create_webdataset_dataloader(path, batch_size=new_b, num_workers=new_workers, rank=r,
                                               world_size=new_world, **kw)
        resumed.load_state_dict(states[0])
        rest.append(flat_ids(resumed))
    if new_world == 1:
        assert rest[0] == order[k * b * world:]
    union = sorted(i for r in rest for i in r)
    assert union == sorted(order[k * b * world:])


@pytest.mark.multiprocess
def test_sample_level_state_resumes_inside_a_dataloader_with_workers(cache):
    """A sample-level state restored into a WebDatasetLoader read by 2 DataLoader workers."""
    path = cache.get(57, 8)
    kw = dict(buffer_size=16, seed=6)
    reference = [sample_id(s) for s in WebDatasetLoader(path, **kw)]
    first = WebDatasetLoader(path, **kw)
    it = iter(first)
    for _ in range(23):
        next(it)
    resumed = WebDatasetLoader(path, **kw)
    resumed.set_state(roundtrip(first.get_state()))
    loader = torch.utils.data.DataLoader(resumed, batch_size=None, num_workers=2)
    assert [sample_id(s) for s in loader] == reference[23:]


@pytest.mark.multiprocess
def test_state_counts_only_delivered_batches_with_prefetch(cache):
    path = cache.get(90, 9)
    loader = create_webdataset_dataloader(path, batch_size=4, num_workers=2, prefetch_factor=4,
                                          buffer_size=30, seed=2)
    assert loader.state_dict()["position"] == 0
    it = iter(loader)
    for k in range(1, 6):
        next(it)
        assert loader.state_dict()["position"] == 4 * k
    ranked = create_webdataset_dataloader(path, batch_size=4, num_workers=2, prefetch_factor=4, buffer_size=30,
                                          seed=2, rank=1, world_size=3)
    it = iter(ranked)
    for _ in range(3):
        next(it)
    assert ranked.state_dict()["position"] == 3 * 4 * 3


def test_breaking_out_and_iterating_again_continues(cache):
    path = cache.get(50, 8)
    kw = dict(buffer_size=20, seed=4)
    reference = flat_ids(create_webdataset_dataloader(path, batch_size=3, num_workers=0, **kw))
    loader = create_webdataset_dataloader(path, batch_size=3, num_workers=0, **kw)
    got = []
    for part in (2, 5, 100):
        for j, batch in enumerate(loader):
            got += batch_ids(batch)
            if j + 1 == part:
                break
    assert got == reference
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0


# --------------------------------------------------------------------------- compatibility


def test_restoring_into_another_order_raises(cache):
    path = cache.get(30, 6)
    state = WebDatasetLoader(path, seed=1, buffer_size=10).get_state()
    for kwargs in ({"seed": 2, "buffer_size": 10}, {"seed": 1, "buffer_size": 11},
                   {"seed": 1, "buffer_size": 10, "shuffle": False},
                   {"seed": 1, "buffer_size": 10, "chunk_size": 3}):
        with pytest.raises(ValueError):
            WebDatasetLoader(path, **kwargs).set_state(state)
        with pytest.raises(ValueError):
            create_webdataset_dataloader(path, num_workers=0, **kwargs).load_state_dict(state)
    with pytest.raises(ValueError):  # another dataset (size)
        WebDatasetLoader(cache.get(31, 6), seed=1, buffer_size=10).set_state(state)
    loader = WebDatasetLoader(path, seed=1, buffer_size=10)
    for bad in ({**state, "position": 31}, {**state, "position": -1}, {**state, "epoch": "1"},
                {k: v for k, v in state.items() if k != "seed"}, {**state, "version": 99}, [1, 2]):
        with pytest.raises(ValueError):
            loader.set_state(bad)
    loader.set_state(state)  # the same settings are fine


# --------------------------------------------------------------------------- cost of resuming


@pytest.fixture
def read_counter(monkeypatch):
    """Counts the samples ShardReader decodes in this process (num_workers=0), read alone
    (`read_sample`) or with others (`read_run`): both decode each through `_decoded`."""
    calls = []
    real = ShardReader._decoded

    def counting(self, row, key, view):
        calls.append((self.name, key))
        return real(self, row, key, view)

    monkeypatch.setattr(ShardReader, "_decoded", counting)
    return calls


def test_resume_at_90_percent_reads_only_the_rest(cache, read_counter, monkeypatch):
    n = 400
    path = cache.get(n, 25)
    kw = dict(buffer_size=64, seed=9)
    reference = [sample_id(s) for s in WebDatasetLoader(path, **kw)]
    assert len(read_counter) == n
    first = WebDatasetLoader(path, **kw)
    it = iter(first)
    for _ in range(360):
        next(it)
    state = first.get_state()

    blocks = []
    real_block = order_module.EpochOrder._compute_block
    monkeypatch.setattr(order_module.EpochOrder, "_compute_block",
                        lambda self, block: blocks.append(block) or real_block(self, block))
    read_counter.clear()
    resumed = WebDatasetLoader(path, **kw)
    resumed.set_state(state)
    assert [sample_id(s) for s in resumed] == reference[360:]
    assert len(read_counter) == 40  # ~10%: only the samples not yet consumed
    assert min(blocks) == 360 // 64  # no shuffle block before the position is computed

    read_counter.clear()
    dl = create_webdataset_dataloader(path, batch_size=8, num_workers=0, **kw)
    dl.load_state_dict(state)
    assert flat_ids(dl) == reference[360:] and len(read_counter) == 40


# --------------------------------------------------------------------------- epochs and the guide


def test_epoch_rollover(cache):
    path = cache.get(37, 5)
    kw = dict(buffer_size=12, seed=8)
    sizes = shard_sizes(37, 5)
    loader = WebDatasetLoader(path, **kw)
    assert [sample_id(s) for s in loader] == EpochOrder(sizes, epoch=0, **kw).ids(0, 37).tolist()
    state = roundtrip(loader.get_state())
    assert (state["epoch"], state["position"]) == (1, 0)
    epoch1 = EpochOrder(sizes, epoch=1, **kw).ids(0, 37).tolist()
    other = WebDatasetLoader(path, **kw)
    other.set_state(state)
    assert [sample_id(s) for s in other] == epoch1
    # Mid-epoch state of epoch 1 restores into epoch 1.
    it = iter(loader)
    for _ in range(10):
        next(it)
    mid = loader.get_state()
    assert (mid["epoch"], mid["position"]) == (1, 10)
    third = WebDatasetLoader(path, **kw)
    third.set_state(mid)
    assert [sample_id(s) for s in third] == epoch1[10:]

    dl = create_webdataset_dataloader(path, batch_size=4, num_workers=0, **kw)
    assert flat_ids(dl) == EpochOrder(sizes, epoch=0, **kw).ids(0, 37).tolist()
    assert (dl.state_dict()["epoch"], dl.state_dict()["position"]) == (1, 0)
    assert flat_ids(dl) == epoch1 and dl.epoch == 2


def test_guide_state_management_semantics(cache):
    """The guide's block: 100 next() calls, get_state(), set_state(), continue exactly."""
    path = cache.get(260, 50)
    reference = [sample_id(s) for s in WebDatasetLoader(path)]

    loader = WebDatasetLoader(path)
    iterator = iter(loader)
    for i in range(100):
        sample = next(iterator)
    assert sample_id(sample) == reference[99]
    state = loader.get_state()
    assert (state["epoch"], state["position"]) == (0, 100)
    roundtrip(state)

    loader.set_state(state)  # the same loader, a new iteration
    assert [sample_id(s) for s in loader] == reference[100:]
    fresh = WebDatasetLoader(path)  # a new process would do this
    fresh.set_state(json.loads(json.dumps(state)))
    assert [sample_id(s) for s in fresh] == reference[100:]
    # The original iterator also just goes on.
    again = WebDatasetLoader(path)
    it = iter(again)
    head = [sample_id(next(it)) for _ in range(100)]
    again.set_state(again.get_state())
    assert head + [sample_id(s) for s in it] == reference


def test_state_dict_aliases_and_torch_save_free(cache):
    path = cache.get(30, 6)
    loader = WebDatasetLoader(path, buffer_size=10)
    it = iter(loader)
    for _ in range(7):
        next(it)
    assert loader.state_dict() == loader.get_state()
    other = WebDatasetLoader(path, buffer_size=10)
    other.load_state_dict(loader.state_dict())
    assert other.get_state() == loader.get_state()
    # The state is plain data: no tensors or arrays to pickle with a checkpoint.
    assert not any(isinstance(v, (torch.Tensor, np.ndarray)) for v in loader.state_dict().values())


def test_resumable_loader_checkpoints_consumed_samples_from_the_main_process_only(cache, tmp_path):
    path = cache.get(40, 8)
    kw = dict(buffer_size=16, seed=1)
    reference = [sample_id(s) for s in WebDatasetLoader(path, **kw)]
    ckpt = tmp_path / "ckpt.json"
    loader = ResumableWebDatasetLoader(path, ckpt, checkpoint_interval=5, **kw)
    it = iter(loader)
    assert [sample_id(next(it)) for _ in range(12)] == reference[:12]
    doc = json.loads(ckpt.read_text())
    assert doc["loader_state"]["position"] == 10  # written when sample 11 was asked for
    roundtrip(doc["loader_state"])
    resumed = ResumableWebDatasetLoader(path, ckpt, checkpoint_interval=5, **kw)  # resumes by itself
    assert [sample_id(s) for s in resumed] == reference[10:]
    assert json.loads(ckpt.read_text())["loader_state"]["epoch"] == 1  # saved at the epoch's end
    # Inside DataLoader workers the loader runs ahead of the loop (prefetch): a checkpoint written
    # there would count samples never consumed, so none is written, with 1 worker as with 2.
    for workers in (1, 2):
        other = tmp_path / f"workers{workers}.json"
        wrapped = ResumableWebDatasetLoader(path, other, checkpoint_interval=1, **kw)
        dl = torch.utils.data.DataLoader(wrapped, batch_size=None, num_workers=workers)
        assert [sample_id(s) for s in dl] == reference
        assert not other.exists(), workers
