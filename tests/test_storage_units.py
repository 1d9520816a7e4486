"""Object storage without a server: URL handling, retry policy, the shard cache's locking and
eviction, prefetch lookahead, and whole datasets on fsspec's in-memory filesystem (memory://)."""

from __future__ import annotations

import errno
import os
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from loader_util import batch_ids, flat_ids, sample_id
from neurocodec import WebDatasetWriter
from neurocodec.errors import DatasetError, DatasetExistsError, ShardError
from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.dataset.info import ShardedDatasetInfo
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import RandomAccessWebDataset, WebDatasetLoader
from neurocodec.loader.lookahead import ShardLookahead
from neurocodec.loader.order import EpochOrder
from neurocodec.loader.plan import StepPlan
from neurocodec.storage import (ChecksumMismatch, Location, RetryPolicy, ShardCache, dataset_path,
                                is_transient, is_url, parse_size)
from neurocodec.storage.retry import RetriesExhausted

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("NEUROCODEC_RETRY_BASE_DELAY", "0.001")


def write_ids(url: str, n: int, shard_size: int, **kw) -> str:
    """The loader tests' ids dataset (sample i holds x = [i, 7i + 1], metadata {"id": i}) at `url`."""
    with WebDatasetWriter(url, shard_size=shard_size, fsync=False, **kw) as w:
        for i in range(n):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    return url


def mem_url() -> str:
    return f"memory://neurocodec-{uuid.uuid4().hex[:12]}/ds"


# -- URLs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,url", [
    ("s3://bucket/ds", True), ("gs://b/x", True), ("https://host/ds", True), ("memory://x", True),
    ("simplecache::s3://b/x", True), ("file:///tmp/x", True), ("/tmp/ds", False), ("ds", False),
    ("C:/data/ds", False), ("c://weird", False), ("relative/s3://x", False),
])
def test_is_url(text, url):
    assert is_url(text) is url


def test_dataset_path_keeps_local_paths_local(tmp_path):
    assert dataset_path(tmp_path) == tmp_path
    assert dataset_path(str(tmp_path)) == tmp_path
    assert dataset_path(f"file://{tmp_path}") == tmp_path
    assert dataset_path("file://localhost/tmp/a%20b") == Path("/tmp/a b")
    assert dataset_path("s3://bucket/ds//") == "s3://bucket/ds"
    assert dataset_path("memory://") == "memory://"


def test_file_url_reads_the_local_dataset(tmp_path):
    write_ids(str(tmp_path / "ds"), 5, 2)
    with Dataset(f"file://{tmp_path}/ds") as ds:
        assert isinstance(ds.path, Path) and ds.remote is None
        assert [sample_id(s) for s in ds] == list(range(5))


def test_location_pickles_without_its_filesystem():
    import pickle

    loc = Location("memory://abc/ds", {"skip_instance_cache": True})
    assert loc.root == "/abc/ds" and loc.path("x") == "/abc/ds/x"
    copy = pickle.loads(pickle.dumps(loc))
    assert copy.url == "memory://abc/ds" and copy._connection.current() is None
    assert copy.storage_options == {"skip_instance_cache": True} and copy.root == "/abc/ds"


def test_unknown_protocol_is_a_dataset_error():
    with pytest.raises(DatasetError, match="nosuchproto"):
        Dataset("nosuchproto://bucket/ds")


@pytest.mark.parametrize("text,size", [(0, 0), (123, 123), ("123", 123), ("1k", 1024), ("2M", 2 << 20),
                                       ("1.5G", 3 << 29), ("10GiB", 10 << 30), ("3 MB", 3_000_000)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "12Q", "-1", "G", True, -5])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


# -- retries --------------------------------------------------------------------------------------

def _client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def test_transient_classification():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(ChecksumMismatch(errno.EIO, "bad"))
    assert is_transient(OSError(errno.EIO, "remote I/O"))
    assert is_transient(_client_error(503, "SlowDown"))
    assert is_transient(_client_error(500, "InternalError"))
    assert is_transient(_client_error(429, "TooManyRequests"))
    wrapped = OSError(errno.EBUSY, "Service Unavailable")
    wrapped.__cause__ = _client_error(503, "503")
    assert is_transient(wrapped)
    assert not is_transient(FileNotFoundError("gone"))
    assert not is_transient(PermissionError("no"))
    assert not is_transient(_client_error(403, "AccessDenied"))
    assert not is_transient(_client_error(501, "NotImplemented"))
    assert not is_transient(OSError(errno.ENOSPC, "disk full"))
    assert not is_transient(ValueError("bug"))
    denied = OSError(errno.EIO, "wrapped")
    denied.__cause__ = _client_error(400, "InvalidRequest")
    assert not is_transient(denied)


