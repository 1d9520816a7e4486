"""Collation (issue 3, point 6): `collate_webdataset` and custom collate functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loader_util import key_id

from neurocodec import (
    Dataset,
    WebDatasetLoader,
    WebDatasetWriter,
    collate_webdataset,
    create_webdataset_dataloader,
    default_registry,
)

N, T = 22, 5


def units_of(i: int) -> int:
    """Unit count of sample i: constant within each run of 4 ids, 3 to 5 units."""
    return 3 + (i // 4) % 3


def spikes_of(i: int) -> np.ndarray:
    return (np.arange(T * units_of(i), dtype=np.int32).reshape(T, units_of(i)) + i) % 7


def behavior_of(i: int) -> np.ndarray:
    return np.full((T, 2), i, dtype=np.float32) + np.arange(2, dtype=np.float32)


@pytest.fixture(scope="module")
def variable(tmp_path_factory) -> Path:
    """Spikes from sessions with different unit counts: manifest shape (T, None)."""
    path = tmp_path_factory.mktemp("collate") / "variable"
    with WebDatasetWriter(path, shard_size=6, fsync=False) as w:
        for i in range(N):
            w.write_sample({"spikes": spikes_of(i), "behavior": behavior_of(i)},
                           metadata={"id": i, "units": units_of(i)})
    return path


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> Path:
    """The guide's fields with fixed shapes (for its custom_collate, which stacks)."""
    path = tmp_path_factory.mktemp("collate") / "fixed"
    rng = np.random.default_rng(0)
    with WebDatasetWriter(path, shard_size=16, fsync=False) as w:
        for i in range(70):
            w.write_sample({"spikes": rng.random((T, 4)).astype(np.float32) + 0.1 * i,
                            "behavior": rng.standard_normal((T, 2))}, metadata={"id": i})
    return path


def check_variable_batch(batch: dict) -> list[int]:
    ids = [key_id(k) for k in batch["__key__"]]
    assert isinstance(batch["metadata"], list) and [m["id"] for m in batch["metadata"]] == ids
    width = max(units_of(i) for i in ids)
    spikes, mask = batch["spikes"], batch["spikes_mask"]
    assert spikes.dtype == torch.int32 and tuple(spikes.shape) == (len(ids), T, width)
    assert mask.dtype == torch.bool and tuple(mask.shape) == (len(ids), width)
    for row, i in enumerate(ids):
        u = units_of(i)
        assert mask[row].tolist() == [True] * u + [False] * (width - u)
        assert np.array_equal(spikes[row, :, :u].numpy(), spikes_of(i))
        assert not spikes[row, :, u:].any()  # zero padding
    assert batch["behavior"].dtype == torch.float32 and tuple(batch["behavior"].shape) == (len(ids), T, 2)
    assert np.array_equal(batch["behavior"].numpy(), np.stack([behavior_of(i) for i in ids]))
    assert "behavior_mask" not in batch
    return ids


def test_manifest_marks_unit_axis_variable(variable):
    with Dataset(variable) as ds:
        shapes = {f.name: f.shape for f in ds.fields}
    assert shapes["spikes"] == (T, None) and shapes["behavior"] == (T, 2)


def test_collate_webdataset_pads_variable_units_and_stacks_fixed(variable):
    samples = list(WebDatasetLoader(variable, shuffle=False))
    with Dataset(variable) as ds:
        fields = ds.fields
    for lo in range(0, N, 7):
        check_variable_batch(collate_webdataset(samples[lo:lo + 7], fields, default_registry()))
        check_variable_batch(collate_webdataset(samples[lo:lo + 7], fields))  # generic rule, same result
    # Without the manifest, shapes come from the batch: a mixed batch pads, a uniform one stacks.
    inferred = collate_webdataset(samples[2:6])
    assert tuple(inferred["spikes_mask"].shape) == (4, 4) and tuple(inferred["spikes"].shape) == (4, T, 4)
    uniform = collate_webdataset(samples[:4])
    assert "spikes_mask" not in uniform and tuple(uniform["spikes"].shape) == (4, T, 3)
    with pytest.raises(ValueError):
        collate_webdataset([])
    with pytest.raises(ValueError):
        collate_webdataset([samples[0], {k: v for k, v in samples[1].items() if k != "behavior"}])


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_carry_masks_on_every_batch(variable, workers):
    loader = create_webdataset_dataloader(variable, batch_size=4, num_workers=workers, shuffle=False)
    seen = []
    for batch in loader:  # unshuffled: batches of 4 consecutive ids share one unit count
        seen += check_variable_batch(batch)
    assert seen == list(range(N))
    shuffled = create_webdataset_dataloader(variable, batch_size=5, num_workers=workers, buffer_size=8, seed=1)
    assert sorted(i for b in shuffled for i in check_variable_batch(b)) == list(range(N))


def custom_collate(batch):
    """The guide's "Custom Collate Function", verbatim."""
    # Custom batch processing
    spikes = torch.stack([b["spikes"] for b in batch])
    behavior = torch.stack([b["behavior"] for b in batch])

    # Add custom preprocessing
    spikes = spikes / spikes.max()  # Normalize

    return {
        "spikes": spikes,
        "behavior": behavior,
    }


def expected_custom_batches(path: Path, size: int, **kw) -> list[dict]:
    samples = list(WebDatasetLoader(path, **kw))
    return [custom_collate(samples[i:i + size]) for i in range(0, len(samples), size)]


def assert_same_batches(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == {"spikes", "behavior"}
        assert torch.equal(g["spikes"], w["spikes"]) and torch.equal(g["behavior"], w["behavior"])
        assert float(g["spikes"].max()) == 1.0


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_guide_custom_collate_with_create_webdataset_dataloader(fixed, workers):
    loader = create_webdataset_dataloader(fixed, batch_size=8, num_workers=workers, buffer_size=32, seed=2,
                                          collate_fn=custom_collate)
    assert_same_batches(list(loader), expected_custom_batches(fixed, 8, buffer_size=32, seed=2))


def test_guide_custom_collate_with_torch_dataloader(fixed):
    loader = torch.utils.data.DataLoader(WebDatasetLoader(fixed), batch_size=32, collate_fn=custom_collate)
    got = list(loader)
    assert [len(b["spikes"]) for b in got] == [32, 32, 6]
    assert_same_batches(got, expected_custom_batches(fixed, 32))


def test_collate_fn_returning_a_tuple(fixed):
    loader = create_webdataset_dataloader(fixed, batch_size=10, num_workers=0, shuffle=False,
                                          collate_fn=lambda b: (torch.stack([s["spikes"] for s in b]),
                                                                [s["__key__"] for s in b]))
    batches = list(loader)
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    assert [k for _, keys in batches for k in keys] == [f"sample_{i + 1:09d}" for i in range(70)]
    assert batches[0][0].shape == (10, T, 4)


def test_zero_dimensional_fields_collate_to_a_vector(tmp_path):
    from neurocodec import create_shards_from_arrays, create_webdataset_dataloader

    create_shards_from_arrays(tmp_path / "ds", {"label": np.arange(10), "x": np.ones((10, 3), "f4")},
                              shard_size=4, fsync=False)
    batch = next(iter(create_webdataset_dataloader(tmp_path / "ds", batch_size=4, num_workers=0, shuffle=False)))
    assert batch["label"].tolist() == [0, 1, 2, 3] and batch["x"].shape == (4, 3)
