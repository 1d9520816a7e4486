"""Lossless filter chains and the `ndarray` codec: bit-exact round trips for every stored dtype,
each filter and chain, the body functions other codecs reuse, configs through a real dataset,
and a third-party filter registered by a plugin."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest
import zstandard

from neurocodec import npy
from neurocodec.errors import DuplicateRegistrationError, PluginError, UnknownCodecError
from neurocodec.plugin import (
    ArrayCodec, CodecError, FieldSpec, Filter, FilterChain, decode_array_body, encode_array_body, hookimpl,
    signal_codec, signal_filters,
)
from neurocodec.testing import check_codec, registry_with

CHAINS = {
    "none": [],
    "delta": [{"id": "delta", "dtype": "<i2"}],
    "shuffle": [{"id": "shuffle", "elementsize": 2}],
    "zstd": [{"id": "zstd", "level": 3}],
    "lz4": [{"id": "lz4"}],
    "zlib": [{"id": "zlib", "level": 6}],
    "delta-shuffle-zstd": [{"id": "delta", "dtype": "<u2"}, {"id": "shuffle", "elementsize": 2},
                           {"id": "zstd", "level": 1, "checksum": True}],
    "shuffle-lz4": [{"id": "shuffle", "elementsize": 4}, {"id": "lz4", "acceleration": 3}],
    "delta-zlib": [{"id": "delta", "dtype": "<i4"}, {"id": "zlib", "level": 1}],
}


def values(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values over the whole range of `dtype`: integer extremes (so deltas wrap), NaN payloads
    and signed zeros for floats."""
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        flat = out.reshape(-1)
        flat[:2] = (info.max, info.min)[:flat.size]
        return out
    raw = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    out = raw.view(dtype).reshape(shape).copy()
    flat = out.reshape(-1)
    flat[:2] = (-0.0, np.nan)[:flat.size]
    return out


def field(codec: ArrayCodec, dtype: str, shape, max_raw_bytes: int = 1 << 20) -> FieldSpec:
    return FieldSpec("sig", "array", "array", codec.get_config(), codec.extension, "generic", "1",
                     dtype=dtype, shape=shape, max_raw_bytes=max_raw_bytes)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", npy.DTYPES)
@pytest.mark.parametrize("order", ["C", "F"])
def test_signal_preset_round_trips_every_dtype_bit_exactly(dtype, order, rng):
    codec = ArrayCodec(signal_filters(dtype), order)
    for shape in [(257, 5), (0, 3), (), (4,), (3, 2, 5)]:
        array = values(np.dtype(dtype), shape, rng)
        out = codec.decode(codec.encode(array), field(codec, dtype, tuple(None for _ in shape)))
        assert same(out, array), (dtype, shape, order)
        assert out.flags.c_contiguous and not out.flags.writeable


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("dtype", ["|u1", "<i2", "<u8", "<f4", "<c16", "|b1"])
def test_each_filter_and_chain_round_trips(name, dtype, rng):
    codec = ArrayCodec(CHAINS[name])
    array = values(np.dtype(dtype), (96, 4), rng)
    if any(c.get("dtype") == "<i4" for c in CHAINS[name]) and array.nbytes % 4:
        pytest.skip("delta over <i4 needs whole 4-byte elements")
    payload = codec.encode(array)
    assert payload.startswith(npy.header(array.dtype, array.shape))
    assert same(codec.decode(payload, field(codec, dtype, (None, 4))), array)
    check_codec(codec, [array])


def test_byte_order_is_normalised_to_little_endian(rng):
    array = values(np.dtype("<i4"), (10, 3), rng).astype(">i4")
    codec = ArrayCodec(signal_filters("<i4"), "F")
    out = codec.decode(codec.encode(array), field(codec, "<i4", (10, 3)))
    assert out.dtype == np.dtype("<i4") and np.array_equal(out, array)


