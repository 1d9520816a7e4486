"""Reading a dataset front to back (`for sample in dataset`, `ShardReader.read_in_order`).

In-order reading must return exactly what random access returns, sample after sample; a bad
member fails when the reader reaches it, after every sample before it came back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError


def _values(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.standard_normal((int(rng.integers(1, 300)), 8)).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_reading_in_order_returns_every_sample(tmp_path: Path, compression: str) -> None:
    values = _values(150)
    with WebDatasetWriter(tmp_path / "ds", shard_size=70, compression=compression) as writer:
        for i, value in enumerate(values):
            writer.write_sample({"lfp": value}, metadata={"i": i})
    with Dataset(tmp_path / "ds") as ds:
        in_order = list(ds.shard(0).read_in_order())
        assert [s["metadata"]["i"] for s in in_order] == list(range(70))
        every = list(ds)
    assert [s["metadata"]["i"] for s in every] == list(range(150))
    for sample, value in zip(every, values):
        assert not sample["lfp"].flags.writeable
        np.testing.assert_array_equal(sample["lfp"], value)


def test_a_bad_payload_fails_when_reached(tmp_path: Path) -> None:
    values = _values(40)
    with WebDatasetWriter(tmp_path / "ds", shard_size=40) as writer:
        for i, value in enumerate(values):
            writer.write_sample({"lfp": value}, metadata={"i": i})
    with Dataset(tmp_path / "ds") as ds:
        offset = int(ds.shard(0).rows[30, 0, 0])
    shard = tmp_path / "ds" / "shard_000000.tar"
    data = bytearray(shard.read_bytes())
    data[offset + 200] ^= 0xFF
    shard.write_bytes(bytes(data))
    with Dataset(tmp_path / "ds") as ds:
        seen = []
        with pytest.raises(ShardError, match="sample_000000031.lfp.npy.*CRC-32"):
            for sample in ds:
                seen.append(sample["metadata"]["i"])
    assert seen == list(range(30))
