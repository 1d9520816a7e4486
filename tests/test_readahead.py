"""Readahead of local datasets (neurocodec.format.readahead, Dataset.read_ahead, SpanLookahead):
the ranges asked for follow the epoch's order and stay within the byte bound; pages asked for
become resident (checked with mincore, not with a clock); readahead off reads the same samples;
a shard removed or truncated after its readahead still fails with the reader's own error."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import time
from pathlib import Path

import numpy as np
import pytest

from neurocodec import WebDatasetWriter
from neurocodec.dataset.reader import Dataset
from neurocodec.errors import ShardError
from neurocodec.format import readahead
from neurocodec.format.readahead import BLOCK, ENV_BYTES, Readahead, kernel_readahead, readahead_bytes
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import WebDatasetLoader
from neurocodec.loader.lookahead import SpanLookahead, runs, whole_chunks
from neurocodec.loader.order import EpochOrder
from neurocodec.loader.plan import StepPlan

WIDTH = 4096  # float64 values per sample: 32 KiB, so a shard spans many readahead blocks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """200 samples of 32 KiB in shards of 40 (sample i is filled with i), fsynced."""
    path = tmp_path_factory.mktemp("readahead") / "ds"
    with WebDatasetWriter(path, shard_size=40) as w:
        for i in range(200):
            w.write_sample({"x": np.full(WIDTH, i, dtype=np.float64)}, metadata={"id": i})
    return path


def shard_files(path: Path) -> list[Path]:
    return sorted(path.glob("shard_*.tar"))


def recorded(ds: Dataset) -> list[tuple[str, int, int]]:
    calls: list[tuple[str, int, int]] = []
    ds.readahead.listener = lambda *call: calls.append(call)
    return calls


# -- the bound and the order of what is asked for -------------------------------------------------

def test_setting_and_environment(monkeypatch):
    assert readahead_bytes(None) == 64 << 20
    assert readahead_bytes(0) == 0
    monkeypatch.setenv(ENV_BYTES, "1048576")
    assert readahead_bytes(None) == 1 << 20
    for bad in (-1, 1.5, "7"):
        with pytest.raises(ValueError):
            readahead_bytes(bad)


def test_want_respects_the_byte_bound_and_asks_each_block_once(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"\0" * (40 * BLOCK))
    ahead = Readahead(4 * BLOCK)
    calls: list[tuple[str, int, int]] = []
    ahead.listener = lambda *call: calls.append(call)
    ahead.want([(str(target), 0, 40 * BLOCK)])
    assert calls == [(str(target), 0, 4 * BLOCK)]  # only the bound, from the first byte
    ahead.want([(str(target), BLOCK, 40 * BLOCK)])  # the reader moved one block on
    assert calls[1:] == [(str(target), 4 * BLOCK, 5 * BLOCK)]
    # Soonest first: block 10, then blocks 2-4 (asked for before) fill the bound.
    ahead.want([(str(target), 10 * BLOCK, 11 * BLOCK), (str(target), 2 * BLOCK, 40 * BLOCK)])
    assert calls[2:] == [(str(target), 10 * BLOCK, 11 * BLOCK)]
    ahead.want([(str(tmp_path / "missing"), 0, BLOCK), (str(tmp_path), 0, BLOCK)])  # never raises
    ahead.wait()
    ahead.close()


def test_read_ahead_never_raises(dataset):
    with Dataset(dataset) as ds:
        ds.read_ahead([(99, 0, 10), (0, 5, 2), ("x", 0, 1)])
        ds.prefetch([-100, 7])
        assert [int(s["x"][0]) for s in ds][:3] == [0, 1, 2]


@pytest.fixture
def hints_in_order(monkeypatch):
    """Stored order read ahead whatever this machine's disk readahead (tests run on any)."""
    monkeypatch.setattr(readahead, "SEQUENTIAL_ENOUGH", 1 << 62)


