"""Array bodies in row blocks: a long signal whose rows can be decoded a few at a time.

With `block_rows` in an `ndarray` or `scaled-int` config, the array body (docs/format.md,
section 7.5) is the array cut along its first axis into blocks of `block_rows` rows (the last
one shorter), each encoded on its own as an ordinary body (the config's order and filter chain,
so a delta restarts at every block), after a table of their lengths:

    u32       n, the block count: ceil(rows / block_rows) (0 for an array without rows)
    u32 * n   the encoded length of each block
    ...       the blocks, one after another (their lengths add up to the rest of the payload)

Loaders cutting windows out of long chunks decode only the blocks a window overlaps
(`BlockedBody.rows`); decoding a whole value decodes every block. Every count is checked against
the payload's length and the array's declared shape before anything is decoded, and each block
decodes to exactly its size or raises CodecError.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

import numpy as np

from neurocodec.plugin.codecs import CodecError

_COUNT = struct.Struct("<I")
MAX_BLOCKS = 1 << 24
"""The most blocks a body may hold (a table of 64 MiB at most)."""

BodyDecoder = Callable[[memoryview, tuple[int, ...]], np.ndarray]
"""(encoded block, its shape) -> a read-only C-contiguous array (`decode_array_body` bound)."""


def check_block_rows(value: Any) -> int | None:
    """`block_rows` of a config: None or a positive int; CodecError otherwise."""
    if value is not None and (type(value) is not int or not 1 <= value <= 2**31):
        raise CodecError(f"block_rows must be a positive integer, got {value!r}")
    return value


def encode_blocks(array: np.ndarray, block_rows: int, encode_body: Callable[[np.ndarray], bytes]) -> bytes:
    """The blocked body of `array` (at least one axis): its row blocks, each through `encode_body`."""
    rows = array.shape[0]
    parts = [encode_body(array[start:start + block_rows]) for start in range(0, rows, block_rows)]
    if len(parts) > MAX_BLOCKS:
        raise CodecError(f"{len(parts)} blocks of {block_rows} rows: at most {MAX_BLOCKS}; choose larger blocks")
    table = struct.pack(f"<I{len(parts)}I", len(parts), *map(len, parts))
    return table + b"".join(parts)


class BlockedBody:
    """A blocked body, its table checked: `rows(first, stop)` decodes only the blocks it needs."""

    def __init__(self, view: memoryview, dtype: np.dtype, shape: tuple[int, ...], block_rows: int,
                 decode_body: BodyDecoder) -> None:
        if not shape:
            raise CodecError("a body in blocks needs an array with at least one axis")
        self.dtype, self.shape, self.block_rows, self.decode_body = dtype, tuple(shape), block_rows, decode_body
        rows = self.shape[0]
        count = -(-rows // block_rows)
        if len(view) < _COUNT.size or _COUNT.unpack_from(view)[0] != count:
            got = _COUNT.unpack_from(view)[0] if len(view) >= _COUNT.size else "no"
            raise CodecError(f"body declares {got} blocks; {rows} rows in blocks of {block_rows} make {count}")
        start = _COUNT.size * (count + 1)
        if start > len(view):
            raise CodecError(f"body of {len(view)} bytes is too short for its table of {count} blocks")
        lengths = np.frombuffer(view, "<u4", count, _COUNT.size).astype(np.int64)
        ends = start + np.cumsum(lengths)
        if count and int(ends[-1]) != len(view):
            raise CodecError(f"blocks add up to {int(ends[-1]) - start} bytes, the body holds {len(view) - start}")
        self.view, self.starts, self.ends = view, ends - lengths, ends

    def rows(self, first: int, stop: int) -> np.ndarray:
        """Rows [first, stop) (within the array), decoding the blocks they lie in."""
        rows, size = self.shape[0], self.block_rows
        if not 0 <= first <= stop <= rows:
            raise CodecError(f"rows {first}..{stop} are outside the array's {rows}")
        if first == stop:
            empty = np.zeros((0, *self.shape[1:]), dtype=self.dtype)
            empty.flags.writeable = False
            return empty
        blocks = range(first // size, (stop - 1) // size + 1)
        parts = [self._block(b) for b in blocks]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
        offset = blocks[0] * size
        out = joined[first - offset:stop - offset]
        out.flags.writeable = False
        return out

    def whole(self) -> np.ndarray:
        """Every row."""
        return self.rows(0, self.shape[0])

    def _block(self, number: int) -> np.ndarray:
        lo = number * self.block_rows
        hi = min(lo + self.block_rows, self.shape[0])
        data = self.view[int(self.starts[number]):int(self.ends[number])]
        return self.decode_body(data, (hi - lo, *self.shape[1:]))
