"""The per-shard index: where every member of every sample lies in the shard file.

`shard_000000.idx` is an NPY file of uint64 with shape (samples, members, 4). Row
`[sample, member]` holds the payload's byte offset in the tar file, its stored (possibly
compressed) size, its decoded size, and the CRC-32 of the stored bytes. Members are in the
manifest's field order, metadata last. Because the tar layout is deterministic, every offset is
implied by the sizes before it; `validate` checks exactly that, so a reader can trust an index
that passes it to point only inside the file and at member headers. Sizes are compared as the
unsigned integers they are stored as, before any conversion: an index that passes `validate`
holds only values below 2**62, which stay exact as int64.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.format import limits, tar

OFFSET, STORED, RAW, CRC = range(4)
COLUMNS = 4
MAX_MEMBERS = 1 << 28
"""Most members one index may list (an 8 GiB index); keeps every sum of sizes exact in int64."""


@attrs.frozen(slots=True)
class Problem:
    """Why an index cannot describe its shard, and the first member at fault when there is one
    (its sample within the shard and its column, the manifest's field order)."""

    why: str
    sample: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        return self.why


def encode(rows: np.ndarray) -> bytes:
    """Serialise an index array of shape (samples, members, 4)."""
    return npy.encode(np.asarray(rows, dtype="<u8"))


def decode(data: bytes, samples: int, members: int) -> np.ndarray:
    """Parse index bytes, requiring shape (samples, members, 4) and dtype uint64."""
    rows = npy.decode(data, allow_fortran=False)
    if rows.dtype != np.dtype("<u8") or rows.shape != (samples, members, COLUMNS):
        raise ValueError(
            f"index has dtype {rows.dtype} and shape {rows.shape}, "
            f"expected uint64 {(samples, members, COLUMNS)}"
        )
    return rows


def expected_offsets(stored_sizes: np.ndarray) -> tuple[np.ndarray, int]:
    """Payload offsets implied by member sizes in write order, and the archive's total size."""
    flat = stored_sizes.reshape(-1).astype(np.int64)
    spans = tar.BLOCK + flat + (-flat % tar.BLOCK)
    starts = np.concatenate(([0], np.cumsum(spans)[:-1])) if len(spans) else spans
    end = int(spans.sum()) + len(tar.END_OF_ARCHIVE)
    return (starts + tar.BLOCK).reshape(stored_sizes.shape), end


def validate(rows: np.ndarray, file_size: int, max_raw: np.ndarray, max_stored: np.ndarray, *,
             max_member_bytes: int | None = None, names: Sequence[str] = ()) -> Problem | None:
    """Why the index cannot describe a shard of `file_size` bytes, or None if it can.

    `max_raw` and `max_stored` hold, per member column, the largest sizes the manifest declares
    (uint64); `max_member_bytes` is the per-member decoded-size ceiling (default
    `limits.max_member_bytes()`); `names` are the columns' field names, for the messages. Every
    comparison is made on the stored uint64 values.
    """
    ceiling = limits.max_member_bytes(max_member_bytes)
    if rows.dtype != np.uint64 or rows.ndim != 3 or rows.shape[2] != COLUMNS:
        return Problem(f"index rows are {rows.dtype} {rows.shape}, not uint64 (samples, members, 4)")
    if rows.shape[0] * rows.shape[1] > MAX_MEMBERS:
        return Problem(f"the index lists {rows.shape[0] * rows.shape[1]} members, more than {MAX_MEMBERS}")
    stored, raw = rows[:, :, STORED], rows[:, :, RAW]
    checks = (
        (stored > np.uint64(tar.MAX_MEMBER_SIZE), "a stored size exceeds the tar limit"),
        (rows[:, :, CRC] > np.uint64(0xFFFFFFFF), "a CRC-32 value is out of range"),
        ((raw > max_raw) | (stored > max_stored), "a member is larger than the manifest declares for its field"),
        (raw > np.uint64(ceiling),
         f"a member decodes to more than the per-member ceiling of {ceiling} bytes (max_member_bytes)"),
    )
    for bad, why in checks:
        if bad.any():
            sample, column = (int(i) for i in np.argwhere(bad)[0])
            name = f" (field {names[column]!r}, sample {sample} of the shard)" if column < len(names) else ""
            return Problem(why + name, sample, column)
    offsets, end = expected_offsets(stored)
    if not np.array_equal(offsets.astype(np.uint64), rows[:, :, OFFSET]):
        return Problem("member offsets do not follow from member sizes")
    if end != file_size:
        return Problem(f"the index describes {end} bytes but the shard file has {file_size}")
    return None
