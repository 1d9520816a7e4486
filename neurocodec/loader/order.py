"""The order of an epoch: a list you compute, not a process you replay.

For epoch `e` the sequence of global sample ids is a pure function of (shard sizes, seed, e,
shuffle, buffer_size, chunk_size):

1. every shard is cut into chunks of `chunk_size` consecutive samples;
2. all chunks are permuted with a generator seeded by (seed, e) and concatenated;
3. that sequence is cut into blocks of `buffer_size` positions and the samples inside each block
   are permuted with a generator seeded by (seed, e, block).

A block therefore mixes about buffer_size / chunk_size chunks, from as many shards, while a
reader touches one block at a time and reads each chunk as a run of neighbouring samples.
Position `p` is reached in O(buffer_size) work without looking at anything before it, which is
what makes resuming cost the same at 90% of an epoch as at its start. `shuffle=False` is the
identity order.

Permutations sort raw 64-bit PCG64 outputs (a stream numpy keeps stable across versions) with a
stable sort, so the order does not depend on numpy's shuffling algorithms.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

DEFAULT_SEED = 0


def default_chunk_size(buffer_size: int) -> int:
    """Chunk length used when none is given: 1/16 of the buffer, between 1 and 64 samples."""
    return max(1, min(64, buffer_size // 16))


def permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) determined only by `key` (non-negative integers)."""
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    bits = np.random.PCG64(np.random.SeedSequence(list(key))).random_raw(n)
    return np.argsort(bits, kind="stable").astype(np.int64)


class EpochOrder:
    """The global sample order of one epoch; `ids(start, stop)` gives positions start..stop-1."""

    def __init__(self, shard_sizes: Sequence[int], *, seed: int = DEFAULT_SEED, epoch: int = 0,
                 shuffle: bool = True, buffer_size: int = 1000, chunk_size: int | None = None) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if seed < 0 or epoch < 0:
            raise ValueError("seed and epoch must be non-negative integers")
        self.sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.total = int(self.sizes.sum())
        self.seed, self.epoch, self.shuffle = int(seed), int(epoch), bool(shuffle)
        self.buffer_size = int(buffer_size)
        self.chunk_size = int(chunk_size or default_chunk_size(self.buffer_size))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if self.shuffle:
            self._chunks()
        self._block = lru_cache(maxsize=4)(self._compute_block)

    def _chunks(self) -> None:
        firsts = np.concatenate(([0], np.cumsum(self.sizes)[:-1])) if len(self.sizes) else self.sizes
        starts, lengths = [], []
        for first, size in zip(firsts.tolist(), self.sizes.tolist()):
            offsets = np.arange(0, size, self.chunk_size, dtype=np.int64)
            starts.append(first + offsets)
            lengths.append(np.minimum(self.chunk_size, size - offsets))
        start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        length = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        perm = permutation(len(start), self.seed, self.epoch, 0)
        self._chunk_id = start[perm]  # first sample id of each chunk, in epoch order
        self._chunk_len = length[perm]
        self._chunk_pos = np.cumsum(self._chunk_len) - self._chunk_len  # its first position

    def _chunked_ids(self, start: int, stop: int) -> np.ndarray:
        """Ids at positions [start, stop) of the permuted-chunk sequence (before block shuffle)."""
        first = int(np.searchsorted(self._chunk_pos, start, side="right")) - 1
        last = int(np.searchsorted(self._chunk_pos, stop - 1, side="right")) - 1
        pos = self._chunk_pos[first:last + 1]
        lens = self._chunk_len[first:last + 1]
        # Expand every chunk into its run of ids, then cut to [start, stop).
        ids = np.repeat(self._chunk_id[first:last + 1] - pos, lens) + np.arange(pos[0], pos[-1] + lens[-1])
        return ids[start - pos[0]: stop - pos[0]]

    def _compute_block(self, block: int) -> np.ndarray:
        start = block * self.buffer_size
        stop = min(self.total, start + self.buffer_size)
        ids = self._chunked_ids(start, stop)
        return ids[permutation(len(ids), self.seed, self.epoch, 1, block)]

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Global sample ids at epoch positions [start, stop) (clipped to the epoch)."""
        start, stop = max(0, start), min(self.total, stop)
        if start >= stop:
            return np.zeros(0, dtype=np.int64)
        if not self.shuffle:
            return np.arange(start, stop, dtype=np.int64)
        b = self.buffer_size
        parts = []
        for block in range(start // b, (stop - 1) // b + 1):
            ids = self._block(block)
            lo = max(start - block * b, 0)
            hi = min(stop - block * b, len(ids))
            parts.append(ids[lo:hi])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Global sample ids at arbitrary epoch positions."""
        positions = np.asarray(positions, dtype=np.int64)
        if not self.shuffle or len(positions) == 0:
            return positions.copy()
        lo, hi = int(positions.min()), int(positions.max()) + 1
        return self.ids(lo, hi)[positions - lo]
