"""Parallel and ranged downloads of remote shards (issue 18 point 4): moto's S3 server on
loopback, s3fs, and the counting `FaultProxy` in between (tests/storage_servers.py).

Sample i holds x = [i, 7i + 1] and metadata {"id": i}; `sample_id` checks both. Requests are
slowed inside the proxy where a test needs downloads to overlap; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest

from loader_util import child_env, flat_ids, sample_id
from neurocodec import WebDatasetWriter
from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.errors import ShardError
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import WebDatasetLoader
from neurocodec.storage import RetryPolicy, ShardCache
from neurocodec.storage.cache import RESERVATION
from storage_servers import BUCKET, FaultProxy, moto_server, s3_options

N, SHARD = 64, 8
SHARDS = N // SHARD
PART = 4096  # bytes of a ranged part: every shard here is several parts


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("NEUROCODEC_RETRY_BASE_DELAY", "0.005")
    monkeypatch.setenv("NEUROCODEC_RETRY_MAX_DELAY", "0.05")


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as ep:
        yield ep


def write_ids(endpoint: str, n: int = N, shard_size: int = SHARD) -> str:
    url = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/ds"
    with WebDatasetWriter(url, shard_size=shard_size, fsync=False, storage_options=s3_options(endpoint)) as w:
        for i in range(n):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    return url


@pytest.fixture(scope="module")
def dataset(endpoint) -> str:
    return write_ids(endpoint)


def shard_gets(proxy: FaultProxy) -> Counter:
    return Counter(r[2].split("?")[0].rsplit("/", 1)[-1] for r in proxy.requests("GET", ".tar"))


def parts(size: int) -> int:
    return -(-size // PART)


def wait_for(condition, what: str, seconds: float = 60) -> None:
    """Poll `condition()` until true (the deadline only stops a hung test)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


class Overlap:
    """A proxy plan that holds every GET of a shard file for `hold` seconds and records the
    most GETs held at once."""

    def __init__(self, hold: float) -> None:
        self.hold, self.now, self.most = hold, 0, 0
        self.lock = threading.Lock()

    def __call__(self, n: int, method: str, path: str) -> str:
        if method == "GET" and path.split("?")[0].endswith(".tar"):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            time.sleep(self.hold)
            with self.lock:
                self.now -= 1
        return "pass"


