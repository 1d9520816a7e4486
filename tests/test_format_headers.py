"""The writer's member headers as the reader rebuilds them (neurocodec.format.headers).

The reader compares the header in front of every member with `MemberHeaders.build` byte for byte
and sends any difference to the strict parser, so `build` must produce exactly the bytes
`tar.build_header` writes, for every key, field and size; and a header differing in any one
byte must fail the sample it belongs to, and only it, by random access and by iteration.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.format import layout, tar
from neurocodec.format.headers import MemberHeaders

SUFFIXES = [".spikes.npy", ".metadata.json", ".a_long_field_name_0123456789.npy", ".x" * 41 + ".npy"]


@pytest.mark.parametrize("number", [0, 7, 99_999_990, layout.MAX_SAMPLES - 1])
def test_built_headers_are_the_writers_bytes(number: int) -> None:
    rng = np.random.default_rng(number)
    sizes = [0, 1, 511, 512, 4096, tar.MAX_MEMBER_SIZE, *rng.integers(0, 1 << 33, size=40).tolist()]
    headers = MemberHeaders(SUFFIXES)
    key = layout.sample_key(number)
    for column, suffix in enumerate(SUFFIXES):
        for size in sizes:
            built = headers.build(key.encode(), sum(key.encode()), column, size)
            if len(key + suffix) < tar.MAX_NAME:
                assert built == tar.build_header(key + suffix, size)
            else:
                assert built is None  # the writer could not have written such a name


@pytest.mark.parametrize("size", [tar.MAX_MEMBER_SIZE + 1, -1])
def test_sizes_the_writer_cannot_write_have_no_header(size: int) -> None:
    key = layout.sample_key(1).encode()
    assert MemberHeaders(SUFFIXES).build(key, sum(key), 0, size) is None


def test_keys_of_another_length_have_no_header() -> None:
    key = layout.sample_key(layout.MAX_SAMPLES).encode()  # one digit too many
    assert MemberHeaders(SUFFIXES).build(key, sum(key), 0, 10) is None


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
        # Read in order (a whole piece's headers checked at once): the samples before it come
        # back, then the same error.
        seen = []
        with pytest.raises(ShardError, match=re.escape("sample_000000038.metadata.json")):
            for sample in ds:
                seen.append(int(sample["spikes"][0, 0]))
        assert seen == list(range(37))


def test_kept_tails_build_the_same_headers_as_the_writer():
    """`MemberHeaders` keeps each (field, size, key sum) tail: headers built from it equal
    `tar.build_header` for keys of the same digit sum, other sizes and fields, and pickling drops it."""
    import pickle

    headers = MemberHeaders([".spikes.npy", ".metadata.json"])
    keys = [b"sample_%09d" % n for n in (123, 321, 213, 1000000, 7, 70, 999999999)]
    for _ in range(2):                                        # built, then from the kept tails
        for key in keys:
            for column, suffix in enumerate([".spikes.npy", ".metadata.json"]):
                for size in (0, 38528, 38529):
                    expected = tar.build_header(key.decode() + suffix, size)
                    assert headers.build(key, sum(key), column, size) == expected
    assert headers._tails and pickle.loads(pickle.dumps(headers))._tails == {}
    assert headers.build(b"sample_1", sum(b"sample_1"), 0, 10) is None  # not the writer's key length