def test_a_body_cut_short_is_transient_although_aiohttp_gives_it_code_400():
    from aiohttp import ClientPayloadError
    from aiohttp.http_exceptions import ContentLengthError

    cut = ContentLengthError("Not enough data to satisfy content length header.")
    assert cut.code == 400 and is_transient(cut)
    payload = ClientPayloadError("Response payload is not completed")
    payload.__cause__ = cut
    assert is_transient(payload)


def test_retry_policy_recovers_gives_up_and_passes_permanent_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert FAST.call(flaky, "flaky") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(RetriesExhausted, match="failed 3 times"):
        FAST.call(lambda: calls.append(1) or (_ for _ in ()).throw(TimeoutError("slow")), "always")
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(FileNotFoundError):
        FAST.call(lambda: calls.append(1) or (_ for _ in ()).throw(FileNotFoundError("x")), "missing")
    assert len(calls) == 1


def test_retry_policy_from_environment(monkeypatch):
    monkeypatch.setenv("NEUROCODEC_RETRY_ATTEMPTS", "7")
    monkeypatch.setenv("NEUROCODEC_RETRY_BASE_DELAY", "0.25")
    policy = RetryPolicy.default()
    assert (policy.attempts, policy.base_delay) == (7, 0.25)
    assert all(0.125 <= policy.delay(0) <= 0.25 for _ in range(20))
    assert policy.delay(10) <= policy.max_delay


# -- memory:// datasets ---------------------------------------------------------------------------

def test_write_and_read_memory_dataset_exactly(tmp_path):
    url = write_ids(mem_url(), 23, 5)
    fs = fsspec.filesystem("memory")
    root = url[len("memory:/"):]
    names = sorted(p[len(root) + 1:] for p in fs.find(root))
    assert names == sorted([".neurocodec/dataset_metadata.json"] + [
        name for i in range(5) for name in (f".shard_{i:06d}.idx", f"shard_{i:06d}.tar")])
    cache = ShardCache(tmp_path / "cache", "1G")
    with Dataset(url, cache=cache) as ds:
        assert ds.path == url and len(ds) == 23
        assert [sample_id(s) for s in ds] == list(range(23))
        assert sample_id(ds[17]) == 17
    assert cache.downloads == 5 and cache.evictions == 0
    assert sorted(os.listdir(tmp_path / "cache" / "tmp")) == []
    info = ShardedDatasetInfo(url).get_summary()
    assert info["path"] == url and info["total_samples"] == 23 and info["total_shards"] == 5
    assert read_manifest(url).total_samples == 23
    ra = RandomAccessWebDataset(url, cache=cache)
    assert len(ra) == 23 and sample_id(ra[4]) == 4


def test_memory_overwrite_semantics():
    url = write_ids(mem_url(), 6, 4)
    with pytest.raises(DatasetExistsError):
        write_ids(url, 3, 2)
    write_ids(url, 3, 2, overwrite=True)
    assert read_manifest(url).total_samples == 3
    fs = fsspec.filesystem("memory")
    root = url[len("memory:/"):]
    # shard_000001 of the old dataset was replaced, nothing of it is left over
    assert sorted(p[len(root) + 1:] for p in fs.find(root)) == [
        ".neurocodec/dataset_metadata.json", ".shard_000000.idx", ".shard_000001.idx", "shard_000000.tar",
        "shard_000001.tar"]


def test_missing_manifest_and_missing_shard(tmp_path):
    with pytest.raises(DatasetError, match="no .neurocodec/dataset_metadata.json"):
        Dataset(mem_url())
    url = write_ids(mem_url(), 6, 3)
    fsspec.filesystem("memory").rm(url[len("memory:/"):] + "/shard_000001.tar")
    with Dataset(url, cache=ShardCache(tmp_path / "c", "1G", retry=FAST)) as ds:
        assert sample_id(ds[0]) == 0
        with pytest.raises(ShardError, match=r"shard_000001.tar.*FileNotFoundError"):
            ds[4]


