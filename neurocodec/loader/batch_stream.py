"""`BatchStream`: what each DataLoader worker of `WebDatasetDataLoader` iterates.

Worker `j` of `w` builds and collates the rank's batches `j, j + w, ...`, each tagged with its
number, the samples skipped and (from a worker) its skip counts, for the main process. While
the workers start, the main process builds batches itself; each worker then waits for the
position handed over (`start`), so the epoch continues exactly where the main process stopped.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.utils.data

from neurocodec.loader.batch import collate_webdataset, sample_to_tensors
from neurocodec.loader.slots import SlotPool
from neurocodec.loader.stream import EpochStream, worker_slot
from neurocodec.plugin.collate import allocating_from
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry

BATCH, SKIPPED, EMPTY, SKIPS = "__batch__", "__skipped__", "__empty__", "__skips__"
WAITING, STOP = -1, -2  # `BatchStream.start[1]` before the hand-over / when there is none


class BatchStream(torch.utils.data.IterableDataset):
    """Yields this worker's collated batches, tagged with their number for the main process."""

    def __init__(self, stream: EpochStream, collate_fn: Callable[[Sequence[Mapping[str, Any]]], Any] | None) -> None:
        super().__init__()
        self.stream = stream
        self.collate_fn = collate_fn
        self.pool: SlotPool | None = None  # set by WebDatasetDataLoader for its workers
        # Where the pass starts (epoch, position), set by the main process before each: a
        # persistent worker's copy of the stream stays where the first pass left it. While the
        # workers start, the position is WAITING (the main process builds batches itself);
        # each worker sets its `ready` flag and waits for the position it hands over.
        self.start = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.ready = torch.zeros(1, dtype=torch.int64).share_memory_()

    def expect_workers(self, workers: int) -> None:
        """Clear the ready flags of `workers` new worker processes (call before starting them)."""
        if len(self.ready) != workers:
            self.ready = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self.ready.zero_()

    def workers_ready(self) -> bool:
        """Whether every worker has started and waits for (or has had) its hand-over."""
        return bool(self.ready.all())

    def _await_start(self, worker: int) -> tuple[int, int] | None:
        """In a worker: flag it ready and wait for the position the main process hands over;
        None when there is none (the main process built the rest, or stopped, or is gone)."""
        self.ready[worker] = 1
        parent = os.getppid()  # the training process, or the fork server, as torch's watchdog
        while True:
            epoch, position = self.start.tolist()
            if position >= 0:
                return epoch, position
            if position == STOP or os.getppid() != parent:
                return None
            time.sleep(0.001)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self.stream
        worker, workers = worker_slot()
        in_worker = torch.utils.data.get_worker_info() is not None
        if in_worker:
            # The heap inherited from the parent (torch, numpy, the user's model...) is never
            # garbage here: keep the collector from scanning it, which costs tens of ms on the
            # first batch and unshares copy-on-write pages.
            gc.freeze()
            start = self._await_start(worker)
            if start is None:
                return
            stream.epoch, stream.position = start
        registry = stream.source.registry or default_registry()
        pool = self.pool if in_worker else None
        for k, positions, samples in stream.batches(stream.plan(), worker, workers):
            values = [s for _, s in samples]
            arena = pool.acquire(worker) if pool is not None and values else None
            with allocating_from(arena):
                batch = self._collate(values, stream, registry)
            if arena is not None:
                batch, placed = arena.export(batch)
                if not placed:
                    pool.give_back(arena.index)
            batch[BATCH] = k
            batch[SKIPPED] = len(positions) - len(values)
            if in_worker:  # its skip counts go to the main process's summary of the epoch
                batch[SKIPS] = stream.source.skips.unsent()
            yield batch

    def _collate(self, values: list[dict[str, Any]], stream: EpochStream, registry: Registry) -> dict[str, Any]:
        if not values:
            return {EMPTY: True}
        if self.collate_fn is not None:
            batch = self.collate_fn([sample_to_tensors(s) for s in values])
            return batch if isinstance(batch, dict) else {"__collated__": batch}
        return collate_webdataset(values, stream.fields, registry)