def test_delta_runs_along_time_with_order_f():
    """With order F the body holds each channel's samples consecutively: the delta of a ramp per
    channel is a run of ones, which is what makes signals compress."""
    ramp = np.repeat(np.arange(1000, dtype="<i2")[:, None], 4, axis=1) * np.array([1, 1, 1, 1], "<i2")
    chain = FilterChain.from_configs([{"id": "delta", "dtype": "<i2"}])
    body = np.frombuffer(encode_array_body(ramp, chain, "F"), "<i2").reshape(4, 1000)
    assert (body[:, 1:] == 1).all()
    body_c = np.frombuffer(encode_array_body(ramp, chain, "C"), "<i2")
    assert (body_c[1:4] == 0).all()  # C order diffs neighbouring channels instead


def test_body_functions_round_trip_and_are_bounded(rng):
    chain = FilterChain.from_configs(signal_filters("<i2"))
    array = values(np.dtype("<i2"), (500, 8), rng)
    for order in "CF":
        body = encode_array_body(array, chain, order)
        out = decode_array_body(body, np.dtype("<i2"), (500, 8), chain, order, max_bytes=array.nbytes)
        assert same(out, array)
        with pytest.raises(CodecError, match="above the 7999 bytes"):
            decode_array_body(body, np.dtype("<i2"), (500, 8), chain, order, max_bytes=7999)
        with pytest.raises(CodecError):  # a shape the body does not hold
            decode_array_body(body, np.dtype("<i2"), (501, 8), chain, order)


def test_numcodecs_encodings_are_the_stored_bytes(rng):
    """The filters are numcodecs' own: a body is what numcodecs' codecs produce, so numcodecs
    (or zarr) decodes it too."""
    array = values(np.dtype("<i2"), (300, 2), rng)
    configs = [{"id": "delta", "dtype": "<i2"}, {"id": "shuffle", "elementsize": 2}, {"id": "zstd", "level": 3}]
    body = encode_array_body(array, FilterChain.from_configs(configs))
    buf = body
    for codec in reversed([numcodecs.Delta("<i2"), numcodecs.Shuffle(2), numcodecs.Zstd(3)]):
        buf = codec.decode(buf)
    assert np.frombuffer(bytes(np.asarray(buf).view(np.uint8)), "<i2").tobytes() == array.tobytes()
    assert zstandard.frame_content_size(body) == array.nbytes


def test_configs_round_trip_and_signal_codec_shape():
    codec = ArrayCodec.from_config(signal_codec("<f4"))
    assert codec.get_config() == {"id": "ndarray", "order": "F", "filters": [
        {"id": "delta", "dtype": "<u4"}, {"id": "shuffle", "elementsize": 4},
        {"id": "zstd", "level": 3, "checksum": False}]}
    assert ArrayCodec.from_config(codec.get_config()) == codec
    assert signal_filters("|b1") == [{"id": "zstd", "level": 3, "checksum": False}]


@pytest.mark.parametrize("configs, message", [
    ([{"id": "pickle"}], "refused"),
    ([{"id": "msgpack2"}], "not allowed"),
    ([{"id": "blosc", "cname": "zstd"}], "allowed filters are delta, lz4, shuffle, zlib, zstd"),
    ([{"id": "delta", "dtype": "|O"}], "delta dtype"),
    ([{"id": "delta", "dtype": "<f4"}], "integer dtype"),
    ([{"id": "delta", "dtype": "<i2", "astype": "|i1"}], "does not take"),
    ([{"id": "shuffle", "elementsize": 0}], "from 1 to 16"),
    ([{"id": "shuffle", "elementsize": True}], "from 1 to 16"),
    ([{"id": "zstd", "level": 99}], "from -131072 to 22"),
    ([{"id": "zstd", "checksum": 1}], "true or false"),
    ([{"id": "zlib"}, {"id": "zstd"}], "only the last filter"),
    ([{"no": "id"}], "string 'id'"),
    ("zstd", "must be a list"),
    ([{"id": "shuffle", "elementsize": 2}] * 9, "at most 8"),
])
def test_invalid_configs_are_refused_before_anything_is_built(configs, message):
    with pytest.raises((CodecError, UnknownCodecError), match=message):
        FilterChain.from_configs(configs)


