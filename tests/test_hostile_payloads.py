"""Hostile shards, part 3: member payloads (.npy arrays, JSON metadata, decompression bombs,
lying zstd frames, corrupt or foreign compressed streams).

Shared parts (the base dataset, the case registry, the checks) are in tests/hostile_corpus.py.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zstandard

import hostile as h
from hostile_corpus import (BOMB, COMPRESSIONS, Case, Expect, lfp_expect, make_samples, put_payload, raw_payload,
                            registrar, reject, trap_payload, with_match)
from neurocodec import Dataset
from neurocodec.errors import ShardError

pytestmark = pytest.mark.timeout(120)

CASES: list[Case] = []
case = registrar(CASES)


# -- .npy payloads (consistent index, CRC-32 and manifest: the decoder is the target) -------------

def _npy_header(text: str, version: int = 1) -> bytes:
    body = text.encode("latin1")
    lead = 10 if version == 1 else 12
    body += b" " * (-(lead + len(body) + 1) % 64) + b"\n"
    size = len(body).to_bytes(2 if version == 1 else 4, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + body


NPY_CASES = {
    # Check: shape against payload size (nothing is allocated for the claimed shape).
    "huge_shape": (_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000000), }")
                   + bytes(128), r"NPY header declares shape \(1000000000, 1000000000\)"),
    "shape_overflows_int64": (_npy_header("{'descr': '<f4', 'fortran_order': False, "
                                          "'shape': (9999999999999999999, 0), }"),
                              r"NPY|array|dimension"),
    "too_many_dims": (_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (" + "1, " * 40 + "), }")
                      + bytes(4), r"at most 32 non-negative integers"),
    "negative_dim": (_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 32), }")
                     + bytes(128), r"not a plain numeric array header"),
    # Check: numeric dtypes only.
    "object_dtype": (_npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }") + bytes(16),
                     r"NPY dtype '\|O' is not a numeric dtype"),
    "structured_dtype": (h.npy_bytes(np.zeros(32, dtype=[("a", "<f4")])), r"not a plain numeric array header"),
    "unicode_dtype": (h.npy_bytes(np.array(["abcdefghij"] * 3, dtype="<U10")), r"NPY dtype '<U10' is not"),
    "datetime_dtype": (h.npy_bytes(np.zeros(32, dtype="M8[s]")), r"is not a numeric dtype"),
    "void_dtype": (h.npy_bytes(np.zeros(32, dtype="V4")), r"is not a numeric dtype"),
    "invalid_itemsize": (_npy_header("{'descr': '<f3', 'fortran_order': False, 'shape': (2, 16), }")
                         + bytes(96), r"NPY dtype '<f3' is not a numeric dtype this format stores"),
    # Check: C order only.
    "fortran_order": (h.npy_bytes(np.asfortranarray(np.zeros((2, 16), "<f4"))), r"Fortran-ordered"),
    # Check: the header is parsed, never evaluated.
    "code_in_header": (_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16), "
                                   "'x': __import__('os').system('exit 3'), }") + bytes(128),
                       r"not a plain numeric array header"),
    "header_length_past_end": (b"\x93NUMPY\x01\x00\xff\x0f{'descr'", r"too large or past the payload end"),
    "header_length_huge_v2": (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f" + bytes(64), r"too large"),
    "header_not_utf8_v3": (_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 16), }", 3)
                           .replace(b"<f4", b"\xff\xfe4") + bytes(128), r"NPY header is not text"),
    "unknown_version": (b"\x93NUMPY\x09\x00" + bytes(120), r"unsupported NPY version 9"),
    "bad_magic": (b"\x93NUMPX" + bytes(200), r"bad magic"),
    "empty": (b"", r"bad magic"),
    # Check: decoded array against the manifest's dtype and shape.
    "dtype_float64_for_float32_field": (h.npy_bytes(np.zeros((2, 16), "<f8")), r"the manifest declares <f4"),
    "big_endian_for_little_field": (h.npy_bytes(np.zeros((2, 16), ">f4")),
                                    r"NPY dtype '>f4' is not a numeric dtype this format stores"),
    "shape_transposed": (h.npy_bytes(np.zeros((16, 2), "<f4")), r"the manifest declares \(2, 16\)"),
    "extra_dimension": (h.npy_bytes(np.zeros((1, 2, 16), "<f4")), r"the manifest declares \(2, 16\)"),
    "scalar": (h.npy_bytes(np.float32(1)), r"the manifest declares \(2, 16\)"),
}


def _npy_case(payload: bytes, match: str) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        return with_match(put_payload(root, compression, payload), match)
    return build


CASES += [Case(f"npy_{n}", c, _npy_case(payload, match))
          for n, (payload, match) in NPY_CASES.items() for c in ("none", "zstd")]


@case(*COMPRESSIONS)
def npy_pickled_object_array(root: Path, compression: str) -> Expect:
    """`np.save(allow_pickle=True)` of an object array whose unpickling would mkdir a marker.
    Check: NPY numeric dtype; the marker must not appear (asserted by the tests)."""
    payload, _marker = trap_payload(root)
    return with_match(put_payload(root, compression, payload), r"NPY dtype '\|O' is not a numeric dtype")


@case("none", "xz")
def spikes_float_where_packed_ints(root: Path, compression: str) -> Expect:
    """Float payload in the pack_integers spikes field. Check: packed-integer widening."""
    expect = put_payload(root, compression, h.npy_bytes(np.zeros((4, 10), "<f8")), field="spikes")
    return with_match(expect, r"packed dtype float64 cannot widen to int64")


@case()
def spikes_uint64_cannot_widen(root: Path, compression: str) -> Expect:
    """uint64 payload for an int64 spikes field. Check: packed-integer widening."""
    expect = put_payload(root, compression, h.npy_bytes(np.zeros((4, 10), "<u8")), field="spikes")
    return with_match(expect, r"packed dtype uint64 cannot widen to int64")


# -- JSON metadata ---------------------------------------------------------------------------------

JSON_CASES = {
    "deeply_nested": (b"[" * 200_000 + b"]" * 200_000, r"RecursionError"),
    "deeply_nested_objects": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, r"RecursionError"),
    "not_utf8": (b'{"label": "\xff\xfe\xfa"}', r"UnicodeDecodeError"),
    "huge_integer_literal": (b"1" * 100_000, r"ValueError"),
    "not_json": (b"\x80\x04\x95pickle", r"UnicodeDecodeError|JSONDecodeError"),
    "trailing_garbage": (b'{"trial": 0} {"x"', r"JSONDecodeError"),
}


def _json_case(payload: bytes, match: str) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        return with_match(put_payload(root, compression, payload, field="metadata"), match)
    return build


CASES += [Case(f"metadata_{n}", c, _json_case(payload, match))
          for n, (payload, match) in JSON_CASES.items() for c in ("none", "gz")]


# -- compression: bombs, lying frames, corrupt streams ---------------------------------------------

@functools.lru_cache(maxsize=None)
def cached_bomb(compression: str) -> bytes:
    """A single stream of `compression` inflating to 4 GiB of zeros (built once per process)."""
    return h.bomb(compression, BOMB)


def test_bombs_are_genuine():
    """Each bomb really inflates past 64 MiB without ending (and the zstd one declares 4 GiB);
    the same constructions at small scale decompress exactly (tests/hostile.py's assemblers)."""
    small = 1 << 20
    assert gzip.decompress(h.gzip_bomb(3 * small, small)) == bytes(3 * small)
    assert lzma.decompress(h.xz_bomb(3 * small, small)) == bytes(3 * small)
    assert bz2.decompress(h.bz2_bomb(3 * small, small)) == bytes(3 * small)
    assert zstandard.ZstdDecompressor().decompress(h.zstd_rle_frame(300_000, declared=300_000)) == bytes(300_000)
    assert zstandard.frame_content_size(cached_bomb("zstd")) == BOMB
    for name, obj in [("gz", zlib.decompressobj(31)), ("bz2", bz2.BZ2Decompressor()),
                      ("xz", lzma.LZMADecompressor())]:
        bomb = cached_bomb(name)
        assert len(bomb) < 8 << 20
        out = obj.decompress(bomb, 64 << 20)
        assert len(out) == 64 << 20 and not out.strip(b"\0") and not obj.eof


def _bomb_case(compression: str, claim: str) -> Callable[[Path, str], Expect]:
    def build(root: Path, comp: str) -> Expect:
        doc = h.load_manifest(root)
        max_raw = doc["fields"][0]["max_raw_bytes"]
        raw = BOMB if claim == "huge" else h.read_members(root, 0)[0].raw
        h.replace_member(root, 0, 0, "lfp", payload=cached_bomb(compression), raw=raw)
        if claim == "huge":  # the manifest keeps its honest limit; the index lies above it
            doc = h.load_manifest(root)
            doc["fields"][0]["max_raw_bytes"] = max_raw
            h.save_manifest(root, doc)
            h.fix_index_entry(root, 0)
            return Expect(ShardError, r"a member is larger than the manifest declares for its field")
        if compression == "zstd":  # the frame honestly declares 4 GiB: refused before allocating
            return lfp_expect(comp, r"zstd frame does not declare the indexed size")
        return lfp_expect(comp, r"payload decompresses to more than the \d+ bytes the index says")
    return build


CASES += [Case(f"bomb_claiming_{claim}_raw_size", c, _bomb_case(c, claim))
          for c in ("zstd", "gz", "bz2", "xz") for claim in ("small", "huge")]


def _zstd_case(frame: Callable[[int], bytes], match: str) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        raw = h.read_members(root, 0)[0].raw
        h.replace_member(root, 0, 0, "lfp", payload=frame(raw), raw=raw)
        return lfp_expect(compression, match)
    return build


CASES += [Case(n, "zstd", b) for n, b in [
    # Check: bounded zstd decompression. The frame header says the indexed size; its blocks hold 4 GiB.
    ("zstd_frame_understates_content_size", _zstd_case(
        lambda raw: h.zstd_rle_frame(BOMB, declared=raw), r"zstd payload does not decompress")),
    # Check: zstd declared size. A streamed frame with no content size, holding 4 GiB.
    ("zstd_frame_without_content_size", _zstd_case(
        lambda raw: h.zstd_rle_frame(BOMB, declared=None), r"zstd frame does not declare the indexed size")),
    # Check: zstd output size. The frame claims the indexed size but holds one byte less.
    ("zstd_frame_overstates_content_size", _zstd_case(
        lambda raw: h.zstd_rle_frame(raw - 1, declared=raw), r"zstd payload does not decompress")),
    # Check: one frame per payload.
    ("zstd_two_frames", _zstd_case(
        lambda raw: h.zstd_rle_frame(raw, declared=raw) + h.zstd_rle_frame(5, declared=5),
        r"zstd payload does not decompress")),
    ("zstd_skippable_frame", _zstd_case(
        lambda raw: b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + bytes(8),
        r"zstd payload does not decompress|zstd frame does not declare")),
]]


def xz_with_dictionary(data: bytes, code: int) -> bytes:
    """An xz stream whose LZMA2 filter demands dictionary size `code` (40: 4 GiB)."""
    out = bytearray(data)
    start = 12
    size = (out[start] + 1) * 4
    block_header = out[start:start + size]
    flags = block_header[1]
    pos = 2
    for present in (flags & 0x40, flags & 0x80):  # compressed / uncompressed size fields
        if present:
            while block_header[pos] & 0x80:
                pos += 1
            pos += 1
    assert block_header[pos] == 0x21 and block_header[pos + 1] == 1, "expected one LZMA2 filter"
    block_header[pos + 2] = code
    block_header[-4:] = zlib.crc32(bytes(block_header[:-4])).to_bytes(4, "little")
    out[start:start + size] = block_header
    return bytes(out)


@case("xz")
def xz_demands_4gib_dictionary(root: Path, compression: str) -> Expect:
    """An xz payload whose filter asks for a 4 GiB dictionary. Check: the xz memory limit."""
    raw = raw_payload(root, compression, 0, "lfp")
    forged = xz_with_dictionary(h.compress("xz", raw), 40)
    h.replace_member(root, 0, 0, "lfp", payload=forged, raw=len(raw))
    return lfp_expect(compression, r"xz payload does not decompress: .*[Mm]emory")


def _stream_case(edit: Callable[[bytes, bytes, str], bytes], match: str) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        raw = raw_payload(root, compression, 0, "lfp")
        payload = edit(h.compress(compression, raw), raw, compression)
        h.replace_member(root, 0, 0, "lfp", payload=payload, raw=len(raw))
        return lfp_expect(compression, match)
    return build


STREAM_CASES = {
    # Check: the decompressor's own integrity checks, with a valid CRC-32 over the stored bytes.
    "truncated_stream": (lambda c, raw, comp: c[:-5],
                         r"does not decompress|truncated|does not declare"),
    "trailing_garbage": (lambda c, raw, comp: c + b"GARBAGE!",
                         r"does not decompress|trailing data"),
    "two_concatenated_streams": (lambda c, raw, comp: c + c, r"does not decompress|trailing data"),
    "random_bytes": (lambda c, raw, comp: np.random.default_rng(3).bytes(len(c)),
                     r"does not decompress|does not declare|truncated"),
    "stream_of_other_compression": (lambda c, raw, comp: h.compress("gz" if comp != "gz" else "bz2", raw),
                                    r"does not decompress|does not declare"),
}


CASES += [Case(f"stream_{n}", c, _stream_case(edit, match))
          for n, (edit, match) in STREAM_CASES.items() for c in ("zstd", "gz", "bz2", "xz")]
# Check: the stream's own checksum (gzip CRC-32, bzip2 block CRC, xz check). zstd is left out:
# the writer stores no zstd content checksum, so a consistently re-CRC'd zstd payload with a
# flipped literal is simply other data (the index CRC-32 is what protects it, tested in test_hostile_tar.py).
CASES += [Case("stream_corrupt_middle", c, _stream_case(
    lambda c, raw, comp: c[:len(c) // 2] + bytes([c[len(c) // 2] ^ 0xFF]) + c[len(c) // 2 + 1:],
    r"does not decompress|decompresses to|truncated")) for c in ("gz", "bz2", "xz")]


# -- the tests -------------------------------------------------------------------------------------

def test_trap_payload_is_live(tmp_path):
    """The pickle trap really fires when numpy is allowed to unpickle it (so its silence counts)."""
    payload, marker = trap_payload(tmp_path / "ds")
    np.load(io.BytesIO(payload), allow_pickle=True)
    assert marker.is_dir()


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case_is_rejected(c: Case, base, tmp_path):
    reject(c, base, tmp_path)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_damage_is_confined_to_its_sample(compression, base, tmp_path):
    """A damaged member fails its own sample only: the others in the same shard still read."""
    root = h.copy_dataset(base[compression], tmp_path / "ds")
    put_payload(root, compression, h.npy_bytes(np.zeros((16, 2), "<f4")), sample=1)
    want = make_samples()
    with Dataset(root) as ds:
        np.testing.assert_array_equal(ds[0]["lfp"], want[0][0]["lfp"])
        np.testing.assert_array_equal(ds[2]["spikes"], want[2][0]["spikes"])
        with pytest.raises(ShardError, match="sample_000000002.lfp"):
            ds[1]
