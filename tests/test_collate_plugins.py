"""A plugin's own collate rules, through `collate_webdataset` and the DataLoader (issue 12, item 3),
and the install hint when a dataset's modality plugin is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils.data
from loader_util import key_id

from neurocodec import (
    Dataset,
    RandomAccessWebDataset,
    WebDatasetLoader,
    WebDatasetWriter,
    collate_webdataset,
    create_webdataset_dataloader,
)
from neurocodec.plugin.collate import Collated, allocate_batch_tensor, allocating_from
from neurocodec.errors import UnknownCodecError, UnknownModalityError
from neurocodec.loader.slots import SlotPool
from neurocodec.plugin import ArrayPolicy, Codec, ModalitySpec, NpyCodec, hookimpl
from neurocodec.testing import registry_with

N = 10


def pad_with_minus_one(values, field):
    """Pupil traces padded with -1 (not 0) into a float32 batch; the mask holds the lengths."""
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in values), "decoded arrays"
    width = max(len(v) for v in values)
    out = allocate_batch_tensor((len(values), width), torch.float32)
    out.fill_(-1)
    for row, v in enumerate(values):
        out.numpy()[row, :len(v)] = v
    return Collated(out, torch.tensor([len(v) for v in values]))


def events_as_columns(values, field):
    """JSON events collated into one dict of columns."""
    return Collated({"label": [v["label"] for v in values],
                     "count": torch.tensor([len(v["times"]) for v in values])})


class ObservablePlugin:
    """Modalities whose collate rules show in the batch: an array one, a JSON one, and a text
    one that keeps the default rule (a non-array field then stays a list)."""

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="pupil", codec={"id": "npy"}, prepare=ArrayPolicy(kinds="f", ndim=1),
                              collate=pad_with_minus_one))
        register(ModalitySpec(name="events", codec={"id": "json"}, prepare=lambda v, o: v,
                              collate=events_as_columns))
        register(ModalitySpec(name="notes", codec={"id": "text"}, prepare=lambda v, o: v))


class ScaledCodec(Codec):
    """A toy third-party codec (int16 arrays stored as .npy under their own id)."""

    codec_id = "test-scaled"
    kind = "array"
    extension = "npy"

    def encode(self, value):
        """As .npy."""
        return NpyCodec().encode(value)

    def decode(self, data, field):
        """From .npy."""
        return NpyCodec().decode(data, field)


class ScaledPlugin:
    """A plugin with its own codec."""

    @hookimpl
    def neurocodec_register_codecs(self, register):
        register(ScaledCodec)

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="scaled", codec={"id": "test-scaled"}, prepare=ArrayPolicy(kinds="i")))


def pupil_of(i: int) -> np.ndarray:
    return np.arange(2 + i % 3, dtype=np.float32) + i


def events_of(i: int) -> dict:
    return {"label": f"e{i}", "times": list(range(i % 4))}


@pytest.fixture(scope="module")
def registry():
    return registry_with(("observable", ObservablePlugin()))


@pytest.fixture(scope="module")
def observable(tmp_path_factory, registry) -> Path:
    path = tmp_path_factory.mktemp("plugin-collate") / "observable"
    with WebDatasetWriter(path, shard_size=4, registry=registry, fsync=False) as w:
        for i in range(N):
            w.write_sample({"pupil": pupil_of(i), "events": events_of(i), "notes": f"n{i}"})
    return path


def check_batch(batch: dict) -> list[int]:
    """The batch is what the plugin's rules make of its samples; returns the sample ids."""
    ids = [key_id(k) for k in batch["__key__"]]
    width = max(len(pupil_of(i)) for i in ids)
    want = np.full((len(ids), width), -1, dtype=np.float32)
    for row, i in enumerate(ids):
        want[row, :len(pupil_of(i))] = pupil_of(i)
    assert batch["pupil"].dtype == torch.float32 and np.array_equal(batch["pupil"].numpy(), want)
    assert batch["pupil_mask"].tolist() == [len(pupil_of(i)) for i in ids]
    assert batch["events"]["label"] == [f"e{i}" for i in ids]
    assert batch["events"]["count"].tolist() == [i % 4 for i in ids]
    assert batch["notes"] == [f"n{i}" for i in ids]
    assert set(batch) == {"__key__", "metadata", "pupil", "pupil_mask", "events", "notes"}
    return ids


def test_collate_webdataset_applies_the_plugins_rules(observable, registry):
    with Dataset(observable, registry=registry) as ds:
        samples, fields = list(ds), ds.fields
    assert {f.name: f.modality for f in fields if f.name != "metadata"} == {
        "pupil": "pupil", "events": "events", "notes": "notes"}
    for lo in range(0, N, 3):
        assert check_batch(collate_webdataset(samples[lo:lo + 3], fields, registry)) == list(range(lo, min(lo + 3, N)))


