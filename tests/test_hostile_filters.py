"""Hostile `ndarray` payloads and filter-chain manifests: each is refused with neurocodec's typed
error naming the shard and member (or the field, at opening), in bounded memory, before any
filter allocates what a header or a compressed stream claims.

The base dataset is written by WebDatasetWriter with one `ndarray` field per compressor; each
case damages a copy and repairs everything around the damage (tests/hostile.py), so the damage
reaches the codec. Memory is bounded in-process by tracemalloc (`read_rejected`) and, for the
bombs, in a child process whose address space is capped.
"""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import hostile as h
from hostile_corpus import Expect, read_rejected
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import ShardError, UnknownCodecError
from neurocodec.plugin import signal_codec

pytestmark = pytest.mark.timeout(120)

SHAPE = (100, 4)
CODECS = {
    "zs": signal_codec("<i2"),
    "lz": {"id": "ndarray", "filters": [{"id": "shuffle", "elementsize": 2}, {"id": "lz4"}], "order": "F"},
    "zl": {"id": "ndarray", "filters": [{"id": "delta", "dtype": "<i2"}, {"id": "zlib", "level": 6}]},
    "tr": {"id": "ndarray", "filters": [{"id": "delta", "dtype": "<i2"}, {"id": "shuffle", "elementsize": 2}]},
}


def samples() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    # Lengths vary, so the manifest's shape is (None, 4) and only the size bound stops a long header.
    return [{name: rng.integers(-8, 8, (n, 4)).astype("<i2") for name in CODECS} for n in (100, 80, 100)]


@pytest.fixture(scope="module")
def filters_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filters") / "base"
    with WebDatasetWriter(root, shard_size=2, codecs=CODECS, fsync=False) as w:
        for fields in samples():
            w.write_sample(fields)
    return root


def member(field: str) -> str:
    return f"sample_000000001.{field}.nda"


def header(shape: tuple[int, ...] = SHAPE, descr: str = "<i2", fortran: bool = False) -> bytes:
    text = "{'descr': '%s', 'fortran_order': %s, 'shape': %r, }" % (descr, fortran, shape)
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def payload(root: Path, field: str) -> bytes:
    return h.read_members(root, 0)[h.member_position(root, 0, 0, field)].payload


def body(root: Path, field: str) -> bytes:
    data = payload(root, field)
    return data[10 + struct.unpack_from("<H", data, 8)[0]:]


def put(root: Path, field: str, data: bytes) -> None:
    h.replace_member(root, 0, 0, field, payload=data)


NBYTES = SHAPE[0] * SHAPE[1] * 2


