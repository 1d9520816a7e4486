"""A corpus of hostile shards: each is rejected with neurocodec's typed error, fast, in bounded memory.

Every case starts from a valid dataset (written by `WebDatasetWriter`), damages one thing, and
then repairs everything around it (index rows, index SHA-256, shard size and SHA-256, field
size limits; see tests/hostile.py) so that the damage reaches the check named in the case's
docstring rather than an earlier one. Reading the damaged sample must raise `ShardError` naming
the shard and the member (or `DatasetError` / `UnknownCodecError` for manifest problems).

Memory is bounded twice: in-process with tracemalloc (no case may allocate more than 32 MiB),
and for the whole corpus in a child process under `RLIMIT_AS` (its address space capped at 512
MiB above its size once imported), where the 4 GiB decompression bombs would fail loudly if any
check were missing. "Fast" is enforced by pytest-timeout, not by clock assertions.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import lzma
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zstandard

import hostile as h
from neurocodec import Dataset, WebDatasetWriter
from neurocodec.errors import DatasetError, NeurocodecError, ShardError, UnknownCodecError

pytestmark = pytest.mark.timeout(120)

COMPRESSIONS = ("none", "zstd", "gz", "bz2", "xz")
SUFFIX = {"none": "", "zstd": ".zst", "gz": ".gz", "bz2": ".bz2", "xz": ".xz"}
SHARD0 = "shard_000000.tar"
BOMB = 4 * h.GiB
MAX_TRACED = 32 << 20
SAMPLES = 5


def make_samples() -> list[tuple[dict, dict]]:
    """The valid dataset's samples: (fields, metadata); two shards of 2 and one of 1."""
    rng = np.random.default_rng(7)
    return [
        ({"lfp": rng.standard_normal((2, 16)).astype("<f4"), "spikes": rng.poisson(3, (4, 10))},
         {"trial": i, "label": "ok"})
        for i in range(SAMPLES)
    ]


def member(sample: int, field: str, compression: str) -> str:
    """The name the format gives member (`sample`, `field`); `sample` is global and 0-based."""
    ext = "json" if field == "metadata" else "npy"
    return f"sample_{sample + 1:09d}.{field}.{ext}{SUFFIX[compression]}"


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> dict[str, Path]:
    """One valid dataset per compression (read-only: cases copy it)."""
    root = tmp_path_factory.mktemp("hostile-base")
    out = {}
    for compression in COMPRESSIONS:
        out[compression] = root / compression
        with WebDatasetWriter(out[compression], shard_size=2, compression=compression, fsync=False) as w:
            for fields, metadata in make_samples():
                w.write_sample(fields, metadata)
    return out


# -- the case registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """How the reader must fail: error type, message pattern, and what it must name."""

    error: type[NeurocodecError]
    match: str
    shard: str | None = SHARD0
    member: str | None = None
    sample: int = 0
    full: bool = False  # run verify_all() rather than reading `sample`


@dataclass(frozen=True)
class Case:
    """One hostile dataset: `build` damages a copy of the valid dataset and says what must fail."""

    name: str
    compression: str
    build: Callable[[Path, str], Expect]

    @property
    def id(self) -> str:
        return f"{self.name}[{self.compression}]"


CASES: list[Case] = []


def case(*compressions: str) -> Callable:
    """Register the decorated builder once per compression (default: uncompressed only)."""
    def register(build: Callable[[Path, str], Expect]) -> Callable:
        for compression in compressions or ("none",):
            CASES.append(Case(build.__name__, compression, build))
        return build
    return register


def build_case(c: Case, base: dict[str, Path], where: Path) -> tuple[Path, Expect]:
    root = h.copy_dataset(base[c.compression], where)
    return root, c.build(root, c.compression)


def read_rejected(root: Path, expect: Expect) -> NeurocodecError:
    """Open and read as `expect` says; return the error after checking type, message and names."""
    tracemalloc.start()
    try:
        with pytest.raises(expect.error) as info:
            with Dataset(root) as ds:
                if expect.full:
                    ds.verify_all()
                else:
                    ds[expect.sample]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    exc = info.value
    assert peak < MAX_TRACED, f"rejecting took {peak} bytes of traced memory"
    assert re.search(expect.match, str(exc)), f"{str(exc)!r} does not match {expect.match!r}"
    if expect.error is ShardError:
        assert exc.shard == expect.shard and expect.shard in str(exc)
        if expect.member is not None:
            assert exc.member == expect.member and expect.member in str(exc)
    return exc


def raw_payload(root: Path, compression: str, sample: int, field: str) -> bytes:
    """The decoded bytes of one member of shard 0 (of the valid dataset)."""
    m = h.read_members(root, 0)[h.member_position(root, 0, sample, field)]
    return h.decompress(compression, m.payload)


def put_payload(root: Path, compression: str, raw: bytes, *, sample: int = 0, field: str = "lfp",
                **options) -> Expect:
    """Replace one member of shard 0 by `raw` compressed as the dataset compresses, all consistent."""
    h.replace_member(root, 0, sample, field, payload=h.compress(compression, raw), raw=len(raw), **options)
    return Expect(ShardError, "", member=member(sample, field, compression), sample=sample)


def lfp_expect(compression: str, match: str, **kw) -> Expect:
    return Expect(ShardError, match, member=member(0, "lfp", compression), **kw)


def with_match(expect: Expect, match: str) -> Expect:
    return Expect(expect.error, match, expect.shard, expect.member, expect.sample, expect.full)


# -- truncation and extension --------------------------------------------------------------------

