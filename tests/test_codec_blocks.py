"""Array bodies in row blocks (`block_rows` in `ndarray` and `scaled-int` configs): round trips,
row ranges against numpy, hostile tables, and windows that decode only the blocks they overlap
(shown on a dataset whose other blocks are damaged)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from neurocodec import Dataset, WebDatasetLoader, WebDatasetWriter
from neurocodec.errors import ShardError
from neurocodec.nwb.series import ScaledSignal
from neurocodec.plugin import ScaledIntCodec, scaled_codec, signal_codec
from neurocodec.plugin.arrays import ArrayCodec, array_body
from neurocodec.plugin.codecs import CodecError
from neurocodec.plugin.filters import FilterChain, signal_filters

sys.path.insert(0, str(Path(__file__).parent))


def chain(dtype="<i2") -> FilterChain:
    return FilterChain.from_configs(signal_filters(dtype))


@pytest.mark.parametrize("shape, block", [((1000, 4), 256), ((1000, 4), 1), ((7,), 3), ((256, 2, 3), 256),
                                          ((0, 4), 5), ((300, 1), 1000)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_row_ranges_equal_numpy(shape, block, order):
    values = np.random.default_rng(1).integers(-30000, 30000, shape).astype("<i2")
    codec = ArrayCodec(signal_filters("<i2"), order, block)
    payload = codec.encode(values)
    assert codec.get_config()["block_rows"] == block
    from neurocodec.plugin.arrays import _header_span  # the body follows the NPY header

    start, _ = _header_span(memoryview(payload))
    body = array_body(memoryview(payload)[start:], np.dtype("<i2"), shape, chain(), order, block_rows=block)
    np.testing.assert_array_equal(body.whole(), values)
    rows = shape[0]
    for first, stop in [(0, rows), (0, 0), (rows, rows), (rows // 3, rows // 3 + 1), (1, max(1, rows - 1)),
                        (max(0, rows - 300), rows)]:
        if first <= stop <= rows:
            got = body.rows(first, stop)
            assert not got.flags.writeable and got.flags.c_contiguous
            np.testing.assert_array_equal(got, values[first:stop])


def test_blocks_cost_little_and_unblocked_configs_are_unchanged():
    values = np.cumsum(np.random.default_rng(2).integers(-50, 50, (10_000, 64)), axis=0).astype("<i2")
    whole = ArrayCodec(signal_filters("<i2"), "F").encode(values)
    blocked = ArrayCodec(signal_filters("<i2"), "F", 256).encode(values)
    assert len(blocked) < 1.05 * len(whole)  # 64 channels: +3%; 8 channels: +8% (blocks of 4 KB)
    assert "block_rows" not in signal_codec("<i2") and signal_codec("<i2", block_rows=64)["block_rows"] == 64
    assert "block_rows" not in scaled_codec("<i2") and scaled_codec("<i2", block_rows=64)["block_rows"] == 64
    with pytest.raises(CodecError, match="block_rows must be a positive integer"):
        ArrayCodec.from_config({"id": "ndarray", "filters": [], "block_rows": 0})
    with pytest.raises(CodecError, match="block_rows must be a positive integer"):
        ScaledIntCodec.from_config({"id": "scaled-int", "raw_dtype": "<i2", "block_rows": "8"})


def hostile_bodies(values: np.ndarray, block: int):
    """(name, body) pairs: a valid blocked body changed in its table or a block."""
    good = ArrayCodec(signal_filters("<i2"), "C", block).encode(values)
    from neurocodec.plugin.arrays import _header_span

    start, _ = _header_span(memoryview(good))
    header, body = good[:start], bytearray(good[start:])
    count = struct.unpack_from("<I", body)[0]
    yield "count", header + struct.pack("<I", count + 1) + bytes(body[4:])
    yield "huge count", header + struct.pack("<I", 2**31) + bytes(body[4:])
    yield "truncated table", header + bytes(body[:4 + 2])
    longer = bytearray(body)
    struct.pack_into("<I", longer, 4, struct.unpack_from("<I", body, 4)[0] + 1)
    yield "lengths", header + bytes(longer)
    swapped = bytearray(body)  # 5 bytes of the second block counted in the first: neither decodes
    a, b = struct.unpack_from("<2I", body, 4)
    struct.pack_into("<2I", swapped, 4, a + 5, b - 5)
    yield "sizes", header + bytes(swapped)


@pytest.mark.parametrize("name", ["count", "huge count", "truncated table", "lengths", "sizes"])
def test_hostile_tables_are_codec_errors(name):
    values = np.random.default_rng(3).integers(-9, 9, (1000, 3)).astype("<i2")
    codec = ArrayCodec(signal_filters("<i2"), "C", 256)
    field = dict(hostile_bodies(values, 256))[name]
    from neurocodec.format.manifest import FieldSpec

    spec = FieldSpec(name="x", modality="lfp", kind="array", codec=codec.get_config(), extension="nda", plugin="lfp",
                     plugin_version="0", dtype="<i2", shape=(1000, 3), max_raw_bytes=10**6, max_stored_bytes=10**6)
    with pytest.raises(CodecError):
        codec.decoder(spec)(field)


def scaled(values: np.ndarray) -> ScaledSignal:
    return ScaledSignal(values, 2.5e-6, 0.1, np.array([1.0, 0.5, 2.0]))


def test_scaled_blocks_decode_as_one_piece(tmp_path):
    values = np.random.default_rng(4).integers(-2000, 2000, (5, 700, 3)).astype("<i2")
    for name, block in (("whole", None), ("blocked", 128)):
        with WebDatasetWriter(tmp_path / name, codecs={"lfp": scaled_codec("<i2", block_rows=block)}) as writer:
            for i, v in enumerate(values):
                writer.write_sample({"lfp": scaled(v)}, metadata={"i": i})
    for raw in (False, True):
        with Dataset(tmp_path / "whole", decode={"lfp": {"raw": raw}}) as a, \
                Dataset(tmp_path / "blocked", decode={"lfp": {"raw": raw}}) as b:
            for x, y in zip(a, b):
                assert x["lfp"].dtype == y["lfp"].dtype and x["lfp"].tobytes() == y["lfp"].tobytes()


def test_a_window_decodes_only_the_blocks_it_overlaps(tmp_path):
    """A chunked NWB conversion's integer LFP is stored in 256-row blocks. With a block of every
    chunk damaged (and payload checksums off), windows away from it read; a window over it fails
    as a ShardError naming the field: so a window decodes only its blocks."""
    from nwbfiles import add_lfp, add_units, electrical_series, new_file, random_spikes, write

    rng = np.random.default_rng(5)
    nwb = new_file("blocks")
    add_units(nwb, random_spikes(rng, 2, 0.0, 8.0, mean=40))
    lfp = rng.integers(-1000, 1000, (8000, 2)).astype(np.int16)  # 1 kHz
    add_lfp(nwb, electrical_series(nwb, "lfp", lfp, rate=1000.0, conversion=1e-6))
    source = write(nwb, tmp_path / "s.nwb")
    from neurocodec import NWBToWebDatasetConverter

    with NWBToWebDatasetConverter(tmp_path / "out", 8, ["spikes", "lfp"], 10.0, chunk_seconds=2.0, progress=False,
                                  fsync=False) as converter:
        converter.convert_nwb_files([source])
        converter.finalize()
    with Dataset(tmp_path / "out") as ds:
        assert ds.manifest.fields[[f.name for f in ds.manifest.fields].index("lfp")].codec["block_rows"] == 256
    damage_last_block(tmp_path / "out")  # rows 1792..1999 of every 2000-row chunk
    grid = dict(window_ms=500, window_mode="grid", shuffle=False, verify="none", decode={"lfp": {"raw": True}})
    skipping = WebDatasetLoader(tmp_path / "out", on_error="skip", **grid)
    fine = list(skipping)
    chunks = [tuple(c) for r in Dataset(tmp_path / "out").manifest.extra["timeline"]["sessions"].values()
              for c in r["chunks"]]
    damaged = [(stop - 0.208, stop) for _, stop in chunks]  # rows 1792..1999 of each chunk
    spans = [(s["metadata"]["start_time"], s["metadata"]["stop_time"]) for s in fine]
    assert not any(a < z and b > y for a, b in spans for y, z in damaged)  # no window over a damaged block
    assert len(fine) == 3 * len(chunks) and skipping.state_dict()["skipped"] == len(chunks)  # one per chunk
    for sample in fine:
        at = round(sample["metadata"]["start_time"] * 1000)
        np.testing.assert_array_equal(sample["lfp"].numpy(), lfp[at:at + 500])
    with pytest.raises(ShardError, match="field 'lfp'"):
        list(WebDatasetLoader(tmp_path / "out", **grid))


def damage_last_block(out: Path) -> None:
    """Overwrite the start of the last block of every lfp payload (the tar stays valid; only the
    payloads' CRC-32 no longer match, which verify="none" does not check)."""
    with Dataset(out) as ds:
        column = [f.name for f in ds.manifest.fields].index("lfp")
        for number, entry in enumerate(ds.shards):
            rows = ds.shard(number).rows[:, column, :].tolist()
            with open(out / entry.name, "r+b") as f:
                for offset, stored, _, _ in rows:
                    f.seek(offset)
                    payload = f.read(stored)
                    start = payload.index(b"\x08\x00\x00\x00", 0)  # the table: 8 blocks of 256 rows
                    lengths = struct.unpack_from("<8I", payload, start + 4)
                    last = start + 4 * 9 + sum(lengths[:7])
                    f.seek(offset + last)
                    f.write(b"\xff" * 4)  # its zstd frame's magic number: the block cannot decode
