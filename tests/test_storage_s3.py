"""Datasets on S3: moto's S3 server on loopback (started here), s3fs as the fsspec backend, and
a fault-injecting HTTP proxy in between that counts, drops, cuts, stalls or answers 503.

Sample i of the test datasets holds x = [i, 7i + 1] and metadata {"id": i} (see loader_util),
so every read checks that the arrays belong to the key they came with.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from loader_util import batch_ids, child_env, flat_ids, sample_id, write_ids_dataset
from neurocodec import WebDatasetWriter
from neurocodec.cli import main
from neurocodec.errors import DatasetError, DatasetExistsError, ShardError
from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import RandomAccessWebDataset, ResumableWebDatasetLoader, WebDatasetLoader
from neurocodec.storage import RetryPolicy, ShardCache
from storage_servers import BUCKET, FaultProxy, moto_server, no_sdk_retries, s3_options

N, SHARD = 61, 8  # 8 shards, the last one short
SHARDS = -(-N // SHARD)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("NEUROCODEC_RETRY_BASE_DELAY", "0.005")
    monkeypatch.setenv("NEUROCODEC_RETRY_MAX_DELAY", "0.05")


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as ep:
        yield ep


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    return write_ids_dataset(tmp_path_factory.mktemp("local") / "ds", N, SHARD)


def write_ids(url: str, options: dict, n: int = N, shard_size: int = SHARD, **kw) -> str:
    with WebDatasetWriter(url, shard_size=shard_size, fsync=False, storage_options=options, **kw) as w:
        for i in range(n):
            w.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
    return url


def _take(loader, batches: int) -> tuple[list[int], dict]:
    """The sample ids of the first `batches` batches, and the state right after them."""
    got = []
    for n, batch in enumerate(loader):
        got.extend(batch_ids(batch))
        if n == batches - 1:
            return got, loader.state_dict()
    raise AssertionError(f"the loader ran out before {batches} batches")


def new_url() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/ds"


@pytest.fixture(scope="module")
def dataset(endpoint) -> str:
    """The ids dataset written to S3 once for the read-only tests."""
    return write_ids(new_url(), s3_options(endpoint))


def shard_gets(proxy: FaultProxy) -> Counter:
    return Counter(r[2].split("?")[0].rsplit("/", 1)[-1] for r in proxy.requests("GET", ".tar"))


def test_write_uploads_each_shard_then_the_manifest_last(endpoint, local):
    url = new_url()
    with FaultProxy(endpoint) as proxy:
        options = s3_options(proxy.endpoint)
        writer = WebDatasetWriter(url, shard_size=SHARD, fsync=False, storage_options=options)
        staging = writer._output.directory
        for i in range(3 * SHARD + 2):
            writer.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
        # three shards are uploaded, their local copies gone, and readers find no dataset yet
        assert [p.name.startswith(".shard_000003.tar.") for p in staging.iterdir()] == [True]
        with pytest.raises(DatasetError, match="no .neurocodec/dataset_metadata.json"):
            Dataset(url, storage_options=options)
        for i in range(3 * SHARD + 2, N):
            writer.write_sample({"x": np.array([i, 7 * i + 1], dtype=np.int64)}, metadata={"id": i})
        summary = writer.finalize()
        puts = [r[2].rsplit("/", 1)[-1] for r in proxy.requests("PUT")]
    assert summary["output_dir"] == url and summary["shards"] == SHARDS
    want = [name for n in range(SHARDS) for name in (f".shard_{n:06d}.idx", f"shard_{n:06d}.tar")] + [
        "dataset_metadata.json"]  # in .neurocodec/, uploaded last
    assert puts == want
    assert not staging.exists()
    # byte-identical to the same samples written locally
    remote, mine = read_manifest(url, storage_options=s3_options(endpoint)), read_manifest(local)
    assert [(s.sha256, s.index_sha256, s.bytes) for s in remote.shards] == \
        [(s.sha256, s.index_sha256, s.bytes) for s in mine.shards]


def test_read_back_exactly(endpoint, dataset, tmp_path):
    options = s3_options(endpoint)
    cache = ShardCache(tmp_path / "cache", "1G")
    with Dataset(dataset, storage_options=options, cache=cache) as ds:
        assert len(ds) == N and ds.path == dataset
        assert [sample_id(s) for s in ds] == list(range(N))
        assert sample_id(ds[-1]) == N - 1
        assert ds.verify_all() == N
    assert cache.downloads == SHARDS
    ra = RandomAccessWebDataset(dataset, storage_options=options, cache=cache)
    assert [sample_id(ra[i]) for i in (0, 33, N - 1)] == [0, 33, N - 1]
    assert cache.downloads == SHARDS  # all from the cache now


def test_info_and_verify_cli(endpoint, dataset, tmp_path, capsys):
    opt = ["--storage-option", f"endpoint_url={endpoint}", "--storage-option", "key=testing",
           "--storage-options", json.dumps({"secret": "testing", "client_kwargs": {"region_name": "us-east-1"}})]
    assert main(["info", dataset, *opt]) == 0
    out = capsys.readouterr().out
    assert dataset in out and f"samples: {N}" in out and f"shards: {SHARDS}" in out
    assert main(["verify", dataset, *opt, "--cache-dir", str(tmp_path / "c"), "--cache-size", "10M"]) == 0
    assert f"ok: {N} samples in {SHARDS} shards" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "c" / "entries")) == SHARDS
    assert main(["info", f"s3://{BUCKET}/nothing-here", *opt]) == 1
    assert "no .neurocodec/dataset_metadata.json" in capsys.readouterr().err


def test_convert_cli_writes_to_s3(endpoint, tmp_path, capsys):
    npz = tmp_path / "rows.npz"
    np.savez(npz, lfp=np.arange(30 * 6, dtype=np.float32).reshape(30, 2, 3))
    url = new_url()
    opt = ["--storage-options", json.dumps(s3_options(endpoint))]
    assert main(["convert", "--input", str(npz), "--output", url, "--shard-size", "7", "--no-progress",
                 "--validate", "--cache-dir", str(tmp_path / "c"), *opt]) == 0
    out = capsys.readouterr().out
    assert f"to {url}" in out and "validated: 30 samples" in out
    with Dataset(url, storage_options=s3_options(endpoint), cache=ShardCache(tmp_path / "c")) as ds:
        np.testing.assert_array_equal(ds[29]["lfp"], np.arange(29 * 6, 30 * 6, dtype=np.float32).reshape(2, 3))
    assert main(["convert", "--input", str(npz), "--output", url, "--no-progress", *opt]) == 1
    assert "already holds a dataset" in capsys.readouterr().err


def test_overwrite_never_deletes_the_manifest(endpoint, tmp_path):
    url = write_ids(new_url(), s3_options(endpoint), n=20, shard_size=5)
    with pytest.raises(DatasetExistsError):
        write_ids(url, s3_options(endpoint), n=4, shard_size=2)
    with FaultProxy(endpoint) as proxy:
        write_ids(url, s3_options(proxy.endpoint), n=4, shard_size=2, overwrite=True)
        deletes = [r[2] for r in proxy.requests("DELETE")] + [r[2] for r in proxy.requests("POST")]
        names = [r[2].split("?")[0].rsplit("/", 1)[-1] for r in proxy.requests("DELETE")]
    assert names and "dataset_metadata.json" not in names, deletes
    manifest = read_manifest(url, storage_options=s3_options(endpoint))
    assert manifest.total_samples == 4 and len(manifest.shards) == 2
    with Dataset(url, storage_options=s3_options(endpoint), cache=ShardCache(tmp_path / "c")) as ds:
        assert [sample_id(s) for s in ds] == [0, 1, 2, 3]


def test_corrupted_object_raises_after_retries(endpoint, tmp_path):
    import fsspec

    url = write_ids(new_url(), s3_options(endpoint), n=12, shard_size=4)
    fs = fsspec.filesystem("s3", **s3_options(endpoint))
    path = url[len("s3://"):] + "/shard_000001.tar"
    data = bytearray(fs.cat_file(path))
    data[-2000] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    cache = ShardCache(tmp_path / "c", "1G", retry=RetryPolicy(attempts=3, base_delay=0.001))
    with FaultProxy(endpoint) as proxy, Dataset(url, storage_options=s3_options(proxy.endpoint), cache=cache) as ds:
        assert sample_id(ds[0]) == 0
        with pytest.raises(ShardError) as info:
            ds[5]
        assert shard_gets(proxy)["shard_000001.tar"] == 3
    assert info.value.shard == "shard_000001.tar"
    message = str(info.value)
    assert f"{url}/shard_000001.tar" in message and "3 attempts" in message and "SHA-256" in message
    assert os.listdir(tmp_path / "c" / "tmp") == []
    assert not cache.cached(read_manifest(url, storage_options=s3_options(endpoint)).shards[1])


def _flip_last_bytes(path: Path) -> None:
    """Damage a cached file in place, keeping its size."""
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))


def test_damaged_cache_entry_is_downloaded_again_once(endpoint, tmp_path):
    import fsspec

    url = write_ids(new_url(), s3_options(endpoint), n=12, shard_size=4)
    cache = ShardCache(tmp_path / "c", "1G", retry=RetryPolicy(attempts=2, base_delay=0.001), prefetch_bytes=0)
    with FaultProxy(endpoint) as proxy:
        options = s3_options(proxy.endpoint)
        with Dataset(url, storage_options=options, cache=cache) as ds:
            assert sample_id(ds[5]) == 5
            entry = ds.shards[1]
        index = cache.entry_dir(entry) / entry.index
        _flip_last_bytes(index)  # damaged on local disk after its download was verified
        with Dataset(url, storage_options=options, cache=cache) as ds:
            assert [sample_id(ds[i]) for i in range(4, 8)] == [4, 5, 6, 7]
        assert len(proxy.requests("GET", ".shard_000001.idx")) == 2 and shard_gets(proxy)["shard_000001.tar"] == 2
    assert (cache.downloads, cache.discarded) == (2, 1)
    # Damaged in the bucket as well: the one download fails its SHA-256, and that is the error.
    fs = fsspec.filesystem("s3", **s3_options(endpoint))
    remote = url[len("s3://"):] + "/.shard_000001.idx"
    data = bytearray(fs.cat_file(remote))
    data[-3] ^= 1
    fs.pipe_file(remote, bytes(data))
    _flip_last_bytes(index)
    with Dataset(url, storage_options=s3_options(endpoint), cache=cache) as ds:
        with pytest.raises(ShardError) as info:
            ds[5]
    assert info.value.shard == "shard_000001.tar" and "SHA-256 does not match" in str(info.value)
    assert (cache.downloads, cache.discarded) == (2, 2) and not cache.cached(entry)


def test_dataloader_with_two_workers_equals_local(endpoint, dataset, local, tmp_path):
    kw = dict(batch_size=5, shuffle=True, buffer_size=20, seed=4)
    want = flat_ids(create_webdataset_dataloader(local, num_workers=0, **kw))
    cache = ShardCache(tmp_path / "c", "1G")
    got = flat_ids(create_webdataset_dataloader(dataset, num_workers=2, storage_options=s3_options(endpoint),
                                                cache=cache, **kw))
    assert got == want and sorted(got) == list(range(N))
    assert len(os.listdir(tmp_path / "c" / "entries")) == SHARDS


def test_a_mix_with_a_dataset_on_s3_equals_its_local_copy(endpoint, dataset, local, tmp_path):
    """A mix reads (and prefetches) a URL dataset as it reads the same data on disk."""
    kw = dict(batch_size=6, weights=[0.7, 0.3], epoch_samples=50, seed=3)
    other = write_ids_dataset(tmp_path / "other", 20, 6)
    want = flat_ids(create_webdataset_dataloader([local, other], num_workers=0, **kw))
    cache = ShardCache(tmp_path / "c", "1G")
    got = flat_ids(create_webdataset_dataloader([dataset, other], num_workers=2, storage_options=s3_options(endpoint),
                                                cache=cache, **kw))
    assert got == want and len(got) == 50
    assert len(os.listdir(tmp_path / "c" / "entries")) == SHARDS  # every shard of the S3 dataset, once


@pytest.mark.multiprocess
def test_exact_resume_over_s3_equals_local(endpoint, dataset, local, tmp_path):
    kw = dict(batch_size=4, shuffle=True, buffer_size=24, seed=9)
    options = s3_options(endpoint)
    want = flat_ids(create_webdataset_dataloader(local, num_workers=0, **kw))
    loader = create_webdataset_dataloader(dataset, num_workers=2, storage_options=options,
                                          cache=ShardCache(tmp_path / "a", "1G"), **kw)
    got, state = _take(loader, 7)
    local_loader = create_webdataset_dataloader(local, num_workers=0, **kw)
    for n, _ in enumerate(local_loader):
        if n == 6:
            break
    assert state == local_loader.state_dict()  # the state knows nothing of storage or cache
    # resume with another worker count and a fresh, empty cache
    resumed = create_webdataset_dataloader(dataset, num_workers=1, storage_options=options,
                                           cache=ShardCache(tmp_path / "b", "1G"), **kw)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    got.extend(flat_ids(resumed))
    assert got == want
    # the checkpointing loader over S3, checkpoint on local disk
    ckpt = tmp_path / "ckpt.json"
    first = ResumableWebDatasetLoader(dataset, ckpt, checkpoint_interval=5, storage_options=options,
                                      cache=ShardCache(tmp_path / "a"), shuffle=True, buffer_size=24, seed=9)
    seen = []
    for s in first:
        seen.append(sample_id(s))
        if len(seen) == 23:
            break
    again = ResumableWebDatasetLoader(dataset, ckpt, checkpoint_interval=5, storage_options=options,
                                      cache=ShardCache(tmp_path / "a"), shuffle=True, buffer_size=24, seed=9)
    rest = [sample_id(s) for s in again]
    plain = [sample_id(s) for s in WebDatasetLoader(local, shuffle=True, buffer_size=24, seed=9)]
    assert seen[:20] + rest == plain


@pytest.mark.multiprocess
def test_cache_smaller_than_dataset_with_workers(endpoint, dataset, local, tmp_path):
    manifest = read_manifest(local)
    shard_bytes = max(s.bytes + s.index_bytes for s in manifest.shards)
    cache = ShardCache(tmp_path / "c", 3 * shard_bytes)
    kw = dict(batch_size=3, shuffle=True, buffer_size=16, seed=2)
    want = flat_ids(create_webdataset_dataloader(local, num_workers=0, **kw))
    with FaultProxy(endpoint) as proxy:
        got = flat_ids(create_webdataset_dataloader(dataset, num_workers=2, cache=cache,
                                                    storage_options=s3_options(proxy.endpoint), **kw))
        gets = shard_gets(proxy)
    assert got == want
    assert sum(gets.values()) > SHARDS  # evicted shards were downloaded again
    # Two workers downloading at once each count the other's reserved room: never over the limit.
    assert cache.size() <= cache.max_bytes
    assert len(os.listdir(tmp_path / "c" / "entries")) <= 3


CHILD = textwrap.dedent("""
    import hashlib, json, sys
    from neurocodec.dataset.reader import Dataset
    from neurocodec.storage import ShardCache
    url, options, cache_dir, shards = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    with Dataset(url, storage_options=options, cache=ShardCache(cache_dir, "1G", prefetch_bytes=0)) as ds:
        order = [int(n) for n in shards.split(",")]
        ids = []
        for n in order:
            reader = ds.shard(n)
            ids += [int(reader.read_sample(i)["x"][0]) for i in range(len(reader))]
    print(json.dumps(ids))
