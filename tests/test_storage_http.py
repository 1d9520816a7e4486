"""Reading datasets over HTTP(S) with fsspec's HTTPFileSystem, from Python's http.server on
loopback serving a dataset directory (the same code path serves https:// URLs)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from loader_util import flat_ids, sample_id, write_ids_dataset
from neurocodec.cli import main
from neurocodec.errors import DatasetError, ShardError
from neurocodec.dataset.reader import Dataset
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.storage import RetryPolicy, ShardCache
from neurocodec.dataset.writer import create_shards_from_arrays
from storage_servers import static_http_server

N, SHARD = 27, 6


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    write_ids_dataset(root / "ds", N, SHARD)
    with static_http_server(str(root)) as base:
        yield root, f"{base}/ds"


def test_http_dataset_reads_exactly(served, tmp_path):
    root, url = served
    cache = ShardCache(tmp_path / "c", "1G")
    with Dataset(url, cache=cache) as ds:
        assert len(ds) == N
        assert [sample_id(s) for s in ds] == list(range(N))
        assert ds.verify_all() == N
    assert cache.downloads == len(os.listdir(tmp_path / "c" / "entries")) == -(-N // SHARD)


@pytest.mark.multiprocess
def test_http_dataloader_with_workers_equals_local(served, tmp_path):
    root, url = served
    kw = dict(batch_size=4, shuffle=True, buffer_size=12, seed=1)
    want = flat_ids(create_webdataset_dataloader(root / "ds", num_workers=0, **kw))
    got = flat_ids(create_webdataset_dataloader(url, num_workers=2, cache=ShardCache(tmp_path / "c"), **kw))
    assert got == want


def test_http_info_cli_and_missing_things(served, tmp_path, capsys):
    root, url = served
    assert main(["info", url]) == 0
    assert f"samples: {N}" in capsys.readouterr().out
    with pytest.raises(DatasetError, match="no .neurocodec/dataset_metadata.json"):
        Dataset(url + "-missing")
    # a shard the manifest names but the server no longer has
    os.rename(root / "ds" / "shard_000002.tar", root / "ds" / "moved.tar")
    try:
        with Dataset(url, cache=ShardCache(tmp_path / "c", retry=RetryPolicy(2, 0.001))) as ds:
            with pytest.raises(ShardError, match="shard_000002.tar"):
                ds[2 * SHARD]
    finally:
        os.rename(root / "ds" / "moved.tar", root / "ds" / "shard_000002.tar")


def test_writing_to_http_is_refused_cleanly(served):
    _, url = served
    with pytest.raises(DatasetError, match=r"-new: http:// locations are read-only"):
        create_shards_from_arrays(url + "-new", {"x": np.zeros((3, 2))}, progress=False)
