"""The order of an epoch over several sources, mixed by weights: a pure function, O(1) to resume.

Epoch `e` of a mix of sources with `n_i` samples each:

1. **Counts.** The epoch takes `c_i` samples of source i: by default its size (`c_i = n_i`, the
   sources one after another in proportion); with `weights`, `c_i` is source i's share of the
   epoch's `total` (default: the sources' sizes added up), apportioned exactly by largest
   remainders (ties to the lower source index). `weight_by="hours"` reads the weights as shares
   of recording time instead: source i's share of samples is `w_i / h_i` (normalised), `h_i`
   its seconds per sample.
2. **Each source's samples.** Source i's own epoch orders (`EpochOrder` over its shards, with
   a seed of its own drawn from `(seed, 4, i)`), concatenated: `c_i > n_i` repeats the source
   (its orders of sub-epochs `e*R_i, e*R_i + 1, ...`, `R_i = ceil(c_i / n_i)`), `c_i < n_i`
   takes the first `c_i` of its order of epoch `e` (another subset each epoch). The j-th sample
   the mix takes from source i is position `j % n_i` of sub-epoch `e*R_i + j // n_i`.
3. **Interleaving.** Item j of source i has the key `(2j + 1) / (2 c_i)`; the epoch is all items
   sorted by key, ties by source index. Every prefix of the epoch then holds each source's share
   to within one sample, and the item at any position is found without building the epoch: the
   position of item j of source i is `j` plus, for every other source k, the number of its keys
   below (at or below, for k < i) that key, an integer expression; a binary search on j finds
   the item at a position. Work per position: O(K^2 log c) for K sources; memory: none per
   sample. So resuming at 90% of an epoch costs what starting it costs.

Everything is integer arithmetic on the inputs (no floats in the order, no hash of Python
objects), so every process and every machine computes the same epoch.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from neurocodec.loader.order import DEFAULT_SEED, EpochOrder

MIX_STREAM = 4
"""Second seed word of the sources' own seeds: apart from the order's (0, 1), transforms' (2)
and window phases' (3)."""
WEIGHT_BY = ("samples", "hours")
SMALL_RUN = 256
"""Runs of positions up to this long are placed in Python ints, longer ones with numpy."""


def source_seed(seed: int, source: int) -> int:
    """The seed of source `source`'s own epoch orders in a mix seeded by `seed`."""
    return int(np.random.SeedSequence([int(seed), MIX_STREAM, int(source)]).generate_state(1, np.uint32)[0])


