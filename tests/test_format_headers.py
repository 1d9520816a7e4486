"""The run-at-once header check (neurocodec.format.headers) against the one-by-one reference.

The reader trusts `HeaderTemplates.build` to produce exactly the bytes `tar.build_header` writes,
and `differing_samples` to find every header that differs from them by even one byte; a gap in
either would let a corrupted or forged header through without the strict parser seeing it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.format import layout, tar
from neurocodec.format.headers import HeaderTemplates, differing_samples

SUFFIXES = [".spikes.npy", ".metadata.json", ".a_long_field_name_0123456789.npy"]


def reference(first_number: int, sizes: np.ndarray) -> np.ndarray:
    """The same headers, built one by one by the writer's function."""
    return np.array([[np.frombuffer(tar.build_header(layout.sample_key(first_number + i - 1) + suffix,
                                                     int(size)), dtype=np.uint8)
                      for suffix, size in zip(SUFFIXES, row)] for i, row in enumerate(sizes)])


@pytest.mark.parametrize("first_number", [1, 7, 99_999_990, 10**layout.KEY_DIGITS - 40])
def test_built_headers_are_the_writers_bytes(first_number: int) -> None:
    rng = np.random.default_rng(first_number)
    sizes = rng.integers(0, 1 << 33, size=(40, len(SUFFIXES)), dtype=np.int64)
    sizes[0] = [0, 1, tar.MAX_MEMBER_SIZE]
    sizes[1] = [511, 512, 4096]
    built = HeaderTemplates(SUFFIXES).build(first_number, sizes)
    assert built is not None and built.dtype == np.uint8
    np.testing.assert_array_equal(built, reference(first_number, sizes))


@pytest.mark.parametrize(("first_number", "size"), [
    (10**layout.KEY_DIGITS - 3, 5),      # the run's last key needs one digit more than the field holds
    (1, tar.MAX_MEMBER_SIZE + 1),        # a size the 11 octal digits cannot hold
    (1, -1),
])
def test_out_of_range_keys_and_sizes_fall_back(first_number: int, size: int) -> None:
    sizes = np.full((4, len(SUFFIXES)), 10, dtype=np.int64)
    sizes[-1, -1] = size
    assert HeaderTemplates(SUFFIXES).build(first_number, sizes) is None


def _tiny_shard(headers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tiny "shard" holding `headers` (samples, fields, 512) at block-aligned offsets, a payload
    block after each: its 512-byte blocks, and the payload offsets."""
    samples, fields = headers.shape[:2]
    blocks = np.zeros((samples * fields * 2, tar.BLOCK), dtype=np.uint8)
    offsets = np.arange(1, blocks.shape[0], 2, dtype=np.int64).reshape(samples, fields) * tar.BLOCK
    blocks[offsets.ravel() // tar.BLOCK - 1] = headers.reshape(-1, tar.BLOCK)
    return blocks, offsets


def test_every_single_byte_change_is_found() -> None:
    """A flipped bit at any of the 512 positions of any header marks exactly its sample."""
    sizes = np.array([[100, 7, 3000], [512, 0, 1]], dtype=np.int64)
    expected = HeaderTemplates(SUFFIXES).build(41, sizes)
    blocks, offsets = _tiny_shard(reference(41, sizes))
    assert differing_samples(blocks, offsets, expected).tolist() == []
    for sample in range(2):
        for column in range(len(SUFFIXES)):
            for position in range(tar.BLOCK):
                tampered = blocks.copy()
                tampered[offsets[sample, column] // tar.BLOCK - 1, position] ^= 0x01
                assert differing_samples(tampered, offsets, expected).tolist() == [sample]


def test_headers_of_other_keys_or_sizes_differ() -> None:
    """Well-formed headers in the wrong place: another sample's key, or another size."""
    sizes = np.array([[100, 7, 3000], [512, 0, 1], [9, 9, 9]], dtype=np.int64)
    blocks, offsets = _tiny_shard(reference(41, sizes))
    templates = HeaderTemplates(SUFFIXES)
    assert differing_samples(blocks, offsets, templates.build(42, sizes)).tolist() == [0, 1, 2]
    other = sizes.copy()
    other[1, 2] += 1
    assert differing_samples(blocks, offsets, templates.build(41, other)).tolist() == [1]


def _dataset(root: Path, samples: int) -> Path:
    with WebDatasetWriter(root, shard_size=samples) as writer:
        for i in range(samples):
            writer.write_sample({"spikes": np.full((3, 4), i, dtype=np.float32)}, metadata={"trial": i})
    return root


@pytest.mark.parametrize("position", [0, 9, 15, 100, 130, 150, 155, 156, 257, 300, 511])
def test_a_flipped_header_byte_fails_only_its_sample(tmp_path: Path, position: int) -> None:
    """One flipped byte in one member header, anywhere in it, in the middle of a checked run."""
    root = _dataset(tmp_path / "ds", 70)
    with Dataset(root) as ds:
        offset = int(ds.shard(0).rows[37, 1, 0])
    shard = root / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    data[offset - tar.BLOCK + position] ^= 0x04
    shard.write_bytes(bytes(data))
    with Dataset(root) as ds:
        for i in range(70):
            if i == 37:
                with pytest.raises(ShardError, match=re.escape("sample_000000038.metadata.json")):
                    ds[i]
            else:
                assert ds[i]["spikes"][0, 0] == i
