"""A `WebDatasetLoader` read by DataLoader workers: which epoch each DataLoader iteration reads,
and where each worker is (torchdata's `Stateful` protocol).

Every DataLoader worker iterates a copy of the dataset, made when the iteration starts (with
`persistent_workers=True`, once for the DataLoader's lifetime): what a worker does never reaches
the main process's copy, nor the copies of the next iteration. So the dataset carries a
`PassRecord`, a few int64 in shared memory, made with it and shared by every copy:

- the start the main process set last (`set_epoch`, `load_state_dict`, the constructor), with a
  generation number, so persistent workers see a main-process `set_epoch` too;
- one slot per worker id: the epoch that worker's latest pass read, tagged with the pass's
  identity (the DataLoader iterator's base seed, which all its workers share, and the copy's own
  pass count, for persistent workers).

A worker starting a pass reads the epoch after the last one any earlier pass read (slots of its
own pass, written by faster workers of the same iteration, are left aside), or the main
process's start when none did since. All workers of an iteration compute the same epoch
whatever their timing, with no lock: each writes only its own slot, and they all read the same
earlier slots. Each DataLoader iteration is thus one epoch, also one left early (Lightning stops
after `len(loader)` batches; a `break`). Two DataLoader iterators with the same base seed (a
`generator=` seeded the same way for each) would count as one pass: the record cannot tell them apart.

A worker's position (`WorkerCursor`) is its own: the pass's epoch and start, then its next
batch of the plan and the samples of that batch already handed out. torchdata's
`StatefulDataLoader` asks each worker for it after each batch and gives it back to that worker
on resume, which is what makes its resume exact.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import attrs
import torch

from neurocodec.loader.batch import sample_to_tensors
from neurocodec.loader.state import LoaderState

SLOTS = 64
"""Workers with a slot; workers beyond read the slots without writing one (the others' slots
say as much)."""
_GENERATION, _EPOCH, _POSITION, _FIRST_SLOT = 0, 1, 2, 3
_EPOCH_BITS = 32
_EPOCH_MASK = (1 << _EPOCH_BITS) - 1


def pass_identity(base_seed: int, passes: int) -> int:
    """A positive 31-bit tag for one DataLoader pass: its iterator's base seed and the copy's
    count of passes (0 for a fresh copy; counting on in a persistent worker)."""
    return (hash((base_seed, passes)) & 0x7FFFFFFF) or 1


class PassRecord:
    """The shared record of the main process's start and of the epochs workers' passes read."""

    def __init__(self, epoch: int, position: int) -> None:
        self.block = torch.full((_FIRST_SLOT + SLOTS,), -1, dtype=torch.int64).share_memory_()
        self.generation = 0
        self.passes = 0  # passes this copy read (in a persistent worker, more than one)
        self.reset(epoch, position)

    # -- main process ------------------------------------------------------------------------
    def reset(self, epoch: int, position: int) -> None:
        """The main process's position is where the next pass starts (forgetting earlier passes)."""
        block = self.block
        block[_FIRST_SLOT:] = -1
        block[_EPOCH], block[_POSITION] = epoch, position
        self.generation = int(block[_GENERATION]) + 1
        block[_GENERATION] = self.generation

    def last_read(self) -> int | None:
        """The latest epoch workers read since the last `reset`, or None if none did."""
        codes = [c for c in self.block[_FIRST_SLOT:].tolist() if c >= 0]
        return max(c & _EPOCH_MASK for c in codes) if codes else None

    # -- worker ------------------------------------------------------------------------------
    def start(self, epoch: int, position: int, identity: int, worker: int) -> tuple[int, int]:
        """(epoch, position) where the pass `identity` starts for `worker`, whose copy of the
        dataset stands at (epoch, position); recorded in the worker's slot."""
        values = self.block.tolist()
        if values[_GENERATION] != self.generation:  # the main process set a start after this copy was made
            self.generation = values[_GENERATION]
            epoch, position = values[_EPOCH], values[_POSITION]
        earlier = [c & _EPOCH_MASK for c in values[_FIRST_SLOT:] if c >= 0 and c >> _EPOCH_BITS != identity]
        if earlier:
            epoch, position = max(earlier) + 1, 0
        self.mark(worker, identity, epoch)
        return epoch, position

    def mark(self, worker: int, identity: int, epoch: int) -> None:
        """Record that pass `identity` reads `epoch` in `worker`."""
        if worker < SLOTS:
            self.block[_FIRST_SLOT + worker] = (identity << _EPOCH_BITS) | (epoch & _EPOCH_MASK)


