"""Which shards a loader process will read next, for prefetching remote datasets.

The epoch order and the rank/worker plan say exactly which samples this process reads in its
next batches; their shard numbers, soonest first, are what the prefetcher should download.
Used only for URL datasets: a local dataset never builds one.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from neurocodec.loader.order import EpochOrder
from neurocodec.loader.plan import StepPlan

LOOKAHEAD_SAMPLES = 512


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
