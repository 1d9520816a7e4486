"""CRC-32 of member payloads (the zlib/gzip polynomial, as stored in the index).

ISA-L's implementation (the `isal` package) computes the same values several times faster
than zlib's; zlib is the fallback where isal has no wheel.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; this covers exotic platforms
    from zlib import crc32

__all__ = ["crc32"]
