"""Mapping shard pages ahead of an in-order reader (neurocodec.format.readahead).

The mapper is a hint, so what matters is (1) that it really maps the range it is given (the
mapping's resident size in /proc/self/smaps grows by it), (2) that nothing it does, or fails to
do, changes what the reader returns, and (3) that it survives the ranges it cannot map.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.format import readahead
from neurocodec.format.readahead import PageMapper, page_mapper, piece_starts

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_READ is Linux's")


def mapping_rss_kb(address: int) -> int:
    """Resident KiB of the mapping that holds `address`, from /proc/self/smaps."""
    found = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            found = lo <= address < hi
        elif found and line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


def populate_supported() -> bool:
    mapper = PageMapper()
    data = mmap.mmap(-1, 1 << 16)
    mapper.map_ahead(memoryview(data)[:4096])
    assert mapper.wait(10)
    return mapper.enabled


@pytest.fixture
def file_map(tmp_path: Path):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes())
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    yield path, mapping
    mapping.close()


def test_piece_starts_cover_every_sample_in_pieces_of_about_the_size() -> None:
    sizes = np.array([100, 5000, 300, 300, 20_000, 10, 10, 10, 7000], dtype=np.int64)
    ends = np.cumsum(sizes) + 512
    starts = ends - sizes
    cuts = piece_starts(starts, ends, 6000)
    assert cuts[0] == 0 and cuts[-1] == len(sizes) and cuts == sorted(set(cuts))
    for a, b in zip(cuts, cuts[1:]):
        # a piece holds whole samples and starts no later than one piece size after the last
        assert b > a
        assert starts[b - 1] - starts[a] < 6000 or b - a == 1
    assert piece_starts(starts[:0], ends[:0], 6000) == [0]
    assert piece_starts(starts, ends, 1 << 30) == [0, len(sizes)]


def test_mapper_maps_the_range_it_is_given(file_map) -> None:
    if not populate_supported():
        pytest.skip("this kernel has no MADV_POPULATE_READ")
    _, mapping = file_map
    address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    before = mapping_rss_kb(address)
    mapper = PageMapper()
    mapper.map_ahead(memoryview(mapping)[1 << 20:5 << 20])
    assert mapper.wait(10)
    after = mapping_rss_kb(address)
    assert mapper.mapped_bytes == 4 << 20
    # Nothing was touched before; afterwards at least the 4 MiB asked for are mapped (the kernel
    # may map whole large folios around them, never more than the 8 MiB file).
    assert before < 1024 and 4 * 1024 <= after <= 8 * 1024, (before, after)


def test_an_unknown_advice_turns_the_mapper_off(file_map) -> None:
    _, mapping = file_map
    mapper = PageMapper(advice=12345)
    mapper.map_ahead(memoryview(mapping)[:4096])
    assert mapper.wait(10)
    assert not mapper.enabled and mapper.mapped_bytes == 0
    mapper.map_ahead(memoryview(mapping)[:4096])  # ignored from now on, without raising
    assert mapper.wait(10)


def test_a_range_that_cannot_be_mapped_is_skipped(file_map, tmp_path: Path) -> None:
    if not populate_supported():
        pytest.skip("this kernel has no MADV_POPULATE_READ")
    _, mapping = file_map
    gone_path = tmp_path / "gone.bin"
    gone_path.write_bytes(b"x" * (1 << 20))
    with open(gone_path, "rb") as f:
        gone = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    os.truncate(gone_path, 0)  # its pages no longer exist: touching them would raise SIGBUS
    mapper = PageMapper()
    mapper.map_ahead(memoryview(gone)[:1 << 20])
    mapper.map_ahead(memoryview(mapping)[:1 << 20])
    assert mapper.wait(10)
    assert mapper.enabled and mapper.mapped_bytes == 1 << 20
    gone.close()


def _child_maps(path: str, queue) -> None:
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mapper = page_mapper()
    mapper.map_ahead(memoryview(mapping)[:1 << 20])
    queue.put((id(mapper), mapper.wait(10), mapper.mapped_bytes))


def test_a_forked_child_gets_its_own_working_mapper(file_map) -> None:
    if not populate_supported():
        pytest.skip("this kernel has no MADV_POPULATE_READ")
    path, mapping = file_map
    parent = page_mapper()
    parent.map_ahead(memoryview(mapping)[:4096])   # the parent's thread exists before the fork
    assert parent.wait(10)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_maps, args=(str(path), queue))
    child.start()
    mapper_id, waited, mapped = queue.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert mapper_id != id(parent) and waited and mapped == 1 << 20


def test_reading_in_order_in_small_pieces_returns_every_sample(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    values = [rng.standard_normal((rng.integers(1, 300), 8)).astype(np.float32) for _ in range(150)]
    with WebDatasetWriter(tmp_path / "ds", shard_size=70) as writer:
        for i, value in enumerate(values):
            writer.write_sample({"lfp": value}, metadata={"i": i})
    with Dataset(tmp_path / "ds") as ds:
        reader = ds.shard(0)
        before = page_mapper().mapped_bytes
        in_order = list(reader.read_in_order(piece_bytes=8192))
        assert page_mapper().wait(10)
        assert [s["metadata"]["i"] for s in in_order] == list(range(70))
        for local, sample in enumerate(in_order):
            np.testing.assert_array_equal(sample["lfp"], values[local])
        if populate_supported():
            # every payload byte lay in some piece that was mapped
            assert page_mapper().mapped_bytes - before >= int(reader.rows[:, :, 1].sum())
        every = list(ds)
    assert [s["metadata"]["i"] for s in every] == list(range(150))
    for sample, value in zip(every, values):
        np.testing.assert_array_equal(sample["lfp"], value)
    assert readahead.PIECE_BYTES >= 1 << 20
