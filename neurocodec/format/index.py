"""The per-shard index: where every member of every sample lies in the shard file.

`shard_000000.idx` is an NPY file of uint64 with shape (samples, members, 4). Row
`[sample, member]` holds the payload's byte offset in the tar file, its stored (possibly
compressed) size, its decoded size, and the CRC-32 of the stored bytes. Members are in the
manifest's field order, metadata last. Because the tar layout is deterministic, every offset is
implied by the sizes before it; `validate` checks exactly that, so a reader can trust an index
that passes it to point only inside the file and at member headers.
"""

from __future__ import annotations

import numpy as np

from neurocodec import npy
from neurocodec.format import tar

OFFSET, STORED, RAW, CRC = range(4)
COLUMNS = 4


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


def validate(rows: np.ndarray, file_size: int, max_raw: np.ndarray, max_stored: np.ndarray) -> str | None:
    """Why the index cannot describe a shard of `file_size` bytes, or None if it can.

    `max_raw` and `max_stored` hold, per member column, the largest sizes the manifest declares.
    """
    stored = rows[:, :, STORED]
    if np.any(stored > tar.MAX_MEMBER_SIZE):
        return "a stored size exceeds the tar limit"
    if np.any(rows[:, :, CRC] > 0xFFFFFFFF):
        return "a CRC-32 value is out of range"
    if np.any(rows[:, :, RAW] > max_raw) or np.any(stored > max_stored):
        return "a member is larger than the manifest declares for its field"
    offsets, end = expected_offsets(stored)
    if not np.array_equal(offsets, rows[:, :, OFFSET].astype(np.int64)):
        return "member offsets do not follow from member sizes"
    if end != file_size:
        return f"the index describes {end} bytes but the shard file has {file_size}"
    return None
