"""The writer refuses what readers would refuse: a member above the per-member ceiling, and a
manifest larger than readers accept (too many shards), each with advice, and early."""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs
import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.dataset import writer as writer_module
from neurocodec.errors import DatasetError, SampleError
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, Manifest, ShardEntry
from neurocodec.storage.output import check_manifest_size


def test_a_member_above_the_ceiling_is_refused_and_the_writer_stays_usable(tmp_path: Path) -> None:
    with WebDatasetWriter(tmp_path / "ds", shard_size=4, max_member_bytes=4096, fsync=False) as w:
        w.write_sample({"lfp": np.zeros((8, 8), dtype=np.float32)})
        with pytest.raises(SampleError, match=r"field 'lfp'.*more than the 4096.*NEUROCODEC_MAX_MEMBER_BYTES"):
            w.write_sample({"lfp": np.zeros((64, 64), dtype=np.float32)})
        w.write_sample({"lfp": np.ones((8, 8), dtype=np.float32)})
    with Dataset(tmp_path / "ds") as ds:
        assert len(ds) == 2 and ds[1]["lfp"].sum() == 64


def test_a_dataset_written_with_a_raised_ceiling_needs_it_to_be_read(tmp_path: Path, monkeypatch) -> None:
    big = np.arange(300_000, dtype=np.float32)  # 1.2 MB member
    with WebDatasetWriter(tmp_path / "ds", max_member_bytes=2 << 20, fsync=False) as w:
        w.write_sample({"lfp": big})
    with pytest.raises(DatasetError, match="lfp"):
        Dataset(tmp_path / "ds", max_member_bytes=1 << 20)
    monkeypatch.setenv("NEUROCODEC_MAX_MEMBER_BYTES", "1MiB")
    with pytest.raises(DatasetError, match="lfp"):
        Dataset(tmp_path / "ds")
    monkeypatch.setenv("NEUROCODEC_MAX_MEMBER_BYTES", "2MiB")
    with Dataset(tmp_path / "ds") as ds:
        np.testing.assert_array_equal(ds[0]["lfp"], big)


def _entry(number: int) -> ShardEntry:
    digest = hashlib.sha256(str(number).encode()).hexdigest()
    return ShardEntry(name=f"shard_{number:06d}.tar", index=f".shard_{number:06d}.idx", samples=1,
                      first_sample=number, bytes=4096, sha256=digest, index_bytes=160, index_sha256=digest)


@pytest.fixture
def fields(tmp_path: Path):
    """The fields of a real one-sample dataset."""
    with WebDatasetWriter(tmp_path / "one", fsync=False) as w:
        w.write_sample({"spikes": np.zeros((2, 3), dtype=np.int64)}, metadata={"i": 0})
    with Dataset(tmp_path / "one") as ds:
        return ds.fields


def test_a_manifest_readers_would_refuse_is_never_written(fields) -> None:
    small = Manifest(compression="none", total_samples=10, fields=fields,
                     shards=tuple(_entry(i) for i in range(10)))
    check_manifest_size(small, "here")
    shards = MAX_MANIFEST_BYTES // 250  # a compact shard entry takes under 300 bytes
    # Shard rows in the JSON (a threshold above the count; by default more than 10,000 shards
    # go to a shard table, docs/format.md 8.5, and the JSON stays small).
    large = Manifest(compression="none", total_samples=shards, fields=fields,
                     shards=tuple(_entry(i) for i in range(shards)), writer={"shard_table_above": shards})
    assert len(large.to_json()) > MAX_MANIFEST_BYTES
    with pytest.raises(DatasetError, match=r"here: the manifest of \d+ shards .*shard_size"):
        check_manifest_size(large, "here")
    tabled = attrs.evolve(large, writer={})
    assert tabled.json_size() == len(tabled.to_json()) < 2000
    check_manifest_size(tabled, "here")


def test_the_writer_stops_as_soon_as_the_manifest_would_be_too_large(tmp_path: Path, monkeypatch) -> None:
    # The real limit takes ~30,000 shards; the same check at a limit of about 10 shard entries.
    monkeypatch.setattr(writer_module, "MAX_MANIFEST_BYTES", 4000)
    w = WebDatasetWriter(tmp_path / "ds", shard_size=1, fsync=False)
    with pytest.raises(DatasetError, match=r"shards would make a manifest larger .*\(shard_size\)"):
        for i in range(100):
            w.write_sample({"x": np.array([i])})
    assert i < 20
    assert not (tmp_path / "ds" / ".neurocodec" / "dataset_metadata.json").exists()
    # the writer let go of the directory: a new one with larger shards succeeds
    with WebDatasetWriter(tmp_path / "ds", shard_size=50, fsync=False) as again:
        for i in range(100):
            again.write_sample({"x": np.array([i])})
    with Dataset(tmp_path / "ds") as ds:
        assert len(ds.shards) == 2
