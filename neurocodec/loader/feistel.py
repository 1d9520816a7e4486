"""A keyed pseudo-random bijection of range(n), evaluated value by value: a Feistel network
with cycle walking.

The epoch order (order version 2, `neurocodec.loader.order`) permutes its chunks with it, so
the chunk at any slot is found in O(1) time and memory, with no array over all chunks. The
definition, exactly (all arithmetic on unsigned 64-bit integers, modulo 2^64):

- `w = max(2, bitlength(n - 1))`: the network permutes range(2^w), the smallest such range
  (w >= 2) that holds range(n); its values are split into a left part of `a = w // 2` bits and
  a right part of `b = w - a` bits.
- `mix(z)` is splitmix64's finaliser: `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
  z *= 0x94D049BB133111EB; z ^= z >> 31`.
- `E(x)`: `L = x >> b` (a bits), `R = x & (2^b - 1)` (b bits); for each round key `k` in
  order, `L, R = R, (L ^ mix(R ^ k)) & (2^|L| - 1)`, `|L|` the bits of the left part before
  the round (the parts swap their widths every round); then `(L << |R|) | R`. Every round is a
  bijection (`L` is recovered from the new `R` and `R`), so `E` is one, of range(2^w).
- Cycle walking: `pi(x)` applies `E` to `x` until the result is below `n`. The walk from `x`
  stays on `x`'s cycle of `E`, which returns to `x`, so it ends, and `pi` is a bijection of
  range(n); since `2^w < 2n` (for n > 2), it takes fewer than 2 steps on average.
- `n <= 1`: `pi` is the identity.
"""

from __future__ import annotations

from typing import Sequence

import attrs
import numpy as np

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
MAX_N = 1 << 62
"""Domains up to 2^62 values (w <= 62)."""


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> _S30)
    z = z * _MIX1
    z = z ^ (z >> _S27)
    z = z * _MIX2
    return z ^ (z >> _S31)


def domain_bits(n: int) -> int:
    """w: the network permutes range(2^w), the smallest such range (w >= 2) holding range(n)."""
    return max(2, (n - 1).bit_length())


@attrs.frozen(slots=True)
class Feistel:
    """The bijection `pi` of range(n) keyed by `keys` (64-bit round keys, one per round)."""

    n: int
    keys: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.n <= MAX_N:
            raise ValueError(f"a Feistel bijection permutes 0 to 2^62 values, not {self.n}")
        if not self.keys or any(not 0 <= k < 1 << 64 for k in self.keys):
            raise ValueError("round keys must be 64-bit unsigned integers, at least one")

    def __call__(self, values: Sequence[int] | np.ndarray) -> np.ndarray:
        """`pi` of each of `values` (integers in range(n)), as int64."""
        x = np.array(values, dtype=np.uint64).reshape(-1)
        if self.n <= 1 or not len(x):
            return x.astype(np.int64)
        out = self._encrypt(x)
        todo = np.flatnonzero(out >= np.uint64(self.n))
        while len(todo):  # cycle walking
            stepped = self._encrypt(out[todo])
            out[todo] = stepped
            todo = todo[stepped >= np.uint64(self.n)]
        return out.astype(np.int64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        """`E`: the network over range(2^w)."""
        w = domain_bits(self.n)
        bits = (w // 2, w - w // 2)  # of the left part, of the right part
        left, right = x >> np.uint64(bits[1]), x & np.uint64((1 << bits[1]) - 1)
        for key in self.keys:
            mask = np.uint64((1 << bits[0]) - 1)
            left, right = right, (left ^ mix64(right ^ np.uint64(key))) & mask
            bits = bits[::-1]
        return (left << np.uint64(bits[1])) | right
