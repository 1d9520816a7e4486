"""Per-member payload compression.

Each member's payload is compressed on its own, so the per-shard index still points at any
sample directly (a whole-file compressed tar could only be read from its start). Decompression
is always bounded by the decoded size the index declares, itself at most the per-member ceiling
(`neurocodec.format.limits.max_member_bytes`), so a decompression bomb costs at most what the
manifest admits and never more than the ceiling.
"""

from __future__ import annotations

import bz2
import lzma
import threading
import zlib
from typing import Callable

import zstandard

from neurocodec.format import limits

COMPRESSIONS = ("none", "zstd", "gz", "bz2", "xz")
"""Compression names accepted by the writer, in the order of the user guide plus zstd."""

SUFFIX = {"none": "", "zstd": ".zst", "gz": ".gz", "bz2": ".bz2", "xz": ".xz"}
"""Member-name suffix each compression adds after the codec's extension."""


class DecompressionError(ValueError):
    """A payload does not decompress, or decompresses to more or fewer bytes than declared."""


def check_compression(name: str) -> str:
    """Return `name` if it is a supported compression, else raise ValueError listing them."""
    if name not in COMPRESSIONS:
        raise ValueError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSIONS)}")
    return name


def compressor(name: str, level: int | None = None) -> Callable[[bytes], bytes]:
    """Return a function compressing one payload with `name` (deterministic output)."""
    check_compression(name)
    if name == "none":
        return bytes
    if name == "zstd":
        cctx = zstandard.ZstdCompressor(level=3 if level is None else level, write_content_size=True)
        return cctx.compress
    if name == "gz":
        lvl = 6 if level is None else level

        def gz(data: bytes) -> bytes:
            # Raw zlib-wrapped gzip with mtime 0 so output is byte-for-byte reproducible.
            c = zlib.compressobj(lvl, zlib.DEFLATED, 31)
            return c.compress(data) + c.flush()

        return gz
    if name == "bz2":
        lvl = 9 if level is None else level
        return lambda data: bz2.compress(data, lvl)
    lvl = 6 if level is None else level
    return lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=lvl)


def decompress(name: str, data: bytes | memoryview, expected_size: int,
               max_member_bytes: int | None = None) -> bytes | memoryview:
    """Decompress `data` to exactly `expected_size` bytes, never producing more.

    Raises DecompressionError on corrupt input, trailing garbage, or a size mismatch, and for an
    `expected_size` that is negative or above the per-member ceiling (`max_member_bytes`,
    default `limits.max_member_bytes()`), before decompressing anything: every decompressor
    gets a positive bound.
    """
    if type(expected_size) is not int:
        expected_size = int(expected_size)  # numpy integers: compare as Python ints, no wrap-around
    ceiling = limits.max_member_bytes(max_member_bytes)
    if not 0 <= expected_size <= ceiling:
        raise DecompressionError(f"decoded size {expected_size} is outside 0 to {ceiling} bytes "
                                 "(the per-member ceiling, max_member_bytes)")
    if name == "none":
        if len(data) != expected_size:
            raise DecompressionError(f"payload is {len(data)} bytes, index says {expected_size}")
        return data
    try:
        if name == "zstd":
            # Refuse a frame that declares another size before anything is allocated.
            if zstandard.frame_content_size(data) != expected_size:
                raise DecompressionError("zstd frame does not declare the indexed size")
            out = _zstd().decompress(data, max_output_size=expected_size, allow_extra_data=False)
            return _check(out, expected_size)
        if name == "gz":
            obj = zlib.decompressobj(31)
            out = _not_over(obj.decompress(data, expected_size + 1), expected_size)
            if not obj.eof or obj.unused_data or obj.unconsumed_tail:
                raise DecompressionError("gzip stream is truncated or has trailing data")
            return _check(out, expected_size)
        if name == "bz2":
            obj = bz2.BZ2Decompressor()
        else:
            obj = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=256 << 20)
        out = _not_over(obj.decompress(data, expected_size + 1), expected_size)
        if not obj.eof or obj.unused_data:
            raise DecompressionError(f"{name} stream is truncated or has trailing data")
        return _check(out, expected_size)
    except DecompressionError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise DecompressionError(f"{name} payload does not decompress: {exc}") from None


def _zstd() -> zstandard.ZstdDecompressor:
    """This thread's Zstandard decompressor: made once (making one costs about half of decoding a
    32 KB frame), never shared between threads, which zstandard does not allow."""
    decompressor = getattr(_LOCAL, "zstd", None)
    if decompressor is None:
        decompressor = _LOCAL.zstd = zstandard.ZstdDecompressor()
    return decompressor


_LOCAL = threading.local()


def _not_over(out: bytes, expected_size: int) -> bytes:
    # Output stopped one byte past the declared size: say so, rather than "truncated".
    if len(out) > expected_size:
        raise DecompressionError(f"payload decompresses to more than the {expected_size} bytes the index says")
    return out


def _check(out: bytes, expected_size: int) -> bytes:
    if len(out) != expected_size:
        raise DecompressionError(f"payload decompresses to {len(out)}+ bytes, index says {expected_size}")
    return out
