"""Legacy shards of the guide's pipeline: pickled `.pyd` members are read only on explicit opt-in."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch

from neurocodec import Dataset, DatasetError, ShardError
from neurocodec.dataset.legacy import PickleNotAllowedError, convert_legacy_shards, iter_legacy_samples


class _Boom:
    """Unpickling this object writes a marker file: proof of code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _member(t: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    t.addfile(info, io.BytesIO(data))


@pytest.fixture
def legacy_dir(tmp_path):
    root = tmp_path / "legacy"
    root.mkdir()
    for shard, mode, suffix in ((0, "w", ".tar"), (1, "w:gz", ".tar.gz")):
        with tarfile.open(root / f"shard_{shard:06d}{suffix}", mode) as t:
            for i in range(3):
                key = f"sample_{shard * 3 + i + 1:09d}"
                _member(t, f"{key}.spikes.pyd", pickle.dumps(np.full((2, 3), shard * 3 + i)))
                _member(t, f"{key}.behavior.pyd", pickle.dumps(torch.full((4, 2), float(i))))
                _member(t, f"{key}.metadata.json", json.dumps({"trial_id": shard * 3 + i}).encode())
    (root / "dataset_metadata.json").write_text(json.dumps({"total_samples": 6}))
    return root


def test_pickled_members_are_refused_without_opt_in(legacy_dir):
    with pytest.raises(PickleNotAllowedError, match="allow_pickle=True"):
        next(iter_legacy_samples(legacy_dir))


def test_neurocodec_reader_rejects_legacy_manifest_with_a_pointer(legacy_dir):
    with pytest.raises(DatasetError, match="convert_legacy_shards"):
        Dataset(legacy_dir)


def test_opt_in_reads_and_converts_to_the_safe_format(legacy_dir, tmp_path):
    samples = list(iter_legacy_samples(legacy_dir, allow_pickle=True))
    assert [s["__key__"] for s in samples] == [f"sample_{i:09d}" for i in range(1, 7)]
    assert samples[4]["metadata"] == {"trial_id": 4}
    assert torch.equal(samples[4]["behavior"], torch.full((4, 2), 1.0))
    summary = convert_legacy_shards(legacy_dir, tmp_path / "new", allow_pickle=True, shard_size=4)
    assert summary["samples"] == 6 and summary["shards"] == 2
    with Dataset(tmp_path / "new") as ds:
        for i in range(6):
            np.testing.assert_array_equal(ds[i]["spikes"], np.full((2, 3), i))
            assert ds[i]["behavior"].dtype == np.float32
            assert ds[i]["metadata"] == {"trial_id": i}


def test_hostile_pickle_is_never_executed_without_opt_in(tmp_path):
    root = tmp_path / "evil"
    root.mkdir()
    marker = tmp_path / "executed"
    with tarfile.open(root / "shard_000000.tar", "w") as t:
        _member(t, "sample_000000001.spikes.pyd", pickle.dumps(_Boom(str(marker))))
    with pytest.raises(PickleNotAllowedError):
        list(iter_legacy_samples(root))
    with pytest.raises(PickleNotAllowedError):
        convert_legacy_shards(root, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out" / ".neurocodec" / "dataset_metadata.json").exists()


def test_links_and_truncation_are_shard_errors(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    with tarfile.open(root / "shard_000000.tar", "w") as t:
        link = tarfile.TarInfo("sample_000000001.spikes.npy")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    with pytest.raises(ShardError, match="regular file"):
        list(iter_legacy_samples(root))
    buf = io.BytesIO()
    np.save(buf, np.arange(1000))
    with tarfile.open(root / "shard_000000.tar", "w") as t:
        _member(t, "sample_000000001.spikes.npy", buf.getvalue())
    data = (root / "shard_000000.tar").read_bytes()
    (root / "shard_000000.tar").write_bytes(data[:1500])
    with pytest.raises(ShardError, match="truncated"):
        list(iter_legacy_samples(root))
