"""Tests of the photometry plugin; run with the plugin installed: `pip install -e . && pytest tests`."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetWriter
from neurocodec.plugin import CodecError, FieldSpec

from neurocodec_photometry import PhotometryDeltaCodec
from neurocodec_photometry.codec import HEADER


def field(dtype: str = "<f4", shape=(None, 3)) -> FieldSpec:
    """The manifest entry the writer records for photometry traces."""
    return FieldSpec(name="photometry", modality="photometry", kind="array",
                     codec={"id": "photometry-delta", "level": 6}, extension="phdz", plugin="photometry",
                     plugin_version="0.1.0", dtype=dtype, shape=shape)


def traces(rng: np.random.Generator, time: int = 200, channels: int = 3, dtype: str = "f4") -> np.ndarray:
    """Slow photometry-like traces plus the awkward values a float codec must not change."""
    x = np.cumsum(rng.standard_normal((time, channels)), axis=0).astype(dtype) * np.asarray(0.01, dtype)
    flat = x.reshape(-1)
    specials = np.array([np.nan, -np.inf, np.inf, -0.0, np.finfo(dtype).tiny / 2], dtype=dtype)
    n = min(len(specials), flat.size)
    flat[:n] = specials[:n]
    flat[n:n + 1].view(f"u{x.itemsize}")[:] |= 1  # an odd mantissa bit
    return x


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (NaN payloads and signed zeros count)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["f2", "f4", "f8"])
def test_codec_round_trip_is_bit_exact(dtype):
    codec = PhotometryDeltaCodec()
    rng = np.random.default_rng(0)
    for value in (traces(rng, dtype=dtype), np.zeros((0, 3), dtype), traces(rng, 1, 3, dtype),
                  traces(rng, 50, 6, dtype)[::2, ::2], traces(rng, 20, 3, dtype).astype(f">{dtype}")):
        data = codec.encode(value)
        got = codec.decode(memoryview(data), field(np.dtype(dtype).newbyteorder("<").str, (None, None)))
        assert same_bits(got, np.ascontiguousarray(value, dtype=np.dtype(dtype).newbyteorder("<")))


def test_smooth_traces_compress():
    value = np.sin(np.linspace(0, 20, 30000, dtype="f4")).reshape(-1, 3)
    assert len(PhotometryDeltaCodec().encode(value)) < value.nbytes * 0.8


def test_with_neurocodec_testing_helpers():
    testing = pytest.importorskip("neurocodec.testing")
    testing.check_codec(PhotometryDeltaCodec(level=1), [traces(np.random.default_rng(1))])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:10], "shorter than"),
    (lambda d: b"XXXX" + d[4:], "magic"),
    (lambda d: d[:4] + b"\x02" + d[5:], "version"),
    (lambda d: d[:5] + b"\x03" + d[6:], "item size"),
    (lambda d: d[:8] + struct.pack("<QQ", 10**9, 3) + d[24:], "cannot hold"),
    (lambda d: d[:8] + struct.pack("<QQ", 201, 3) + d[24:], "exactly"),
    (lambda d: d[:8] + struct.pack("<QQ", 200, 4) + d[24:], "manifest declares"),
    (lambda d: d + b"\0", "exactly"),
    (lambda d: d[:-4], "exactly"),
    (lambda d: d[:30] + bytes([d[30] ^ 0xFF]) + d[31:], "zlib"),
])
def test_decode_rejects_hostile_payloads(mutate, message):
    data = PhotometryDeltaCodec().encode(traces(np.random.default_rng(2)))
    with pytest.raises(CodecError, match=message):
        PhotometryDeltaCodec().decode(mutate(data), field())


def test_decode_checks_dtype_against_the_manifest():
    data = PhotometryDeltaCodec().encode(traces(np.random.default_rng(3), dtype="f8"))
    with pytest.raises(CodecError, match="manifest declares"):
        PhotometryDeltaCodec().decode(data, field("<f4"))


def test_decompression_bomb_is_bounded():
    # A valid stream of 100 MB of zeros claimed by a tiny payload: refused before inflating.
    bomb = HEADER.pack(b"NCPH", 1, 4, 0, 25_000_000, 1) + zlib.compress(bytes(1000))
    with pytest.raises(CodecError, match="cannot hold"):
        PhotometryDeltaCodec().decode(bomb, field(shape=(None, None)))


def test_encode_refuses_non_float_or_wrong_rank():
    with pytest.raises(CodecError):
        PhotometryDeltaCodec().encode(np.zeros((3, 3), "i4"))
    with pytest.raises(CodecError):
        PhotometryDeltaCodec().encode(np.zeros(3, "f4"))
    with pytest.raises(CodecError):
        PhotometryDeltaCodec(level=11)


def test_dataset_round_trip_through_the_installed_plugin(tmp_path):
    rng = np.random.default_rng(4)
    samples = [traces(rng, time=t) for t in (100, 80, 120)]
    with WebDatasetWriter(tmp_path / "ds", shard_size=2, compression="zstd", fsync=False) as writer:
        for i, x in enumerate(samples):
            writer.write_sample({"photometry": x}, metadata={"trial": i})
    with Dataset(tmp_path / "ds") as ds:
        (spec, _meta) = ds.fields
        assert spec.codec_id == "photometry-delta" and spec.distribution == "neurocodec-photometry"
        assert spec.shape == (None, 3) and spec.dtype == "<f4"
        for i, (want, got) in enumerate(zip(samples, ds)):
            assert same_bits(got["photometry"], want) and got["metadata"] == {"trial": i}
        assert ds.verify_all() == 3
