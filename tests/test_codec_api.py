"""The codec API that lets codecs know neural data: a field's codec chosen at write time
(`codecs=`), stored in the manifest with the data, and load-time decode options (`decode=`) that
change what a field decodes to, checked before anything is read, in every loader."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Mapping

import attrs
import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter, create_shards_from_arrays
from neurocodec.errors import UnknownCodecError
from neurocodec.format.manifest import FieldSpec
from neurocodec.loader.dataloader import create_webdataset_dataloader
from neurocodec.loader.datasets import RandomAccessWebDataset, WebDatasetLoader
from neurocodec.plugin import ArrayPolicy, Codec, CodecError, ModalitySpec, hookimpl
from neurocodec.plugin.codecs import NpyCodec
from neurocodec.testing import registry_with


@attrs.frozen
class Repeated:
    """A value that is not an array but decodes to one: `row` repeated `times` times."""

    row: np.ndarray
    times: int


class RepeatCodec(Codec):
    """Stores a row and a count; decodes to the repeated rows (or, with `rows=False`, the row)."""

    codec_id = "test-repeat"
    kind = "array"
    extension = "rep"
    decode_options: ClassVar[Mapping[str, str]] = {"every": "keep every n-th repeated row",
                                                    "rows": "False gives the row once"}

    def describe_value(self, value: Any):
        if isinstance(value, Repeated):
            return value.row.dtype, (value.times, len(value.row))
        return None

    def encode(self, value: Repeated) -> bytes:
        return json.dumps({"row": value.row.tolist(), "times": value.times}).encode()

    def decode(self, data, field: FieldSpec) -> np.ndarray:
        return self._decode(data, field, 1)

    def _decode(self, data, field: FieldSpec, every: int) -> np.ndarray:
        doc = json.loads(bytes(data))
        count = -(-doc["times"] // every)
        if count * len(doc["row"]) * 4 > field.value_bound:
            raise CodecError("declares more rows than the manifest allows")
        return np.tile(np.asarray(doc["row"], dtype=field.dtype), (count, 1))

    def decoder(self, field: FieldSpec, options: Mapping[str, Any] | None = None):
        options = dict(options or {})
        every = options.get("every", 1)
        if type(every) is not int or every < 1:
            raise CodecError(f"every must be a positive integer, got {every!r}")
        if options.get("rows", True) is False:
            return lambda data: np.asarray(json.loads(bytes(data))["row"], dtype=field.dtype)
        return lambda data: self._decode(data, field, every)

    def decoded_field(self, field: FieldSpec, options: Mapping[str, Any]) -> FieldSpec:
        if options.get("rows", True) is False:
            return attrs.evolve(field, shape=field.shape[1:])
        every = options.get("every", 1)
        rows = None if field.shape[0] is None else -(-field.shape[0] // every)
        return attrs.evolve(field, shape=(rows, *field.shape[1:]))


class FollowerCodec(NpyCodec):
    """An npy codec whose config follows another field, and takes that field's `every` option."""

    codec_id = "test-follower"
    decode_options: ClassVar[Mapping[str, str]] = {"every": "keep every n-th row"}

    def __init__(self, follows: str = "") -> None:
        super().__init__()
        self.follows = follows

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id, "follows": self.follows}

    def decoder(self, field: FieldSpec, options: Mapping[str, Any] | None = None):
        every = (options or {}).get("every", 1)
        return lambda data: self.decode(data, attrs.evolve(field, shape=(None, *field.shape[1:])))[::every]


def prepare(value: Any, options: Mapping[str, Any]) -> Any:
    """Repeated values go through as they are (the codec describes them); arrays as arrays."""
    return value if isinstance(value, Repeated) else ArrayPolicy()(value, options)


class Plugin:
    @hookimpl
    def neurocodec_register_codecs(self, register) -> None:
        register(RepeatCodec)
        register(FollowerCodec)

    @hookimpl
    def neurocodec_register_modalities(self, register) -> None:
        # stored as npy by default; `codecs=` picks the repeat codec for a field
        register(ModalitySpec(name="rows", codec={"id": "npy"}, prepare=prepare))


