"""End-to-end: write every compression, read every sample back bit-exactly."""

from __future__ import annotations

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.format.compression import COMPRESSIONS


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_every_compression(tmp_path, rng, compression):
    samples = [
        {"spikes": rng.poisson(2, (10, 4)), "behavior": rng.standard_normal((10, 2)).astype("f4")}
        for _ in range(7)
    ]
    with WebDatasetWriter(tmp_path / "ds", shard_size=3, compression=compression) as writer:
        for i, s in enumerate(samples):
            writer.write_sample(s, metadata={"trial_id": i})
    with Dataset(tmp_path / "ds") as ds:
        assert len(ds) == 7 and len(ds.shards) == 3
        for i, (want, got) in enumerate(zip(samples, ds)):
            assert got["metadata"] == {"trial_id": i}
            for name in want:
                assert got[name].dtype == want[name].dtype
                np.testing.assert_array_equal(got[name], want[name])
        assert ds.verify_all() == 7