def test_prefetch_downloads_several_shards_at_once_exactly(endpoint, dataset, tmp_path):
    plan = Overlap(0.1)
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", download_threads=4)
    with FaultProxy(endpoint, plan) as proxy, \
            Dataset(dataset, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        ds.prefetch(range(SHARDS))
        wait_for(lambda: cache.downloads == SHARDS, "the prefetched shards")
        assert [sample_id(s) for s in ds] == list(range(N))
        gets = shard_gets(proxy)
    assert plan.most >= 2  # several shards were on the way at once
    assert gets == Counter({f"shard_{n:06d}.tar": 1 for n in range(SHARDS)})  # small: one GET each
    assert cache.downloads == SHARDS and os.listdir(tmp_path / "c" / "tmp") == []


def test_ranged_parts_are_assembled_exactly(endpoint, dataset, tmp_path):
    shards = read_manifest(dataset, storage_options=s3_options(endpoint)).shards
    assert all(s.bytes > 2 * PART for s in shards)
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", part_bytes=PART)
    with FaultProxy(endpoint) as proxy, \
            Dataset(dataset, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        assert [sample_id(s) for s in ds] == list(range(N))
        gets = shard_gets(proxy)
    assert gets == Counter({s.name: parts(s.bytes) for s in shards})
    for s in shards:  # the cached bytes are the object's
        import hashlib
        assert hashlib.sha256((cache.entry_dir(s) / s.name).read_bytes()).hexdigest() == s.sha256


def _put(endpoint: str, path: str, data: bytes) -> None:
    """Replace an object in moto directly, bypassing the proxy."""
    import fsspec

    fsspec.filesystem("s3", **s3_options(endpoint)).pipe_file(path, data)


def _damaged(data: bytes) -> bytes:
    """`data` with one byte flipped in every part: any part read from it is wrong."""
    out = bytearray(data)
    for at in range(10, len(out), PART):
        out[at] ^= 0xFF
    return bytes(out)


def test_an_object_changed_between_parts_is_refused_then_read_again(endpoint, tmp_path):
    url = write_ids(endpoint, n=16)
    entry = read_manifest(url, storage_options=s3_options(endpoint)).shards[1]
    path = url.removeprefix("s3://") + "/" + entry.name
    import fsspec

    good = fsspec.filesystem("s3", **s3_options(endpoint)).cat_file(path)
    lock, seen = threading.Lock(), []

    def plan(n: int, method: str, p: str) -> str:
        if method == "GET" and p.split("?")[0].endswith(entry.name):
            with lock:  # serialised: each change lands before the GETs that follow it
                seen.append(n)
                if len(seen) == 2:  # the first download's second part: rewritten underneath
                    _put(endpoint, path, _damaged(good))
                elif len(seen) == parts(entry.bytes) + 1:  # the download again: put back
                    _put(endpoint, path, good)
        return "pass"

    cache = ShardCache(tmp_path / "c", "1G", part_bytes=PART, prefetch_bytes=0,
                       retry=RetryPolicy(attempts=3, base_delay=0.001))
    with FaultProxy(endpoint, plan) as proxy, \
            Dataset(url, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        assert [sample_id(ds[i]) for i in range(8, 16)] == list(range(8, 16))
        gets = shard_gets(proxy)
    assert gets[entry.name] == 2 * parts(entry.bytes)  # the mixed copy was refused, all parts again
    assert cache.downloads == 1 and os.listdir(tmp_path / "c" / "tmp") == []


def test_a_damaged_object_in_parts_raises_after_the_attempts(endpoint, tmp_path):
    url = write_ids(endpoint, n=16)
    entry = read_manifest(url, storage_options=s3_options(endpoint)).shards[1]
    path = url.removeprefix("s3://") + "/" + entry.name
    import fsspec

    fs = fsspec.filesystem("s3", **s3_options(endpoint))
    _put(endpoint, path, _damaged(fs.cat_file(path)))
    cache = ShardCache(tmp_path / "c", "1G", part_bytes=PART, prefetch_bytes=0,
                       retry=RetryPolicy(attempts=3, base_delay=0.001))
    with FaultProxy(endpoint) as proxy, \
            Dataset(url, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        assert sample_id(ds[0]) == 0
        with pytest.raises(ShardError) as info:
            ds[9]
        gets = shard_gets(proxy)
    assert info.value.shard == entry.name
    message = str(info.value)
    assert f"{url}/{entry.name}" in message and "3 attempts" in message and "SHA-256" in message
    assert gets[entry.name] == 3 * parts(entry.bytes)
    assert os.listdir(tmp_path / "c" / "tmp") == [] and not cache.cached(entry)
    assert not (cache.entry_dir(entry) / RESERVATION).exists()


def test_the_reader_waits_for_the_shard_being_prefetched(endpoint, dataset, tmp_path):
    started = threading.Event()

    def plan(n: int, method: str, path: str) -> str:
        if method == "GET" and path.split("?")[0].endswith("shard_000002.tar"):
            started.set()
            time.sleep(0.3)  # the reader asks for it meanwhile
        return "pass"

    cache = ShardCache(tmp_path / "c", "1G", download_threads=2)
    with FaultProxy(endpoint, plan) as proxy, \
            Dataset(dataset, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        ds.prefetch([2])
        assert started.wait(30)
        assert [sample_id(ds[i]) for i in range(2 * SHARD, 3 * SHARD)] == list(range(2 * SHARD, 3 * SHARD))
        gets = shard_gets(proxy)
    assert gets == Counter({"shard_000002.tar": 1}) and cache.downloads == 1


def test_the_shard_a_reader_needs_goes_before_the_prefetch_queue(endpoint, dataset, tmp_path):
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", download_threads=1)
    with FaultProxy(endpoint, Overlap(0.2)) as proxy, \
            Dataset(dataset, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        ds.prefetch(range(5))
        wait_for(lambda: shard_gets(proxy), "the first prefetch GET")
        assert sample_id(ds[7 * SHARD]) == 7 * SHARD  # not wished for: read now
        order = [r[2].split("?")[0].rsplit("/", 1)[-1] for r in proxy.requests("GET", ".tar")]
    # one prefetch thread, one download thread, slow GETs: the reader's shard did not wait for
    # the rest of the queue (its GET runs on the reader's thread)
    assert "shard_000007.tar" in order and "shard_000004.tar" not in order[:order.index("shard_000007.tar")]


def test_the_cache_budget_holds_with_parallel_downloads(endpoint, dataset, tmp_path):
    shards = read_manifest(dataset, storage_options=s3_options(endpoint)).shards
    shard_bytes = max(s.bytes + s.index_bytes for s in shards)
    cache = ShardCache(tmp_path / "c", 3 * shard_bytes, prefetch_bytes=3 * shard_bytes, download_threads=4,
                       part_bytes=PART)
    options = s3_options(endpoint)
    with Dataset(dataset, storage_options=options, cache=cache, max_open_shards=1) as ds:
        got = []
        for sample in ds:
            got.append(sample_id(sample))
            # Prefetches never overfill; the reader's own shard may, by itself, when the shard it
            # holds and those being prefetched (their room reserved first) fill the budget.
            assert cache.size() <= cache.max_bytes + shard_bytes
    assert got == list(range(N))
    loader = WebDatasetLoader(dataset, shuffle=True, buffer_size=16, seed=3, cache=cache, storage_options=options)
    assert sorted(sample_id(s) for s in loader) == list(range(N))
    assert cache.size() <= cache.max_bytes + shard_bytes and os.listdir(tmp_path / "c" / "tmp") == []


def test_close_stops_the_downloads_in_flight(endpoint, dataset, tmp_path):
    plan = Overlap(0.15)
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", download_threads=4, part_bytes=PART)
    with FaultProxy(endpoint, plan) as proxy:
        options = s3_options(proxy.endpoint)
        ds = Dataset(dataset, storage_options=options, cache=cache)
        ds.prefetch(range(SHARDS))
        wait_for(lambda: plan.most >= 2, "downloads in flight")
        prefetcher = ds.remote._prefetcher.current()
        ds.close()
        assert prefetcher._threads == [] and prefetcher._queue == []
        before = len(proxy.requests("GET", ".tar"))
        # nothing partial is left, and every entry present is complete
        assert os.listdir(tmp_path / "c" / "tmp") == []
        for key in os.listdir(tmp_path / "c" / "entries"):
            assert RESERVATION not in os.listdir(tmp_path / "c" / "entries" / key)
        assert cache.downloads < SHARDS
        time.sleep(0.3)
        assert len(proxy.requests("GET", ".tar")) == before  # no GET started after close
    with Dataset(dataset, storage_options=s3_options(endpoint), cache=cache) as ds:
        assert [sample_id(s) for s in ds] == list(range(N))


@pytest.mark.multiprocess
def test_workers_fork_while_the_parent_prefetches(endpoint, dataset, tmp_path):
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", download_threads=4, part_bytes=PART)
    kw = dict(batch_size=5, shuffle=True, buffer_size=20, seed=4)
    want = flat_ids(create_webdataset_dataloader(dataset, num_workers=0, storage_options=s3_options(endpoint),
                                                 cache=ShardCache(tmp_path / "w", "1G"), **kw))
    with FaultProxy(endpoint, Overlap(0.05)) as proxy:
        options = s3_options(proxy.endpoint)
        with Dataset(dataset, storage_options=options, cache=cache) as ds:
            ds.prefetch(range(SHARDS))  # threads downloading while the workers fork
            got = flat_ids(create_webdataset_dataloader(dataset, num_workers=2, storage_options=options,
                                                        cache=cache, multiprocessing_context="fork", **kw))
    assert got == want and sorted(got) == list(range(N))


CHILD = textwrap.dedent("""
    import json, sys
    from neurocodec.dataset.reader import Dataset
    from neurocodec.storage import ShardCache
    url, options, cache_dir, order = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    cache = ShardCache(cache_dir, "1G", prefetch_bytes="1G", download_threads=4, part_bytes=PART)
    with Dataset(url, storage_options=options, cache=cache) as ds:
        order = [int(n) for n in order.split(",")]
        ids = []
        for i, n in enumerate(order):
            ds.prefetch(order[i + 1:])
            reader = ds.shard(n)
            ids += [int(reader.read_sample(j)["x"][0]) for j in range(len(reader))]
    print(json.dumps(ids))
""").replace("PART", str(PART))


@pytest.mark.multiprocess
def test_two_processes_share_the_cache_and_download_each_shard_once(endpoint, dataset, tmp_path):
    shards = read_manifest(dataset, storage_options=s3_options(endpoint)).shards
    with FaultProxy(endpoint, Overlap(0.02)) as proxy:
        options = json.dumps(s3_options(proxy.endpoint))
        orders = [list(range(SHARDS)), list(range(SHARDS))[::-1]]
        children = [subprocess.Popen([sys.executable, "-c", CHILD, dataset, options, str(tmp_path / "c"),
                                      ",".join(map(str, o))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=child_env(), text=True) for o in orders]
        results = [c.communicate(timeout=120) for c in children]
        gets = shard_gets(proxy)
    for (out, err), child in zip(results, children):
        assert child.returncode == 0, err
        assert sorted(json.loads(out)) == list(range(N))
    assert gets == Counter({s.name: parts(s.bytes) for s in shards})  # each shard once, in parts
    assert len(proxy.requests("GET", ".idx")) == SHARDS


def test_a_server_that_ignores_ranges_gets_whole_downloads(tmp_path):
    """Python's http.server answers a ranged GET with the whole file: each file is then
    downloaded whole instead (once per shard), and read exactly."""
    from loader_util import write_ids_dataset
    from storage_servers import static_http_server

    write_ids_dataset(tmp_path / "www" / "ds", 24, 8)
    cache = ShardCache(tmp_path / "c", "1G", part_bytes=PART, prefetch_bytes="1G")
    with static_http_server(str(tmp_path / "www")) as base, Dataset(f"{base}/ds", cache=cache) as ds:
        assert all(s.bytes > 2 * PART for s in ds.shards)
        assert [sample_id(s) for s in ds] == list(range(24))
    assert cache.downloads == 3 and os.listdir(tmp_path / "c" / "tmp") == []


def test_prefetch_over_a_shard_table(tmp_path):
    """A dataset whose shards are listed in a shard table (format version 3): the prefetch
    budget comes from the table's columns, the downloads are parallel and every sample exact."""
    from neurocodec.format.shard_table import TableShards

    url = f"memory://nc-{uuid.uuid4().hex[:10]}/ds"
    with WebDatasetWriter(url, shard_size=4, fsync=False, shard_table_above=2) as w:
        for i in range(24):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    cache = ShardCache(tmp_path / "c", "1G", prefetch_bytes="1G", download_threads=3, part_bytes=1024)
    with Dataset(url, cache=cache) as ds:
        assert isinstance(ds.shards, TableShards)
        ds.prefetch(range(6))
        wait_for(lambda: cache.downloads == 6, "the prefetched shards")
        assert [sample_id(s) for s in ds] == list(range(24))
    assert cache.downloads == 6
