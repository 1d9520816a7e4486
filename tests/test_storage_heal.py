"""Cached remote shards damaged on local disk heal: the copy is dropped and downloaded again once.

A dataset served over HTTP from a directory on loopback (`static_http_server`), read through a
`ShardCache` in tmp_path; the cached files are damaged in place, at their own size, as a failing
disk or a stray write would. Sample i holds x = [i, 7i + 1] and metadata {"id": i}.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from loader_util import sample_id, write_ids_dataset
from neurocodec.errors import ShardError
from neurocodec.dataset.reader import Dataset
from neurocodec.storage import RetryPolicy, ShardCache
from storage_servers import static_http_server

N, SHARD = 12, 4


@pytest.fixture
def served(tmp_path):
    """A fresh dataset (each test may damage it) and its URL."""
    root = tmp_path / "www"
    write_ids_dataset(root / "ds", N, SHARD)
    with static_http_server(str(root)) as base:
        yield root / "ds", f"{base}/ds"


def new_cache(tmp_path: Path) -> ShardCache:
    return ShardCache(tmp_path / "cache", "1G", retry=RetryPolicy(attempts=2, base_delay=0.001), prefetch_bytes=0)


def cached_file(cache: ShardCache, ds: Dataset, number: int, suffix: str = ".tar") -> Path:
    entry = ds.shards[number]
    path = cache.entry_dir(entry) / (entry.name if suffix == ".tar" else entry.index)
    assert path.exists()
    return path


def flip_payload_byte(path: Path, sample: int = 1) -> None:
    """Damage every member of local sample `sample` in place (the file keeps its size)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset, stored in np.load(path.with_name(f".{path.stem}.idx"))[sample, :, :2].tolist():
            f.seek(offset + stored // 2)
            byte = f.read(1)
            f.seek(offset + stored // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    assert path.stat().st_size == size


def flip_index_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_cached_index_is_downloaded_again(served, tmp_path):
    _, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[1]) == 1
        index = cached_file(cache, ds, 0, ".idx")
    flip_index_byte(index)
    with Dataset(url, cache=cache) as ds:
        assert [sample_id(ds[i]) for i in range(SHARD)] == list(range(SHARD))
    assert (cache.downloads, cache.discarded) == (2, 1)
    assert index.read_bytes() == (served[0] / ".shard_000000.idx").read_bytes()


def test_damaged_cached_shard_heals_under_full_verification(served, tmp_path):
    _, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[5]) == 5
        shard = cached_file(cache, ds, 1)
    flip_payload_byte(shard)
    with Dataset(url, cache=cache, verify="full") as ds:
        assert [sample_id(ds[i]) for i in range(N)] == list(range(N))
    assert (cache.downloads, cache.discarded) == (4, 1)  # shards 0 and 1 once each, 1 again, then 2
    assert shard.read_bytes() == (served[0] / "shard_000001.tar").read_bytes()


def test_heal_drops_a_copy_damaged_after_a_crc_failure(served, tmp_path):
    """The storage side of a read-time failure (a member's CRC-32): `RemoteShards.heal`."""
    _, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[0]) == 0
    flip_payload_byte(cached_file(cache, ds, 0), sample=2)
    with Dataset(url, cache=cache) as ds:
        with pytest.raises(ShardError, match=r"shard shard_000000.tar, member sample_0+3\.\w+\.\w+: payload CRC-32"):
            ds.shard(0).read_sample(2)  # the reader's own check, below any healing by Dataset
        assert ds.remote.heal(0) is True
        assert not cache.cached(ds.shards[0]) and cache.discarded == 1
    with Dataset(url, cache=cache) as ds:
        assert [sample_id(ds[i]) for i in range(SHARD)] == list(range(SHARD))
        assert ds.remote.heal(0) is False  # intact now: nothing dropped, nothing to retry
    assert (cache.downloads, cache.discarded) == (2, 1) and cache.cached(ds.shards[0])


def test_a_copy_replaced_by_another_reader_counts_as_healed(served, tmp_path):
    _, url = served
    cache = new_cache(tmp_path)
    first = Dataset(url, cache=cache)
    assert sample_id(first[0]) == 0
    flip_payload_byte(cached_file(cache, first, 0), sample=1)
    with Dataset(url, cache=cache) as second:  # another reader of the same cache heals it
        with pytest.raises(ShardError, match="CRC-32"):
            second.shard(0).read_sample(1)
        assert second.remote.heal(0) is True
    with Dataset(url, cache=cache) as third:
        assert sample_id(third[1]) == 1
    # The first reader's copy is gone from the cache: reopening gets the good one, no hashing.
    assert first.remote.heal(0) is True and cache.discarded == 1
    first.close()


def test_damaged_copy_and_damaged_object_raise(served, tmp_path):
    root, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[1]) == 1
        index = cached_file(cache, ds, 0, ".idx")
    flip_index_byte(index)
    flip_index_byte(root / ".shard_000000.idx")  # the object itself no longer matches the manifest
    with Dataset(url, cache=cache) as ds:
        with pytest.raises(ShardError) as info:
            ds[1]
    assert info.value.shard == "shard_000000.tar"
    assert "cannot download" in str(info.value) and "SHA-256" in str(info.value)
    assert (cache.downloads, cache.discarded) == (1, 1) and not cache.cached(ds.shards[0])


def test_an_authentically_bad_shard_is_not_downloaded_again(served, tmp_path):
    """A shard whose bad member is in the manifest's own SHA-256 (a hostile or broken dataset):
    the cached copy is intact, so healing drops nothing and the reader's error stands."""
    root, url = served
    flip_payload_byte(root / "shard_000002.tar", sample=0)
    manifest = json.loads((root / ".neurocodec" / "dataset_metadata.json").read_text())
    manifest["shards"][2]["sha256"] = hashlib.sha256((root / "shard_000002.tar").read_bytes()).hexdigest()
    (root / ".neurocodec" / "dataset_metadata.json").write_text(json.dumps(manifest))
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        for _ in range(2):
            with pytest.raises(ShardError, match=r"shard shard_000002.tar, member sample_0+9\."):
                ds[8]
            assert ds.remote.heal(2) is False
        assert sample_id(ds[9]) == 9
    assert (cache.downloads, cache.discarded) == (1, 0) and cache.cached(ds.shards[2])


def test_discard_damaged_when_nothing_is_cached(served, tmp_path):
    _, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        entry = ds.shards[1]
        assert cache.identity(entry) is None and cache.discard_damaged(entry) is True
        assert sample_id(ds[4]) == 4
        before = cache.identity(entry)
        shutil.rmtree(cache.entry_dir(entry))
        assert cache.discard_damaged(entry, before) is True and cache.discarded == 0
