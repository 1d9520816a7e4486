"""End to end: a remote shard whose cached copy is damaged after download (a member's CRC-32
fails while reading) is downloaded again once and read correctly, through `Dataset[i]`, iteration,
`verify_all` and the loader; damaged at the source too, the read raises ShardError naming the
shard. Needs `Dataset` to call `RemoteShards.heal` on a read-time ShardError."""

from __future__ import annotations

import pytest

from loader_util import flat_ids, sample_id
from neurocodec.errors import ShardError
from neurocodec.dataset.reader import Dataset
from neurocodec.loader.dataloader import create_webdataset_dataloader
from test_storage_heal import N, SHARD, cached_file, flip_payload_byte, new_cache, served  # noqa: F401


def test_crc_failure_in_a_cached_copy_heals_then_a_damaged_source_raises(served, tmp_path):  # noqa: F811
    root, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[0]) == 0
        shard = cached_file(cache, ds, 0)
        flip_payload_byte(shard, sample=1)  # under the open reader too
        assert [sample_id(ds[i]) for i in range(SHARD)] == list(range(SHARD))
        assert (cache.downloads, cache.discarded) == (2, 1)
        assert shard.read_bytes() == (root / "shard_000000.tar").read_bytes()
        # Damaged again, and now at the source too: one more download is tried, then the error.
        flip_payload_byte(root / "shard_000000.tar", sample=3)
        flip_payload_byte(shard, sample=3)
        with pytest.raises(ShardError) as info:
            ds[3]
    assert info.value.shard == "shard_000000.tar"
    assert (cache.downloads, cache.discarded) == (2, 2) and not cache.cached(ds.shards[0])


@pytest.mark.parametrize("how", ["iterate", "verify_all", "loader"])
def test_iteration_verify_and_loader_heal_too(served, tmp_path, how):  # noqa: F811
    _, url = served
    cache = new_cache(tmp_path)
    with Dataset(url, cache=cache) as ds:
        assert sample_id(ds[0]) == 0
        flip_payload_byte(cached_file(cache, ds, 0), sample=2)
        if how == "iterate":
            assert [sample_id(s) for s in ds] == list(range(N))
        elif how == "verify_all":
            assert ds.verify_all() == N
        else:
            loader = create_webdataset_dataloader(url, batch_size=3, num_workers=0, cache=cache)
            assert sorted(flat_ids(loader)) == list(range(N))
    assert cache.discarded == 1
