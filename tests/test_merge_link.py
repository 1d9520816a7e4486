"""merge_datasets takes over, by hard link, a part's shards that are already byte for byte the
output's (the converter's parts share the output's shard size), checks them against the part's
manifest first, and copies everything else as before."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.format import tar
from neurocodec.format.layout import HOME, MANIFEST_PATH
from neurocodec.dataset.merge import merge_datasets

TEMP = re.compile(r"\..*\.tmp")


def _write(path: Path, ids: range, shard_size: int, compression: str = "none") -> Path:
    with WebDatasetWriter(path, shard_size=shard_size, compression=compression, fsync=False) as writer:
        for i in ids:
            writer.write_sample({"lfp": np.full((50, 3), i / 7, dtype=np.float32)}, metadata={"id": i})
    return path


def _files(directory: Path) -> list[str]:
    """The shards and indexes (not `.neurocodec/`, which holds the manifest)."""
    return sorted(p.name for p in directory.iterdir() if p.name != HOME)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_the_first_parts_full_shards_are_linked_and_the_rest_copied(tmp_path: Path, compression: str) -> None:
    parts = [_write(tmp_path / "a", range(0, 9), 4, compression), _write(tmp_path / "b", range(9, 14), 4, compression)]
    merged = tmp_path / "merged"
    merge_datasets(parts, merged, 4)
    single = _write(tmp_path / "single", range(14), 4, compression)
    assert _files(merged) == _files(single)
    for name in _files(single):
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    linked = [name for name in _files(merged) if (parts[0] / name).exists() and os.path.samefile(merged / name, parts[0] / name)]
    # a's shards 0 and 1 are full (samples 0-7); its shard 2 (sample 8) continues with b's samples
    assert linked == [".shard_000000.idx", ".shard_000001.idx", "shard_000000.tar", "shard_000001.tar"]
    with Dataset(merged, verify="full") as ds:
        assert [ds[i]["metadata"]["id"] for i in range(len(ds))] == list(range(14))


def test_a_single_parts_every_shard_is_linked_the_partial_last_one_too(tmp_path: Path) -> None:
    part = _write(tmp_path / "a", range(0, 10), 4)
    merged = tmp_path / "merged"
    manifest = merge_datasets([part], merged, 4, extra={"note": "merged"})
    assert _files(merged) == _files(part)
    assert all(os.path.samefile(merged / name, part / name) for name in _files(part))
    assert manifest.extra == {"note": "merged"} and manifest.total_samples == 10
    with Dataset(merged, verify="full") as ds:
        assert [ds[i]["metadata"]["id"] for i in range(len(ds))] == list(range(10))


@pytest.mark.parametrize("where", ["payload", "padding", "header"])
def test_a_corrupted_shard_is_refused_before_it_is_taken_over(tmp_path: Path, where: str) -> None:
    part = _write(tmp_path / "a", range(0, 8), 4)
    with Dataset(part) as ds:
        offset, stored = (int(v) for v in ds.shard(1).rows[2, 0, :2])   # shard 1, sample 2, first payload
    # A payload byte (its CRC would catch it too), a padding byte or a member name's last
    # character in its header (no CRC covers either).
    at = {"payload": offset, "padding": offset + stored + tar.padding(stored) - 1,
          "header": offset - tar.BLOCK + len("sample_000000006.lfp.npy") - 1}[where]
    shard = part / "shard_000001.tar"
    data = bytearray(shard.read_bytes())
    assert data[at] == {"payload": data[at], "padding": 0, "header": ord("y")}[where]
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    merged = tmp_path / "merged"
    with pytest.raises(ShardError, match="does not hold the bytes its index") as caught:
        merge_datasets([part], merged, 4)
    assert "shard_000001.tar" in str(caught.value)
    assert not (merged / MANIFEST_PATH).exists()
    assert not [p for p in merged.iterdir() if TEMP.fullmatch(p.name)]
    assert not (merged / "shard_000001.tar").exists()


def test_parts_on_another_filesystem_are_copied(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to put the parts on")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as elsewhere:
        part = _write(Path(elsewhere) / "a", range(0, 8), 4)
        merged = tmp_path / "merged"
        merge_datasets([part], merged, 4)
        assert _files(merged) == _files(part)
        for name in _files(part):
            assert (merged / name).read_bytes() == (part / name).read_bytes()
            assert os.stat(merged / name).st_nlink == 1