def test_corrupted_object_fails_checksum_after_retries(tmp_path):
    url = write_ids(mem_url(), 6, 3)
    fs = fsspec.filesystem("memory")
    path = url[len("memory:/"):] + "/shard_000001.tar"
    data = bytearray(fs.cat_file(path))
    data[700] ^= 0x01
    fs.pipe_file(path, bytes(data))
    cache = ShardCache(tmp_path / "c", "1G", retry=FAST)
    with Dataset(url, cache=cache) as ds:
        with pytest.raises(ShardError) as info:
            ds[3]
    assert info.value.shard == "shard_000001.tar"
    assert f"{url}/shard_000001.tar" in str(info.value) and "3 attempts" in str(info.value)
    assert "SHA-256" in str(info.value)
    assert not (cache.entry_dir(read_manifest(url).shards[1]) / "shard_000001.tar").exists()
    assert os.listdir(tmp_path / "c" / "tmp") == []


def test_cache_smaller_than_dataset_evicts_and_stays_exact(tmp_path):
    url = write_ids(mem_url(), 40, 4)
    shard_bytes = max(s.bytes + s.index_bytes for s in read_manifest(url).shards)
    cache = ShardCache(tmp_path / "c", 3 * shard_bytes, prefetch_bytes=0)
    for _ in range(2):
        with Dataset(url, cache=cache, max_open_shards=1) as ds:
            assert [sample_id(s) for s in ds] == list(range(40))
            assert cache.size() <= cache.max_bytes
    assert cache.downloads == 20 and cache.evictions >= 17
    loader = WebDatasetLoader(url, shuffle=True, buffer_size=16, seed=3, cache=cache)
    local = tmp_path / "local"
    write_ids(str(local), 40, 4)
    want = [sample_id(s) for s in WebDatasetLoader(local, shuffle=True, buffer_size=16, seed=3)]
    assert [sample_id(s) for s in loader] == want
    assert cache.size() <= cache.max_bytes


def test_entry_in_use_is_not_evicted(tmp_path):
    url = write_ids(mem_url(), 8, 4)
    manifest = read_manifest(url)
    loc = Location(url)
    cache = ShardCache(tmp_path / "c", "1G")
    with cache.checkout(loc, manifest.shards[0]) as path:
        assert path.name == "shard_000000.tar" and path.stat().st_size == manifest.shards[0].bytes
        cache.fetch(loc, manifest.shards[1])
        cache.max_bytes = 0
        assert cache.make_room(0) == 1  # shard 1 goes, shard 0 is held
        assert path.exists() and not cache.cached(manifest.shards[1])
    assert cache.make_room(0) == 1 and not path.exists()


def test_open_shard_survives_eviction(tmp_path):
    url = write_ids(mem_url(), 8, 4)
    cache = ShardCache(tmp_path / "c", "1G")
    with Dataset(url, cache=cache) as ds:
        reader = ds.shard(1)
        cache.clear()
        assert cache.size() == 0
        assert sample_id(reader.read_sample(2)) == 6  # the mapping keeps the unlinked file's data


def test_stale_temp_files_are_removed_by_the_next_download(tmp_path):
    url = write_ids(mem_url(), 4, 4)
    entry = read_manifest(url).shards[0]
    cache = ShardCache(tmp_path / "c", "1G")
    (tmp_path / "c" / "tmp").mkdir(parents=True)
    stale = tmp_path / "c" / "tmp" / f"{cache.key(entry)}.{entry.name}.999999.1.part"
    stale.write_bytes(b"half a shard")
    assert cache.fetch(Location(url), entry)
    assert not stale.exists() and cache.cached(entry)


def test_cache_key_follows_content(tmp_path):
    a = write_ids(mem_url(), 4, 4)
    b = write_ids(mem_url(), 4, 4)  # the same bytes under another URL: one cache entry
    c = write_ids(mem_url(), 5, 5)
    ka, kb, kc = (ShardCache.key(read_manifest(u).shards[0]) for u in (a, b, c))
    assert ka == kb != kc


