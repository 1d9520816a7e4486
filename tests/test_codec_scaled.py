"""The `scaled-int` codec (neurocodec/plugin/scaled.py): integer signals stored as their raw
integers with the scale in a small header, decoded to float32 physical units (bit-identical to
float64 arithmetic cast to float32) or to the raw integers with `decode={field: {"raw": True}}`.

Datasets are written by `WebDatasetWriter` and read by `Dataset`; payloads are parsed here from
the layout docs/format.md (section 7.6) specifies (struct, numpy, zstandard), independently of the
codec. Hostile payloads are spliced into valid shards with everything around them made
consistent (tests/hostile.py), so they reach the codec.
"""

from __future__ import annotations

import struct
import tarfile

import numpy as np
import pytest

import hostile as h
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import SampleError, ShardError
from neurocodec.plugin import CodecError, ScaledIntCodec, ScaledSignal, scaled_codec
from neurocodec.testing import field_for

FIXED = struct.Struct("<4sBBBBdd")
CODES = ["|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8"]
MEMBER = "sample_000000001.lfp.sci"


def expected(raw: np.ndarray, conversion: float, offset: float, cc: np.ndarray | None) -> np.ndarray:
    """Physical units as NWB defines them, in float64, cast to float32 (no neurocodec code)."""
    values = raw.astype(np.float64) * conversion
    if cc is not None:
        values = values * np.asarray(cc, np.float64).reshape((1, -1) + (1,) * (raw.ndim - 2))
    return (values + offset).astype(np.float32)


def parse(payload: bytes) -> dict:
    """The header fields and body of a payload, read from the documented layout."""
    magic, version, code, ndim, flags, conversion, offset = FIXED.unpack_from(payload)
    shape = struct.unpack_from(f"<{ndim}Q", payload, FIXED.size)
    end = FIXED.size + 8 * ndim
    factors = None
    if flags & 1:
        factors = np.frombuffer(payload, "<f8", shape[1], end)
        end += 8 * shape[1]
    return {"magic": magic, "version": version, "dtype": np.dtype(CODES[code]), "shape": shape,
            "conversion": conversion, "offset": offset, "factors": factors, "body": payload[end:]}


def signals(rng, dtype, count=4, shape=(200, 3), cc=True):
    info = np.iinfo(dtype)
    raws = [rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True) for _ in range(count)]
    factors = rng.uniform(0.5, 2.0, shape[1]) if cc and len(shape) > 1 else None
    return raws, factors


def write(path, values, codec, **kwargs):
    with WebDatasetWriter(path, 3, codecs={"lfp": codec}, fsync=False, **kwargs) as writer:
        for value in values:
            writer.write_sample({"lfp": value})
    return path


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"])
@pytest.mark.parametrize("chain", ["none", "signal"])
def test_round_trip_is_bit_exact_both_ways(tmp_path, rng, dtype, chain):
    raws, cc = signals(rng, dtype)
    conversion, offset = 0.195e-6 * 3, -1.25e-3
    config = {"id": "scaled-int", "raw_dtype": np.dtype(dtype).newbyteorder("<").str, "filters": []} \
        if chain == "none" else scaled_codec(dtype)
    root = write(tmp_path / "ds", [ScaledSignal(r, conversion, offset, cc) for r in raws], config)
    with Dataset(root) as ds, Dataset(root, decode={"lfp": {"raw": True}}) as raw_ds:
        (field,) = [f for f in ds.manifest.fields if f.name == "lfp"]
        assert (field.dtype, field.shape, field.codec["id"]) == ("<f4", (200, 3), "scaled-int")
        assert field.max_value_bytes == (200 * 3 * 4 if 200 * 3 * 4 > field.max_raw_bytes else 0)
        for i, raw in enumerate(raws):
            got, want = ds[i]["lfp"], expected(raw, conversion, offset, cc)
            assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
            stored = raw_ds[i]["lfp"]
            assert stored.dtype == raw.dtype and np.array_equal(stored, raw)


