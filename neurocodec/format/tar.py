"""Minimal, strict USTAR tar headers: built by the writer, parsed by the reader.

Python's `tarfile` is not handed untrusted bytes (it can loop or allocate gigabytes on crafted
archives, the CVE-2025-8194 class), and it reports data offsets of 0 while writing. This module
writes and reads exactly the subset neurocodec produces: plain regular-file members with short
ASCII names, no PAX or GNU extensions, deterministic fields (mode 0644, uid/gid 0, mtime 0), so
that the same samples always give the same bytes and checksums.
"""

from __future__ import annotations

import re

import attrs

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
MAX_NAME = 100
MAX_MEMBER_SIZE = 8**11 - 1  # what 11 octal digits hold (8 GiB - 1)

_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:108] = b"0000644\0"
_TEMPLATE[108:116] = b"0000000\0"
_TEMPLATE[116:124] = b"0000000\0"
_TEMPLATE[136:148] = b"00000000000\0"
_TEMPLATE[156:157] = b"0"
_TEMPLATE[257:263] = b"ustar\0"
_TEMPLATE[263:265] = b"00"
_TEMPLATE[329:337] = b"0000000\0"
_TEMPLATE[337:345] = b"0000000\0"
_TEMPLATE_SUM = sum(_TEMPLATE) + 8 * ord(" ")  # the checksum field counts as spaces
_OCTAL = re.compile(rb"[0-7]{1,12}")


def padding(size: int) -> int:
    """Number of zero bytes that follow a payload of `size` bytes up to the next block."""
    return -size % BLOCK


_MODE_IDS = bytes(_TEMPLATE[100:124])
_MTIME = bytes(_TEMPLATE[136:148])
_TAIL = bytes(_TEMPLATE[156:BLOCK])
_NAME_PAD = [bytes(n) for n in range(MAX_NAME + 1)]


def build_header(name: str, size: int) -> bytes:
    """Return the 512-byte USTAR header of a regular file `name` holding `size` bytes."""
    raw = name.encode("ascii")
    if not raw or len(raw) >= MAX_NAME:
        raise ValueError(f"tar member name {name!r} must be 1 to {MAX_NAME - 1} ASCII bytes")
    if not 0 <= size <= MAX_MEMBER_SIZE:
        raise ValueError(f"tar member {name!r} of {size} bytes exceeds the USTAR limit")
    size_field = b"%011o\0" % size
    checksum = _TEMPLATE_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, _NAME_PAD[MAX_NAME - len(raw)], _MODE_IDS, size_field, _MTIME,
                     b"%06o\0 " % checksum, _TAIL))


@attrs.frozen(slots=True)
class MemberHeader:
    """What a parsed header says: the member's name and payload size."""

    name: str
    size: int


class HeaderError(ValueError):
    """A header is not a plain regular-file USTAR header as neurocodec writes them."""


def _octal(field: bytes, what: str) -> int:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not _OCTAL.fullmatch(digits):
        raise HeaderError(f"{what} field {bytes(field)!r} is not an octal number")
    return int(digits, 8)


def parse_header(block: bytes | memoryview) -> MemberHeader:
    """Parse one 512-byte header, accepting only what neurocodec writes.

    Raises HeaderError for anything else: bad checksum, links, directories, devices, sparse,
    PAX or GNU long-name members, base-256 sizes, non-ASCII or unterminated names.
    """
    block = bytes(block)
    if len(block) != BLOCK:
        raise HeaderError(f"header is {len(block)} bytes, not {BLOCK}")
    if block[257:265] != b"ustar\x0000":
        raise HeaderError("not a POSIX ustar header")
    stored = _octal(block[148:156], "checksum")
    if stored != sum(block[:148]) + 8 * ord(" ") + sum(block[156:]):
        raise HeaderError("header checksum mismatch")
    if block[156:157] not in (b"0", b"\0"):
        raise HeaderError(f"member type {block[156:157]!r} is not a regular file")
    if block[345:500].strip(b"\0"):
        raise HeaderError("prefixed (long) member names are not used by this format")
    end = block.find(b"\0", 0, MAX_NAME)
    if end <= 0:
        raise HeaderError("member name is empty or not NUL-terminated")
    try:
        name = block[:end].decode("ascii")
    except UnicodeDecodeError:
        raise HeaderError("member name is not ASCII") from None
    if block[124] & 0x80:
        raise HeaderError("base-256 member sizes are not used by this format")
    return MemberHeader(name=name, size=_octal(block[124:136], "size"))
