"""Values a modality refuses: the writer's error names the sample and field and says, in plain
words, what the modality takes and what to do (no numpy dtype-kind codes)."""

from __future__ import annotations

import numpy as np
import pytest

from neurocodec.dataset.writer import WebDatasetWriter, create_shards_from_arrays
from neurocodec.errors import SampleError
from neurocodec.plugin import ArrayPolicy, ModalitySpec, hookimpl
from neurocodec.testing import registry_with


@pytest.fixture
def writer(tmp_path):
    """A writer over the installed plugins (aborted after the test)."""
    w = WebDatasetWriter(tmp_path / "ds", fsync=False)
    yield w
    w.abort()


def refusal(writer, sample) -> str:
    with pytest.raises(SampleError) as err:
        writer.write_sample(sample)
    return str(err.value)


def test_float_video_frames(writer):
    message = refusal(writer, {"camera_frames": np.zeros((2, 4, 4), dtype=np.uint8), "video": np.zeros((2, 4, 4))})
    assert "field 'video' (video)" in message and "kinds" not in message
    assert "must be integers or booleans (e.g. uint8), stored as uint8; this value is float64" in message
    assert "convert it first (e.g. to uint8" in message and "modalities={'<field>': 'array'}" in message


def test_video_frames_that_do_not_fit_uint8(writer):
    message = refusal(writer, {"video": np.full((2, 4, 4), 4095, dtype=np.uint16)})
    assert "field 'video' (video)" in message
    assert "are stored as uint8 (0..255), and these (uint16, 4095..4095) do not fit exactly" in message
    assert "nothing is rescaled silently" in message


class PupilPlugin:
    """A modality that takes floats only, with its own words for its values."""

    @hookimpl
    def neurocodec_register_modalities(self, register):
        register(ModalitySpec(name="pupil", codec={"id": "npy"}, prepare=ArrayPolicy(kinds="f", what="pupil sizes")))


def test_integers_where_floats_are_required_through_create_shards(tmp_path):
    registry = registry_with(("pupil-plugin", PupilPlugin()))
    with pytest.raises(SampleError) as err:
        create_shards_from_arrays(tmp_path / "ds", {"pupil": np.arange(6).reshape(3, 2)}, registry=registry)
    assert "data_dict['pupil'] row 0 (pupil): pupil sizes must be floating-point values (e.g. float32); " \
        "this value is int64: convert it first (e.g. to float32" in str(err.value)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("kinds, value, words", [
    ("biu", np.zeros(2), "must be integers or booleans (e.g. int16); this value is float64"),
    ("f", np.zeros(2, dtype=np.int32), "must be floating-point values (e.g. float32); this value is int32"),
    ("i", np.zeros(2, dtype=np.uint8), "must be signed integers (e.g. int16); this value is uint8"),
    ("iuf", np.zeros(2, dtype=bool), "must be integers or floating-point values (e.g. float32); this value is bool"),
])
def test_policy_kinds_in_words(kinds, value, words):
    with pytest.raises(TypeError) as err:
        ArrayPolicy(kinds=kinds)(value, {})
    assert words in str(err.value) and "kinds" not in str(err.value)


@pytest.mark.parametrize("policy, value, options, words", [
    (ArrayPolicy(ndim=2, what="calcium traces"), np.zeros(3), {},
     "calcium traces must have 2 dimensions; this value has 1 (shape (3,)): reshape it first"),
    (ArrayPolicy(kinds="iuf", float_dtypes=("float16",)), np.zeros(3), {"dtype": "int8"},
     "the dtype option may be 'float16', not 'int8'; leave it out"),
    (ArrayPolicy(kinds="iuf", float_dtypes=("float16",)), np.zeros(3), {"dtype": "no such dtype"},
     "the dtype option may be 'float16', not 'no such dtype'"),
    (ArrayPolicy(kinds="iuf"), np.zeros(3), {"dtype": "float16"}, "this modality takes no dtype option"),
    (ArrayPolicy(kinds="iuf", float_dtypes=("float16",)), np.zeros(3, dtype=np.int16), {"dtype": "float16"},
     "the dtype option 'float16' converts floating-point values only, and this value is int16"),
])
def test_policy_shape_and_option_in_words(policy, value, options, words):
    with pytest.raises((TypeError, ValueError)) as err:
        policy(value, options)
    assert words in str(err.value)
