"""`create_shards_from_arrays` validates every row before writing anything, and runs each value
through its modality's `prepare` exactly once (it used to prepare every value twice)."""

from __future__ import annotations

import numpy as np
import pytest

from neurocodec import Dataset, create_shards_from_arrays
from neurocodec.errors import SampleError
from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec.testing import registry_with


class CountingPlugin:
    """A `counted` modality whose prepare counts its calls and rejects negative values."""

    def __init__(self) -> None:
        self.calls = 0
        self._policy = ArrayPolicy()

    def prepare(self, value, options):
        self.calls += 1
        if (np.asarray(value) < 0).any():
            raise ValueError("negative")
        return self._policy(value, options)

    @hookimpl
    def neurocodec_register_modalities(self, register) -> None:
        register(ModalitySpec(name="counted", codec={"id": "npy", "pack_integers": False},
                              prepare=self.prepare, description="counts prepare calls"))


def test_each_value_is_prepared_once(tmp_path) -> None:
    plugin = CountingPlugin()
    data = np.arange(60, dtype=np.float32).reshape(20, 3)
    create_shards_from_arrays(tmp_path / "ds", {"counted": data}, shard_size=7,
                              registry=registry_with(("counting", plugin)), fsync=False)
    assert plugin.calls == 20
    with Dataset(tmp_path / "ds", registry=registry_with(("counting", CountingPlugin()))) as ds:
        np.testing.assert_array_equal(np.stack([s["counted"] for s in ds]), data)


def test_a_bad_row_is_refused_before_anything_is_written(tmp_path) -> None:
    plugin = CountingPlugin()
    data = np.ones((10, 3), dtype=np.float32)
    data[7, 1] = -1
    with pytest.raises(SampleError, match=r"data_dict\['counted'\] row 7 \(counted\): negative"):
        create_shards_from_arrays(tmp_path / "ds", {"counted": data}, registry=registry_with(("counting", plugin)))
    assert not (tmp_path / "ds").exists() or not any((tmp_path / "ds").iterdir())
