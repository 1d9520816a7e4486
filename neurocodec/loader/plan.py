"""Who reads what: an epoch's positions striped over ranks (by global step) and workers (by batch).

Global step `t` consumes the next `world_size * batch_size` positions of the epoch order; rank
`r` takes the `r`-th run of `batch_size` of them. Inside a rank, DataLoader worker `j` of `w`
builds the rank's batches `j, j + w, j + 2w, ...`; PyTorch returns worker outputs in order, so the
stream a training loop sees is the same for any number of workers.

The remainder policy (fewer than `world_size * batch_size` positions left for the last step):

- `drop_last=True`: the remainder is not read this epoch (a different one each epoch when
  shuffling).
- `drop_last=False` (default): the remainder is split as evenly as possible, every rank taking
  one last, shorter batch, so every rank still takes the same number of steps and DDP cannot
  hang. When fewer samples remain than there are ranks, each rank left without one repeats one
  of them (at most world_size - 1 repeats per epoch; never with a single rank).
"""

from __future__ import annotations

import os

import attrs
import numpy as np


def detect_rank_world() -> tuple[int, int]:
    """(rank, world size) from an initialised torch.distributed group, else RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover - torch always ships distributed on our platforms
        pass
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in range for WORLD_SIZE={world}")
    return rank, world


@attrs.frozen(slots=True)
class StepPlan:
    """The batches of one rank for positions [start, total) of an epoch."""

    start: int
    total: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    drop_last: bool = False
    _batches: int = attrs.field(init=False, eq=False, repr=False)  # len(self), asked for once per batch

    def __attrs_post_init__(self) -> None:
        if self.batch_size < 1 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"invalid plan: batch_size {self.batch_size}, rank {self.rank}, "
                             f"world_size {self.world_size}")
        if not 0 <= self.start <= self.total:
            raise ValueError(f"position {self.start} is outside the epoch of {self.total} samples")
        object.__setattr__(self, "_batches", self.full_steps + (1 if self.remainder and not self.drop_last else 0))

    @property
    def step(self) -> int:
        """Positions consumed by one global step."""
        return self.batch_size * self.world_size

    @property
    def full_steps(self) -> int:
        """Steps in which every rank takes a whole batch."""
        return (self.total - self.start) // self.step

    @property
    def remainder(self) -> int:
        """Positions left for the last, shorter step."""
        return (self.total - self.start) - self.full_steps * self.step

    def __len__(self) -> int:
        """Batches this rank takes (the same on every rank)."""
        return self._batches

    def positions(self, k: int) -> np.ndarray:
        """Epoch positions of this rank's batch `k`."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} of {len(self)}")
        if k < self.full_steps:
            first = self.start + k * self.step + self.rank * self.batch_size
            return np.arange(first, first + self.batch_size, dtype=np.int64)
        base = self.start + self.full_steps * self.step
        rem, world, rank = self.remainder, self.world_size, self.rank
        size, extra = divmod(rem, world)
        if size == 0 and rank >= rem:
            return np.array([base + (rank - rem) % rem], dtype=np.int64)  # repeat: see module doc
        first = base + rank * size + min(rank, extra)
        return np.arange(first, first + size + (1 if rank < extra else 0), dtype=np.int64)

    def positions_of(self, numbers: range) -> tuple[np.ndarray, list[int]]:
        """The positions of this rank's batches `numbers` (increasing) laid end to end, and where
        each batch's run of them ends: what `positions` gives batch by batch, computed at once."""
        whole = len(range(numbers.start, min(numbers.stop, self.full_steps), numbers.step))
        firsts = self.start + np.asarray(numbers[:whole], dtype=np.int64) * self.step + self.rank * self.batch_size
        runs = [(firsts[:, None] + np.arange(self.batch_size, dtype=np.int64)).reshape(-1)]
        ends = list(range(self.batch_size, whole * self.batch_size + 1, self.batch_size))
        for k in numbers[whole:]:  # the last, shorter batch
            runs.append(self.positions(k))
            ends.append((ends[-1] if ends else 0) + len(runs[-1]))
        return np.concatenate(runs), ends

    def sample_count(self) -> int:
        """Samples this rank takes over all its batches."""
        count = self.full_steps * self.batch_size
        if len(self) > self.full_steps:
            count += len(self.positions(self.full_steps))
        return count

    def position_after(self, k: int) -> int:
        """The epoch position once every rank has taken `k` batches (total when all are taken)."""
        return self.start + k * self.step if k < len(self) else self.total