@pytest.fixture(scope="module")
def registry():
    return registry_with(("repeat", Plugin()))


@pytest.fixture(scope="module")
def written(tmp_path_factory, registry):
    out = tmp_path_factory.mktemp("api") / "ds"
    codecs = {"lfp": {"id": "test-repeat"}, "mask": {"id": "test-follower", "follows": "lfp"}}
    with WebDatasetWriter(out, shard_size=3, registry=registry, codecs=codecs,
                          modalities={"lfp": "rows", "mask": "array"}) as writer:
        for i in range(7):
            writer.write_sample({"lfp": Repeated(np.arange(4, dtype=np.float32) + i, 6),
                                 "mask": np.full((6, 2), i, dtype=np.int16)})
    return out


def test_codec_chosen_at_write_time_is_in_the_manifest_with_the_decoded_form(written, registry):
    doc = json.loads((written / ".neurocodec" / "dataset_metadata.json").read_text())
    lfp = next(f for f in doc["fields"] if f["name"] == "lfp")
    assert lfp["codec"] == {"id": "test-repeat"}
    assert (lfp["dtype"], lfp["shape"], lfp["extension"]) == ("<f4", [6, 4], "rep")
    # the decoded array (6*4*4 bytes) is larger than its payload: declared
    assert lfp["max_value_bytes"] == 96 > lfp["max_raw_bytes"]
    # plain npy fields declare nothing new (their manifests stay as they were)
    assert "max_value_bytes" not in next(f for f in doc["fields"] if f["name"] == "mask")
    with Dataset(written, registry=registry) as ds:
        assert np.array_equal(ds[2]["lfp"], np.tile(np.arange(4, dtype=np.float32) + 2, (6, 1)))


def test_decode_options_change_values_and_fields_and_follow(written, registry):
    with Dataset(written, registry=registry, decode={"lfp": {"every": 4}}) as ds:
        sample = ds[5]
        assert np.array_equal(sample["lfp"], np.tile(np.arange(4, dtype=np.float32) + 5, (2, 1)))
        # the mask's codec follows lfp: it takes lfp's `every` too
        assert np.array_equal(sample["mask"], np.full((2, 2), 5, dtype=np.int16))
        assert ds.fields[0].shape == (2, 4) and ds.manifest.fields[0].shape == (6, 4)
        assert ds.decode_options[0] == {"every": 4} and ds.decode_options[1] == {"every": 4}
    with Dataset(written, registry=registry, decode={"lfp": {"every": 4}, "mask": {}}) as ds:
        assert ds[0]["mask"].shape == (6, 2)  # its own (empty) options win over following
    with Dataset(written, registry=registry, decode={"lfp": {"rows": False}}) as ds:
        assert ds[1]["lfp"].shape == (4,) and ds.fields[0].shape == (4,)


@pytest.mark.parametrize("decode, error, match", [
    ({"nope": {}}, ValueError, r"decode names fields this dataset does not have: \['nope'\] \(fields: lfp, mask"),
    ({"lfp": {"evry": 2}}, ValueError, r"decode\['lfp'\]: codec 'test-repeat' .* no option\(s\) \['evry'\] "
                                       r"\(it takes: every, rows\)"),
    ({"lfp": {"every": 0}}, ValueError, r"decode\['lfp'\]: every must be a positive integer, got 0"),
    ({"__key__": {}}, ValueError, "does not have"),
    ({"lfp": 3}, TypeError, r"decode\['lfp'\] must be a dict of options"),
    (["lfp"], TypeError, "decode must map field names"),
])
def test_bad_decode_options_are_refused_at_opening_by_every_loader(written, registry, decode, error, match):
    openers = [lambda: Dataset(written, registry=registry, decode=decode),
               lambda: WebDatasetLoader(written, registry=registry, decode=decode),
               lambda: RandomAccessWebDataset(written, registry=registry, decode=decode),
               lambda: create_webdataset_dataloader(written, num_workers=0, registry=registry, decode=decode)]
    for open_ in openers:
        with pytest.raises(error, match=match):
            open_()