@attrs.define
class WorkerCursor:
    """Where one worker is in its pass: the pass's epoch and plan start, the worker's next batch
    of the plan (`batch`) and the samples of it already handed out (`taken`)."""

    worker: int
    workers: int
    epoch: int
    start: int
    batch: int
    taken: int = 0
    skipped: int = 0
    restored: bool = False
    """Set by `restore_worker`: the next pass starts here."""

    def to_dict(self) -> dict[str, int]:
        """The worker's part of a state (next to the order settings)."""
        return {"worker": self.worker, "workers": self.workers, "batch": self.batch, "taken": self.taken}

    @classmethod
    def from_state(cls, doc: Any, epoch: int, start: int, skipped: int, worker: int, workers: int,
                   batches: int) -> "WorkerCursor":
        """A cursor from a worker's state `doc` (its "worker_pass" entry), checked against the
        worker it is given to (`worker` of `workers`) and the plan's `batches`."""
        if not isinstance(doc, Mapping):
            raise ValueError("this state was not saved inside a DataLoader worker (it has no 'worker_pass'): "
                             "restore it with load_state_dict in the main process")
        values = {}
        for key in ("worker", "workers", "batch", "taken"):
            value = doc.get(key)
            if type(value) is not int or value < 0:
                raise ValueError(f"worker state field {key!r} is missing or invalid: {value!r}")
            values[key] = value
        if (values["worker"], values["workers"]) != (worker, workers):
            raise ValueError(f"the state of DataLoader worker {values['worker']} of {values['workers']} was given to "
                             f"worker {worker} of {workers}: resume with the same num_workers")
        if values["batch"] % workers != worker and values["batch"] < batches:
            raise ValueError(f"worker {worker} of {workers} does not read batch {values['batch']}")
        return cls(worker=worker, workers=workers, epoch=epoch, start=start, batch=values["batch"],
                   taken=values["taken"], skipped=skipped)


def start_pass(stream: Any, record: PassRecord, info: Any, cursor: WorkerCursor | None) -> WorkerCursor:
    """Start a worker's pass over its copy of the dataset (`stream`, `record`): where a
    restored `cursor` says, else where `PassRecord.start` says. `info`: torch's worker info."""
    identity = pass_identity(info.seed - info.id, record.passes)
    record.passes += 1
    if cursor is not None and cursor.restored:
        cursor.restored = False
        record.mark(info.id, identity, cursor.epoch)
    else:
        epoch, position = record.start(*stream.next_start(), identity, info.id)
        cursor = WorkerCursor(worker=info.id, workers=info.num_workers, epoch=epoch, start=position, batch=info.id,
                              skipped=0 if cursor is None else cursor.skipped)
    stream.epoch, stream.position = cursor.epoch, cursor.start
    return cursor


def worker_samples(stream: Any, cursor: WorkerCursor) -> Iterator[dict[str, Any]]:
    """The worker's samples of its pass: its batches of the plan from `cursor` on (batch
    `cursor.worker + j * workers`), the cursor moved as each sample is handed out."""
    first, taken = cursor.batch, cursor.taken
    plan = stream.plan(cursor.start)
    for k, positions, samples in stream.batches(plan, cursor.worker, cursor.workers, first=first):
        skip = taken if k == first else 0
        if not skip:  # a restored cursor inside a batch counted its bad samples already
            cursor.skipped += len(positions) - len(samples)
        cursor.batch, cursor.taken = (k, skip) if skip < len(samples) else (k + cursor.workers, 0)
        for n in range(skip, len(samples)):
            cursor.batch, cursor.taken = (k, n + 1) if n + 1 < len(samples) else (k + cursor.workers, 0)
            yield sample_to_tensors(samples[n][1])
    # the main process does not see what a worker skipped: the worker says it
    stream.source.skips.end_epoch(stream.epoch, who=f"DataLoader worker {cursor.worker}: ")


def worker_state(stream: Any, cursor: WorkerCursor | None) -> dict[str, Any]:
    """A worker's state: its pass's order settings and start, and its `WorkerCursor`."""
    if cursor is None:
        raise ValueError("this DataLoader worker has not started reading the dataset: no state to save")
    doc = stream.state_of(cursor.epoch, cursor.start, cursor.skipped).to_dict()
    doc["worker_pass"] = cursor.to_dict()
    return doc


def restore_worker(stream: Any, state: Mapping[str, Any], info: Any) -> WorkerCursor:
    """The cursor a worker's saved `state` gives the worker `info` describes (checked: the
    same order settings, the same worker of the same number of workers)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a loader state must be a dict, got {type(state).__name__}")
    doc = dict(state)
    part = doc.pop("worker_pass", None)
    loaded = LoaderState.from_dict(doc)
    loaded.check_compatible(stream.state_of(loaded.epoch, 0, 0))
    stream.epoch = loaded.epoch
    batches = len(stream.plan(loaded.position))
    cursor = WorkerCursor.from_state(part, loaded.epoch, loaded.position, loaded.skipped, info.id,
                                     info.num_workers, batches)
    cursor.restored = True
    return cursor