""")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_processes_share_the_cache_and_download_each_shard_once(endpoint, dataset, tmp_path):
    # Each GET of a shard takes a while, so the processes really contend for the same shards.
    slow = lambda n, method, path: (time.sleep(0.05), "pass")[1]  # noqa: E731
    with FaultProxy(endpoint, slow) as proxy:
        options = json.dumps(s3_options(proxy.endpoint))
        orders = [list(range(SHARDS)), list(range(SHARDS))[::-1], [3, 1, 4, 0, 5, 2, 6, 7], list(range(SHARDS))]
        children = [subprocess.Popen([sys.executable, "-c", CHILD, dataset, options, str(tmp_path / "c"),
                                      ",".join(map(str, o))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=child_env(), text=True) for o in orders]
        results = [c.communicate(timeout=120) for c in children]
        gets = shard_gets(proxy)
    for (out, err), child in zip(results, children):
        assert child.returncode == 0, err
        assert sorted(json.loads(out)) == list(range(N))
    assert gets == Counter({f"shard_{n:06d}.tar": 1 for n in range(SHARDS)})
    assert len(proxy.requests("GET", ".idx")) == SHARDS


KILLED = textwrap.dedent("""
    import json, sys
    from neurocodec.dataset.reader import Dataset
    from neurocodec.storage import ShardCache
    url, options, cache_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    # part_bytes=0: one GET streamed to the temp file (a small file is otherwise fetched into memory)
    cache = ShardCache(cache_dir, "1G", prefetch_bytes=0, part_bytes=0)
    with Dataset(url, storage_options=options, cache=cache) as ds:
        ds[SHARD_SIZE]  # shard 1: its download stalls halfway, and this process is killed
