"""Round trips through real shards: every built-in modality and fallback, every compression.

Each case writes a few samples (two shards) with `WebDatasetWriter`, reads them back with
`Dataset` (after `verify_all`), and compares dtype, shape and bytes exactly (`neurocodec.testing`).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from neurocodec import Dataset, SampleError, WebDatasetWriter
from neurocodec.plugin.codecs import JsonCodec, NpyCodec, TextCodec, BytesCodec
from neurocodec.format.compression import COMPRESSIONS
from neurocodec.testing import assert_round_trip, assert_values_equal, check_codec, round_trip

compressions = pytest.mark.parametrize("compression", COMPRESSIONS)

NUMERIC_DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                  "float16", "float32", "float64", "complex64", "complex128"]


def _special_floats(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values plus NaN, infinities and -0.0, so bit-exactness is really tested."""
    a = rng.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return a


def _payload_array(ds: Dataset, sample: int, field: str) -> np.ndarray:
    """The array exactly as stored in the shard (decompressed, before the codec widens it)."""
    number, local = ds.locate(sample)
    column = [f.name for f in ds.fields].index(field)
    raw = bytes(ds.shard(number).read_payload(local, column))
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _write_read(tmp_path, samples, compression="none", **options):
    out = tmp_path / "ds"
    with WebDatasetWriter(out, shard_size=2, compression=compression, fsync=False, **options) as w:
        for s in samples:
            w.write_sample(s)
    return Dataset(out)


# -- built-in modalities -----------------------------------------------------------------------

@compressions
def test_spikes_integer_counts_are_packed_and_restored(tmp_path, rng, compression):
    samples = [
        {"spikes": rng.poisson(2, (20, 8)).astype(np.int64)},                  # fits uint8
        {"spikes": np.full((20, 8), 300, dtype=np.int64)},                      # needs uint16
        {"spikes": -rng.poisson(2, (20, 8)).astype(np.int64)},                  # negative: int8
        {"spikes": np.zeros((20, 8), dtype=np.int64)},
        {"spikes": np.full((20, 8), 2**40, dtype=np.int64)},                    # needs 8 bytes: stays
    ]
    assert_round_trip(samples, tmp_path, compression=compression)
    ds = _write_read(tmp_path, samples, compression)
    stored = [_payload_array(ds, i, "spikes").dtype for i in range(len(samples))]
    assert stored == [np.dtype("u1"), np.dtype("<u2"), np.dtype("i1"), np.dtype("u1"), np.dtype("<i8")]
    assert ds.fields[0].dtype == "<i8" and ds.fields[0].codec == {"id": "npy", "pack_integers": True}
    assert all(ds[i]["spikes"].dtype == np.int64 for i in range(len(samples)))


@compressions
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "int32", "uint32", "uint64"])
def test_spikes_every_integer_dtype_reads_back_as_written(tmp_path, rng, compression, dtype):
    small = rng.integers(0, 5, (6, 4)).astype(dtype)
    samples = [{"spikes": small}, {"spikes": small * 0}, {"spikes": small + 1}]
    assert_round_trip(samples, tmp_path, compression=compression)
    ds = _write_read(tmp_path, samples, compression)
    assert _payload_array(ds, 0, "spikes").dtype.itemsize == 1


