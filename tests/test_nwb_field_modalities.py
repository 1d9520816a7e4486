"""The NWB converter on real NWB files (pynwb): `modalities={field: modality}` extracts two fields
with one modality's extractor and plugin, and `registry=` supplies the extractors, modalities and
codecs, exactly as it does for the loaders."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from pynwb import TimeSeries
from pynwb.behavior import PupilTracking

import nwbfiles
from neurocodec.errors import UnknownModalityError
from neurocodec.dataset.reader import Dataset
from neurocodec.nwb import ExtractOptions, NWBExtractor, TimeSeriesReader, find_objects
from neurocodec.nwb.converter import NWBToWebDatasetConverter
from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec.testing import registry_with

RATE, SECONDS = 100.0, 6.0
SETTINGS = {"bin_size_ms": 10, "sequence_length": 50, "overlap": 0.0, "progress": False, "fsync": False}


@pytest.fixture(scope="module")
def pupil_file(tmp_path_factory):
    """Two pupil sizes in one PupilTracking container (left: i, right: -i / 2 at sample i), units."""
    nwb = nwbfiles.new_file(identifier="pupils")
    count = int(RATE * SECONDS)
    left = TimeSeries(name="PupilLeft", data=np.arange(count, dtype="f4"), unit="mm", rate=RATE, starting_time=0.0)
    right = TimeSeries(name="PupilRight", data=-np.arange(count, dtype="f4") / 2, unit="mm", rate=RATE,
                       starting_time=0.0)
    nwbfiles.behavior_module(nwb).add(PupilTracking(time_series=[left, right]))
    nwbfiles.add_units(nwb, nwbfiles.random_spikes(np.random.default_rng(3), 3, 0.0, SECONDS))
    return nwbfiles.write(nwb, tmp_path_factory.mktemp("pupils") / "pupils.nwb")


def convert(out, files, modalities, **kwargs):
    with NWBToWebDatasetConverter(out, 4, modalities, **{**SETTINGS, **kwargs}) as converter:
        converter.convert_nwb_files(files)
        return converter.finalize()


def fields_of(out) -> dict[str, dict]:
    doc = json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())
    return {f["name"]: f for f in doc["fields"]}


def test_two_fields_from_one_modality(tmp_path, pupil_file):
    out = tmp_path / "out"
    summary = convert(out, [pupil_file], {"pupil_left": "behavior", "pupil_right": "behavior"},
                      series={"pupil_left": "PupilLeft", "pupil_right": "PupilRight"},
                      modality_options={"pupil_left": {"dtype": "float16"}, "pupil_right": {"dtype": "float16"}})
    assert summary["modalities"] == ["pupil_left", "pupil_right"]
    fields = fields_of(out)
    for name in ("pupil_left", "pupil_right"):
        assert (fields[name]["modality"], fields[name]["plugin"], fields[name]["dtype"]) == ("behavior", "behavior", "<f2")
    doc = json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())
    assert doc["extra"]["conversion"]["modalities"] == {"pupil_left": "behavior", "pupil_right": "behavior"}
    with h5py.File(pupil_file, "r") as f:  # the values, independently of pynwb
        left = f["/processing/behavior/PupilTracking/PupilLeft/data"][:]
        right = f["/processing/behavior/PupilTracking/PupilRight/data"][:]
    with Dataset(out) as ds:
        samples = list(ds)
    assert len(samples) == SECONDS * RATE // 50
    for sample in samples:
        i0 = round(sample["metadata"]["start_time"] * RATE)
        np.testing.assert_array_equal(sample["pupil_left"].ravel(), left[i0:i0 + 50].astype("f2"))
        np.testing.assert_array_equal(sample["pupil_right"].ravel(), right[i0:i0 + 50].astype("f2"))


def test_extra_fields_are_named_after_the_field(tmp_path, pupil_file):
    out = tmp_path / "out"
    convert(out, [pupil_file], {"units_a": "spikes"})
    fields = fields_of(out)
    assert sorted(fields) == ["metadata", "units_a", "units_a_observed"]
    assert fields["units_a"]["modality"] == "spikes"
    assert fields["units_a"]["codec"]["id"] == "spike-events"
    # the renamed mask follows its renamed field, so load-time bin sizes reach both
    assert fields["units_a_observed"]["codec"]["follows"] == "units_a"
    with Dataset(out, decode={"units_a": {"bin_size_ms": 5}}) as ds:
        assert ds[0]["units_a"].shape[0] == ds[0]["units_a_observed"].shape[0] == 2 * ds.manifest.fields[0].shape[0]


def test_a_list_still_names_fields_after_modalities(tmp_path, pupil_file):
    out = tmp_path / "out"
    convert(out, [pupil_file], ["spikes", "behavior"], series={"behavior": "PupilRight"})
    assert sorted(fields_of(out)) == ["behavior", "metadata", "spikes", "spikes_observed"]
    doc = json.loads((out / ".neurocodec" / "dataset_metadata.json").read_text())
    assert doc["extra"]["conversion"]["modalities"] == ["spikes", "behavior"]


def test_unknown_modality_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(UnknownModalityError, match=r"modality 'pupil' is not registered; known: .*behavior"):
        NWBToWebDatasetConverter(tmp_path / "out", modalities={"pupil_left": "pupil"})
    with pytest.raises(ValueError, match=r"series names fields that are not converted: \['behavior'\]"):
        NWBToWebDatasetConverter(tmp_path / "out", modalities={"pupil_left": "behavior"}, series={"behavior": "x"})


class PupilExtractor(NWBExtractor):
    """Every TimeSeries in a PupilTracking container; the one named by `series`, else the first."""

    modality = "pupil"

    def open(self, nwbfile, options: ExtractOptions):
        found = [s for s in find_objects(nwbfile, (TimeSeries,)) if isinstance(s.parent, PupilTracking)]
        chosen = [s for s in found if options.series in (None, s.name)]
        return TimeSeriesReader("pupil", chosen[0], options.path, options.nan_policy) if chosen else None


class PupilPlugin:
    """A modality the installed plugins do not have, with its NWB extractor."""

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="pupil", codec={"id": "npy", "pack_integers": False},
                              prepare=ArrayPolicy(kinds="f"), description="pupil size"))

    @hookimpl
    def neurocodec_nwb_extractor(self, modality):
        return PupilExtractor() if modality == "pupil" else None


def test_the_converter_uses_the_extractor_of_its_registry(tmp_path, pupil_file):
    registry = registry_with(("pupil-plugin", PupilPlugin()))
    out = tmp_path / "out"
    convert(out, [pupil_file], {"pupil_left": "pupil", "pupil_right": "pupil"}, registry=registry,
            series={"pupil_left": "PupilLeft", "pupil_right": "PupilRight"})
    fields = fields_of(out)
    assert (fields["pupil_left"]["modality"], fields["pupil_left"]["plugin"]) == ("pupil", "pupil-plugin")
    with Dataset(out, registry=registry) as ds:
        first = next(iter(ds))
    np.testing.assert_array_equal(first["pupil_left"].ravel(), np.arange(50, dtype="f4"))
    np.testing.assert_array_equal(first["pupil_right"].ravel(), -np.arange(50, dtype="f4") / 2)
    with pytest.raises(UnknownModalityError, match="'pupil'"):  # not installed: only through registry=
        NWBToWebDatasetConverter(tmp_path / "other", modalities=["pupil"])


def test_a_registry_cannot_go_to_worker_processes(tmp_path):
    with pytest.raises(ValueError, match="registry= cannot be sent to worker processes"):
        NWBToWebDatasetConverter(tmp_path / "out", registry=registry_with(), workers=2)


def test_cli_field_modality_pairs(tmp_path, pupil_file):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(pupil_file), "--output",
                           str(out), "--no-progress", "--modalities", "spikes", "pupil_right=behavior",
                           "--series", "pupil_right=PupilRight", "--bin-size-ms", "10", "--sequence-length", "50"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fields = fields_of(out)
    assert sorted(fields) == ["metadata", "pupil_right", "spikes", "spikes_observed"]
    assert fields["pupil_right"]["modality"] == "behavior"
    bad = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(pupil_file), "--output",
                          str(tmp_path / "bad"), "--modalities", "pupil_right=pupil"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "modality 'pupil' is not registered" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_npz_field_modality_pairs(tmp_path):
    data = np.arange(24, dtype="int32").reshape(4, 6)
    np.savez(tmp_path / "in.npz", units_a=data, units_b=data, other=data)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "neurocodec", "convert", "--input", str(tmp_path / "in.npz"),
                           "--output", str(out), "--no-progress", "--modalities", "units_a=spikes", "units_b=spikes"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    fields = fields_of(out)
    assert [fields[n]["modality"] for n in ("units_a", "units_b", "other")] == ["spikes", "spikes", "array"]
    with Dataset(out) as ds:
        for i, sample in enumerate(ds):
            np.testing.assert_array_equal(sample["units_b"], data[i])