@functools.cache
def zlib_bomb(total: int = h.GiB, chunk: int = 64 << 20) -> bytes:
    """One genuine zlib stream inflating to `total` zero bytes, built from one compressed segment
    of `chunk` zeros repeated (a full flush makes segments independent), in well under a second."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(total // chunk):
        adler = zlib.adler32(zeros, adler)
    stream = b"\x78\xda" + segment * (total // chunk) + c.flush() + struct.pack(">I", adler)
    assert zlib.decompressobj().decompress(stream, 1 << 20) == bytes(1 << 20)
    return stream


# name -> (field, new payload from the valid one, message)
CASES: dict[str, tuple[str, Callable[[Path], bytes], str]] = {
    "shape_above_max_value_bytes": ("zs", lambda r: header((100000, 4)) + body(r, "zs"),
                                    r"800000 bytes, above the 800 bytes the manifest allows"),
    "shape_of_a_terabyte": ("zs", lambda r: header((1 << 38, 4)) + body(r, "zs"), r"above the 800 bytes"),
    "wrong_fixed_axis": ("zs", lambda r: header((200, 2)) + body(r, "zs"), r"shape \(200, 2\), the manifest declares \(None, 4\)"),
    "wrong_ndim": ("zs", lambda r: header((400,)) + body(r, "zs"), r"shape \(400,\), the manifest declares"),
    "wrong_dtype": ("zs", lambda r: header(SHAPE, "<u2") + body(r, "zs"), r"manifest declares <i2"),
    "object_dtype": ("zs", lambda r: header(SHAPE, "|O") + body(r, "zs"), r"not a numeric dtype"),
    "fortran_header": ("zs", lambda r: header(SHAPE, fortran=True) + body(r, "zs"), r"Fortran order"),
    "code_in_header": ("zs", lambda r: header(SHAPE).replace(b"}", b"'x': __import__('os'), }") + body(r, "zs"),
                       r"not a plain numeric array header"),
    "no_header": ("zs", lambda r: body(r, "zs"), r"does not start with an NPY 1.0 header"),
    "npy_v2_header": ("zs", lambda r: b"\x93NUMPY\x02\x00" + payload(r, "zs")[8:], r"NPY 1.0 header"),
    "header_length_past_end": ("zs", lambda r: b"\x93NUMPY\x01\x00\xff\x0f{'descr'", r"past the payload end"),
    "empty": ("zs", lambda r: b"", r"NPY 1.0 header"),
    # zstd: the frame's declared size is checked before anything is allocated for it.
    "zstd_frame_claims_4_gib": ("zs", lambda r: header() + h.zstd_rle_frame(4 * h.GiB, declared=4 * h.GiB),
                                r"zstd body: zstd frame does not declare the indexed size"),
    "zstd_frame_lies_small": ("zs", lambda r: header() + h.zstd_rle_frame(4 * h.GiB, declared=NBYTES),
                              r"zstd body"),
    "zstd_frame_without_size": ("zs", lambda r: header() + h.zstd_rle_frame(NBYTES, declared=None), r"zstd body"),
    "zstd_truncated": ("zs", lambda r: header() + body(r, "zs")[:-7], r"zstd body"),
    "zstd_trailing_garbage": ("zs", lambda r: header() + body(r, "zs") + b"junk", r"zstd body"),
    "zstd_garbage": ("zs", lambda r: header() + bytes(range(256)) * 3, r"zstd body"),
    # lz4: the 4-byte size prefix is checked before numcodecs allocates it.
    "lz4_prefix_claims_4_gib": ("lz", lambda r: header() + struct.pack("<I", 0xFFFFFFFF) + body(r, "lz")[4:],
                                r"lz4 body does not declare the expected 800 bytes"),
    "lz4_truncated": ("lz", lambda r: header() + body(r, "lz")[:-9], r"lz4 body does not decompress"),
    "lz4_garbage_block": ("lz", lambda r: header() + struct.pack("<I", NBYTES) + b"\xff" * 64,
                          r"lz4 body does not decompress"),
    "lz4_no_prefix": ("lz", lambda r: header() + b"\x01", r"lz4 body does not declare"),
    # zlib: output is bounded by the expected size, whatever the stream inflates to.
    "zlib_bomb": ("zl", lambda r: header() + zlib_bomb(), r"zlib body is truncated, longer"),
    "zlib_truncated": ("zl", lambda r: header() + body(r, "zl")[:-5], r"zlib body is truncated"),
    "zlib_garbage": ("zl", lambda r: header() + b"\x78\x9c\xff\xff\xff", r"zlib body"),
    # size-preserving chains get exactly the expected number of bytes.
    "transform_body_short": ("tr", lambda r: header() + body(r, "tr")[:-2], r"got 798 bytes, expected exactly 800"),
    "transform_body_long": ("tr", lambda r: header() + body(r, "tr") + b"\0\0", r"got 802 bytes, expected exactly 800"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_payload_is_rejected(name, filters_base, tmp_path):
    field, build, match = CASES[name]
    root = h.copy_dataset(filters_base, tmp_path / "ds")
    put(root, field, build(root))
    read_rejected(root, Expect(ShardError, match, member=member(field)))
    # The other samples still read (the damage is confined to its member).
    with Dataset(root) as ds:
        assert np.array_equal(ds[1][field], samples()[1][field])


def test_base_reads_back_exactly(filters_base):
    with Dataset(filters_base) as ds:
        for want, got in zip(samples(), ds):
            for name in CODECS:
                assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes()


def _edit_codec(root: Path, field: str, edit: Callable[[dict], None]) -> None:
    doc = h.load_manifest(root)
    spec = next(f for f in doc["fields"] if f["name"] == field)
    edit(spec["codec"])
    h.save_manifest(root, doc)


MANIFEST_CASES = {
    "pickle_filter": (lambda c: c["filters"].insert(0, {"id": "pickle"}), UnknownCodecError,
                      r"'pickle' is not allowed \(refused: it can execute or dereference data\); "
                      r"the allowed filters are delta, lz4, shuffle, zlib, zstd"),
    "msgpack_filter": (lambda c: c.update(filters=[{"id": "msgpack2"}]), UnknownCodecError, r"'msgpack2' is not allowed"),
    "categorize_filter": (lambda c: c.update(filters=[{"id": "categorize", "labels": ["a"], "dtype": "|O"}]),
                          UnknownCodecError, r"'categorize' is not allowed"),
    "vlen_filter": (lambda c: c.update(filters=[{"id": "vlen-bytes"}]), UnknownCodecError, r"not allowed"),
    "blosc_filter": (lambda c: c.update(filters=[{"id": "blosc"}]), UnknownCodecError, r"'blosc' is not allowed"),
    "object_delta": (lambda c: c["filters"][0].update(dtype="|O"), UnknownCodecError, r"delta dtype"),
    "delta_astype": (lambda c: c["filters"][0].update(astype="|i1"), UnknownCodecError, r"does not take"),
    "string_level": (lambda c: c["filters"][2].update(level="3"), UnknownCodecError, r"zstd level must be an integer"),
    "huge_elementsize": (lambda c: c["filters"][1].update(elementsize=1 << 40), UnknownCodecError, r"from 1 to 16"),
    "compressor_not_last": (lambda c: c["filters"].reverse(), UnknownCodecError, r"only the last filter"),
    "filters_not_a_list": (lambda c: c.update(filters={"id": "zstd"}), UnknownCodecError, r"must be a list"),
    "too_many_filters": (lambda c: c.update(filters=[{"id": "shuffle", "elementsize": 2}] * 1000),
                         UnknownCodecError, r"at most 8"),
    "bad_order": (lambda c: c.update(order="K"), UnknownCodecError, r"order must be 'C' or 'F'"),
    "unknown_key": (lambda c: c.update(exec="os.system"), UnknownCodecError, r"does not take exec"),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CASES))
def test_hostile_filter_config_is_refused_at_open(name, filters_base, tmp_path):
    edit, error, match = MANIFEST_CASES[name]
    root = h.copy_dataset(filters_base, tmp_path / "ds")
    _edit_codec(root, "zs", edit)
    with pytest.raises(error, match=match) as info:
        Dataset(root)
    assert "'zs'" in str(info.value)  # names the field


CHILD = textwrap.dedent(r"""
    import json, resource, sys
    from neurocodec.dataset.reader import Dataset
    from neurocodec.plugin.manager import default_registry
    from neurocodec.errors import ShardError

    default_registry()
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
    limit = vm + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        bytearray(1 << 30)
        cap = "ineffective"
    except MemoryError:
        cap = "effective"
    out = {"cap": cap}
    for root in sys.argv[1:]:
        try:
            with Dataset(root) as ds:
                ds[0]
            out[root] = "read"
        except ShardError as exc:
            out[root] = "ShardError"
        except MemoryError:
            out[root] = "MemoryError"
    print(json.dumps(out))
""")

BOMBS = ["zstd_frame_claims_4_gib", "zstd_frame_lies_small", "lz4_prefix_claims_4_gib", "zlib_bomb",
         "shape_of_a_terabyte"]


def test_bombs_are_refused_under_a_memory_cap(filters_base, tmp_path):
    """In a child whose address space is capped at 256 MiB above its size, every bomb is a
    ShardError, never a MemoryError: nothing was allocated for what the bomb claims."""
    roots = []
    for name in BOMBS:
        field, build, _ = CASES[name]
        root = h.copy_dataset(filters_base, tmp_path / name)
        put(root, field, build(root))
        roots.append(str(root))
    proc = subprocess.run([sys.executable, "-c", CHILD, *roots], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result.pop("cap") == "effective"
    assert result == {r: "ShardError" for r in roots}
