"""merge_datasets (used by the parallel NWB converter): stored bytes copied unchanged, shards
committed in the background, and a failure leaving what any failed write leaves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.format.layout import HOME, MANIFEST_PATH
from neurocodec.dataset.merge import merge_datasets

TEMP = re.compile(r"\..*\.tmp")


def _write(path: Path, ids: range, shard_size: int) -> Path:
    with WebDatasetWriter(path, shard_size=shard_size, compression="zstd", fsync=False) as writer:
        for i in ids:
            writer.write_sample({"spikes": np.arange(12, dtype=np.int32).reshape(3, 4) * i,
                                 "lfp": np.full((2, 5), i / 7, dtype=np.float32)}, metadata={"id": i})
    return path


@pytest.mark.parametrize("shard_size", [1, 4, 7, 100])
def test_merge_is_byte_identical_to_one_writer(tmp_path: Path, shard_size: int) -> None:
    parts = [_write(tmp_path / "a", range(0, 9), 5), _write(tmp_path / "b", range(9, 13), 3),
             _write(tmp_path / "c", range(13, 30), 6)]
    merged = tmp_path / "merged"
    merge_datasets(parts, merged, shard_size)
    single = _write(tmp_path / "single", range(30), shard_size)
    names = sorted(p.name for p in single.iterdir() if p.name != HOME)  # the shards and indexes
    assert sorted(p.name for p in merged.iterdir() if p.name != HOME) == names
    for name in names:
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    with Dataset(merged) as ds:
        assert [ds[i]["metadata"]["id"] for i in range(len(ds))] == list(range(30))


def test_a_bad_part_fails_the_merge_cleanly_with_a_commit_in_flight(tmp_path: Path) -> None:
    parts = [_write(tmp_path / "a", range(0, 9), 5), _write(tmp_path / "b", range(9, 20), 5)]
    with Dataset(parts[1]) as part:
        offset = int(part.shard(0).rows[1, 0, 0])            # part b's second sample's first payload
    shard = parts[1] / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    merged = tmp_path / "merged"
    with pytest.raises(ShardError, match="CRC-32"):
        merge_datasets(parts, merged, 4)                     # fails while shard 1 is committing
    assert not (merged / MANIFEST_PATH).exists()
    assert not [p for p in merged.iterdir() if TEMP.fullmatch(p.name)]
    with Dataset(_write(tmp_path / "single", range(8), 4)) as reference:
        for name in ("shard_000000.tar", "shard_000001.tar"):   # committed before the failure, whole
            assert (merged / name).read_bytes() == (reference.path / name).read_bytes()
