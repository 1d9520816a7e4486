"""What a loader process will read next, for prefetching remote datasets and reading local ones ahead.

The epoch order and the rank/worker plan say exactly which samples this process reads in its
next batches. For a URL dataset their shard numbers, soonest first, are what the prefetcher
should download (`ShardLookahead`); for a local one the runs of consecutive stored samples they
read, soonest first, are what `Dataset.read_ahead` asks the kernel for (`SpanLookahead`: whole
stretches of a shard in stored order, the chunks of the shuffled order, docs/order.md).
`lookahead_for` picks the one a dataset needs (None when a local dataset's readahead is off).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from neurocodec.loader.order import EpochOrder
from neurocodec.loader.plan import StepPlan

LOOKAHEAD_SAMPLES = 512
MAX_SPAN_SAMPLES = 1 << 14
"""Most samples a `SpanLookahead` looks ahead, whatever the readahead bound."""
MIX_BLOCK = 1000
"""Half the positions of a mix's order a source's `SpanLookahead` looks ahead at most."""


class ShardLookahead:
    """Shard numbers of this worker's batches from batch `k` on, about `samples` samples ahead,
    computed incrementally (each batch's shards once). `stored` maps the order's ids to the
    stored samples they read, when those differ (load-time windows)."""

    def __init__(self, order: EpochOrder, plan: StepPlan, worker: int, workers: int,
                 starts: np.ndarray, samples: int = LOOKAHEAD_SAMPLES,
                 stored: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.order, self.plan, self.starts, self.stored = order, plan, starts, stored
        self.batches = range(worker, len(plan), workers)
        self.window = max(1, -(-samples // plan.batch_size))
        self.every = max(1, self.window // 4)  # refresh the wish list every few batches
        self._shards: dict[int, np.ndarray] = {}
        self._since = self.every

    def _batch_shards(self, k: int) -> np.ndarray:
        shards = self._shards.get(k)
        if shards is None:
            ids = self.order.take(self.plan.positions(k))
            if self.stored is not None:  # load-time windows: the chunks the slots read
                ids = self.stored(ids)
            numbers = np.searchsorted(self.starts, ids, side="right") - 1
            _, first = np.unique(numbers, return_index=True)
            shards = self._shards[k] = numbers[np.sort(first)]
        return shards

    def due(self) -> bool:
        """True when the wish list should be refreshed (every few batches)."""
        self._since += 1
        if self._since >= self.every:
            self._since = 0
            return True
        return False

    def shards_from(self, k: int) -> list[int]:
        """Shard numbers of batches k, k + workers, ... within the window, soonest first."""
        i = self.batches.index(k)
        upcoming = self.batches[i:i + self.window]
        for old in [j for j in self._shards if j < k]:
            del self._shards[old]
        out: dict[int, None] = {}
        for j in upcoming:
            out.update(dict.fromkeys(self._batch_shards(j).tolist()))
        return list(out)

    def ask(self, dataset: Any, k: int) -> None:
        """Have `dataset` download the shards of the batches from `k` on."""
        dataset.prefetch(self.shards_from(k))


class SpanLookahead:
    """Runs of consecutive stored samples, (shard number, first, stop), that this worker's batches
    from batch `k` on read, about `samples` samples ahead, soonest first: the order in which
    `Dataset.read_ahead` should have them read (it stops at its byte bound). `stored` as for
    `ShardLookahead`."""

    def __init__(self, order: EpochOrder, plan: StepPlan, worker: int, workers: int,
                 starts: np.ndarray, samples: int, stored: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.order, self.plan, self.starts, self.stored = order, plan, starts, stored
        self.batches = range(worker, len(plan), workers)
        self.window = max(1, -(-samples // plan.batch_size))
        self.every = max(1, self.window // 4)  # read ahead again once a quarter of the window is read
        self._since = self.every

    due = ShardLookahead.due

    def spans_from(self, k: int) -> list[tuple[int, int, int]]:
        """The runs read by batches k, k + workers, ... within the window, soonest first."""
        i = self.batches.index(k)
        positions, _ = self.plan.positions_of(self.batches[i:i + self.window])
        ids = self.order.take(positions)
        if isinstance(self.order, EpochOrder) and self.order.shuffle and self.order.chunk_size > 1:
            ids = whole_chunks(ids, self.order.chunk_size, self.order.total)
        if self.stored is not None:
            ids = self.stored(ids)
        return runs(ids, self.starts)

    def ask(self, dataset: Any, k: int) -> None:
        """Have `dataset` read ahead the runs of the batches from `k` on. The window holds about
        the readahead bound's worth of samples; rounded out to whole chunks, the chunks begun
        in the order's current block count whole, so up to twice the bound is let through."""
        dataset.read_ahead(self.spans_from(k), 2 * dataset.readahead.limit)


def whole_chunks(ids: np.ndarray, chunk: int, total: int) -> np.ndarray:
    """Every id of the chunks of the shuffled order (`chunk` consecutive ids each, docs/order.md)
    that `ids` fall in, chunk by chunk in the order they are first met: the order reads each
    chunk whole within one block, so reading it ahead whole wastes nothing."""
    chunks, first = np.unique(ids // chunk, return_index=True)
    met = chunks[np.argsort(first, kind="stable")]
    every = (met[:, None] * chunk + np.arange(chunk, dtype=np.int64)).reshape(-1)
    return every[every < total]


def runs(ids: np.ndarray, starts: np.ndarray) -> list[tuple[int, int, int]]:
    """The stored samples `ids` (in the order they are read) as runs of consecutive samples within
    a shard, (shard number, first, stop) with shard-local numbers, ordered by the first read of each."""
    if len(ids) == 0:
        return []
    if len(ids) == 1 or bool((ids[1:] > ids[:-1]).all()):  # stored order: already sorted, each once
        unique, first_read = ids, np.arange(len(ids))
    else:
        unique, first_read = np.unique(ids, return_index=True)
    numbers = np.searchsorted(starts, unique, side="right") - 1
    cut = np.flatnonzero((np.diff(unique) != 1) | (np.diff(numbers) != 0)) + 1
    heads = np.concatenate(([0], cut))
    tails = np.concatenate((cut, [len(unique)])) - 1
    soonest = np.minimum.reduceat(first_read, heads)
    number = numbers[heads]
    table = np.stack([number, unique[heads] - starts[number], unique[tails] + 1 - starts[number]], axis=1)
    return [tuple(row) for row in table[np.argsort(soonest, kind="stable")].tolist()]


def lookahead_for(dataset: Any, order: EpochOrder, plan: StepPlan, worker: int, workers: int,
                  starts: np.ndarray, stored: Callable[[np.ndarray], np.ndarray] | None = None) -> Any:
    """What reads ahead for this worker over `dataset` (its open `Dataset`): a `ShardLookahead`
    for a URL dataset, a `SpanLookahead` over about its readahead bound for a local one, None
    when that is 0 (readahead off)."""
    if dataset.remote is not None:
        return ShardLookahead(order, plan, worker, workers, starts, stored=stored)
    if not dataset.readahead.limit or (isinstance(order, EpochOrder) and not order.shuffle
                                       and not dataset.readahead_in_order()):
        return None
    some = [dataset.manifest.shards[n] for n in range(min(16, len(starts)))]
    each = max(1, sum(s.bytes for s in some) // max(1, sum(s.samples for s in some)))
    samples = min(MAX_SPAN_SAMPLES, max(LOOKAHEAD_SAMPLES, dataset.readahead.limit // each))
    if not isinstance(order, EpochOrder):  # a mix's source: the mixed order's positions
        samples = min(samples, 2 * MIX_BLOCK)
    elif order.shuffle:  # keeps within the blocks the reading loop has cached (EpochOrder keeps 4)
        samples = min(samples, 2 * order.buffer_size)
    return SpanLookahead(order, plan, worker, workers, starts, samples, stored=stored)
