"""Consecutive samples read together (`ShardReader.read_run`, `Dataset.read_run`) give exactly
what reading each alone gives: the same values, the same checks, a bad sample's error for that
sample alone, and arrays that own their sample's bytes. Runs are cut small here (RUN_BYTES) so
that every dataset spans several of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetLoader, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.format import layout, shard_reader, tar

pytestmark = pytest.mark.timeout(60)

SAMPLES, SHARD_SIZE = 30, 12


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs of about three samples (a sample here is under 2 KB with its headers)."""
    monkeypatch.setattr(shard_reader, "RUN_BYTES", 5000)
    return 5000


def write(root: Path) -> list[np.ndarray]:
    """SAMPLES samples of a (3, n) float32 array, n varying, with their index as metadata."""
    rng = np.random.default_rng(7)
    values = [rng.standard_normal((3, 20 + 7 * (i % 5))).astype(np.float32) for i in range(SAMPLES)]
    with WebDatasetWriter(root, shard_size=SHARD_SIZE, fsync=False) as writer:
        for i, value in enumerate(values):
            writer.write_sample({"x": value}, metadata={"i": i})
    return values


def member_offset(root: Path, shard: int, local: int, column: int) -> tuple[Path, int]:
    """(shard file, byte offset of member `column`'s payload of sample `local`), from the index."""
    with Dataset(root) as ds:
        reader = ds.shard(shard)
        return reader.path, int(reader.rows[local, column, 0])


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_runs_equal_single_reads_and_the_source(tmp_path: Path, small_runs: int) -> None:
    values = write(tmp_path / "ds")
    with Dataset(tmp_path / "ds") as ds:
        reader = ds.shard(1)
        assert shard_reader.ShardReader._run_end(reader, 0, SHARD_SIZE) < SHARD_SIZE  # several reads
        for first, stop in [(0, SHARD_SIZE), (3, 4), (5, 11), (7, 7)]:
            run = list(reader.read_run(first, stop))
            assert [s["__key__"] for s in run] == [reader.read_sample(k)["__key__"] for k in range(first, stop)]
            for k, sample in zip(range(first, stop), run):
                np.testing.assert_array_equal(sample["x"], values[SHARD_SIZE + k])
                assert sample["metadata"] == {"i": SHARD_SIZE + k}
        whole = list(ds)
    assert [s["metadata"]["i"] for s in whole] == list(range(SAMPLES))
    for sample, value in zip(whole, values):
        np.testing.assert_array_equal(sample["x"], value)
    with pytest.raises(IndexError):
        list(reader.read_run(5, SHARD_SIZE + 1))


def test_run_arrays_own_their_sample_bytes(tmp_path: Path, small_runs: int) -> None:
    values = write(tmp_path / "ds")
    before = (tmp_path / "ds" / "shard_000000.tar").read_bytes()
    with Dataset(tmp_path / "ds") as ds:
        shared = list(ds.shard(0).read_run(0, 4, writable=True))
        assert all(s["x"].flags.writeable for s in shared)
        shared[1]["x"][:] = -1.0  # its neighbours, read into the same buffer, keep their values
        for k in (0, 2, 3):
            np.testing.assert_array_equal(shared[k]["x"], values[k])
        assert not any(s["x"].flags.writeable for s in ds.shard(0).read_run(0, 4))
        np.testing.assert_array_equal(ds.shard(0).read_sample(1)["x"], values[1])
    assert (tmp_path / "ds" / "shard_000000.tar").read_bytes() == before


def test_a_damaged_payload_fails_its_sample_alone(tmp_path: Path, small_runs: int) -> None:
    values = write(tmp_path / "ds")
    path, offset = member_offset(tmp_path / "ds", 0, 4, 0)
    flip(path, offset + 200)  # inside sample 4's array payload: its CRC-32 fails
    with Dataset(tmp_path / "ds") as ds:
        run = list(ds.read_run(0, 0, SHARD_SIZE))
        assert isinstance(run[4], ShardError) and run[4].member == layout.sample_key(4) + ".x.npy"
        assert "CRC-32" in str(run[4]) and run[4].shard == "shard_000000.tar"
        for k in set(range(SHARD_SIZE)) - {4}:
            np.testing.assert_array_equal(run[k]["x"], values[k])
        seen = []
        with pytest.raises(ShardError, match="CRC-32"):
            for sample in ds:
                seen.append(sample["metadata"]["i"])
        assert seen == [0, 1, 2, 3]
    skipped = WebDatasetLoader(tmp_path / "ds", shuffle=False, on_error="skip")
    got = [s["metadata"]["i"] for s in skipped]
    assert got == [i for i in range(SAMPLES) if i != 4] and skipped.stream.skipped == 1