def _cut_points(root: Path) -> dict[str, int]:
    rows = h.read_index(root, 0).reshape(-1, 4)
    size = h.shard_file(root, 0).stat().st_size
    second = int(rows[1, 0]) - h.BLOCK
    return {
        "empty": 0, "inside_first_header": 100, "after_first_header": h.BLOCK,
        "inside_first_payload": h.BLOCK + 7, "at_second_header": second,
        "inside_second_header": second + 200, "inside_last_payload": int(rows[-1, 0]) + 1,
        "inside_end_of_archive": size - 700, "one_byte_short": size - 1,
    }


TRUNCATIONS = [
    "empty", "inside_first_header", "after_first_header", "inside_first_payload", "at_second_header",
    "inside_second_header", "inside_last_payload", "inside_end_of_archive", "one_byte_short",
]
EXTENSIONS = {"one_byte": b"\0", "one_block": bytes(h.BLOCK),
              "one_member": h.ustar_header("sample_000000099.lfp.npy", 3) + b"abc" + bytes(509)}


def _register_truncations() -> None:
    for where in TRUNCATIONS:
        for fix in (False, True):
            def build(root: Path, compression: str, where=where, fix=fix) -> Expect:
                """Shard file shorter than the manifest says. Check: file size against the manifest;
                with the manifest's size fixed, the index's total size against the file."""
                path = h.shard_file(root, 0)
                path.write_bytes(path.read_bytes()[:_cut_points(root)[where]])
                if fix:
                    h.fix_shard_entry(root, 0)
                    return Expect(ShardError, r"index shard_000000\.idx is inconsistent: the index describes")
                return Expect(ShardError, r"file has \d+ bytes, the manifest says \d+")
            build.__name__ = f"truncated_{where}{'_manifest_fixed' if fix else ''}"
            for compression in ("none", "zstd"):
                CASES.append(Case(build.__name__, compression, build))
    for what, extra in EXTENSIONS.items():
        for fix in (False, True):
            def build(root: Path, compression: str, extra=extra, fix=fix) -> Expect:
                """Shard file longer than the manifest says. Check: as for truncations."""
                path = h.shard_file(root, 0)
                path.write_bytes(path.read_bytes() + extra)
                if fix:
                    h.fix_shard_entry(root, 0)
                    return Expect(ShardError, r"the index describes \d+ bytes but the shard file has")
                return Expect(ShardError, r"file has \d+ bytes, the manifest says \d+")
            build.__name__ = f"extended_by_{what}{'_manifest_fixed' if fix else ''}"
            CASES.append(Case(build.__name__, "none", build))


_register_truncations()


@case("none", "gz")
def truncated_index_stale_manifest(root: Path, compression: str) -> Expect:
    """Index cut short, manifest untouched. Check: index size and SHA-256 against the manifest."""
    path = h.index_file(root, 0)
    path.write_bytes(path.read_bytes()[:-9])
    return Expect(ShardError, r"index shard_000000\.idx does not match the manifest's size and SHA-256")


@case("none", "gz")
def truncated_index_manifest_fixed(root: Path, compression: str) -> Expect:
    """Index cut short with its size and SHA-256 fixed in the manifest. Check: NPY payload size."""
    path = h.index_file(root, 0)
    h.write_index_bytes(root, 0, path.read_bytes()[:-9])
    return Expect(ShardError, r"index shard_000000\.idx is malformed: NPY header declares shape")


@case()
def empty_index_manifest_fixed(root: Path, compression: str) -> Expect:
    """Zero-byte index, manifest fixed. Check: NPY magic."""
    h.write_index_bytes(root, 0, b"")
    return Expect(ShardError, r"is malformed: not an NPY payload")


# -- bit flips -------------------------------------------------------------------------------------

HEADER_FLIPS = {"name": 3, "mode": 101, "size": 130, "mtime": 140, "checksum": 150, "type": 156,
                "magic": 258, "uname": 270}


