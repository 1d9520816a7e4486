"""Logging the samples `on_error="skip"` leaves out: one line for the first bad sample of each
shard (or the first whose transform fails) in an epoch, as it happens, in the process that read
it; then one summary line at the end of the epoch with the counts ("skipped 1,000 samples in 2
shards this epoch ..."), from the process that ends the epoch. Two bad shards of 500 samples give
three lines, not a thousand.

A DataLoader worker counts what it skips and sends the counts with each batch (`unsent`); the
main process adds them (`add`) as it hands the batches out, so its summary covers every worker.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from neurocodec.process import PerProcess

log = logging.getLogger("neurocodec.loader")

TRANSFORM = ""
"""The shard name under which samples whose transform failed are counted."""

Counts = dict[tuple[str, str], int]
"""(dataset, shard or TRANSFORM) -> samples skipped."""


class _Tally:
    """One process's counts for one epoch: all of them, and those not yet sent to the main process."""

    def __init__(self, epoch: int | None = None) -> None:
        self.epoch = epoch
        self.counts: Counts = {}
        self.unsent: Counts = {}


class SkipLog:
    """The skipped samples of one loader's sources (a mix's sources share one), counted per
    process (a forked or unpickled copy starts from nothing) and per epoch."""

    def __init__(self) -> None:
        self._tally: PerProcess[_Tally] = PerProcess()

    def _of(self, epoch: int) -> _Tally:
        """This process's tally for `epoch`: a new one when the epoch changes."""
        tally = self._tally.get(_Tally)
        if tally.epoch != epoch:
            tally.__init__(epoch)  # type: ignore[misc]
        return tally

    def skip(self, epoch: int, dataset: Any, shard: str | None, what: str, error: BaseException) -> None:
        """Count one skipped sample (`what` names it) of `dataset`'s `shard` (None: its transform
        failed); the first of each shard in an epoch is logged with `error`."""
        key = (str(dataset), TRANSFORM if shard is None else shard)
        tally = self._of(epoch)
        if key not in tally.counts:
            whose = "samples whose transform fails" if shard is None else f"bad samples of shard {shard}"
            log.warning("skipping %s of %s in epoch %d, the first %s: %s (further ones are counted in the "
                        "epoch's summary)", whose, dataset, epoch, what, error)
        for counts in (tally.counts, tally.unsent):
            counts[key] = counts.get(key, 0) + 1

    def unsent(self) -> tuple[int | None, Counts]:
        """(epoch, counts) skipped in this process since the last call (a worker sends them with
        each batch)."""
        tally = self._tally.get(_Tally)
        counts, tally.unsent = tally.unsent, {}
        return tally.epoch, counts

    def add(self, epoch: int | None, counts: Mapping[tuple[str, str], int]) -> None:
        """Add counts a worker sent for `epoch` (nothing is logged: the worker did)."""
        if epoch is None or not counts:
            return
        tally = self._of(epoch)
        for key, count in counts.items():
            tally.counts[key] = tally.counts.get(key, 0) + int(count)

    def end_epoch(self, epoch: int, who: str = "") -> None:
        """Log how many samples were skipped in `epoch`, shard by shard (`who` prefixes the
        line, e.g. for a worker), and forget them."""
        tally = self._tally.current()
        if tally is None or tally.epoch != epoch or not tally.counts:
            return
        counts = tally.counts
        tally.__init__()  # type: ignore[misc]
        log.warning("%s%s", who, summary(epoch, counts))


def summary(epoch: int, counts: Mapping[tuple[str, str], int]) -> str:
    """E.g. "skipped 1,000 samples in 2 shards this epoch (epoch 0 of /data/ds): shard_000001.tar
    500, shard_000003.tar 500" (and "N whose transform failed", if any did)."""
    datasets = sorted({dataset for dataset, _ in counts})
    total = sum(counts.values())
    shards = sorted(key for key in counts if key[1] != TRANSFORM)
    parts = [f"{shard if len(datasets) == 1 else f'{dataset}/{shard}'} {counts[dataset, shard]:,}"
             for dataset, shard in shards]
    transformed = sum(n for (_, shard), n in counts.items() if shard == TRANSFORM)
    if transformed:
        parts.append(f"{transformed:,} whose transform failed")
    where = f" in {len(shards):,} shard{'s' * (len(shards) != 1)}" if shards else ""
    return (f"skipped {total:,} sample{'s' * (total != 1)}{where} this epoch (epoch {epoch} of "
            f"{', '.join(datasets)}): {', '.join(parts)}")
