"""`photometry-delta`: a lossless codec for float traces of shape (time, channels).

Fiber-photometry traces (one channel per fiber and excitation wavelength) change slowly, so
consecutive samples of one channel share their sign, exponent and high mantissa bits. The codec
works on the raw bit patterns, never on float arithmetic, so every value (NaN payloads,
infinities, -0.0, subnormals) comes back bit for bit:

1. view the floats as unsigned integers of the same width;
2. replace each row (time step) by its difference from the previous row, modulo 2**bits;
3. byte-shuffle: all first bytes, then all second bytes, ... (the near-constant high bytes
   then form long runs);
4. compress with zlib.

Member payload (all integers little-endian)::

    offset  size  field
    0       4     magic b"NCPH"
    4       1     version, 1
    5       1     itemsize: 2 (float16), 4 (float32) or 8 (float64)
    6       2     reserved, 0
    8       8     time (rows)
    16      8     channels (columns)
    24      ...   zlib stream of time * channels * itemsize shuffled delta bytes

Shards are untrusted, so `decode` checks the header against the manifest's field before it
allocates anything, bounds decompression by the size the header implies, and checks the result
with `neurocodec.plugin.check_array`.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from neurocodec.plugin import Codec, CodecError, FieldSpec, check_array

MAGIC = b"NCPH"
VERSION = 1
HEADER = struct.Struct("<4sBBHQQ")
ITEMSIZES = (2, 4, 8)
MAX_DIM = 1 << 40
# Deflate cannot expand data by more than about 1032:1; a header promising more is a lie.
MAX_ZLIB_RATIO = 1040


def _check_level(level: Any) -> int:
    if type(level) is not int or not 0 <= level <= 9:
        raise CodecError(f"zlib level must be an integer from 0 to 9, got {level!r}")
    return level


class PhotometryDeltaCodec(Codec):
    """Float (time, channels) arrays as delta-coded, byte-shuffled, zlib-compressed raw bits."""

    codec_id = "photometry-delta"
    kind = "array"
    extension = "phdz"

    def __init__(self, level: int = 6) -> None:
        self.level = _check_level(level)

    def get_config(self) -> dict[str, Any]:
        """Id and zlib level (the level only affects encoding)."""
        return {"id": self.codec_id, "level": self.level}

    def encode(self, value: np.ndarray) -> bytes:
        """Serialise one trace array."""
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.itemsize not in ITEMSIZES:
            raise CodecError(f"expected a float16/32/64 array, got {getattr(value, 'dtype', type(value).__name__)}")
        if value.ndim != 2:
            raise CodecError(f"expected shape (time, channels), got {value.shape}")
        little = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        bits = little.view(f"<u{value.itemsize}")
        delta = bits.copy()
        delta[1:] -= bits[:-1]  # unsigned, so this wraps modulo 2**bits and cumsum undoes it
        planes = delta.view(np.uint8).reshape(-1, value.itemsize).T.tobytes()
        time, channels = value.shape
        return HEADER.pack(MAGIC, VERSION, value.itemsize, 0, time, channels) + zlib.compress(planes, self.level)

    def decode(self, data: bytes | memoryview, field: FieldSpec) -> np.ndarray:
        """Parse, check against `field`, and restore the array bit-exactly."""
        view = memoryview(data).cast("B")
        if len(view) < HEADER.size:
            raise CodecError(f"payload of {len(view)} bytes is shorter than the {HEADER.size}-byte header")
        magic, version, itemsize, reserved, time, channels = HEADER.unpack_from(view)
        if magic != MAGIC:
            raise CodecError("not a photometry-delta payload (bad magic)")
        if version != VERSION or reserved != 0:
            raise CodecError(f"unsupported photometry-delta version {version} (flags {reserved})")
        if itemsize not in ITEMSIZES:
            raise CodecError(f"item size {itemsize} is not 2, 4 or 8")
        if time >= MAX_DIM or channels >= MAX_DIM:
            raise CodecError(f"shape ({time}, {channels}) is implausibly large")
        dtype = np.dtype(f"<f{itemsize}")
        # Check the declared form against the manifest before allocating anything.
        if field.dtype is not None and dtype != np.dtype(field.dtype):
            raise CodecError(f"payload holds {dtype}, the manifest declares {field.dtype}")
        if field.shape is not None and (len(field.shape) != 2 or any(
                want is not None and got != want for got, want in zip((time, channels), field.shape))):
            raise CodecError(f"payload declares shape ({time}, {channels}), the manifest declares {field.shape}")
        count = time * channels
        expected = count * itemsize
        compressed = view[HEADER.size:]
        if expected > MAX_ZLIB_RATIO * len(compressed) + 64:
            raise CodecError(f"{len(compressed)} compressed bytes cannot hold the {expected} declared")
        inflater = zlib.decompressobj()
        try:
            planes = inflater.decompress(compressed, expected + 1)  # never 0, which means unbounded
        except zlib.error as exc:
            raise CodecError(f"zlib stream is corrupt: {exc}") from None
        if len(planes) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise CodecError(f"zlib stream does not hold exactly {expected} bytes")
        delta = np.frombuffer(planes, np.uint8).reshape(itemsize, count).T.copy().view(f"<u{itemsize}")
        bits = np.cumsum(delta.reshape(time, channels), axis=0, dtype=delta.dtype)
        return check_array(bits.view(dtype), field)