@compressions
def test_spikes_uint64_beyond_int64_and_int8_extremes(tmp_path, compression):
    big = np.array([[0, 2**63 + 5, 2**64 - 1]], dtype=np.uint64)
    tiny = np.array([[-128, 0, 127]], dtype=np.int8)
    got = assert_round_trip([{"spikes": big}, {"spikes": big // 2**40}], tmp_path, compression=compression)
    assert int(got[0]["spikes"][0, 2]) == 2**64 - 1
    assert_round_trip([{"spikes": tiny}], tmp_path, compression=compression)
    ds = _write_read(tmp_path, [{"spikes": big}, {"spikes": big // 2**40}])
    assert _payload_array(ds, 0, "spikes").dtype == np.dtype("<u8")
    assert _payload_array(ds, 1, "spikes").dtype == np.dtype("<u4")


@compressions
def test_spikes_float_and_bool_are_kept(tmp_path, rng, compression):
    # The guide writes np.random.randn spikes: float64, which must not be packed or rounded.
    floats = [{"spikes": _special_floats("float64", (10, 6), rng)} for _ in range(3)]
    assert_round_trip(floats, tmp_path, compression=compression)
    assert_round_trip([{"spikes": rng.random((5, 3)) > 0.5} for _ in range(3)], tmp_path, compression=compression)
    ds = _write_read(tmp_path, floats)
    assert _payload_array(ds, 0, "spikes").dtype == np.float64


@compressions
@pytest.mark.parametrize("modality", ["lfp", "eeg", "fmri", "behavior"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int16", "int32", "uint16"])
def test_continuous_modalities_keep_their_dtype(tmp_path, rng, compression, modality, dtype):
    shape = (4, 5, 3, 2) if modality == "fmri" else (8, 3)
    if dtype.startswith("float"):
        samples = [{modality: _special_floats(dtype, shape, rng)} for _ in range(3)]
    else:
        samples = [{modality: rng.integers(0, 1000, shape).astype(dtype)} for _ in range(3)]
    assert_round_trip(samples, tmp_path, compression=compression)


@compressions
def test_behavior_keeps_bool_and_integer_events(tmp_path, rng, compression):
    samples = [{"behavior": rng.random((7, 2)) > 0.5} for _ in range(3)]
    assert_round_trip(samples, tmp_path, compression=compression)


@compressions
@pytest.mark.parametrize("modality", ["lfp", "eeg", "fmri", "behavior"])
def test_float16_is_opt_in(tmp_path, rng, compression, modality):
    samples = [{modality: _special_floats("float64", (6, 4), rng)} for _ in range(3)]
    expected = [{modality: s[modality].astype(np.float16)} for s in samples]
    assert_round_trip(samples, tmp_path, compression=compression, expected=expected,
                      modality_options={modality: {"dtype": "float16"}})
    ds = Dataset(next(tmp_path.glob("round-trip-*")))
    assert ds.fields[0].dtype == "<f2"


@pytest.mark.parametrize("modality", ["spikes", "video"])
def test_float16_option_refused_for_spikes_and_video(tmp_path, modality):
    value = np.zeros((2, 4, 4), dtype=np.uint8)
    w = WebDatasetWriter(tmp_path / "ds", fsync=False, modality_options={modality: {"dtype": "float16"}})
    # spikes and video declare no options at all, so the option is refused as unknown
    with pytest.raises(SampleError, match=rf"modality_options\['{modality}'\] has unknown option\(s\) \['dtype'\]"):
        w.write_sample({modality: value})
    w.abort()


def test_misspelt_option_names_are_refused(tmp_path):
    w = WebDatasetWriter(tmp_path / "ds", fsync=False, modality_options={"lfp": {"dtyp": "float16"}})
    with pytest.raises(SampleError, match=r"unknown option\(s\) \['dtyp'\].*known: dtype"):
        w.write_sample({"lfp": np.zeros((2, 3))})
    w.abort()


@pytest.mark.parametrize("option", ["float32", "float8", "bfloat16", "not-a-dtype", "int8"])
def test_unknown_dtype_option_values_refused(tmp_path, option):
    w = WebDatasetWriter(tmp_path / "ds", fsync=False, modality_options={"lfp": {"dtype": option}})
    with pytest.raises(SampleError, match="field 'lfp'"):
        w.write_sample({"lfp": np.zeros((2, 3))})
    w.abort()


def test_float16_option_refused_for_integer_signals(tmp_path):
    w = WebDatasetWriter(tmp_path / "ds", fsync=False, modality_options={"eeg": {"dtype": "float16"}})
    with pytest.raises(SampleError, match="field 'eeg'.*converts floating-point values only, and this value is int16"):
        w.write_sample({"eeg": np.zeros((2, 3), dtype=np.int16)})
    w.abort()


@compressions
def test_video_uint8_kept_and_in_range_integers_converted(tmp_path, rng, compression):
    frames = [{"video": rng.integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)} for _ in range(3)]
    assert_round_trip(frames, tmp_path, compression=compression)
    ints = [{"video": rng.integers(0, 256, (2, 4, 4)).astype(dt)} for dt in ("int64", "uint16", "int16")]
    ints[0]["video"][0, 0, :2] = [0, 255]
    # Every sample of a field keeps one dtype, so each integer dtype goes in its own dataset.
    for sample in ints:
        assert_round_trip([sample], tmp_path, compression=compression,
                          expected=[{"video": sample["video"].astype(np.uint8)}])


@pytest.mark.parametrize("bad", [
    np.full((2, 4, 4), 0.5), np.zeros((2, 4, 4), dtype=np.float32), np.full((2, 4, 4), 256),
    np.full((2, 4, 4), -1, dtype=np.int16), np.zeros((2, 4, 4), dtype=np.complex64),
])
def test_video_lossy_values_refused_naming_the_field(tmp_path, bad):
    w = WebDatasetWriter(tmp_path / "ds", fsync=False)
    with pytest.raises(SampleError, match="field 'video'"):
        w.write_sample({"video": bad})
    w.write_sample({"video": np.zeros((2, 4, 4), dtype=np.uint8)})  # still usable
    assert w.finalize()["samples"] == 1


# -- the generic fallbacks ---------------------------------------------------------------------

@compressions
@pytest.mark.parametrize("dtype", NUMERIC_DTYPES)
def test_array_fallback_every_numeric_dtype(tmp_path, rng, compression, dtype):
    kind = np.dtype(dtype).kind
    if kind == "b":
        values = [rng.random((3, 4)) > 0.5 for _ in range(3)]
    elif kind in "iu":
        info = np.iinfo(dtype)
        values = [rng.integers(info.min, info.max, (3, 4), dtype=dtype, endpoint=True) for _ in range(3)]
        values[0].reshape(-1)[:2] = [info.min, info.max]
    elif kind == "f":
        values = [_special_floats(dtype, (3, 4), rng) for _ in range(3)]
    else:
        values = [(_special_floats("float64", (3, 4), rng) + 1j * rng.standard_normal((3, 4))).astype(dtype)
                  for _ in range(3)]
    assert_round_trip([{"anything": v} for v in values], tmp_path, compression=compression)


@compressions
@pytest.mark.parametrize("dtype", [">i2", ">u4", ">i8", ">f4", ">f8", ">c16"])
def test_big_endian_input_reads_back_little_endian_with_equal_values(tmp_path, rng, compression, dtype):
    values = [(rng.standard_normal((4, 3)) * 100).astype(dtype) for _ in range(3)]
    expected = [{"x": v.astype(v.dtype.newbyteorder("<"))} for v in values]
    for name in ("x", "lfp"):
        if name == "lfp" and np.dtype(dtype).kind == "c":
            continue
        got = assert_round_trip([{name: v} for v in values], tmp_path, compression=compression,
                                expected=[{name: e["x"]} for e in expected])
        np.testing.assert_array_equal(got[0][name], values[0])


@compressions
def test_zero_d_and_empty_arrays(tmp_path, compression):
    cases = [
        [np.array(3.5), np.array(-0.0), np.array(np.nan)],
        [np.array(7, dtype=np.uint8)] * 3,
        [np.zeros((0,), dtype=np.float32)] * 3,
        [np.zeros((3, 0), dtype=np.int16), np.zeros((3, 0), dtype=np.int16), np.zeros((3, 0), dtype=np.int16)],
        [np.zeros((0, 5), dtype=np.complex64)] * 2,
    ]
    for values in cases:
        assert_round_trip([{"x": v} for v in values], tmp_path, compression=compression)
    assert_round_trip([{"spikes": np.zeros((0, 4), dtype=np.int64)}] * 2, tmp_path, compression=compression)


@compressions
def test_non_contiguous_inputs(tmp_path, rng, compression):
    a = rng.standard_normal((6, 8))
    samples = [{"x": a.T}, {"x": np.asfortranarray(a).T}, {"x": a[::2, ::3].T}]
    got = assert_round_trip([samples[0], samples[1]], tmp_path, compression=compression)
    assert got[0]["x"].shape == (8, 6)
    assert_round_trip([samples[2]], tmp_path, compression=compression)


@compressions
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32,
                                   torch.uint8, torch.int8, torch.bool, torch.complex64])
def test_torch_tensors_as_input(tmp_path, compression, dtype):
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point or dtype.is_complex:
        values = [torch.randn(5, 3, generator=gen, dtype=dtype) for _ in range(3)]
    elif dtype == torch.bool:
        values = [torch.rand(5, 3, generator=gen) > 0.5 for _ in range(3)]
    else:
        values = [torch.randint(0, 100, (5, 3), generator=gen, dtype=dtype) for _ in range(3)]
    values[1] = values[1].T.contiguous().T  # same shape, different strides
    got = assert_round_trip([{"x": v} for v in values], tmp_path, compression=compression)
    assert isinstance(got[0]["x"], np.ndarray)
    if not dtype.is_complex:
        name = "spikes" if dtype != torch.float16 else "lfp"
        assert_round_trip([{name: v} for v in values], tmp_path, compression=compression)


def test_torch_tensor_requiring_grad_and_unsupported_bfloat16(tmp_path):
    t = torch.randn(4, 3, requires_grad=True)
    assert_round_trip([{"lfp": t}], tmp_path, expected=[{"lfp": t.detach().numpy()}])
    w = WebDatasetWriter(tmp_path / "ds", fsync=False)
    with pytest.raises(SampleError, match="field 'x'"):
        w.write_sample({"x": torch.ones(3, dtype=torch.bfloat16)})
    w.abort()


@compressions
def test_text_and_bytes(tmp_path, compression):
    texts = [{"note": s} for s in ("héllo ✓ \u0000 end", "", "line1\nline2" * 50)]
    got = assert_round_trip(texts, tmp_path, compression=compression)
    assert all(type(g["note"]) is str for g in got)
    blobs = [{"raw": b"\x00\xff" * 100}, {"raw": b""}, {"raw": bytearray(b"abc")}, {"raw": memoryview(b"xyz")}]
    expected = [{"raw": bytes(b["raw"])} for b in blobs]
    assert_round_trip(blobs, tmp_path, compression=compression, expected=expected)


@compressions
def test_json_values_including_numpy_scalars(tmp_path, compression):
    samples = [
        {"info": {"a": 1, "b": [1.5, "x", None, True], "nested": {"k": {"deep": [[]]}}, "nan": float("nan")}},
        {"info": {"a": np.int64(7), "b": [np.float32(0.25), np.bool_(False), np.uint8(255)],
                  "nested": {"k": np.arange(3)}, "nan": -0.0}},
        {"info": {"a": 2**62, "b": (1, 2), "nested": {}, "nan": 1e308}},
    ]
    expected = [
        samples[0],
        {"info": {"a": 7, "b": [0.25, False, 255], "nested": {"k": [0, 1, 2]}, "nan": -0.0}},
        {"info": {"a": 2**62, "b": [1, 2], "nested": {}, "nan": 1e308}},
    ]
    meta = [{"trial_id": np.int32(i), "condition": "left" if i % 2 == 0 else "right"} for i in range(3)]
    got = assert_round_trip(samples, tmp_path, compression=compression, expected=expected, metadata=meta)
    assert got[1]["metadata"] == {"trial_id": 1, "condition": "right"}
    lists = [{"events": [1, 2, 3]}, {"events": []}, {"events": [np.float64(0.1), {"x": None}]}]
    assert_round_trip(lists, tmp_path, compression=compression,
                      expected=[lists[0], lists[1], {"events": [0.1, {"x": None}]}])
    scalars = [{"score": 1.25}, {"score": np.float32(2.5)}, {"score": np.float64(-3.0)}]
    assert_round_trip(scalars, tmp_path, compression=compression,
                      expected=[{"score": 1.25}, {"score": 2.5}, {"score": -3.0}])


def test_metadata_defaults_to_empty_dict(tmp_path):
    got = round_trip([{"x": np.arange(3)}] * 2, tmp_path)
    assert [g["metadata"] for g in got] == [{}, {}]


@compressions
def test_many_modalities_in_one_sample(tmp_path, rng, compression):
    samples = [{
        "spikes": rng.poisson(1, (10, 4)), "lfp": rng.standard_normal((4, 50)).astype("f4"),
        "eeg": rng.standard_normal((2, 30)), "fmri": rng.integers(-500, 500, (3, 3, 2), dtype=np.int16),
        "behavior": rng.standard_normal((10, 2)), "video": rng.integers(0, 256, (2, 4, 4), dtype=np.uint8),
        "label": "left", "blob": b"\x01", "info": {"i": i},
    } for i in range(4)]
    assert_round_trip(samples, tmp_path, compression=compression, metadata=[{"i": i} for i in range(4)])


# -- variable shapes -----------------------------------------------------------------------------

@compressions
def test_variable_shapes_recorded_as_none(tmp_path, rng, compression):
    samples = [{"spikes": rng.poisson(1, (10, units)), "behavior": rng.standard_normal((t, 2)),
                "lfp": rng.standard_normal((4, 100))} for units, t in ((3, 5), (7, 5), (5, 9))]
    assert_round_trip(samples, tmp_path, compression=compression)
    manifest = json.loads((next(tmp_path.glob("round-trip-*")) / ".neurocodec" / "dataset_metadata.json").read_text())
    shapes = {f["name"]: f["shape"] for f in manifest["fields"]}
    assert shapes == {"spikes": [10, None], "behavior": [None, 2], "lfp": [4, 100], "metadata": None}


# -- codecs directly ---------------------------------------------------------------------------

def test_check_codec_on_the_core_codecs(rng):
    arrays = [rng.standard_normal((3, 2)), np.array(1, dtype=np.int8), np.zeros((0, 3), dtype=np.uint16)]
    check_codec(NpyCodec(), arrays)
    check_codec(NpyCodec(pack_integers=True), [np.array([[0, 2**64 - 1]], dtype=np.uint64), np.arange(5)])
    check_codec(JsonCodec(), [{"a": [1, 2.5, None]}, [], "x"])
    check_codec(TextCodec(), ["", "ünïcode"])
    check_codec(BytesCodec(), [b"", b"\x00" * 10])


def test_assert_values_equal_is_strict():
    with pytest.raises(AssertionError, match="dtype"):
        assert_values_equal(np.zeros(3, "f4"), np.zeros(3, "f8"))
    with pytest.raises(AssertionError, match="values differ"):
        assert_values_equal(np.array([0.0]), np.array([-0.0]))
    with pytest.raises(AssertionError):
        assert_values_equal(1, 1.0)
    with pytest.raises(AssertionError):
        assert_values_equal({"a": [1, 2]}, {"a": [1, 3]})
    assert_values_equal(np.array([np.nan]), np.array([np.nan]))
    assert_values_equal(float("nan"), float("nan"))