def test_npy_fields_take_no_decode_options(tmp_path):
    create_shards_from_arrays(tmp_path / "ds", {"lfp": np.zeros((4, 8, 2), np.float32)}, shard_size=2)
    with pytest.raises(ValueError, match=r"codec 'npy' of this field takes no option\(s\) \['raw'\] \(it takes: none\)"):
        Dataset(tmp_path / "ds", decode={"lfp": {"raw": True}})


@pytest.mark.multiprocess
def test_decode_options_reach_dataloader_workers(written, registry):
    # workers open the dataset themselves: the options travel with the loader's settings
    loader = create_webdataset_dataloader(written, batch_size=2, num_workers=2, shuffle=False, registry=registry,
                                          decode={"lfp": {"every": 3}})
    batches = list(loader)
    assert [int(v) for b in batches for v in b["mask"].data[:, 0, 0]] == list(range(7))
    assert all(tuple(b["lfp"].data.shape[1:]) == (2, 4) and tuple(b["mask"].data.shape[1:]) == (2, 2)
               for b in batches)
    assert torch_equal(batches[1]["lfp"].data[0], np.tile(np.arange(4, dtype=np.float32) + 2, (2, 1)))


def torch_equal(tensor, array) -> bool:
    return np.array_equal(tensor.numpy(), array)


def test_codecs_argument_is_checked_before_writing(tmp_path, registry):
    data = {"lfp": np.zeros((2, 8, 2), np.float32)}
    with pytest.raises(UnknownCodecError, match=r"codec 'nope' \(field 'lfp'\) is not provided"):
        create_shards_from_arrays(tmp_path / "a", data, codecs={"lfp": {"id": "nope"}})
    with pytest.raises(TypeError, match=r"codecs\['lfp'\] must be a codec config"):
        create_shards_from_arrays(tmp_path / "b", data, codecs={"lfp": "npy"})
    with pytest.raises(Exception, match=r"codecs name fields data_dict does not have: \['spikes'\]"):
        create_shards_from_arrays(tmp_path / "c", data, codecs={"spikes": {"id": "npy"}})
    with pytest.raises(ValueError, match=r"codecs\['lfp'\]: codec 'json' stores json values, and modality 'lfp' "
                                         r"gives array values"):
        create_shards_from_arrays(tmp_path / "d", data, codecs={"lfp": {"id": "json"}})
    with pytest.raises(UnknownCodecError, match="rejects its config"):
        create_shards_from_arrays(tmp_path / "e", data, codecs={"lfp": {"id": "npy", "level": 3}})
    assert not (tmp_path / "d" / ".neurocodec" / "dataset_metadata.json").exists()
    # a value the chosen codec does not describe as an array is refused with the field named
    with pytest.raises(Exception, match=r"lfp.*codec 'test-repeat' of this field does not store a plain array \(got ndarray\)"):
        with WebDatasetWriter(tmp_path / "f", registry=registry, codecs={"lfp": {"id": "test-repeat"}},
                              modalities={"lfp": "rows"}) as w:
            w.write_sample({"lfp": np.zeros((3, 2), np.float32)})


def test_a_value_object_without_its_codec_says_which_argument_chooses_one(tmp_path):
    from neurocodec.errors import SampleError
    from neurocodec.plugin import SpikeEvents

    events = SpikeEvents(np.array([0.01, 0.2]), np.array([0, 1]), 2)
    with pytest.raises(SampleError, match=r"got SpikeEvents, which codec 'npy' of this field does not store: give the "
                                          r"field a codec that does \(WebDatasetWriter\(codecs=\{'spikes': "):
        with WebDatasetWriter(tmp_path / "out") as writer:
            writer.write_sample({"spikes": events})