def test_a_forged_header_fails_its_sample_alone(tmp_path: Path, small_runs: int) -> None:
    write(tmp_path / "ds")
    path, offset = member_offset(tmp_path / "ds", 1, 6, 0)
    flip(path, offset - tar.BLOCK + 3)  # a letter of sample 18's member name, in its tar header
    with Dataset(tmp_path / "ds") as ds:
        run = list(ds.read_run(1, 0, SHARD_SIZE))
    bad = [k for k, s in enumerate(run) if isinstance(s, ShardError)]
    assert bad == [6] and "header" in str(run[6]) and run[6].member == layout.sample_key(18) + ".x.npy"
    loader = WebDatasetLoader(tmp_path / "ds", shuffle=False, on_error="raise")
    with pytest.raises(ShardError) as caught:
        for _ in loader:
            pass
    assert caught.value.sample == 18 and loader.stream.position == 18


def test_a_shard_truncated_under_an_open_reader(tmp_path: Path, small_runs: int) -> None:
    values = write(tmp_path / "ds")
    with Dataset(tmp_path / "ds") as ds:
        reader = ds.shard(0)
        end_of_5 = int(reader.rows[5, -1, 0] + reader.rows[5, -1, 1])
        os.truncate(reader.path, end_of_5 + 10)  # samples 0-5 whole, the rest gone
        run = list(reader.read_run(0, SHARD_SIZE))
    for k in range(6):
        np.testing.assert_array_equal(run[k]["x"], values[k])
    assert all(isinstance(s, ShardError) and "ends at byte" in str(s) for s in run[6:])


def test_a_shard_that_cannot_open_gives_its_error_for_each_sample(tmp_path: Path, small_runs: int) -> None:
    write(tmp_path / "ds")
    (tmp_path / "ds" / "shard_000001.tar").unlink()
    with Dataset(tmp_path / "ds") as ds:
        run = list(ds.read_run(1, 2, 9))
    assert len(run) == 7 and all(isinstance(s, ShardError) and s.shard == "shard_000001.tar" for s in run)
    loader = WebDatasetLoader(tmp_path / "ds", shuffle=False, on_error="skip")
    assert [s["metadata"]["i"] for s in loader] == list(range(SHARD_SIZE)) + list(range(2 * SHARD_SIZE, SAMPLES))


def test_metadata_read_in_runs_matches_json(tmp_path: Path, small_runs: int) -> None:
    write(tmp_path / "ds")
    path, offset = member_offset(tmp_path / "ds", 2, 3, 1)
    with open(path, "rb") as f:
        f.seek(offset)
        stored = json.loads(f.read(64).rstrip(b"\0").decode())
    with Dataset(tmp_path / "ds") as ds:
        assert list(ds.read_run(2, 3, 4))[0]["metadata"] == stored == {"i": 2 * SHARD_SIZE + 3}


@pytest.mark.parametrize("world, rank", [(1, 0), (3, 2)])
def test_one_sample_batches_count_like_batches(tmp_path: Path, small_runs: int, world: int, rank: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A loader read sample by sample (`_singles`) hands out the samples, positions and skip
    counts that the general batch path (`_batched`) does, bad samples and ranks included."""
    write(tmp_path / "ds")
    for k in (4, 13, 14):
        path, offset = member_offset(tmp_path / "ds", k // SHARD_SIZE, k % SHARD_SIZE, 0)
        flip(path, offset + 40)

    def walk() -> list[tuple[int, int, int]]:
        loader = WebDatasetLoader(tmp_path / "ds", seed=5, buffer_size=8, rank=rank, world_size=world,
                                  on_error="skip")
        seen = []
        for sample in loader:
            state = loader.get_state()
            seen.append((sample["metadata"]["i"], state["position"], state["skipped"]))
        state = loader.get_state()
        return seen + [(-1, state["position"], state["skipped"])]

    singles = walk()
    monkeypatch.setattr(WebDatasetLoader, "_singles", WebDatasetLoader._batched)
    assert walk() == singles and len(singles) > 5


def test_locate_all_equals_locate(tmp_path: Path) -> None:
    write(tmp_path / "ds")
    indices = np.array([0, 11, 12, 13, 29, 5, 24, 23], dtype=np.int64)
    with Dataset(tmp_path / "ds") as ds:
        numbers, places = ds.locate_all(indices)
        assert list(zip(numbers.tolist(), places.tolist())) == [ds.locate(int(i)) for i in indices]
        assert [len(a) for a in ds.locate_all(np.array([], dtype=np.int64))] == [0, 0]
        for bad in ([3, 30], [-1, 4]):
            with pytest.raises(IndexError, match="out of range"):
                ds.locate_all(np.array(bad, dtype=np.int64))