""")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_download_leaves_nothing_a_reader_could_see(endpoint, dataset, tmp_path):
    stalled = {"done": False}

    def plan(n, method, path):
        if method == "GET" and path.split("?")[0].endswith("shard_000001.tar") and not stalled["done"]:
            stalled["done"] = True
            return "stall"
        return "pass"

    cache_dir = tmp_path / "c"
    entry = read_manifest(dataset, storage_options=s3_options(endpoint)).shards[1]
    with FaultProxy(endpoint, plan) as proxy:
        options = s3_options(proxy.endpoint)
        child = subprocess.Popen([sys.executable, "-c", KILLED.replace("SHARD_SIZE", str(SHARD)), dataset,
                                  json.dumps(options), str(cache_dir)], env=child_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proxy.stalled.wait(60), child.communicate(timeout=5)
            cache = ShardCache(cache_dir, "1G")
            key = cache.key(entry)
            deadline = time.monotonic() + 30
            while not list((cache_dir / "tmp").glob(f"{key}.shard_000001.tar.*")) and time.monotonic() < deadline:
                time.sleep(0.01)
            partial = list((cache_dir / "tmp").glob(f"{key}.shard_000001.tar.*"))
            assert partial, "the download never reached its temp file"
            assert not cache.cached(entry) and not (cache.entry_dir(entry) / entry.name).exists()
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            proxy.release()
            if child.poll() is None:
                child.kill()
        assert child.returncode == -signal.SIGKILL
        assert partial[0].exists()  # the killed process left its temp file behind ...
        with Dataset(dataset, storage_options=options, cache=cache) as ds:
            assert [sample_id(s) for s in ds] == list(range(N))  # ... and nobody reads it
        assert not partial[0].exists() and os.listdir(cache_dir / "tmp") == []
        assert os.path.getsize(cache.entry_dir(entry) / entry.name) == entry.bytes
        assert shard_gets(proxy)["shard_000001.tar"] == 2


class Faults:
    """About a third of the requests fail (503 SlowDown, dropped connections, answers cut
    halfway), by request number; and the first GET of every shard file is cut halfway."""

    def __init__(self) -> None:
        self.cut_once: set[str] = set()

    def __call__(self, n: int, method: str, path: str) -> str:
        name = path.split("?")[0]
        if method == "GET" and name.endswith(".tar") and name not in self.cut_once:
            self.cut_once.add(name)
            return "cut"
        if n % 6 == 2:
            return "503"
        if n % 6 == 5:
            return "cut" if method == "GET" else "drop"
        return "pass"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_writes_reads_and_resume_survive_injected_failures(endpoint, local, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="neurocodec.storage")
    url = new_url()
    with FaultProxy(endpoint, Faults()) as proxy:
        options = no_sdk_retries(proxy.endpoint)
        write_ids(url, options)
        kinds = Counter(r[3] for r in proxy.log)
        assert kinds["503"] >= 5 and kinds["drop"] >= 5
        # the manifest went up last and the dataset equals the local one byte for byte
        assert [(s.sha256, s.bytes) for s in read_manifest(url, storage_options=options).shards] == \
            [(s.sha256, s.bytes) for s in read_manifest(local).shards]
        cache = ShardCache(tmp_path / "c", "1G", retry=RetryPolicy(attempts=8, base_delay=0.005, max_delay=0.05))
        with Dataset(url, storage_options=options, cache=cache) as ds:
            assert [sample_id(s) for s in ds] == list(range(N))
        assert Counter(r[3] for r in proxy.requests("GET", ".tar"))["cut"] >= SHARDS
        kw = dict(batch_size=4, shuffle=True, buffer_size=24, seed=5)
        want = flat_ids(create_webdataset_dataloader(local, num_workers=0, **kw))
        loader = create_webdataset_dataloader(url, num_workers=2, storage_options=options,
                                              cache=ShardCache(tmp_path / "d", "1G", retry=cache.retry), **kw)
        got, state = _take(loader, 5)
        resumed = create_webdataset_dataloader(url, num_workers=2, storage_options=options,
                                               cache=ShardCache(tmp_path / "e", "1G", retry=cache.retry), **kw)
        resumed.load_state_dict(state)
        got.extend(flat_ids(resumed))
        assert got == want
    assert any("retry 1 of" in r.getMessage() for r in caplog.records)  # neurocodec's own retries ran


@pytest.mark.slow
def test_retries_beyond_the_sdk(endpoint, tmp_path, caplog):
    """Six failures in a row on one object outlast s3fs's own five tries; neurocodec's retry
    layer then tries again and the read succeeds."""
    caplog.set_level(logging.WARNING, logger="neurocodec.storage")
    url = write_ids(new_url(), s3_options(endpoint), n=16, shard_size=8)
    failed = Counter()

    def plan(n, method, path):
        if method == "GET" and path.split("?")[0].endswith("shard_000001.tar") and failed["n"] < 6:
            failed["n"] += 1
            return "503"
        return "pass"

    with FaultProxy(endpoint, plan) as proxy:
        cache = ShardCache(tmp_path / "c", "1G", retry=RetryPolicy(attempts=3, base_delay=0.001))
        with Dataset(url, storage_options=no_sdk_retries(proxy.endpoint), cache=cache) as ds:
            assert [sample_id(s) for s in ds] == list(range(16))
        assert shard_gets(proxy)["shard_000001.tar"] == 7
    assert any("downloading" in r.getMessage() and "retry 1 of 2" in r.getMessage() for r in caplog.records)


def test_nwb_converter_writes_to_s3_identically(endpoint, tmp_path):
    import nwbfiles
    from neurocodec.nwb.converter import NWBToWebDatasetConverter

    sessions = [nwbfiles.simple_session(tmp_path / f"s{i}.nwb", t0=1.0 * i, seconds=3.0, seed=i) for i in range(2)]
    kw = dict(shard_size=16, modalities=["spikes", "lfp"], bin_size_ms=10.0, sequence_length=50, overlap=0.5,
              fsync=False, progress=False)
    local = NWBToWebDatasetConverter(tmp_path / "local", **kw)
    local.convert_nwb_files(sessions)
    want = local.finalize()
    url = new_url()
    remote = NWBToWebDatasetConverter(url, storage_options=s3_options(endpoint), parts_dir=tmp_path / "parts", **kw)
    remote.convert_nwb_files(sessions)
    got = remote.finalize()
    assert got["samples"] == want["samples"] and got["output_dir"] == url
    assert not (tmp_path / "parts").exists()
    theirs, mine = read_manifest(url, storage_options=s3_options(endpoint)), read_manifest(tmp_path / "local")
    assert [(s.sha256, s.index_sha256) for s in theirs.shards] == [(s.sha256, s.index_sha256) for s in mine.shards]
    with pytest.raises(DatasetExistsError):
        NWBToWebDatasetConverter(url, storage_options=s3_options(endpoint), **kw)
