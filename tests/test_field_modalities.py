"""Field names are not modality names: `modalities={field: modality}` on the writers puts several
fields under one modality plugin, the manifest records it, and readers batch by it."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from neurocodec.plugin.collate import Collated, collate_arrays
from neurocodec.errors import SampleError, UnknownModalityError
from neurocodec.dataset.reader import Dataset
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec.testing import registry_with
from neurocodec.dataset.writer import WebDatasetWriter, create_shards_from_arrays


def manifest_fields(path) -> dict[str, dict]:
    """The manifest's field entries by name, read as plain JSON."""
    doc = json.loads((path / ".neurocodec" / "dataset_metadata.json").read_text())
    return {f["name"]: f for f in doc["fields"]}


def stored_dtype(path, member_suffix: str) -> str:
    """The dtype in the .npy header of the first member ending in `member_suffix` (via tarfile)."""
    with tarfile.open(sorted(path.glob("*.tar"))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
        data = tar.extractfile(member).read()
    return str(np.lib.format.read_array(io.BytesIO(data)).dtype)


def test_two_fields_share_the_lfp_plugin_and_its_float16_option(tmp_path, rng):
    left = rng.standard_normal((4, 8, 3)).astype("float32")
    right = rng.standard_normal((4, 8, 5)).astype("float32")
    options = {"pupil_left": {"dtype": "float16"}, "pupil_right": {"dtype": "float16"}}
    with WebDatasetWriter(tmp_path / "ds", 2, modalities={"pupil_left": "lfp", "pupil_right": "lfp"},
                          modality_options=options, fsync=False) as writer:
        for i in range(4):
            writer.write_sample({"pupil_left": left[i], "pupil_right": right[i], "label": i})
    fields = manifest_fields(tmp_path / "ds")
    for name in ("pupil_left", "pupil_right"):
        assert fields[name]["modality"] == "lfp"
        assert fields[name]["plugin"] == "lfp"
        assert fields[name]["dtype"] == "<f2"
        assert stored_dtype(tmp_path / "ds", f".{name}.npy") == "float16"
    assert fields["label"]["modality"] == "json"  # unmapped fields resolve as before
    with Dataset(tmp_path / "ds") as ds:
        got = list(ds)
    for i, sample in enumerate(got):
        np.testing.assert_array_equal(sample["pupil_left"], left[i].astype("float16"))
        np.testing.assert_array_equal(sample["pupil_right"], right[i].astype("float16"))


def test_two_fields_share_the_spikes_codec(tmp_path, rng):
    counts = {n: rng.integers(0, 9, (6, 10, 4)).astype("int32") for n in ("units_a", "units_b")}
    summary = create_shards_from_arrays(tmp_path / "ds", counts, 3, progress=False, fsync=False,
                                        modalities={"units_a": "spikes", "units_b": "spikes"})
    assert summary["samples"] == 6
    fields = manifest_fields(tmp_path / "ds")
    for name in counts:
        assert fields[name]["modality"] == "spikes"
        assert fields[name]["codec"] == {"id": "npy", "pack_integers": True}
        assert stored_dtype(tmp_path / "ds", f".{name}.npy") == "uint8"  # packed, as spikes are
    with Dataset(tmp_path / "ds") as ds:
        for i, sample in enumerate(ds):
            for name, array in counts.items():
                assert sample[name].dtype == np.int32
                np.testing.assert_array_equal(sample[name], array[i])


def _collate_marked(values, field):
    """Stacks like collate_arrays and adds 1000, so a test can see this rule ran."""
    stacked = collate_arrays(values, field)
    return Collated(stacked.data + 1000, stacked.mask)


class MarkedPlugin:
    """A modality whose collate rule leaves a visible mark."""

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="marked", codec={"id": "npy", "pack_integers": False},
                              prepare=ArrayPolicy(), collate=_collate_marked, description="test"))


def test_the_loader_batches_a_field_by_its_recorded_modality(tmp_path):
    registry = registry_with(("marked-plugin", MarkedPlugin()))
    values = np.arange(12, dtype="int64").reshape(4, 3)
    create_shards_from_arrays(tmp_path / "ds", {"first": values, "second": values}, 2, progress=False,
                              fsync=False, registry=registry, modalities={"first": "marked"})
    loader = create_webdataset_dataloader(tmp_path / "ds", batch_size=4, num_workers=0, shuffle=False,
                                          registry=registry)
    batch = next(iter(loader))
    assert torch.equal(batch["first"], torch.from_numpy(values + 1000))
    assert torch.equal(batch["second"], torch.from_numpy(values))  # generic: the plain rule


def test_unknown_modality_names_it_and_lists_the_installed_ones(tmp_path):
    with pytest.raises(UnknownModalityError, match=r"modalities\['pupil_left'\]: modality 'pupil' is not "
                                                   r"registered; known: .*behavior.*lfp.*spikes"):
        WebDatasetWriter(tmp_path / "ds", modalities={"pupil_left": "pupil"})
    assert not (tmp_path / "ds").exists()  # refused before anything was created
    with pytest.raises(UnknownModalityError, match="'pupil'"):
        create_shards_from_arrays(tmp_path / "ds2", {"pupil_left": np.zeros((2, 3))}, progress=False,
                                  modalities={"pupil_left": "pupil"})
    assert not (tmp_path / "ds2").exists()


@pytest.mark.parametrize("modalities, error", [
    ({"Pupil.Left": "behavior"}, ValueError), (["behavior"], TypeError), ({"left": 3}, TypeError),
])
def test_malformed_mapping(tmp_path, modalities, error):
    with pytest.raises(error, match="modalities"):
        WebDatasetWriter(tmp_path / "ds", modalities=modalities)


def test_a_mapped_field_the_first_sample_lacks(tmp_path):
    writer = WebDatasetWriter(tmp_path / "ds", 2, fsync=False, modalities={"pupil_left": "behavior"})
    with pytest.raises(SampleError, match=r"modalities name fields no sample has: \['pupil_left'\]"):
        writer.write_sample({"pupil_right": np.zeros(3)})
    writer.write_sample({"pupil_left": np.zeros((2, 3))})  # the rejected sample fixed nothing
    writer.finalize()
    assert manifest_fields(tmp_path / "ds")["pupil_left"]["modality"] == "behavior"


def test_a_mapped_field_data_dict_lacks_writes_nothing(tmp_path):
    with pytest.raises(SampleError, match=r"modalities name fields data_dict does not have: \['right'\]"):
        create_shards_from_arrays(tmp_path / "ds", {"left": np.zeros((2, 3))}, progress=False,
                                  modalities={"right": "behavior"})
    assert not (tmp_path / "ds").exists()
