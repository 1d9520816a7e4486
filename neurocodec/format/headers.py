"""Checking a run of member headers at once against the headers this format's writer produces.

A reader must make sure the tar header in front of every member says what the index promises
(the name `<key><suffix>` and the stored size). Building and comparing those headers one by one
in Python cost about as much as the rest of a read. Every header the writer makes is a fixed
template per field with two variable parts, the key digits and the octal size, plus the checksum
that follows from them, so the expected headers of a whole run are built with numpy and compared
with the stored blocks in one operation. Headers that differ (a corrupted shard, or a valid but
differently written header) are reported so the caller can look at them one at a time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from neurocodec.format import tar
from neurocodec.format.layout import KEY_DIGITS

_KEY_PREFIX = "sample_"
_KEY_START = len(_KEY_PREFIX)
_SIZE_START, _SIZE_DIGITS = 124, 11
_CHECKSUM_START = 148
_DECIMAL = 10 ** np.arange(KEY_DIGITS - 1, -1, -1, dtype=np.int64)
_OCTAL_SHIFTS = 3 * np.arange(_SIZE_DIGITS - 1, -1, -1, dtype=np.int64)
_CHECKSUM_SHIFTS = 3 * np.arange(5, -1, -1, dtype=np.int64)


class HeaderTemplates:
    """The writer's headers for one dataset's fields, ready to be filled in for many samples."""

    def __init__(self, suffixes: Sequence[str]) -> None:
        # Each template is the header of key digits all "0" and size 0; its checksum field is
        # left as spaces, so the sum of its bytes is the checksum of that header.
        self.blocks = np.zeros((len(suffixes), tar.BLOCK), dtype=np.uint8)
        for column, suffix in enumerate(suffixes):
            header = bytearray(tar.build_header(_KEY_PREFIX + "0" * KEY_DIGITS + suffix, 0))
            header[_CHECKSUM_START:_CHECKSUM_START + 8] = b" " * 8
            self.blocks[column] = np.frombuffer(header, dtype=np.uint8)
        self.sums = self.blocks.sum(axis=1, dtype=np.int64)
        self.blocks[:, _CHECKSUM_START + 6:_CHECKSUM_START + 8] = np.frombuffer(b"\0 ", dtype=np.uint8)

    def build(self, first_number: int, sizes: np.ndarray) -> np.ndarray | None:
        """The expected headers (samples, fields, 512) of consecutive samples whose key numbers
        start at `first_number`, with stored `sizes` (samples, fields); None when a key or a size
        does not fit the fixed-width fields (the caller then checks headers one by one)."""
        count = sizes.shape[0]
        numbers = np.arange(first_number, first_number + count, dtype=np.int64)
        if count == 0 or numbers[-1] >= 10**KEY_DIGITS or sizes.min() < 0 or sizes.max() > tar.MAX_MEMBER_SIZE:
            return None
        key_digits = (numbers[:, None] // _DECIMAL) % 10                      # (samples, digits)
        size_digits = (sizes[:, :, None] >> _OCTAL_SHIFTS) & 7                # (samples, fields, digits)
        checksum = self.sums[None, :] + key_digits.sum(axis=1)[:, None] + size_digits.sum(axis=2)
        headers = np.broadcast_to(self.blocks, (count, *self.blocks.shape)).copy()
        headers[:, :, _KEY_START:_KEY_START + KEY_DIGITS] += key_digits[:, None, :].astype(np.uint8)
        headers[:, :, _SIZE_START:_SIZE_START + _SIZE_DIGITS] += size_digits.astype(np.uint8)
        headers[:, :, _CHECKSUM_START:_CHECKSUM_START + 6] = (
            ((checksum[:, :, None] >> _CHECKSUM_SHIFTS) & 7) + ord("0")).astype(np.uint8)
        return headers


def differing_samples(blocks: np.ndarray, offsets: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Positions (in the run) of samples with a header unlike `expected`.

    `blocks` is the shard as rows of 512 bytes and `offsets` (samples, fields) the payload
    offsets from the index, which the index check has proven to be block-aligned and inside the
    file; a member's header is the block before its payload.
    """
    stored = blocks[offsets // tar.BLOCK - 1]                                  # (samples, fields, 512)
    return np.flatnonzero((stored != expected).any(axis=(1, 2)))
