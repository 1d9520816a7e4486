"""CRC-32 of member payloads (the zlib/gzip polynomial, as stored in the index).

ISA-L's implementation (the `isal` package) computes the same values several times faster
than zlib's; zlib is the fallback where isal has no wheel. `crc32_combine(crc_a, crc_b,
len_b)` (the CRC-32 of a + b from those of a and b) comes from ISA-L too, and is None without
it (zlib's is not exposed to Python): its users then fall back to another check.
"""

from __future__ import annotations

from typing import Callable

crc32_combine: Callable[[int, int, int], int] | None
try:
    from isal.isal_zlib import crc32, crc32_combine
except ImportError:  # pragma: no cover - isal is a dependency; this covers exotic platforms
    from zlib import crc32

    crc32_combine = None

__all__ = ["crc32", "crc32_combine"]