class XorFilter(Filter):
    """A third-party size-preserving filter: every byte XOR a key."""

    filter_id = "xor"
    size_preserving = True

    def __init__(self, key: int = 0x5A) -> None:
        if type(key) is not int or not 0 <= key < 256:
            raise CodecError(f"xor key must be a byte, got {key!r}")
        self.key = key

    def get_config(self):
        return {"id": self.filter_id, "key": self.key}

    def encode(self, data):
        return np.bitwise_xor(np.frombuffer(data, np.uint8), self.key)

    def decode(self, data, size):
        return np.bitwise_xor(np.frombuffer(data, np.uint8), self.key)


class XorPlugin:
    @hookimpl
    def neurocodec_register_codecs(self, register):
        register(XorFilter)


def test_third_party_filter_through_a_plugin_writes_and_reads(tmp_path, rng):
    from neurocodec.plugin.manager import load_registry

    registry = registry_with(("xor-filters", XorPlugin()))
    assert "xor" in registry.filter_ids("xor-filters")
    config = {"id": "ndarray", "filters": [{"id": "xor", "key": 7}, {"id": "zstd", "level": 1}]}
    codec = registry.codec(config)
    array = values(np.dtype("<i2"), (64, 3), rng)
    payload = codec.encode(array)
    assert same(codec.decode(payload, field(codec, "<i2", (64, 3))), array)
    # A registry without the plugin names the id and the filters it allows.
    with pytest.raises(UnknownCodecError, match="'xor' is not allowed; the allowed filters are delta"):
        load_registry().codec(config, field="sig")


def test_duplicate_filter_id_names_both_plugins():
    class Again(XorPlugin):
        pass

    with pytest.raises(DuplicateRegistrationError, match="filter id 'xor' is registered by plugin 'one'.*plugin 'two'"):
        registry_with(("one", XorPlugin()), ("two", Again()))


def test_duplicate_of_a_built_in_filter_names_the_generic_plugin():
    class Zstd(XorFilter):
        filter_id = "zstd"

    class Plugin:
        @hookimpl
        def neurocodec_register_codecs(self, register):
            register(Zstd)

    with pytest.raises(DuplicateRegistrationError, match="filter id 'zstd' is registered by plugin 'generic'"):
        registry_with(("mine", Plugin()))


def test_a_plugin_cannot_register_a_data_executing_id():
    class Pickle(XorFilter):
        filter_id = "pickle"

    class Plugin:
        @hookimpl
        def neurocodec_register_codecs(self, register):
            register(Pickle)

    with pytest.raises(PluginError, match="filter id 'pickle', which is refused"):
        registry_with(("mine", Plugin()))



# -- through a real dataset: configs survive the manifest ------------------------------------------

def test_every_dtype_through_writer_and_dataset(tmp_path, rng):
    """Each dtype in its own field with the signal preset, through WebDatasetWriter(codecs=) and
    Dataset: the manifest keeps each field's exact config, and values come back bit-exact."""
    import json

    from neurocodec import Dataset, WebDatasetWriter

    names = {name: "f" + name.strip("<|").lower() for name in npy.DTYPES}
    codecs = {field: signal_codec(name) for name, field in names.items()}
    written = [{field: values(np.dtype(name), (50 + 7 * i, 3), rng) for name, field in names.items()}
               for i in range(4)]
    with WebDatasetWriter(tmp_path / "ds", shard_size=3, codecs=codecs, compression="none", fsync=False) as w:
        for sample in written:
            w.write_sample(sample)
    manifest = json.loads((tmp_path / "ds" / ".neurocodec" / "dataset_metadata.json").read_text())
    stored = {f["name"]: f for f in manifest["fields"]}
    for field, config in codecs.items():
        assert stored[field]["codec"] == config and stored[field]["extension"] == "nda"
    with Dataset(tmp_path / "ds") as ds:
        assert ds.verify_all() == 4
        for want, got in zip(written, ds):
            for field, value in want.items():
                assert same(got[field], value), field