def test_stored_order_is_left_to_a_device_that_streams_it(dataset, monkeypatch):
    if kernel_readahead(dataset) is None:
        pytest.skip("the device's readahead window cannot be told here")
    monkeypatch.setattr(readahead, "SEQUENTIAL_ENOUGH", 0)
    with Dataset(dataset) as ds:
        calls = recorded(ds)
        assert len(list(ds)) == 200 and calls == [] and not ds.readahead_in_order()
    loader = WebDatasetLoader(dataset, shuffle=False)
    assert loader.stream._lookahead(loader.stream.order(), loader.stream.plan(), 0, 1) is None


def test_stored_order_reads_ahead_shard_by_shard_within_the_bound(dataset, hints_in_order):
    with Dataset(dataset, readahead_bytes=8 * BLOCK) as ds:
        calls = recorded(ds)
        names = [s.name for s in ds.shards]
        every = ds._ahead_every()
        seen = 0
        for n, sample in enumerate(ds):
            assert int(sample["x"][0]) == n
            asked = sum(end - start for _, start, end in calls)
            # Never more than the bound beyond what has been read (one request's worth of slack).
            read = sum(s.bytes for s in ds.shards[: n // 40]) + (n % 40) * ds.shards[0].bytes // 40
            assert asked - read <= 8 * BLOCK + every * ds.shards[0].bytes // 40 + BLOCK
            seen = len(calls)
        assert seen
        order = [(names.index(Path(path).name), start) for path, start, _ in calls]
        assert order == sorted(order)  # the order it reads: shard after shard, front to back
        assert {Path(path).name for path, _, _ in calls} == set(names)


# -- the shuffled order: chunks, workers ------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_spans_are_the_chunks_of_this_workers_next_batches(workers):
    sizes = [40] * 5
    starts = np.array([0, 40, 80, 120, 160])
    order = EpochOrder(sizes, seed=3, shuffle=True, buffer_size=50, chunk_size=8)
    plan = StepPlan(start=0, total=200, batch_size=4)
    for worker in range(workers):
        ahead = SpanLookahead(order, plan, worker, workers, starts, samples=24)
        mine = range(worker, len(plan), workers)
        for k in list(mine)[:10]:
            spans = ahead.spans_from(k)
            ids = np.concatenate([order.take(plan.positions(j)) for j in mine[mine.index(k):][:ahead.window]])
            covered = np.concatenate([np.arange(starts[n] + a, starts[n] + b) for n, a, b in spans])
            assert len(covered) == len(set(covered.tolist()))  # no sample twice
            assert set(covered.tolist()) == set(whole_chunks(ids, 8, 200).tolist())  # whole chunks, nothing else
            first = [int(np.flatnonzero(np.isin(ids, np.arange(starts[n] + a, starts[n] + b)))[0]) for n, a, b in spans]
            assert first == sorted(first)  # soonest first


def test_runs_split_at_shard_boundaries():
    starts = np.array([0, 10, 20])
    assert runs(np.array([12, 8, 9, 10, 11, 25]), starts) == [(1, 0, 3), (0, 8, 10), (2, 5, 6)]
    assert runs(np.array([], dtype=np.int64), starts) == []


# -- residency, not time -----------------------------------------------------------------------------

def resident_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache (mincore on a read-only mapping)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0
            return sum(b & 1 for b in vector.raw) / pages
        finally:
            libc.munmap(address, size)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_pages_asked_for_become_resident(dataset):
    shard = shard_files(dataset)[3]
    evict(shard)
    if resident_fraction(shard) > 0.1:
        pytest.skip("this filesystem keeps the pages (fadvise DONTNEED does not evict here)")
    with Dataset(dataset) as ds:
        ds.prefetch([3])
        ds.readahead.wait()
        for _ in range(200):  # the kernel reads asynchronously: poll residency, bounded, no clock asserted
            if resident_fraction(shard) == 1.0:
                break
            time.sleep(0.01)
        assert resident_fraction(shard) == 1.0


# -- readahead changes nothing read --------------------------------------------------------------------

def keys_and_values(samples) -> list[tuple[str, int]]:
    return [(s["__key__"], int(s["x"][0])) for s in samples]


@pytest.mark.parametrize("shuffle", [False, True])
def test_readahead_off_reads_the_same_samples(dataset, monkeypatch, shuffle, hints_in_order):
    on = keys_and_values(WebDatasetLoader(dataset, shuffle=shuffle, seed=5, buffer_size=60))
    monkeypatch.setenv(ENV_BYTES, "0")
    loader = WebDatasetLoader(dataset, shuffle=shuffle, seed=5, buffer_size=60)
    off = keys_and_values(loader)
    assert loader.stream.source.dataset.readahead.limit == 0
    assert on == off and sorted(v for _, v in on) == list(range(200))
    with Dataset(dataset, readahead_bytes=0) as plain, Dataset(dataset) as ahead:
        assert keys_and_values(plain) == keys_and_values(ahead)


def test_dataloader_workers_read_the_same_batches_with_and_without_readahead(dataset, monkeypatch):
    def epoch() -> list[list[int]]:
        loader = create_webdataset_dataloader(dataset, batch_size=8, num_workers=2, shuffle=True, seed=1,
                                              buffer_size=60)
        return [batch["x"][:, 0].long().tolist() for batch in loader]

    on = epoch()
    monkeypatch.setenv(ENV_BYTES, "0")
    assert epoch() == on
    assert sorted(sum(on, [])) == list(range(200))


def test_the_loaders_take_readahead_bytes_over_the_environment(dataset, monkeypatch):
    monkeypatch.setenv(ENV_BYTES, "0")
    assert WebDatasetLoader(dataset).stream.source.dataset.readahead.limit == 0
    loader = WebDatasetLoader(dataset, readahead_bytes=3 * BLOCK)
    assert loader.stream.source.dataset.readahead.limit == 3 * BLOCK
    mixed = WebDatasetLoader([dataset, dataset], weights=[1, 1], readahead_bytes=5 * BLOCK)
    assert [part.source.dataset.readahead.limit for part in mixed.stream.parts] == [5 * BLOCK] * 2
    batches = create_webdataset_dataloader(dataset, batch_size=8, num_workers=0, readahead_bytes=7 * BLOCK)
    assert batches.stream.source.dataset.readahead.limit == 7 * BLOCK
    for bad in (-1, 1.5, "7"):
        with pytest.raises(ValueError, match="readahead_bytes"):
            WebDatasetLoader(dataset, readahead_bytes=bad)
        with pytest.raises(ValueError, match="readahead_bytes"):
            create_webdataset_dataloader(dataset, readahead_bytes=bad)


def test_loader_asks_for_what_its_batches_read_within_twice_the_bound(dataset, monkeypatch):
    monkeypatch.setenv(ENV_BYTES, str(8 * BLOCK))
    loader = WebDatasetLoader(dataset, shuffle=True, seed=2, buffer_size=60)
    ds = loader.stream.source.dataset
    calls = recorded(ds)
    per_read: list[int] = []
    read = []
    for sample in loader:
        per_read.append(sum(end - start for _, start, end in calls) - sum(per_read))
        read.append(int(sample["x"][0]))
    assert calls and max(per_read) <= 2 * 8 * BLOCK  # no request asks for more than twice the bound
    asked = {Path(path).name for path, _, _ in calls}
    assert asked == {p.name for p in shard_files(dataset)}
    assert sorted(read) == list(range(200))


# -- failures stay the reader's ----------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_a_shard_damaged_after_its_readahead_raises_the_readers_error(dataset, tmp_path, damage):
    import shutil

    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    victim = shard_files(copy)[1]
    with Dataset(copy) as ds:
        ds.prefetch([0, 1, 2])
        ds.readahead.wait()
        if damage == "delete":
            victim.unlink()
        else:
            with open(victim, "r+b") as f:
                f.truncate(victim.stat().st_size // 2)
        ds.prefetch([1])
        with pytest.raises(ShardError) as caught:
            list(ds)
        assert caught.value.shard == victim.name
