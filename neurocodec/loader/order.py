"""The order of an epoch: a list you compute, not a process you replay (order version 2).

For epoch `e` the sequence of sample ids is a pure function of (N, seed, e, shuffle,
buffer_size, chunk_size), N the epoch's samples (the shard sizes added up):

1. the ids 0..N-1, in storage order, are cut into `F = N // chunk_size` chunks of `chunk_size`
   consecutive ids, and a short chunk of the last `N % chunk_size` ids when that is not zero;
2. the chunks are permuted: slot q holds chunk `pi(q)`, `pi` a keyed Feistel bijection of
   range(F) (`neurocodec.loader.feistel`), and the short chunk goes in before slot `t`; the
   round keys and `t` come from `SeedSequence([seed, e, 0])`;
3. that sequence is cut into blocks of `buffer_size` positions and the samples inside each block
   are permuted with a generator seeded by (seed, e, 1, block).

A block therefore mixes about buffer_size / chunk_size chunks, from as many places in the
dataset (a chunk is one run of neighbouring samples, in one shard or across the boundary of
two), while a reader touches one block at a time. Position `p` is reached in O(buffer_size)
work and memory, with nothing computed for the rest of the epoch: building the order of 10^9
samples and seeking it costs what 10^3 do. `shuffle=False` is the identity order.
docs/order.md specifies it to be reimplemented; `ORDER_VERSION` names it in loader states.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from neurocodec.loader.feistel import Feistel

DEFAULT_SEED = 0
ORDER_VERSION = 2
"""The order this module computes. Version 1 (neurocodec before issue 18) permuted chunks cut
shard by shard with an argsort over all of them; a state saved under it is refused."""
ROUNDS = 6
PAGE = 1024
"""Slots of the chunk order evaluated together (8 KiB of ids)."""


def default_chunk_size(buffer_size: int) -> int:
    """Chunk length used when none is given: 1/16 of the buffer, between 1 and 64 samples."""
    return max(1, min(64, buffer_size // 16))


def permutation(n: int, *key: int) -> np.ndarray:
    """A permutation of range(n) determined only by `key` (non-negative integers): the stable
    argsort of n raw 64-bit PCG64 outputs seeded by SeedSequence(key)."""
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    bits = np.random.PCG64(np.random.SeedSequence(list(key))).random_raw(n)
    return np.argsort(bits, kind="stable").astype(np.int64)


class ChunkOrder:
    """Steps 1 and 2: the ids at positions of the permuted-chunk sequence, before the block
    shuffle. `pi` is evaluated a page of `PAGE` consecutive slots at a time (a few pages kept):
    one vectorised call serves the next blocks too, and a seek costs one page."""

    def __init__(self, total: int, chunk_size: int, seed: int, epoch: int) -> None:
        """The chunk order of `epoch`: round keys and `t` from SeedSequence([seed, epoch, 0])."""
        words = np.random.SeedSequence([seed, epoch, 0]).generate_state(ROUNDS + 1, np.uint64)
        self.total, self.chunk_size = total, chunk_size
        self.full = total // chunk_size
        self.short = total - self.full * chunk_size
        self.pi = Feistel(self.full, tuple(int(w) for w in words[:ROUNDS]))
        self.short_at = int(words[ROUNDS]) % (self.full + 1)
        """Slot `t` the short chunk goes in before (`F`: at the end)."""
        self._page = lru_cache(maxsize=4)(self._compute_page)
        self._offsets = np.arange(min(chunk_size, PAGE), dtype=np.int64)

    def _compute_page(self, page: int) -> np.ndarray:
        return self.pi(np.arange(page * PAGE, min(self.full, (page + 1) * PAGE), dtype=np.int64))

    def chunks(self, first: int, stop: int) -> np.ndarray:
        """`pi(q)` for the slots q in [first, stop)."""
        page = first // PAGE
        if first >= stop:
            return np.zeros(0, dtype=np.int64)
        if (stop - 1) // PAGE == page:
            return self._page(page)[first - page * PAGE: stop - page * PAGE]
        found = np.concatenate([self._page(k) for k in range(page, (stop - 1) // PAGE + 1)])
        return found[first - page * PAGE: stop - page * PAGE]

    def ids(self, start: int, stop: int) -> np.ndarray:
        """Ids at positions [start, stop) of the permuted-chunk sequence."""
        c, short = self.chunk_size, self.short
        at = self.short_at * c  # where the short chunk starts
        if (stop <= at or start >= at + short) and c <= PAGE:
            # No position in the short chunk: expand the (short enough) full chunks as runs.
            q = start if stop <= at else start - short  # the position among the full chunks
            first = q // c
            runs = self.chunks(first, (q + stop - start - 1) // c + 1)[:, None] * c + self._offsets
            return runs.reshape(-1)[q - first * c: q - first * c + stop - start]
        p = np.arange(start, stop, dtype=np.int64)
        q = np.where(p >= at + short, p - short, p)
        in_short = (p >= at) & (p < at + short)
        whole = ~in_short
        first = int(q[0]) // c
        chunks = self.chunks(first, min(self.full, int(q[-1]) // c + 1))
        ids = np.empty(len(p), dtype=np.int64)
        ids[whole] = chunks[q[whole] // c - first] * c + q[whole] % c
        ids[in_short] = self.full * c + p[in_short] - at
        return ids


class EpochOrder:
    """The global sample order of one epoch; `ids(start, stop)` gives positions start..stop-1."""

    def __init__(self, shard_sizes: Sequence[int], *, seed: int = DEFAULT_SEED, epoch: int = 0,
                 shuffle: bool = True, buffer_size: int = 1000, chunk_size: int | None = None) -> None:
        """`shard_sizes`: the samples of each shard (or session, or a split's samples per shard);
        only their sum enters the order."""
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if seed < 0 or epoch < 0:
            raise ValueError("seed and epoch must be non-negative integers")
        self.total = int(np.sum(np.asarray(shard_sizes, dtype=np.int64)))
        self.seed, self.epoch, self.shuffle = int(seed), int(epoch), bool(shuffle)
        self.buffer_size = int(buffer_size)
        self.chunk_size = int(chunk_size or default_chunk_size(self.buffer_size))
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.version = ORDER_VERSION
        self._chunks = ChunkOrder(self.total, self.chunk_size, self.seed, self.epoch) if self.shuffle else None
        self._block = lru_cache(maxsize=4)(self._compute_block)

    def _compute_block(self, block: int) -> np.ndarray:
        start = block * self.buffer_size
        stop = min(self.total, start + self.buffer_size)
        ids = self._chunks.ids(start, stop)
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
