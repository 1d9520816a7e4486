"""The tar headers this format's writer puts in front of a sample's members, built fast.

A reader must make sure the header in front of every member says what the index promises (the
name `<key><suffix>` and the stored size). The writer's header of a member is a fixed template
per field with three variable parts: the key, the octal size, and the checksum that follows
from them. `MemberHeaders` keeps the fixed parts of each field's header and fills in the rest,
so that checking a header costs one comparison with the exact bytes `tar.build_header` writes;
a header that differs (corrupted, forged, or written by another tool) goes to the strict parser.
"""

from __future__ import annotations

from typing import Sequence

from neurocodec.format import tar
from neurocodec.format.layout import KEY_DIGITS

KEY_LENGTH = len("sample_") + KEY_DIGITS
_MODE_IDS = tar.build_header("x", 0)[tar.MAX_NAME:124]
_MTIME = tar.build_header("x", 0)[136:148]
_TAIL = tar.build_header("x", 0)[156:tar.BLOCK]
_FIXED_SUM = sum(_MODE_IDS) + sum(_MTIME) + sum(_TAIL) + 8 * ord(" ")  # checksum field as spaces


MAX_CACHED = 1 << 14
"""Header tails `MemberHeaders.build` keeps (about 8 MB at most)."""


class MemberHeaders:
    """The writer's headers for the members of one dataset's samples (one suffix per field).

    Everything after the key depends on the key only through the sum of its bytes (the
    checksum), so the tail of each (field, size, key sum) is built once and kept: a fixed-shape
    field has one size, and the digits of keys sum to at most 9 x KEY_DIGITS."""

    def __init__(self, suffixes: Sequence[str]) -> None:
        self._tails: dict[tuple[int, int, int], bytes] = {}
        self._rest: list[bytes | None] = []
        self._sums: list[int] = []
        for suffix in suffixes:
            raw = suffix.encode("ascii", "replace")
            fits = KEY_LENGTH + len(raw) < tar.MAX_NAME
            self._rest.append(raw + bytes(tar.MAX_NAME - KEY_LENGTH - len(raw)) + _MODE_IDS if fits else None)
            self._sums.append(_FIXED_SUM + sum(raw))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tails": {}}  # the kept tails are rebuilt, not pickled

    def build(self, key: bytes, key_sum: int, column: int, size: int) -> bytes | None:
        """The header of member `column` of the sample whose key is `key` (ASCII, `key_sum` the
        sum of its bytes) holding `size` bytes; None where it cannot be built this way (a key
        that is not `KEY_LENGTH` bytes, a name too long, a size beyond the tar limit)."""
        if len(key) != KEY_LENGTH:
            return None
        tail = self._tails.get((column, size, key_sum))
        if tail is not None:
            return key + tail
        header = self._build(key, key_sum, column, size)
        if header is not None:
            if len(self._tails) >= MAX_CACHED:
                self._tails.clear()
            self._tails[(column, size, key_sum)] = header[KEY_LENGTH:]
        return header

    def _build(self, key: bytes, key_sum: int, column: int, size: int) -> bytes | None:
        rest = self._rest[column]
        if rest is None or not 0 <= size <= tar.MAX_MEMBER_SIZE:
            return None
        size_field = b"%011o\0" % size
        checksum = self._sums[column] + key_sum + sum(size_field)
        return b"".join((key, rest, size_field, _MTIME, b"%06o\0 " % checksum, _TAIL))
