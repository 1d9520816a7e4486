"""Prefetching and readahead for the datasets of a mix: each source's lookahead (`ShardLookahead`
for a URL dataset, `SpanLookahead` for a local one), fed with the items of the mixed order that
are that source's (in its own numbering), so that its shards are downloaded, or its bytes read
ahead, before the batches that read them, as for a loader over that dataset alone."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class SourceIds:
    """The part of a mixed order one source reads: `take(positions)` gives that source's own
    numbers (what its stream's order would give) of the items at `positions` that are its."""

    def __init__(self, order: Any, source: int) -> None:
        self.order, self.source, self.epoch = order, source, order.epoch

    def take(self, positions: np.ndarray) -> np.ndarray:
        """This source's numbers among the items at `positions`, in order."""
        mixed = self.order.take(positions)
        offsets = self.order.offsets
        mine = (np.searchsorted(offsets, mixed, side="right") - 1) == self.source
        return mixed[mine] - offsets[self.source]


class MixLookahead:
    """The lookaheads of a mix's sources (by source number; those that read ahead)."""

    def __init__(self, aheads: Mapping[int, Any]) -> None:
        self.aheads = dict(aheads)
        self._first = next(iter(self.aheads.values()))

    def due(self) -> bool:
        """True every few batches, when the wish lists should be refreshed (they all share one
        plan, so the first one's count serves for all)."""
        return self._first.due()

    def ask(self, datasets: Mapping[int, Any], k: int) -> None:
        """Have each source's dataset (`datasets[i]`) prefetch or read ahead what this worker's
        batches from `k` on read of it."""
        for i, ahead in self.aheads.items():
            ahead.ask(datasets[i], k)