def _register_flips() -> None:
    for what, offset in HEADER_FLIPS.items():
        def build(root: Path, compression: str, offset=offset, what=what) -> Expect:
            """One bit flipped in a member header, nothing fixed. Check: header checksum (the
            ustar magic, checked first, for a flip there)."""
            start = h.payload_offset(root, 0, 0, "lfp") - h.BLOCK
            h.flip_bit(h.shard_file(root, 0), start + offset)
            if what == "magic":
                return lfp_expect(compression, r"bad tar header: not a POSIX ustar header")
            return lfp_expect(compression, r"bad tar header: (header checksum mismatch|checksum field)")
        build.__name__ = f"bit_flip_in_header_{what}"
        for compression in ("none", "xz"):
            CASES.append(Case(build.__name__, compression, build))
    for field in ("lfp", "spikes", "metadata"):
        for where in ("first", "middle", "last"):
            def build(root: Path, compression: str, field=field, where=where) -> Expect:
                """One bit flipped in a payload, CRC-32 in the index left as it was. Check: CRC-32."""
                rows = h.read_index(root, 0)
                offset, stored = (int(x) for x in rows[0, h.field_column(root, field), :2])
                at = {"first": offset, "middle": offset + stored // 2, "last": offset + stored - 1}[where]
                h.flip_bit(h.shard_file(root, 0), at, 5)
                h.fix_shard_entry(root, 0)
                return Expect(ShardError, r"payload CRC-32 mismatch", member=member(0, field, compression))
            build.__name__ = f"bit_flip_in_{field}_payload_{where}"
            for compression in COMPRESSIONS:
                CASES.append(Case(build.__name__, compression, build))


_register_flips()


@case("none", "zstd")
def bit_flip_in_padding_caught_by_verify(root: Path, compression: str) -> Expect:
    """A flip in the zero padding after a payload changes no member. Check: verify_all's SHA-256."""
    rows = h.read_index(root, 0)
    offset, stored = (int(x) for x in rows[0, 0, :2])
    assert stored % h.BLOCK, "the payload must leave padding"
    h.flip_bit(h.shard_file(root, 0), offset + stored)
    with Dataset(root) as ds:  # reading is unaffected: the padding is no member's data
        np.testing.assert_array_equal(ds[0]["lfp"], make_samples()[0][0]["lfp"])
    return Expect(ShardError, r"SHA-256 does not match the manifest", full=True)


@case()
def bit_flip_in_end_of_archive_sha_fixed(root: Path, compression: str) -> Expect:
    """A flip in the closing zero blocks, shard SHA-256 fixed. Check: verify_all's end-of-archive."""
    path = h.shard_file(root, 0)
    h.flip_bit(path, path.stat().st_size - 3)
    h.fix_shard_entry(root, 0)
    return Expect(ShardError, r"does not end with two zero blocks", full=True)


@case("none", "bz2")
def bit_flip_in_index_stale_manifest(root: Path, compression: str) -> Expect:
    """One bit flipped in the index's rows. Check: index SHA-256 against the manifest."""
    path = h.index_file(root, 0)
    h.flip_bit(path, path.stat().st_size - 20)
    return Expect(ShardError, r"does not match the manifest's size and SHA-256")


@case()
def bit_flip_in_index_header_manifest_fixed(root: Path, compression: str) -> Expect:
    """A flip turning the index's '<u8' into '<u9', SHA-256 fixed. Check: NPY dtype."""
    data = bytearray(h.index_file(root, 0).read_bytes())
    at = data.index(b"<u8") + 2
    data[at] ^= 0x01  # '8' -> '9'
    h.write_index_bytes(root, 0, bytes(data))
    return Expect(ShardError, r"is malformed: NPY dtype '<u9' is not valid")


# -- the index, tampered together with its SHA-256 in the manifest ---------------------------------

def _index_case(edit: Callable[[np.ndarray], None], match: str, *, member_level: bool = False,
                grow_stored: bool = False) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        rows = h.read_index(root, 0)
        edit(rows)
        if grow_stored:  # let the field limits admit the new sizes: the size check is the target
            doc = h.load_manifest(root)
            for column, spec in enumerate(doc["fields"]):
                spec["max_stored_bytes"] = max(spec["max_stored_bytes"], int(rows[:, column, 1].max()))
            h.save_manifest(root, doc)
        h.write_index(root, 0, rows)
        return Expect(ShardError, match, member=member(0, "lfp", compression) if member_level else None)
    return build


def _shift(rows: np.ndarray) -> None:
    rows[0, 0, 0] += h.BLOCK


def _past_eof(rows: np.ndarray) -> None:
    rows[-1, -1, 0] = 1 << 40


def _claim_big_member(rows: np.ndarray) -> None:
    """8 GiB - 1 for the first member, later offsets consistent with it: the file is too small."""
    flat = rows.reshape(-1, 4)
    flat[0, 1] = 8**11 - 1
    offset = 0
    for row in flat:
        offset += h.BLOCK
        row[0] = offset
        offset += int(row[1]) + (-int(row[1]) % h.BLOCK)


def _over_tar_limit(rows: np.ndarray) -> None:
    rows[0, 0, 1] = 8**11


def _crc_out_of_range(rows: np.ndarray) -> None:
    rows[0, 0, 3] = 1 << 32


def _raw_over_limit(rows: np.ndarray) -> None:
    rows[0, 0, 2] += 1  # every lfp member has the field's maximum raw size (fixed shape)


def _stored_within_padding(rows: np.ndarray) -> None:
    assert int(rows[0, 0, 1]) % h.BLOCK != 1
    rows[0, 0, 1] -= 1  # the offsets still follow: the member still ends in the same block


def _crc_wrong(rows: np.ndarray) -> None:
    rows[0, 0, 3] ^= 1


def _raw_smaller(rows: np.ndarray) -> None:
    rows[0, 0, 2] -= 1


CASES += [Case(*spec) for spec in [
    ("index_offset_points_elsewhere", "none", _index_case(
        _shift, r"inconsistent: member offsets do not follow from member sizes")),
    ("index_offset_past_eof", "zstd", _index_case(
        _past_eof, r"inconsistent: member offsets do not follow from member sizes")),
    ("index_claims_8gib_member_file_small", "none", _index_case(
        _claim_big_member, r"inconsistent: the index describes \d+ bytes but the shard file has",
        grow_stored=True)),
    ("index_stored_size_over_tar_limit", "none", _index_case(
        _over_tar_limit, r"inconsistent: a stored size exceeds the tar limit")),
    ("index_crc_out_of_range", "none", _index_case(_crc_out_of_range, r"CRC-32 value is out of range")),
    ("index_raw_size_over_manifest_limit", "gz", _index_case(
        _raw_over_limit, r"a member is larger than the manifest declares")),
    ("index_stored_size_within_padding", "none", _index_case(
        _stored_within_padding, r"header says .* of \d+ bytes, the index says", member_level=True)),
    ("index_crc_wrong", "xz", _index_case(_crc_wrong, r"payload CRC-32 mismatch", member_level=True)),
] + [
    ("index_raw_size_smaller", c, _index_case(
        _raw_smaller, r"payload is \d+ bytes, index says|does not declare the indexed size|decompresses to",
        member_level=True)) for c in COMPRESSIONS
]]


@case()
def index_as_int64(root: Path, compression: str) -> Expect:
    """Index rows stored as int64. Check: index dtype."""
    h.write_index_bytes(root, 0, h.npy_bytes(h.read_index(root, 0).astype("<i8")))
    return Expect(ShardError, r"is malformed: index has dtype int64")


@case()
def index_big_endian(root: Path, compression: str) -> Expect:
    """Index rows stored big-endian. Check: index dtype."""
    h.write_index_bytes(root, 0, h.npy_bytes(h.read_index(root, 0).astype(">u8")))
    return Expect(ShardError, r"is malformed: index has dtype")


@case()
def index_extra_sample(root: Path, compression: str) -> Expect:
    """An index with one row more than the shard's samples. Check: index shape."""
    rows = h.read_index(root, 0)
    h.write_index(root, 0, np.concatenate([rows, rows[-1:]]))
    return Expect(ShardError, r"is malformed: index has dtype uint64 and shape \(3, 3, 4\)")


@case()
def index_header_claims_huge_shape(root: Path, compression: str) -> Expect:
    """An index NPY header claiming 2**40 samples over the real rows. Check: NPY payload size."""
    data = h.index_file(root, 0).read_bytes()
    forged = data.replace(b"(2, 3, 4)", b"(1099511627776, 3, 4)".ljust(9))
    hlen = int.from_bytes(data[8:10], "little")
    body = forged[10:10 + hlen + (len(forged) - len(data))].rstrip(b" \n")
    body += b" " * (-(10 + len(body) + 1) % 64) + b"\n"
    h.write_index_bytes(root, 0, forged[:8] + len(body).to_bytes(2, "little") + body + data[10 + hlen:])
    return Expect(ShardError, r"is malformed: NPY header declares shape \(1099511627776, 3, 4\)")


@case()
def index_fortran_order(root: Path, compression: str) -> Expect:
    """The index's rows as a Fortran-ordered array (same values). Check: NPY layout."""
    h.write_index_bytes(root, 0, h.npy_bytes(np.asfortranarray(h.read_index(root, 0).astype("<u8"))))
    return Expect(ShardError, r"is malformed: NPY payload is Fortran-ordered")


class Trap:
    """Unpickling this creates the directory `path`: proof that a pickle was (or was not) run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def trap_payload(root: Path) -> tuple[bytes, Path]:
    """An `np.save(allow_pickle=True)` object array that would mkdir a marker when unpickled."""
    marker = root.parent / f"{root.name}-UNPICKLED"
    return h.npy_bytes(np.array([Trap(str(marker)), 1], dtype=object), allow_pickle=True), marker


def test_trap_payload_is_live(tmp_path):
    """The pickle trap really fires when numpy is allowed to unpickle it (so its silence counts)."""
    payload, marker = trap_payload(tmp_path / "ds")
    np.load(io.BytesIO(payload), allow_pickle=True)
    assert marker.is_dir()


@case()
def index_pickled(root: Path, compression: str) -> Expect:
    """The index replaced by a pickled object array (SHA-256 fixed). Check: NPY numeric dtype."""
    payload, marker = trap_payload(root)
    h.write_index_bytes(root, 0, payload)
    return Expect(ShardError, r"is malformed: NPY dtype '\|O' is not a numeric dtype")


@case()
def index_bytes_huge_in_manifest(root: Path, compression: str) -> Expect:
    """The manifest says the index has 2**50 bytes. Check: index size (no 1 PiB read buffer)."""
    doc = h.load_manifest(root)
    doc["shards"][0]["index_bytes"] = 1 << 50
    h.save_manifest(root, doc)
    return Expect(ShardError, r"does not match the manifest's size and SHA-256")


@case()
def index_not_npy(root: Path, compression: str) -> Expect:
    """Random bytes as the index, SHA-256 fixed. Check: NPY magic."""
    h.write_index_bytes(root, 0, np.random.default_rng(1).bytes(416))
    return Expect(ShardError, r"is malformed: not an NPY payload")


# -- member headers: types, names, sizes, magic, checksum -----------------------------------------

TYPEFLAGS = {
    "hardlink": (b"1", 0), "symlink": (b"2", 0), "char_device": (b"3", 0), "block_device": (b"4", 0),
    "directory": (b"5", 0), "fifo": (b"6", 0), "contiguous": (b"7", None), "gnu_sparse": (b"S", None),
    "pax_extended": (b"x", "pax"), "pax_global": (b"g", "pax"), "gnu_long_name": (b"L", "long"),
    "gnu_long_link": (b"K", "long"), "gnu_volume": (b"V", 0), "gnu_multivolume": (b"M", None),
}
EVIL_PATH = "../../../" + "x" * 120 + "/etc/passwd"


def _pax_records(**records: str) -> bytes:
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return out


def _register_typeflags() -> None:
    for what, (flag, content) in TYPEFLAGS.items():
        def build(root: Path, compression: str, flag=flag, content=content) -> Expect:
            """A member of another type under the expected name, size and checksum consistent, the
            index and manifest rewritten to match. Check: member type (regular files only)."""
            old = h.read_members(root, 0)[0]
            if content == 0:
                payload = b""
            elif content == "pax":
                payload = _pax_records(path=EVIL_PATH, size="99999999999")
            elif content == "long":
                payload = EVIL_PATH.encode() + b"\0"
            else:
                payload = old.payload
            header = h.ustar_header(old.name, len(payload), typeflag=flag,
                                    linkname=b"../../../etc/passwd" if flag in b"12" else b"")
            h.replace_member(root, 0, 0, "lfp", header=header, payload=payload, raw=len(payload))
            return lfp_expect(compression, re.escape(f"member type {flag!r} is not a regular file"))
        build.__name__ = f"member_type_{what}"
        for compression in ("none", "zstd"):
            CASES.append(Case(build.__name__, compression, build))


_register_typeflags()


def _tarfile_member(info: tarfile.TarInfo, fmt: int) -> tuple[bytes, bytes]:
    """The first header and its payload as `tarfile` itself writes `info` in format `fmt`."""
    buf = info.tobuf(fmt, "utf-8", "surrogateescape")
    size = int(buf[124:136].rstrip(b"\0 ") or b"0", 8)
    return buf[:h.BLOCK], buf[h.BLOCK:h.BLOCK + size]


def _tarfile_case(make: Callable[[str], tuple[bytes, bytes]], match: str,
                  seen: Callable[[tarfile.TarFile], bool]) -> Callable[[Path, str], Expect]:
    def build(root: Path, compression: str) -> Expect:
        name = h.read_members(root, 0)[0].name
        header, payload = make(name)
        h.replace_member(root, 0, 0, "lfp", header=header, payload=payload, raw=len(payload))
        # What Python's tarfile makes of the forged shard (our own file: safe to show it).
        with tarfile.open(h.shard_file(root, 0)) as tf:
            assert seen(tf), "the forged member is not what it pretends to be"
        return lfp_expect(compression, match)
    return build


def _symlink(name: str) -> tuple[bytes, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return _tarfile_member(info, tarfile.USTAR_FORMAT)


def _hardlink(name: str) -> tuple[bytes, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, "../../../etc/shadow"
    return _tarfile_member(info, tarfile.USTAR_FORMAT)


def _directory(name: str) -> tuple[bytes, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return _tarfile_member(info, tarfile.USTAR_FORMAT)


def _pax_long_path(name: str) -> tuple[bytes, bytes]:
    return _tarfile_member(tarfile.TarInfo(EVIL_PATH), tarfile.PAX_FORMAT)


def _pax_global(name: str) -> tuple[bytes, bytes]:
    buf = tarfile.TarInfo.create_pax_global_header({"path": EVIL_PATH, "comment": "x" * 300})
    size = int(buf[124:136].rstrip(b"\0 "), 8)
    return buf[:h.BLOCK], buf[h.BLOCK:h.BLOCK + size]


def _gnu_long_name(name: str) -> tuple[bytes, bytes]:
    return _tarfile_member(tarfile.TarInfo(EVIL_PATH), tarfile.GNU_FORMAT)


CASES += [Case(n, "none", b) for n, b in [
    ("tarfile_symlink", _tarfile_case(_symlink, r"member type b'2' is not a regular file",
                                      lambda tf: tf.getmembers()[0].issym())),
    ("tarfile_hardlink", _tarfile_case(_hardlink, r"member type b'1' is not a regular file",
                                       lambda tf: tf.getmembers()[0].islnk())),
    ("tarfile_directory", _tarfile_case(_directory, r"member type b'5' is not a regular file",
                                        lambda tf: tf.getmembers()[0].isdir())),
    # tarfile applies the PAX record to the *next* member: it renames it to a path outside.
    ("tarfile_pax_long_path", _tarfile_case(_pax_long_path, r"member type b'x' is not a regular file",
                                            lambda tf: tf.getnames()[0] == EVIL_PATH)),
    ("tarfile_pax_global_header", _tarfile_case(_pax_global, r"member type b'g' is not a regular file",
                                                lambda tf: tf.pax_headers.get("path") == EVIL_PATH)),
    # GNU tar's magic differs from POSIX: the first check that fails is the magic.
    ("tarfile_gnu_long_name", _tarfile_case(_gnu_long_name, r"not a POSIX ustar header",
                                            lambda tf: tf.getnames()[0] == EVIL_PATH)),
]]


@case()
def gnu_sparse_with_gnu_magic(root: Path, compression: str) -> Expect:
    """A GNU sparse ('S') member as GNU tar writes it (GNU magic, sparse map claiming 4 GiB).
    Check: ustar magic."""
    old = h.read_members(root, 0)[0]
    header = bytearray(h.ustar_header(old.name, len(old.payload), typeflag=b"S", magic=b"ustar  \0"))
    header[386:398] = b"%011o\0" % 0            # sparse map: offset 0 ...
    header[398:410] = b"%011o\0" % len(old.payload)
    header[483:495] = b"%011o\0" % (1 << 32)    # ... real size 4 GiB
    h.replace_member(root, 0, 0, "lfp", header=h.with_checksum(header))
    return lfp_expect(compression, r"not a POSIX ustar header")


def _header_case(edit: Callable[[bytes, str, int], bytes], match: str, *, fix_checksum: bool = True):
    def build(root: Path, compression: str) -> Expect:
        old = h.read_members(root, 0)[0]
        header = edit(old.header, old.name, len(old.payload))
        if fix_checksum:
            header = h.with_checksum(header)
        h.replace_member(root, 0, 0, "lfp", header=header)
        return lfp_expect(compression, match)
    return build


def _name(value: bytes) -> Callable[[bytes, str, int], bytes]:
    return lambda header, name, size: h.set_header_field(header, 0, value.ljust(100, b"\0"))


def _size(value: bytes) -> Callable[[bytes, str, int], bytes]:
    assert len(value) == 12
    return lambda header, name, size: h.set_header_field(header, 124, value)


HEADER_CASES = {
    # Check: member name against the index's expectation.
    "name_of_another_member": (lambda hd, n, s: h.set_header_field(
        hd, 0, n.replace("000000001.lfp", "000000001.spikes").encode().ljust(100, b"\0")),
        r"header says 'sample_000000001\.spikes"),
    "name_path_traversal": (_name(b"../../../../etc/passwd"), r"header says '\.\./\.\./"),
    "name_absolute": (_name(b"/etc/passwd"), r"header says '/etc/passwd'"),
    "name_with_evil_prefix": (lambda hd, n, s: h.set_header_field(hd, 345, b"../../../tmp"),
                              r"prefixed \(long\) member names"),
    "name_not_ascii": (_name("sample_é.lfp.npy".encode()), r"member name is not ASCII"),
    "name_unterminated": (_name(b"a" * 100), r"empty or not NUL-terminated"),
    "name_empty": (_name(b""), r"empty or not NUL-terminated"),
    # Check: size field syntax, then size against the index.
    "size_negative": (_size(b"-0000000001\0"), r"size field .* is not an octal number"),
    "size_not_octal": (_size(b"0000000009a\0"), r"size field .* is not an octal number"),
    "size_digit_8": (_size(b"00000000018\0"), r"size field .* is not an octal number"),
    "size_empty": (_size(b"\0" * 12), r"size field .* is not an octal number"),
    "size_blank": (_size(b" " * 12), r"size field .* is not an octal number"),
    "size_embedded_nul": (_size(b"000\x000000400\0"), r"size field .* is not an octal number"),
    "size_plus_sign": (_size(b"+0000000400\0"), r"size field .* is not an octal number"),
    "size_base256_huge": (_size(b"\x80" + (1 << 80).to_bytes(11, "big")), r"size field|base-256"),
    "size_base256_negative": (_size(b"\xff" * 12), r"size field|base-256"),
    "size_8gib_minus_1": (_size(b"77777777777\0"), r"header says .* of 8589934591 bytes, the index says"),
    "size_twelve_digits": (_size(b"777777777777"), r"header says .* of 68719476735 bytes"),
    "size_off_by_one": (lambda hd, n, s: h.set_header_field(hd, 124, b"%011o\0" % (s + 1)),
                        r"header says .* bytes, the index says"),
    # Check: magic, then checksum.
    "magic_gnu": (lambda hd, n, s: h.set_header_field(hd, 257, b"ustar  \0"), r"not a POSIX ustar header"),
    "magic_v7": (lambda hd, n, s: h.set_header_field(hd, 257, b"\0" * 8), r"not a POSIX ustar header"),
    "all_zero_block": (lambda hd, n, s: bytes(h.BLOCK), r"not a POSIX ustar header"),
}


CASES += [Case(f"header_{n}", c, _header_case(edit, match))
          for n, (edit, match) in HEADER_CASES.items() for c in ("none", "bz2")]
CASES += [
    Case("header_checksum_wrong", "none", _header_case(
        lambda hd, n, s: h.set_header_field(hd, 148, b"%06o\0 " % (h.header_checksum(hd) + 1),
                                            fix_checksum=False),
        r"header checksum mismatch", fix_checksum=False)),
    Case("header_checksum_not_octal", "none", _header_case(
        lambda hd, n, s: h.set_header_field(hd, 148, b"0x1234\0 ", fix_checksum=False),
        r"checksum field .* is not an octal number", fix_checksum=False)),
]


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
                         + bytes(96), r"NPY dtype '<f3' is not valid"),
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
    "big_endian_for_little_field": (h.npy_bytes(np.zeros((2, 16), ">f4")), r"the manifest declares <f4"),
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
# flipped literal is simply other data (the index CRC-32 is what protects it, tested above).
CASES += [Case("stream_corrupt_middle", c, _stream_case(
    lambda c, raw, comp: c[:len(c) // 2] + bytes([c[len(c) // 2] ^ 0xFF]) + c[len(c) // 2 + 1:],
    r"does not decompress|decompresses to|truncated")) for c in ("gz", "bz2", "xz")]


# -- files that are not what their names say -------------------------------------------------------

@case()
def shard_missing(root: Path, compression: str) -> Expect:
    """The shard file is gone. Check: opening the shard."""
    h.shard_file(root, 0).unlink()
    return Expect(ShardError, r"cannot open")


@case()
def shard_is_directory(root: Path, compression: str) -> Expect:
    """A directory under the shard's name, with the manifest's size and an index made to match it.
    Check: regular files only."""
    path = h.shard_file(root, 0)
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"x")
    doc = h.load_manifest(root)
    doc["shards"][0]["bytes"] = path.stat().st_size
    h.save_manifest(root, doc)
    return Expect(ShardError, r"cannot open: not a regular file")


@case()
def shard_is_symlink_to_device(root: Path, compression: str) -> Expect:
    """The shard name links to /dev/zero (size 0 in the manifest). Check: regular files only."""
    path = h.shard_file(root, 0)
    path.unlink()
    path.symlink_to("/dev/zero")
    doc = h.load_manifest(root)
    doc["shards"][0]["bytes"] = 0
    h.save_manifest(root, doc)
    return Expect(ShardError, r"cannot open: not a regular file")


@case()
def index_missing(root: Path, compression: str) -> Expect:
    """The index file is gone. Check: reading the index."""
    h.index_file(root, 0).unlink()
    return Expect(ShardError, r"cannot read index shard_000000\.idx")


@case()
def index_is_fifo(root: Path, compression: str) -> Expect:
    """A FIFO under the index's name (opening it for reading would block forever).
    Check: regular files only, opened without blocking."""
    path = h.index_file(root, 0)
    path.unlink()
    os.mkfifo(path)
    return Expect(ShardError, r"cannot read index shard_000000\.idx: not a regular file")


@case()
def manifest_is_fifo(root: Path, compression: str) -> Expect:
    """A FIFO under the manifest's name. Check: regular files only, opened without blocking."""
    path = root / h.MANIFEST
    path.unlink()
    os.mkfifo(path)
    return Expect(DatasetError, r"cannot read \(not a regular file\)", shard=None)


@case()
def manifest_is_directory(root: Path, compression: str) -> Expect:
    """A directory under the manifest's name. Check: regular files only."""
    path = root / h.MANIFEST
    path.unlink()
    path.mkdir()
    return Expect(DatasetError, r"cannot read", shard=None)


@case()
def manifest_missing(root: Path, compression: str) -> Expect:
    """No manifest: a writer that did not finish. Check: the manifest is required."""
    (root / h.MANIFEST).unlink()
    return Expect(DatasetError, r"has no dataset_metadata\.json", shard=None)


# -- the manifest ----------------------------------------------------------------------------------

def _manifest_case(edit: Callable[[dict], object], match: str, error: type = DatasetError):
    def build(root: Path, compression: str) -> Expect:
        doc = h.load_manifest(root)
        result = edit(doc)
        if isinstance(result, bytes):
            (root / h.MANIFEST).write_bytes(result)
        else:
            h.save_manifest(root, doc if result is None else result)
        return Expect(error, match, shard=None)
    return build


def _set(path: str, value: object) -> Callable[[dict], None]:
    """Edit `doc[a][b]...` given as "a.b.c" (integers index lists)."""
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _delete(path: str) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return edit


def _empty_first_shard(doc: dict) -> None:
    """Shard 0 claims no samples, everything else consistent with that."""
    doc["shards"][0]["samples"] = 0
    doc["total_samples"] = SAMPLES - 2
    for entry in doc["shards"][1:]:
        entry["first_sample"] -= 2


MANIFEST_CASES = {
    # Check: JSON syntax and structure.
    "not_json": (lambda d: b"{not json", r"not valid JSON"),
    "deeply_nested": (lambda d: b"[" * 200_000 + b"]" * 200_000, r"not valid JSON"),
    "json_array": (lambda d: [d], r"must be a JSON object"),
    "other_format": (_set("format", "webdataset"), r"not a neurocodec manifest"),
    # Check: format version.
    "future_format_version": (_set("format_version", 2), r"format_version 2 is newer than this neurocodec reads"),
    "far_future_format_version": (_set("format_version", 10**30), r"is newer than this neurocodec reads"),
    "format_version_string": (_set("format_version", "1"), r"format_version must be an? (positive )?integer"),
    "format_version_float": (_set("format_version", 1.0), r"format_version must be an? (positive )?integer"),
    # Check: compression.
    "unknown_compression": (_set("compression", "lz4"), r"unknown compression 'lz4'"),
    "compression_null": (_set("compression", None), r"unknown compression None"),
    # Check: counts and totals.
    "total_samples_wrong": (_set("total_samples", SAMPLES + 1), r"shards hold 5 samples but total_samples is 6"),
    "total_samples_negative": (_set("total_samples", -1), r"total_samples must be a non-negative integer"),
    "total_samples_string": (_set("total_samples", "5"), r"total_samples must be a non-negative integer"),
    "total_samples_bool": (_set("total_samples", True), r"total_samples must be a non-negative integer"),
    "total_samples_huge": (lambda d: d.update(total_samples=10**12) or d["shards"][-1].update(samples=10**12 - 4),
                           r"too many samples"),
    "shard_samples_negative": (_set("shards.0.samples", -2), r"shards\[0\]\.samples must be a non-negative"),
    "shard_samples_zero": (_empty_first_shard, r"shards\[0\]\.samples must be positive"),
    "shard_samples_float": (_set("shards.0.samples", 2.0), r"shards\[0\]\.samples must be a non-negative"),
    "shard_bytes_negative": (_set("shards.0.bytes", -1), r"shards\[0\]\.bytes must be a non-negative"),
    "shard_first_sample_wrong": (_set("shards.1.first_sample", 3), r"shards\[1\]\.first_sample is 3, expected 2"),
    "index_bytes_string": (_set("shards.0.index_bytes", "416"), r"index_bytes must be a non-negative"),
    "sha256_not_string": (_set("shards.0.sha256", 5), r"sha256 must be a string"),
    "max_raw_bytes_negative": (_set("fields.0.max_raw_bytes", -1), r"max_raw_bytes must be a non-negative"),
    "max_stored_bytes_beyond_uint64": (_set("fields.0.max_stored_bytes", 2**64), r"declares sizes beyond 64 bits"),
    "max_raw_bytes_huge": (_set("fields.2.max_raw_bytes", 10**30), r"declares sizes beyond 64 bits"),
    # Check: shard and index names.
    "shard_name_traversal": (_set("shards.0.name", "../shard_000000.tar"), r"is not a shard file name"),
    "shard_name_absolute": (_set("shards.0.name", "/etc/passwd"), r"is not a shard file name"),
    "shard_names_repeat": (lambda d: d["shards"][1].update(name=SHARD0, index="shard_000000.idx"),
                           r"shard names repeat"),
    "index_name_of_another_shard": (_set("shards.0.index", "shard_000001.idx"), r"index must be 'shard_000000\.idx'"),
    "index_name_traversal": (_set("shards.0.index", "../../etc/passwd"), r"index must be"),
    "shards_not_list": (_set("shards", {"0": {}}), r"shards must be a list"),
    "shard_not_object": (_set("shards.0", "shard_000000.tar"), r"shards\[0\] must be an object"),
    # Check: fields.
    "fields_empty": (_set("fields", []), r"fields must be a non-empty list"),
    "metadata_field_not_last": (lambda d: d["fields"].reverse(), r"the last field must be the json metadata field"),
    "field_names_repeat": (_set("fields.1.name", "lfp"), r"field names repeat"),
    "field_name_with_dot": (_set("fields.0.name", "lf.p"), r"contains a dot"),
    "field_name_traversal": (_set("fields.0.name", "../x"), r"fields\[0\]\.name"),
    "field_kind_unknown": (_set("fields.0.kind", "pickle"), r"kind must be one of"),
    "extension_traversal": (_set("fields.0.extension", "../npy"), r"is not a short alphanumeric extension"),
    "array_dtype_missing": (_set("fields.0.dtype", None), r"dtype must be a string for arrays"),
    "array_shape_negative": (_set("fields.0.shape", [2, -16]), r"shape must be a list of lengths or nulls"),
    "array_shape_string": (_set("fields.0.shape", "(2, 16)"), r"shape must be a list"),
    "codec_missing_id": (_set("fields.0.codec", {"pack_integers": False}), r"codec must be an object with a string id"),
    "codec_not_object": (_set("fields.0.codec", "npy"), r"codec must be an object"),
    "writer_not_object": (_set("writer", []), r"writer must be an object"),
    "plugin_missing": (_delete("fields.0.plugin"), r"plugin must be a string"),
    # Check: each field's codec decodes its kind, and array dtypes parse (Dataset.__init__).
    "codec_kind_mismatch": (_set("fields.0.codec", {"id": "json"}),
                            r"field 'lfp' is of kind 'array' but its codec 'json' decodes 'json'"),
    "array_dtype_structured": (_set("fields.0.dtype", "[('a','<f4')]"), r"which is not a plain numpy dtype"),
    "array_dtype_garbage": (_set("fields.0.dtype", "not-a-dtype"), r"which is not a plain numpy dtype"),
    # numpy would hand these to ast.literal_eval (a SyntaxError escaped; deep nesting can crash).
    "array_dtype_comma_string": (_set("fields.0.dtype", "f4,,"), r"which is not a plain numpy dtype"),
    "array_dtype_subarray": (_set("fields.0.dtype", "(2,)f4"), r"which is not a plain numpy dtype"),
    "array_dtype_nested_parens": (_set("fields.0.dtype", "f4," + "(" * 5000 + ")" * 5000 + "f4"),
                                  r"which is not a plain numpy dtype"),
    "array_dtype_not_string": (_set("fields.0.dtype", 4), r"dtype must be a string"),
}


CASES += [Case(f"manifest_{n}", "none", _manifest_case(edit, match))
          for n, (edit, match) in MANIFEST_CASES.items()]


@case()
def manifest_not_utf8(root: Path, compression: str) -> Expect:
    """Manifest bytes that are not UTF-8. Check: JSON decoding."""
    path = root / h.MANIFEST
    path.write_bytes(path.read_bytes().replace(b'"ok"', b'"\xff\xfe"').replace(b'"lfp"', b'"\xc3\x28"', 1))
    return Expect(DatasetError, r"not valid JSON", shard=None)


@case()
def manifest_unknown_codec(root: Path, compression: str) -> Expect:
    """A codec id no installed plugin provides. Check: codec lookup names the plugin to install."""
    doc = h.load_manifest(root)
    doc["fields"][0].update(codec={"id": "calcium-delta"}, plugin="calcium", plugin_version="2.1.0",
                            distribution="neurocodec-calcium")
    h.save_manifest(root, doc)
    return Expect(UnknownCodecError,
                  r"codec 'calcium-delta' \(field 'lfp'\) .*install.*plugin 'calcium' "
                  r"\(pip install neurocodec-calcium==2\.1\.0\)", shard=None)


# -- the tests -------------------------------------------------------------------------------------

def test_corpus_is_large_and_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) > 250


