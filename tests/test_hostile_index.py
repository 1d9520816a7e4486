"""Hostile shards, part 2: the per-shard index (truncated, flipped, tampered together with its
SHA-256 in the manifest, of the wrong dtype, shape or layout, pickled, missing, a FIFO).

Shared parts (the base dataset, the case registry, the checks) are in tests/hostile_corpus.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import hostile as h
from hostile_corpus import COMPRESSIONS, Case, Expect, member, registrar, reject, trap_payload
from neurocodec.errors import DatasetError, ShardError

pytestmark = pytest.mark.timeout(120)

CASES: list[Case] = []
case = registrar(CASES)


def npy_padded_to(data: bytes, size: int) -> bytes:
    """NPY 1.0 bytes `data` with its header's space padding grown or shrunk so that the whole is
    `size` bytes (the payload untouched). The manifest requires an index of exactly the size its
    sample count implies: a damaged index must keep that size to reach the checks behind it."""
    assert data[6] == 1
    hlen = int.from_bytes(data[8:10], "little")
    body, rest = data[10:10 + hlen].rstrip(b" \n"), data[10 + hlen:]
    pad = size - 10 - len(body) - 1 - len(rest)
    assert pad >= 0, f"cannot fit {len(data)} bytes into {size}"
    body += b" " * pad + b"\n"
    return data[:8] + len(body).to_bytes(2, "little") + body + rest


# -- truncation and bit flips ----------------------------------------------------------------------

@case("none", "gz")
def truncated_index_stale_manifest(root: Path, compression: str) -> Expect:
    """Index cut short, manifest untouched. Check: index size and SHA-256 against the manifest."""
    path = h.index_file(root, 0)
    path.write_bytes(path.read_bytes()[:-9])
    return Expect(ShardError, r"index \.shard_000000\.idx does not match the manifest's size and SHA-256")


@case("none", "gz")
def truncated_index_manifest_fixed(root: Path, compression: str) -> Expect:
    """Index cut short with its size and SHA-256 fixed in the manifest. Check: the manifest's
    index_bytes must be the exact size of an index of the shard's sample count."""
    path = h.index_file(root, 0)
    h.write_index_bytes(root, 0, path.read_bytes()[:-9])
    return Expect(DatasetError, r"shards\[0\]\.index_bytes is 311, but the index of 2 samples of 3 members is "
                                r"320 bytes", shard=None)


@case("none", "gz")
def index_rows_cut_header_padded(root: Path, compression: str) -> Expect:
    """The last index row cut off and the header padded by as much: the right size, SHA-256
    fixed. Check: NPY payload size against the header's shape."""
    data = h.index_file(root, 0).read_bytes()
    h.write_index_bytes(root, 0, npy_padded_to(data[:-32], len(data)))
    return Expect(ShardError, r"index \.shard_000000\.idx is malformed: NPY header declares shape")


@case()
def empty_index_manifest_fixed(root: Path, compression: str) -> Expect:
    """Zero-byte index, manifest fixed. Check: the manifest's exact index size."""
    h.write_index_bytes(root, 0, b"")
    return Expect(DatasetError, r"shards\[0\]\.index_bytes is 0, but the index of 2 samples", shard=None)


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
    return Expect(ShardError, r"is malformed: NPY dtype '<u9' is not a numeric dtype this format stores")


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
    return Expect(ShardError, r"is malformed: NPY dtype '>u8' is not a numeric dtype this format stores")


@case()
def index_extra_sample(root: Path, compression: str) -> Expect:
    """An index with one row more than the shard's samples. Check: the manifest's exact index
    size for the shard's sample count."""
    rows = h.read_index(root, 0)
    h.write_index(root, 0, np.concatenate([rows, rows[-1:]]))
    return Expect(DatasetError, r"shards\[0\]\.index_bytes is 416, but the index of 2 samples", shard=None)


@case()
def index_rows_reshaped(root: Path, compression: str) -> Expect:
    """The same 24 values as shape (3, 2, 4): the right size, SHA-256 fixed. Check: index shape."""
    h.write_index(root, 0, h.read_index(root, 0).reshape(3, 2, 4))
    return Expect(ShardError, r"is malformed: index has dtype uint64 and shape \(3, 2, 4\)")


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


@case()
def index_pickled(root: Path, compression: str) -> Expect:
    """The index replaced by a pickled object array (`np.save(allow_pickle=True)`), cut or
    padded to the index's exact size (the manifest requires it; the pickle of the trap is longer
    than this small index when the path is long), SHA-256 fixed. Check: NPY numeric dtype, from
    the header, before any payload byte is looked at."""
    payload, marker = trap_payload(root)
    size = h.index_file(root, 0).stat().st_size
    h.write_index_bytes(root, 0, payload[:size] if len(payload) > size else npy_padded_to(payload, size))
    return Expect(ShardError, r"is malformed: NPY dtype '\|O' is not a numeric dtype")


@case()
def index_bytes_huge_in_manifest(root: Path, compression: str) -> Expect:
    """The manifest says the index has 2**50 bytes. Check: the manifest's exact index size (so
    no 1 PiB read buffer either)."""
    doc = h.load_manifest(root)
    doc["shards"][0]["index_bytes"] = 1 << 50
    h.save_manifest(root, doc)
    return Expect(DatasetError, r"index_bytes is 1125899906842624, but the index of 2 samples", shard=None)


@case()
def index_not_npy(root: Path, compression: str) -> Expect:
    """Random bytes of the index's size as the index, SHA-256 fixed. Check: NPY magic."""
    h.write_index_bytes(root, 0, np.random.default_rng(1).bytes(h.index_file(root, 0).stat().st_size))
    return Expect(ShardError, r"is malformed: not an NPY payload")


# -- index files that are not what their names say -------------------------------------------------

@case()
def index_missing(root: Path, compression: str) -> Expect:
    """The index file is gone. Check: reading the index."""
    h.index_file(root, 0).unlink()
    return Expect(ShardError, r"cannot read index \.shard_000000\.idx")


@case()
def index_is_fifo(root: Path, compression: str) -> Expect:
    """A FIFO under the index's name (opening it for reading would block forever).
    Check: regular files only, opened without blocking."""
    path = h.index_file(root, 0)
    path.unlink()
    os.mkfifo(path)
    return Expect(ShardError, r"cannot read index \.shard_000000\.idx: not a regular file")


# -- the tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_hostile_case_is_rejected(c: Case, base, tmp_path):
    reject(c, base, tmp_path)
