"""Hostile shards, part 1: the tar file itself (truncation, extension, bit flips, member headers,
links and other member types, shard files that are not regular files).

Shared parts (the base dataset, the case registry, the checks) are in tests/hostile_corpus.py.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import hostile as h
from hostile_corpus import COMPRESSIONS, Case, Expect, lfp_expect, make_samples, member, registrar, reject
from neurocodec import Dataset
from neurocodec.errors import DatasetError, ShardError

pytestmark = pytest.mark.timeout(120)

CASES: list[Case] = []
case = registrar(CASES)


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
                with the manifest's size fixed, the index's total size against the file, or, when
                the fixed size cannot hold the shard's samples at all (a 512-byte header per
                member and 1024 bytes of end), the manifest's own consistency."""
                path = h.shard_file(root, 0)
                cut = _cut_points(root)[where]
                path.write_bytes(path.read_bytes()[:cut])
                if fix:
                    h.fix_shard_entry(root, 0)
                    if cut < 2 * 3 * h.BLOCK + 2 * h.BLOCK:  # 2 samples of 3 members
                        return Expect(DatasetError, rf"shards\[0\]\.bytes is {cut}, too few for 2 samples of "
                                                    r"3 members \(at least 4096\)", shard=None)
                    return Expect(ShardError, r"index \.shard_000000\.idx is inconsistent: the index describes")
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


# -- shard files that are not what their names say -------------------------------------------------------

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
    """The shard name links to /dev/zero (whose size reads as 0; the manifest cannot say 0 for a
    shard of samples, so the size check would fail too). Check: regular files only, first."""
    path = h.shard_file(root, 0)
    path.unlink()
    path.symlink_to("/dev/zero")
    return Expect(ShardError, r"cannot open: not a regular file")


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case_is_rejected(c: Case, base, tmp_path):
    reject(c, base, tmp_path)


def test_verify_full_checks_sha256_on_open(base, tmp_path):
    """verify='full' catches a padding flip that per-member checks cannot see."""
    root = h.copy_dataset(base["none"], tmp_path / "ds")
    offset, stored = (int(x) for x in h.read_index(root, 0)[0, 0, :2])
    h.flip_bit(h.shard_file(root, 0), offset + stored)
    with Dataset(root, verify="full") as ds:
        with pytest.raises(ShardError, match="shard_000000.tar: SHA-256 does not match"):
            ds[0]