@pytest.mark.multiprocess
@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_applies_the_plugins_rules(observable, registry, workers):
    loader = create_webdataset_dataloader(observable, batch_size=3, num_workers=workers, buffer_size=4,
                                          seed=3, registry=registry)
    seen = [i for batch in loader for i in check_batch(batch)]
    assert sorted(seen) == list(range(N))


def test_allocate_batch_tensor_takes_memory_from_the_loaders_slot():
    pool = SlotPool(workers=1, per_worker=1, capacity=4096, context=None)
    slot = pool.memory.untyped_storage().data_ptr()
    with allocating_from(pool.acquire(0)):
        first = allocate_batch_tensor((4, 8), torch.float32, zero=True)
        second = allocate_batch_tensor([3], torch.int64)
    for t in (first, second):
        assert t.untyped_storage().data_ptr() == slot and slot <= t.data_ptr() < slot + pool.capacity
    assert first.data_ptr() != second.data_ptr() and not first.any() and tuple(second.shape) == (3,)
    outside = allocate_batch_tensor((2,), torch.int64, zero=True)  # no slot: ordinary memory
    assert outside.untyped_storage().data_ptr() != slot and outside.tolist() == [0, 0]


# -- the plugin is not installed -------------------------------------------------------------------

def as_installed(path: Path, distribution: str) -> None:
    """Record the fields' plugin as an entry-point plugin would: its distribution and version."""
    manifest_path = path / ".neurocodec" / "dataset_metadata.json"
    manifest = json.loads(manifest_path.read_text())
    for field in manifest["fields"]:
        if field["name"] != "metadata":
            field.update(distribution=distribution, plugin_version="1.2")
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.multiprocess
def test_missing_modality_plugin_says_what_to_install_in_the_dataloader(tmp_path, registry):
    path = tmp_path / "ds"
    with WebDatasetWriter(path, shard_size=4, registry=registry, fsync=False) as w:
        for i in range(N):
            w.write_sample({"pupil": pupil_of(i), "events": events_of(i), "notes": f"n{i}"})
    as_installed(path, "neurocodec-observable")
    hint = re.escape("install the plugin that provides it: "
                     "plugin 'observable' (pip install neurocodec-observable==1.2)")
    # The codecs are built in: reading samples needs no plugin, as in `Dataset`...
    with Dataset(path) as ds:
        samples, fields = list(ds), ds.fields
    assert np.array_equal(samples[0]["pupil"], pupil_of(0))
    assert np.array_equal(next(iter(WebDatasetLoader(path, shuffle=False)))["pupil"].numpy(), pupil_of(0))
    assert np.array_equal(RandomAccessWebDataset(path)[1]["pupil"].numpy(), pupil_of(1))
    # ... but batching needs the plugin's rules: never a silent zero-padding instead.
    missing = r"modality '(pupil|events|notes)' \(field '\1'\) is not provided by any installed plugin.*"
    with pytest.raises(UnknownModalityError, match=missing + hint):
        collate_webdataset(samples[:3], fields)
    for workers in (0, 2):
        with pytest.raises(UnknownModalityError, match=hint):
            next(iter(create_webdataset_dataloader(path, batch_size=3, num_workers=workers)))


@pytest.mark.multiprocess
def test_missing_codec_plugin_gives_datasets_install_hint_in_every_loader(tmp_path):
    path = tmp_path / "ds"
    with WebDatasetWriter(path, shard_size=4, registry=registry_with(("scaled", ScaledPlugin())), fsync=False) as w:
        for i in range(N):
            w.write_sample({"scaled": np.arange(3, dtype=np.int16) * i})
    as_installed(path, "neurocodec-scaled")
    hint = re.escape("codec 'test-scaled' (field 'scaled') is not provided by any installed plugin; install the "
                     "plugin that provides it: plugin 'scaled' (pip install neurocodec-scaled==1.2)")
    with pytest.raises(UnknownCodecError, match=hint):
        Dataset(path)
    for workers in (0, 2):
        with pytest.raises(UnknownCodecError, match=hint):
            next(iter(create_webdataset_dataloader(path, batch_size=3, num_workers=workers)))
    with pytest.raises(UnknownCodecError, match=hint):
        next(iter(WebDatasetLoader(path)))
    # Every loader builds the codecs when it is made (to know the fields as decoded), so the
    # hint comes before any DataLoader worker starts.
    with pytest.raises(UnknownCodecError, match=hint):
        torch.utils.data.DataLoader(WebDatasetLoader(path), batch_size=None, num_workers=2)
    with pytest.raises(UnknownCodecError, match=hint):
        RandomAccessWebDataset(path)