def apportion(total: int, shares: Sequence[float]) -> list[int]:
    """`total` split in proportion to `shares` (non-negative, not all zero): floors, then one more
    to the largest remainders (ties to the lower index). Sums to `total` exactly."""
    weights = [float(s) for s in shares]
    if any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights) > 0:
        raise ValueError(f"weights must be non-negative numbers, not all zero, got {list(shares)!r}")
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    counts = [int(math.floor(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


def epoch_counts(sizes: Sequence[int], weights: Sequence[float] | None = None, total: int | None = None,
                 weight_by: str = "samples", seconds_per_sample: Sequence[float] | None = None) -> list[int]:
    """Samples each source gives an epoch (step 1 of the module documentation)."""
    sizes = [int(n) for n in sizes]
    if not sizes or any(n < 0 for n in sizes):
        raise ValueError(f"a mix needs at least one source and sizes >= 0, got {sizes!r}")
    if weight_by not in WEIGHT_BY:
        raise ValueError(f"weight_by must be one of {WEIGHT_BY}, got {weight_by!r}")
    total = sum(sizes) if total is None else total
    if type(total) is not int or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    if weights is None:
        return apportion(total, sizes) if total != sum(sizes) else sizes
    if len(weights) != len(sizes):
        raise ValueError(f"{len(weights)} weights for {len(sizes)} sources")
    shares = list(weights)
    if weight_by == "hours":
        if seconds_per_sample is None or len(seconds_per_sample) != len(sizes) \
                or any(not (s > 0) for s in seconds_per_sample):
            raise ValueError("weight_by='hours' needs every source's seconds per sample (positive)")
        shares = [w / s for w, s in zip(weights, seconds_per_sample)]
    counts = apportion(total, shares)
    empty = [i for i, (c, n) in enumerate(zip(counts, sizes)) if c and not n]
    if empty:
        raise ValueError(f"sources {empty} are empty but weighted")
    return counts


def _keys_below(j: np.ndarray, c_i: int, c_k: int, inclusive: bool) -> np.ndarray:
    """How many keys of a source with `c_k` items lie below (or at, `inclusive`) the key of item
    `j` of a source with `c_i` items: (2j'+1) * c_i < (or <=) (2j+1) * c_k."""
    if c_k == 0:
        return np.zeros_like(j)
    a = (2 * j + 1) * c_k
    if inclusive:
        count = (a // c_i + 1) // 2
    else:
        count = (-(-a // c_i)) // 2
    return np.minimum(count, c_k)


class MixedOrder:
    """The mixed order of one epoch (see the module documentation): `locate(positions)` gives
    (source, that source's sample id) for positions in [0, total)."""

    def __init__(self, shard_sizes: Sequence[Sequence[int]], *, seed: int = DEFAULT_SEED, epoch: int = 0,
                 counts: Sequence[int] | None = None, shuffle: bool = True, buffer_size: int = 1000,
                 chunk_size: int | None = None) -> None:
        if type(seed) is not int or type(epoch) is not int or seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be non-negative integers, got {seed!r} and {epoch!r}")
        # int64 arrays, not lists: a source of 10^6 shards is 8 MB here, not a Python int per shard
        self.shard_sizes = [np.asarray(s, dtype=np.int64).reshape(-1) for s in shard_sizes]
        self.sizes = [int(s.sum()) for s in self.shard_sizes]
        self.counts = list(self.sizes if counts is None else map(int, counts))
        if len(self.counts) != len(self.sizes) or any(c < 0 or (c and not n) for c, n in zip(self.counts, self.sizes)):
            raise ValueError(f"counts {self.counts} do not fit sources of {self.sizes} samples")
        self.total = sum(self.counts)
        self.seed, self.epoch = seed, epoch
        self._order_args = dict(shuffle=shuffle, buffer_size=buffer_size, chunk_size=chunk_size)
        self._source_order = lru_cache(maxsize=8)(self._make_order)

    def __len__(self) -> int:
        return self.total

    def _make_order(self, source: int, sub_epoch: int) -> EpochOrder:
        return EpochOrder(self.shard_sizes[source], seed=source_seed(self.seed, source), epoch=sub_epoch,
                          **self._order_args)

    def position_of(self, source: int, j: np.ndarray) -> np.ndarray:
        """The epoch positions of items `j` of `source`."""
        j = np.asarray(j, dtype=np.int64)
        c = self.counts
        out = j.copy()
        for k in range(len(c)):
            if k != source:
                out += _keys_below(j, c[source], c[k], inclusive=k < source)
        return out

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, item index j within the source's share) at epoch `positions`."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.total):
            raise IndexError(f"position out of range: the epoch has {self.total} samples")
        if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
            return self._run(int(positions[0]), int(positions[0]) + len(positions))
        return self._searched(positions)

    def _run(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Items at the consecutive positions [start, stop) (a batch): each source's items before
        `start` counted once, then the next few of each placed by their positions (in Python ints
        for a batch's few positions, where numpy's per-call cost would dominate)."""
        if stop - start <= SMALL_RUN:
            placed = []
            for i, c in enumerate(self.counts):
                j = self.before(i, start) if c else c
                while j < c:
                    at = self._position(i, j)
                    if at >= stop:
                        break
                    placed.append((at, i, j))
                    j += 1
            placed.sort()
            return (np.array([p[1] for p in placed], dtype=np.int64), np.array([p[2] for p in placed], dtype=np.int64))
        sources, items, places = [], [], []
        for i, c in enumerate(self.counts):
            if not c:
                continue
            first = self.before(i, start)
            j = np.arange(first, min(c, first + stop - start), dtype=np.int64)
            at = self.position_of(i, j)
            keep = at < stop
            sources.append(np.full(int(keep.sum()), i, dtype=np.int64))
            items.append(j[keep])
            places.append(at[keep])
        at = np.concatenate(places)
        order = np.argsort(at, kind="stable")
        return np.concatenate(sources)[order], np.concatenate(items)[order]

    def before(self, source: int, position: int) -> int:
        """How many items of `source` lie before `position`. Every prefix holds the source's
        share to within one item, so counting on from two below `position * c / total` takes a
        few steps."""
        c = self.counts[source]
        j = max(0, position * c // self.total - 2)
        while j < c and self._position(source, j) < position:
            j += 1
        return j

    def _position(self, source: int, j: int) -> int:
        c_i, at = self.counts[source], j
        for k, c_k in enumerate(self.counts):
            if k == source or not c_k:
                continue
            a = (2 * j + 1) * c_k
            at += min(c_k, (a // c_i + 1) // 2 if k < source else (-(-a // c_i)) // 2)
        return at

    def _searched(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items at any positions, by a vectorised binary search per source."""
        source = np.full(len(positions), -1, dtype=np.int64)
        item = np.zeros(len(positions), dtype=np.int64)
        for i, c in enumerate(self.counts):
            if not c:
                continue
            lo, hi = np.zeros(len(positions), np.int64), np.full(len(positions), c, np.int64)
            while np.any(lo < hi):  # first j whose position is >= p
                mid = (lo + hi) // 2
                below = self.position_of(i, np.minimum(mid, c - 1)) < positions
                lo, hi = np.where(below & (lo < hi), mid + 1, lo), np.where(~below & (lo < hi), mid, hi)
            found = (lo < c) & (self.position_of(i, np.minimum(lo, c - 1)) == positions)
            source[found], item[found] = i, lo[found]
        return source, item

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, the source's global sample id) at epoch `positions`."""
        source, item = self.items(positions)
        ids = np.zeros(len(item), dtype=np.int64)
        for i, (c, n) in enumerate(zip(self.counts, self.sizes)):
            mine = np.flatnonzero(source == i)
            if not len(mine):
                continue
            repeats = max(1, -(-c // n))
            if repeats == 1:  # a source once or a subset of it: its order of this epoch
                ids[mine] = self._source_order(i, self.epoch).take(item[mine])
                continue
            sub = item[mine] // n
            for r in np.unique(sub).tolist():
                take = mine[sub == r]
                ids[take] = self._source_order(i, self.epoch * repeats + r).take(item[take] % n)
        return source, ids