def test_member_holds_the_integers_and_the_scale(tmp_path, rng):
    raws, cc = signals(rng, np.int16, count=1)
    value = ScaledSignal(raws[0], 2.5e-6, 0.125, cc)
    root = write(tmp_path / "ds", [value], {"id": "scaled-int", "raw_dtype": "<i2", "filters": [], "order": "C"})
    with tarfile.open(root / h.load_manifest(root)["shards"][0]["name"]) as tar:
        payload = tar.extractfile(MEMBER).read()
    got = parse(payload)
    assert (got["magic"], got["version"], got["dtype"], got["shape"]) == (b"NCSI", 1, np.dtype("<i2"), (200, 3))
    assert (got["conversion"], got["offset"]) == (2.5e-6, 0.125)
    assert np.array_equal(got["factors"], cc)
    assert got["body"] == raws[0].astype("<i2").tobytes()  # the integers, as they are


def test_signal_chain_body_is_delta_shuffle_zstd_by_channel(tmp_path, rng):
    """With the preset chain (order F), the body is zstd of the byte-shuffled per-channel
    differences: undone here with zstandard and numpy alone."""
    import zstandard

    raws, cc = signals(rng, np.int16, count=1, shape=(500, 4))
    raw = np.cumsum(raws[0] // 4096, axis=0, dtype=np.int16)  # a slowly varying signal
    root = write(tmp_path / "ds", [ScaledSignal(raw, 1e-6, 0.0, cc)], scaled_codec("<i2"))
    with tarfile.open(root / h.load_manifest(root)["shards"][0]["name"]) as tar:
        body = parse(tar.extractfile(MEMBER).read())["body"]
    plain = zstandard.ZstdDecompressor().decompress(body)
    deltas = np.frombuffer(plain, np.uint8).reshape(2, -1).T.copy().view("<i2").reshape(-1)
    assert np.array_equal(np.cumsum(deltas, dtype=np.int16).reshape(4, 500).T, raw)
    assert len(body) < raw.nbytes / 2


def test_one_dimensional_and_unscaled_values(tmp_path, rng):
    raw = rng.integers(-1000, 1000, 300).astype(np.int32)
    root = write(tmp_path / "ds", [ScaledSignal(raw, 0.5), ScaledSignal(raw)], scaled_codec("<i4"))
    with Dataset(root) as ds:
        assert ds[0]["lfp"].tobytes() == (raw.astype(np.float64) * 0.5).astype(np.float32).tobytes()
        assert ds[1]["lfp"].tobytes() == raw.astype(np.float32).tobytes()


def test_sessions_with_different_scales_share_a_field(tmp_path, rng):
    """The scale is in each payload: windows of different scales decode each with its own."""
    raws, _ = signals(rng, np.int16, count=2)
    values = [ScaledSignal(raws[0], 1e-6, 0.5, [1.0, 2.0, 3.0]), ScaledSignal(raws[1], 3e-3, -2.0)]
    root = write(tmp_path / "ds", values, scaled_codec("<i2"))
    with Dataset(root) as ds:
        assert ds[0]["lfp"].tobytes() == expected(raws[0], 1e-6, 0.5, np.array([1.0, 2.0, 3.0])).tobytes()
        assert ds[1]["lfp"].tobytes() == expected(raws[1], 3e-3, -2.0, None).tobytes()


def test_decoded_field_for_raw(rng):
    codec = ScaledIntCodec("<i2")
    field = field_for(codec, ScaledSignal(np.zeros((100, 4), np.int16), 0.5))
    field = type(field)(**{**field.to_dict(), "shape": (100, 4), "max_raw_bytes": 900, "max_value_bytes": 1600})
    raw = codec.decoded_field(field, {"raw": True})
    assert (raw.dtype, raw.shape, raw.max_value_bytes) == ("<i2", (100, 4), 800)
    assert codec.decoded_field(field, {}) == field
    with pytest.raises(CodecError, match="raw must be True or False"):
        codec.decoder(field, {"raw": "yes"})


def test_writer_refuses_what_the_codec_cannot_store(tmp_path, rng):
    raw = rng.integers(0, 9, (10, 2)).astype(np.int16)
    with pytest.raises(SampleError, match="got ndarray"):
        write(tmp_path / "a", [raw.astype(np.float32)], scaled_codec("<i2"))
    with pytest.raises(SampleError, match="the field stores int16"):
        write(tmp_path / "b", [ScaledSignal(raw.astype(np.int32))], scaled_codec("<i2"))
    with pytest.raises(SampleError, match="dtype option"):
        write(tmp_path / "c", [ScaledSignal(raw)], scaled_codec("<i2"), modality_options={"lfp": {"dtype": "float16"}})
    with pytest.raises(ValueError, match="one factor per channel"):
        ScaledSignal(raw, 1.0, 0.0, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        ScaledSignal(raw, float("nan"))
    with pytest.raises(TypeError, match="integers"):
        ScaledSignal(raw.astype(np.float32))


def test_config_is_checked(tmp_path):
    with pytest.raises(CodecError, match="needs raw_dtype"):
        ScaledIntCodec.from_config({"id": "scaled-int"})
    with pytest.raises(CodecError, match="integer dtype"):
        ScaledIntCodec.from_config({"id": "scaled-int", "raw_dtype": "<f4"})
    for hostile in (["<i2", 2], {"names": ["a"], "formats": ["<i2"]}, "int16", "(2,)i2"):
        with pytest.raises(CodecError, match="integer dtype"):
            ScaledIntCodec.from_config({"id": "scaled-int", "raw_dtype": hostile})
    with pytest.raises(CodecError, match="does not take"):
        ScaledIntCodec.from_config({"id": "scaled-int", "raw_dtype": "<i2", "level": 3})
    codec = ScaledIntCodec.from_config(scaled_codec("<u2"))
    assert ScaledIntCodec.from_config(codec.get_config()) == codec


# -- hostile payloads, through Dataset --------------------------------------------------------------

@pytest.fixture
def hostile_base(tmp_path, rng):
    """Two datasets: fixed shape (100, 4) and variable length (None, 4), both raw bodies."""
    raws, cc = signals(rng, np.int16, count=2, shape=(100, 4))
    config = {"id": "scaled-int", "raw_dtype": "<i2", "filters": [], "order": "C"}
    fixed = write(tmp_path / "fixed", [ScaledSignal(r, 1e-6, 0.0, cc) for r in raws], config)
    varying = write(tmp_path / "varying", [ScaledSignal(raws[0], 1e-6, 0.0, cc),
                                            ScaledSignal(raws[1][:60], 1e-6, 0.0, cc)], config)
    return {"fixed": fixed, "varying": varying}


def forged(shape, *, factors=None, body=b"", code=1, ndim=None, flags=None, conversion=1e-6, magic=b"NCSI"):
    ndim = len(shape) if ndim is None else ndim
    flags = (factors is not None) if flags is None else flags
    head = FIXED.pack(magic, 1, code, ndim, int(flags), conversion, 0.0) + struct.pack(f"<{len(shape)}Q", *shape)
    return head + (b"" if factors is None else np.asarray(factors, "<f8").tobytes()) + body


def body(count):
    return np.zeros(count, "<i2").tobytes()


HOSTILE = {
    "truncated_header": ("fixed", lambda good: good[:20], "shorter than its 24-byte header"),
    "truncated_shape": ("fixed", lambda good: good[:30], "truncated inside its header"),
    "truncated_body": ("fixed", lambda good: good[:-7], "body|stage got|bytes"),
    "trailing_bytes": ("fixed", lambda good: good + b"\0\0", "body|stage got|bytes"),
    "bad_magic": ("fixed", lambda good: b"NPYX" + good[4:], "not a scaled-int payload"),
    "other_dtype": ("fixed", lambda good: forged((100, 4), factors=[1.0] * 4, body=body(400) * 2, code=2),
                    "dtype code 2"),
    "unknown_dtype_code": ("fixed", lambda good: forged((100, 4), body=body(400), code=200), "dtype code 200"),
    "shape_not_the_fields": ("fixed", lambda good: forged((100, 5), body=body(500)), r"shape \(100, 5\)"),
    "ndim_zero": ("fixed", lambda good: forged((), ndim=0), "0 dimensions"),
    "ndim_too_many": ("fixed", lambda good: forged((1,) * 40), "40 dimensions"),
    "count_too_big": ("varying", lambda good: forged((1 << 40, 4), factors=[1.0] * 4, body=body(16)),
                      "more than the .* the manifest bounds"),
    "count_overflowing_64_bits": ("varying", lambda good: forged(((1 << 62) + 1, 4), body=body(16)),
                                  "more than the .* the manifest bounds"),
    "factor_count_mismatch": ("fixed", lambda good: forged((100, 4), factors=[1.0] * 3, body=body(400)),
                              "too short for the 4 channel|body|stage got"),
    "factors_past_the_end": ("fixed", lambda good: forged((100, 4), factors=[1.0] * 2), "too short for the 4 channel"),
    "factors_not_finite": ("fixed", lambda good: forged((100, 4), factors=[1.0, np.inf, 1.0, 1.0], body=body(400)),
                           "not finite"),
    "conversion_not_finite": ("fixed", lambda good: forged((100, 4), body=body(400), conversion=float("nan")),
                              "not finite"),
    "unknown_flags": ("fixed", lambda good: forged((100, 4), body=body(400), flags=6), "flags 6"),
    "factors_on_one_axis": ("varying", lambda good: forged((4,), body=body(4), flags=1), "flags 1"),
}


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("raw", [False, True])
def test_hostile_payload_is_a_shard_error(hostile_base, tmp_path, name, raw):
    base, build, match = HOSTILE[name]
    root = h.copy_dataset(hostile_base[base], tmp_path / "bad")
    good = h.read_members(root, 0)[h.member_position(root, 0, 0, "lfp")].payload
    h.replace_member(root, 0, 0, "lfp", payload=build(good))
    with Dataset(root, decode={"lfp": {"raw": raw}}) as ds:
        with pytest.raises(ShardError, match=match) as caught:
            ds[0]
        assert MEMBER in str(caught.value)
        assert np.array_equal(ds[1]["lfp"].shape[1:], (4,))  # the other samples still read


def test_manifest_declaring_another_dtype_is_refused(hostile_base, tmp_path):
    root = h.copy_dataset(hostile_base["fixed"], tmp_path / "bad")
    doc = h.load_manifest(root)
    doc["fields"][[f["name"] for f in doc["fields"]].index("lfp")]["dtype"] = "<i2"
    h.save_manifest(root, doc)
    with pytest.raises(Exception, match="decodes to <f4") as caught:
        with Dataset(root) as ds:
            ds[0]
    assert "neurocodec" in type(caught.value).__module__


@pytest.mark.parametrize("shape", [(0, 1 << 62), (1 << 62, 0), (0, 1 << 60)])
def test_an_empty_axis_does_not_excuse_a_huge_one(shape):
    """Found by fuzzing: numpy cannot even describe (0, 2**62) int16 (it raised ValueError)."""
    codec = ScaledIntCodec("<i2", [])
    field = field_for(codec, ScaledSignal(np.zeros((1, 1), np.int16)))
    field = type(field)(**{**field.to_dict(), "shape": (None, None), "max_raw_bytes": 1 << 20, "max_value_bytes": 0})
    for options in ({}, {"raw": True}):
        with pytest.raises(CodecError, match="larger than any array numpy can describe"):
            codec.decoder(field, options)(forged(shape))


def test_an_empty_array_with_a_long_axis_decodes_at_once():
    """Found by fuzzing: shape (2**52, 0) made the float conversion step through 2**52 rows."""
    codec = ScaledIntCodec("|u1", [])
    field = field_for(codec, ScaledSignal(np.zeros((1, 1), np.uint8)))
    field = type(field)(**{**field.to_dict(), "shape": (None, None), "max_raw_bytes": 1 << 20, "max_value_bytes": 0})
    payload = forged((1 << 52, 0), code=4)
    assert codec.decoder(field)(payload).shape == codec.decoder(field, {"raw": True})(payload).shape == (1 << 52, 0)
    assert ScaledSignal(np.zeros((1 << 52, 0), np.uint8), 2.0).physical().shape == (1 << 52, 0)


def test_empty_windows_round_trip(tmp_path):
    """An empty window whose other axis is long still decodes: the writer can produce it."""
    root = write(tmp_path / "ds", [ScaledSignal(np.zeros((0, 5000), np.int16), 2.0)], scaled_codec("<i2"))
    with Dataset(root) as ds, Dataset(root, decode={"lfp": {"raw": True}}) as raw:
        assert ds[0]["lfp"].shape == raw[0]["lfp"].shape == (0, 5000)
        assert (ds[0]["lfp"].dtype, raw[0]["lfp"].dtype) == (np.float32, np.int16)