def test_base_dataset_is_valid(base):
    """The corpus starts from datasets that read back exactly (so every failure is the damage's)."""
    want = make_samples()
    for compression, root in base.items():
        with Dataset(root) as ds:
            assert ds.verify_all() == SAMPLES and len(ds.shards) == 3
            for (fields, metadata), got in zip(want, ds):
                assert got["metadata"] == metadata
                for name, value in fields.items():
                    assert got[name].dtype == value.dtype
                    np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case_is_rejected(c: Case, base, tmp_path):
    root, expect = build_case(c, base, tmp_path / "ds")
    read_rejected(root, expect)
    assert not (tmp_path / "ds-UNPICKLED").exists(), "a pickle was unpickled"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"], "reading wrote something"


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


def test_verify_full_checks_sha256_on_open(base, tmp_path):
    """verify='full' catches a padding flip that per-member checks cannot see."""
    root = h.copy_dataset(base["none"], tmp_path / "ds")
    offset, stored = (int(x) for x in h.read_index(root, 0)[0, 0, :2])
    h.flip_bit(h.shard_file(root, 0), offset + stored)
    with Dataset(root, verify="full") as ds:
        with pytest.raises(ShardError, match="shard_000000.tar: SHA-256 does not match"):
            ds[0]


CHILD = textwrap.dedent(r"""
    import json, resource, sys
    from neurocodec.format.reader import Dataset
    from neurocodec.plugins import default_registry

    default_registry()  # load plugins before the cap: only reading is measured
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
    limit = vm + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        bytearray(1 << 30)
        cap = "ineffective"
    except MemoryError:
        cap = "effective"
    results = []
    for job in json.load(open(sys.argv[1])):
        try:
            with Dataset(job["path"]) as ds:
                if job["full"]:
                    ds.verify_all()
                else:
                    ds[job["sample"]]
            results.append({"error": None})
        except BaseException as exc:  # MemoryError included: recorded, not fatal
            results.append({"error": type(exc).__name__, "message": str(exc)[:400]})
    print(json.dumps({"cap": cap, "results": results}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_whole_corpus_under_address_space_limit(base, tmp_path):
    """Every case, read in one process whose address space is capped at +512 MiB, fails with the
    expected typed error: no case (4 GiB bombs included) needs memory beyond the cap."""
    jobs, expects = [], []
    for n, c in enumerate(CASES):
        root, expect = build_case(c, base, tmp_path / f"case{n}")
        jobs.append({"path": str(root), "sample": expect.sample, "full": expect.full})
        expects.append(expect)
    jobs.append({"path": str(base["xz"]), "sample": 4, "full": True})  # control: valid data reads
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "jobs.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["cap"] == "effective"
    *results, control = report["results"]
    assert control == {"error": None}
    for c, expect, got in zip(CASES, expects, results):
        assert got["error"] == expect.error.__name__, (c.id, got)
        assert re.search(expect.match, got["message"]), (c.id, got)