def test_third_party_filter_survives_a_dataset(tmp_path, rng):
    """A dataset written with a plugin's filter reads back with that plugin; without it, opening
    the dataset names the filter and the allowed ones."""
    from neurocodec import Dataset, WebDatasetWriter

    registry = registry_with(("xor-filters", XorPlugin()))
    config = {"id": "ndarray", "filters": [{"id": "xor", "key": 9}, {"id": "lz4", "acceleration": 1}], "order": "C"}
    arrays = [values(np.dtype("<u2"), (20, 2), rng) for _ in range(3)]
    with WebDatasetWriter(tmp_path / "ds", codecs={"sig": config}, registry=registry, fsync=False) as w:
        for a in arrays:
            w.write_sample({"sig": a})
    with Dataset(tmp_path / "ds", registry=registry) as ds:
        assert [same(s["sig"], a) for s, a in zip(ds, arrays)] == [True] * 3
    with pytest.raises(UnknownCodecError, match=r"field 'sig'.*'xor' is not allowed; the allowed filters are"):
        Dataset(tmp_path / "ds")


@pytest.mark.multiprocess
def test_two_worker_dataloader_decodes_chains_in_its_workers(tmp_path, rng):
    """create_shards_from_arrays with codecs=, then a 2-worker DataLoader: each worker rebuilds
    the chain from the manifest and the batches are the arrays, bit-exact."""
    import torch

    from neurocodec import create_shards_from_arrays, create_webdataset_dataloader

    eeg = values(np.dtype("<i2"), (10, 200, 8), rng)
    lfp = values(np.dtype("<f4"), (10, 50, 3), rng)
    create_shards_from_arrays(tmp_path / "ds", {"eeg": eeg, "lfp": lfp}, shard_size=3,
                              codecs={"eeg": signal_codec("<i2"), "lfp": signal_codec("<f4")})
    loader = create_webdataset_dataloader(tmp_path / "ds", batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    for name, want in (("eeg", eeg), ("lfp", lfp)):
        got = torch.cat([b[name] for b in batches]).numpy()
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name


def test_a_reader_ceiling_above_the_default_admits_larger_values(tmp_path, monkeypatch, rng):
    """The field's declared bound (checked against the reader's ceiling when the manifest is
    parsed) bounds decoding, not the default ceiling: Dataset(max_member_bytes=) reads values
    above NEUROCODEC_MAX_MEMBER_BYTES, and without it the dataset is refused at opening."""
    from neurocodec import Dataset, WebDatasetWriter
    from neurocodec.errors import DatasetError

    array = np.zeros((400, 4), "<i2")  # 3200 bytes decoded, a few dozen stored
    array[::7] = values(np.dtype("<i2"), (58, 4), rng)[:58]
    with WebDatasetWriter(tmp_path / "ds", codecs={"sig": signal_codec("<i2")}, fsync=False) as w:
        w.write_sample({"sig": array})
    monkeypatch.setenv("NEUROCODEC_MAX_MEMBER_BYTES", "2048")
    with Dataset(tmp_path / "ds", max_member_bytes=1 << 20) as ds:
        assert same(ds[0]["sig"], array)
    with pytest.raises(DatasetError, match="max_value_bytes"):
        Dataset(tmp_path / "ds")


def test_numcodecs_registry_is_never_consulted(monkeypatch, rng):
    """Chains are built from the allowlist only: numcodecs' get_codec (which would build any
    registered codec, Pickle included, from a config) is never called."""
    import numcodecs.registry

    def refuse(*args, **kwargs):
        raise AssertionError("numcodecs.get_codec was called")

    monkeypatch.setattr(numcodecs, "get_codec", refuse)
    monkeypatch.setattr(numcodecs.registry, "get_codec", refuse)
    for configs in CHAINS.values():
        codec = ArrayCodec.from_config({"id": "ndarray", "filters": configs})
        array = values(np.dtype("<u2"), (16, 2), rng)
        assert same(codec.decode(codec.encode(array), field(codec, "<u2", (16, 2))), array)
    with pytest.raises(UnknownCodecError, match="'pickle' is not allowed"):
        ArrayCodec.from_config({"id": "ndarray", "filters": [{"id": "pickle"}]})