def test_prefetch_downloads_in_the_background(tmp_path):
    url = write_ids(mem_url(), 30, 3)
    shards = read_manifest(url).shards
    cache = ShardCache(tmp_path / "c", "1G")
    with Dataset(url, cache=cache) as ds:
        ds.prefetch(range(2, 8))
        deadline = time.monotonic() + 20
        while cache.downloads < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [cache.cached(e) for e in shards] == [False, False] + [True] * 6 + [False, False]
        assert [sample_id(ds[i]) for i in range(6, 24)] == list(range(6, 24))
        assert cache.downloads == 6  # reading found them cached


def test_prefetch_budget_bounds_the_wish_list(tmp_path):
    url = write_ids(mem_url(), 30, 3)
    shard_bytes = max(s.bytes + s.index_bytes for s in read_manifest(url).shards)
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes=2 * shard_bytes)
    with Dataset(url, cache=cache) as ds:
        ds.remote.prefetch([])  # creates the prefetcher without starting its thread
        pre = ds.remote._prefetcher.current()
        pre.close()
        pre._closed = False  # keep the wish list for inspection, no thread runs
        pre._max_threads = 0  # no thread starts
        pre.want(range(10))
        assert pre._queue == [0, 1]


@pytest.mark.parametrize("workers,batch", [(1, 1), (2, 3), (3, 4)])
def test_lookahead_names_the_shards_of_the_next_batches(workers, batch):
    sizes = [7] * 9
    order = EpochOrder(sizes, seed=5, epoch=1, buffer_size=20, chunk_size=4)
    plan = StepPlan(start=5, total=63, batch_size=batch)
    starts = np.cumsum([0] + sizes[:-1])
    for worker in range(workers):
        ahead = ShardLookahead(order, plan, worker, workers, starts, samples=10)
        mine = list(range(worker, len(plan), workers))
        for i, k in enumerate(mine):
            want = []
            for j in mine[i:i + ahead.window]:
                for sid in order.take(plan.positions(j)).tolist():
                    shard = sid // 7
                    if shard not in want:
                        want.append(shard)
            assert ahead.shards_from(k) == want


def test_loader_over_memory_equals_local_and_resumes(tmp_path):
    url = write_ids(mem_url(), 37, 5)
    local = write_ids(str(tmp_path / "local"), 37, 5)
    cache = ShardCache(tmp_path / "c", "1G")
    kw = dict(batch_size=4, shuffle=True, buffer_size=12, seed=11, num_workers=0)
    want = flat_ids(create_webdataset_dataloader(local, **kw))
    loader = create_webdataset_dataloader(url, cache=cache, **kw)
    got, state = [], None
    for n, batch in enumerate(loader):
        got.extend(batch_ids(batch))
        if n == 3:
            state = loader.state_dict()
            break
    resumed = create_webdataset_dataloader(url, cache=ShardCache(tmp_path / "fresh", "1G"), **kw)
    resumed.load_state_dict(state)
    got.extend(flat_ids(resumed))
    # the loader told the prefetcher which shards come next, and it fetched some of them
    prefetcher = resumed.stream.source.dataset.remote._prefetcher.current()
    assert prefetcher is not None and prefetcher.fetched >= 1
    assert got == want and sorted(got) == list(range(37))
    assert "cache" not in str(state) and state == create_webdataset_dataloader(local, **kw).state_dict() | {
        "position": state["position"]}


def test_a_download_in_progress_holds_its_room_against_another_making_room(tmp_path):
    """Two downloads making room one after the other, the first not yet written: the second
    counts the first's reserved bytes, so together they never overfill the cache."""
    from neurocodec.storage.cache import RESERVATION

    cache = ShardCache(tmp_path / "c", 1000)
    old = tmp_path / "c" / "entries" / "old"
    old.mkdir(parents=True)
    (old / "shard.tar").write_bytes(bytes(600))
    os.utime(old / "shard.tar", (1, 1))  # the least recently used entry
    first = tmp_path / "c" / "entries" / "first" / RESERVATION
    assert cache.make_room(400, keep="first", reserve=first) == 0  # 600 + 400 fit
    assert first.stat().st_size == 400 and cache.size() == 1000
    assert cache.make_room(400, keep="second") == 1  # the reserved 400 count: "old" must go
    assert not old.exists() and cache.size() == 400
