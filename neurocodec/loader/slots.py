"""Handing batches from DataLoader workers to the training process through reused shared memory.

torch moves a tensor between processes by creating a shared-memory file for it in the worker,
passing its descriptor over a socket and mapping it in the training process: per tensor, per
batch. On a 2-core machine that was most of what a batch cost, and every fresh mapping is
page-faulted in twice (worker and training process).

Here the training process creates, per iteration, one shared-memory block holding a few slots
per worker, and one busy flag per slot beside it. A worker takes a free slot of its own, marks
it busy, collates straight into it (`neurocodec.plugin.collate.allocate_batch_tensor` allocates from
it) and sends only small placeholders. Unpickling them in the training process gives ordinary
tensors viewing the slot, with no copy; when the last of them is freed the flag is cleared. Flags are
read and written only under a cross-process lock, whose acquire and release order every read
of the slot before the next write on any CPU. No file descriptor is involved, so nothing a
forked process closes can break the hand-back. A worker with no free slot, or a batch that does
not fit, takes torch's usual path, so nothing ever waits for a slot, whatever the training loop
holds on to; a lock not had within its timeout counts as no free slot.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import weakref
from typing import Any

import torch

ALIGN = 64
MAX_POOL_BYTES = 1 << 30
LOCK_TIMEOUT = 1.0  # seconds; only a process killed while holding the lock makes anyone wait
_pools: "weakref.WeakValueDictionary[str, SlotPool]" = weakref.WeakValueDictionary()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class SlotPool:
    """`per_worker` slots of `capacity` bytes for each of `workers` workers, in shared memory,
    with a busy flag per slot (set by the worker that fills it, cleared when it is freed)."""

    def __init__(self, workers: int, per_worker: int, capacity: int, context: Any) -> None:
        self.token = secrets.token_hex(8)
        self.workers, self.per_worker, self.capacity = workers, per_worker, _aligned(capacity)
        storage = torch.UntypedStorage._new_shared(workers * per_worker * self.capacity)
        self.memory = torch.empty(0, dtype=torch.uint8).set_(storage)
        self.busy = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(workers * per_worker))
        self.busy.zero_()
        ctx = multiprocessing.get_context(context) if isinstance(context, str) or context is None else context
        self.lock = ctx.Lock()
        self._owner = os.getpid()
        _pools[self.token] = self

    @staticmethod
    def size_for(batch_bytes: int, workers: int, per_worker: int) -> int:
        """Bytes a pool for batches of `batch_bytes` takes."""
        return workers * per_worker * _aligned(batch_bytes)

    def _set(self, index: int, value: int) -> bool:
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            return False
        try:
            self.busy[index] = value
        finally:
            self.lock.release()
        return True

    # -- worker side -------------------------------------------------------------------------
    def acquire(self, worker: int) -> "Arena | None":
        """A free slot of `worker`, now marked busy, to collate one batch into; None when all
        are in use."""
        if not self.lock.acquire(timeout=LOCK_TIMEOUT):
            return None
        try:
            first = worker * self.per_worker
            free = (self.busy[first:first + self.per_worker] == 0).nonzero()
            if not len(free):
                return None
            index = first + int(free[0, 0])
            self.busy[index] = 1
        finally:
            self.lock.release()
        start = index * self.capacity
        return Arena(self, index, self.memory[start:start + self.capacity])

    def give_back(self, index: int) -> None:
        """Free a slot that a worker took but did not use."""
        self._set(index, 0)

    # -- training-process side ---------------------------------------------------------------
    def release(self, index: int) -> None:
        """Free slot `index` for its worker (called when the batch's tensors are freed). Only
        the process that made the pool releases: a process forked from it (another loader's
        worker) inherits the batches it holds and must never free their slots."""
        if os.getpid() == self._owner:
            self._set(index, 0)


class Arena:
    """One slot being filled by a worker: a bump allocator for the batch's tensors."""

    def __init__(self, pool: SlotPool, index: int, region: torch.Tensor) -> None:
        self.pool, self.index, self.region = pool, index, region
        self.used = 0
        self.lease = SlotLease(pool.token, index)
        self._start = region.data_ptr()
        self._exported: dict[int, tuple[torch.Tensor, SlotTensor]] = {}  # id -> (tensor, placeholder)

    def allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """An uninitialised tensor in this slot, or None if it does not fit."""
        numel = 1
        for d in shape:
            numel *= d
        size = numel * dtype.itemsize
        if size == 0 or self.used + size > self.region.numel():
            return None
        out = self.region[self.used:self.used + size].view(dtype).view(shape)
        self.used += _aligned(size)
        return out

    def export(self, value: Any) -> tuple[Any, int]:
        """`value` with every CPU tensor in this slot (or copied into it when it fits) replaced
        by a placeholder, and how many were; dicts, lists and tuples are walked."""
        if isinstance(value, torch.Tensor):
            return self._export_tensor(value)
        if type(value) is dict:
            out, count = {}, 0
            for key, item in value.items():
                out[key], n = self.export(item)
                count += n
            return out, count
        if type(value) in (list, tuple):
            items, count = [], 0
            for item in value:
                exported, n = self.export(item)
                items.append(exported)
                count += n
            return type(value)(items), count
        return value, 0

    def _export_tensor(self, tensor: torch.Tensor) -> tuple[Any, int]:
        if id(tensor) in self._exported:   # one tensor twice in a batch stays one tensor
            return self._exported[id(tensor)][1], 1
        if tensor.device.type != "cpu" or tensor.requires_grad or tensor.numel() == 0:
            return tensor, 0
        original = tensor
        offset = tensor.data_ptr() - self._start
        if not (0 <= offset < self.region.numel() and tensor.untyped_storage().data_ptr() == self.pool.memory.data_ptr()):
            copy = self.allocate(tuple(tensor.shape), tensor.dtype)
            if copy is None:
                return tensor, 0
            copy.copy_(tensor)
            tensor, offset = copy, copy.data_ptr() - self._start
        if offset % tensor.element_size():
            return tensor, 0
        placeholder = SlotTensor(self.lease, offset, str(tensor.dtype).removeprefix("torch."),
                                 tuple(tensor.shape), tuple(tensor.stride()))
        self._exported[id(original)] = (original, placeholder)  # the tensor kept: its id stays its own
        return placeholder, 1


class SlotLease:
    """Pickles as "slot `index` of pool `token`"; unpickled in the training process it becomes
    the slot's memory, handed back to the worker when nothing views it any more. All the
    placeholders of one batch share one lease (pickle stores a shared object once)."""

    def __init__(self, token: str, index: int) -> None:
        self.token, self.index = token, index

    def __reduce__(self) -> tuple[Any, ...]:
        return _open_lease, (self.token, self.index)


def _open_lease(token: str, index: int) -> torch.UntypedStorage:
    pool = _pools.get(token)
    if pool is None:
        raise RuntimeError("a batch arrived after its DataLoader iteration ended")
    start = index * pool.capacity
    # A new numpy array per batch: its lifetime is the batch's, since every tensor of the batch
    # keeps it alive through the storage made from it.
    view = pool.memory[start:start + pool.capacity].numpy()
    weakref.finalize(view, pool.release, index)
    return torch.from_numpy(view).untyped_storage()


class SlotTensor:
    """A placeholder for a tensor in a slot; unpickles to that tensor (a view, not a copy)."""

    def __init__(self, lease: SlotLease, offset: int, dtype: str, shape: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.lease, self.offset, self.dtype, self.shape, self.stride = lease, offset, dtype, shape, stride

    def __reduce__(self) -> tuple[Any, ...]:
        return _view, (self.lease, self.offset, self.dtype, self.shape, self.stride)


def _view(storage: torch.UntypedStorage, offset: int, dtype: str, shape: tuple[int, ...],
          stride: tuple[int, ...]) -> torch.Tensor:
    kind = getattr(torch, dtype)
    return torch.empty(0, dtype=kind).set_(storage, offset // kind.itemsize, shape, stride)


def batch_bytes(fields: Any, batch_size: int) -> int:
    """Room for one collated batch of the manifest's array fields: each sample's decoded size
    (an upper bound of its array data) times the batch size, plus a mask for padded fields."""
    total = 0
    for field in fields:
        if field.kind != "array" or not field.value_bound:
            continue
        total += _aligned(batch_size * field.value_bound)
        if field.shape is None or None in field.shape:
            total += _aligned(batch_size * field.value_bound)
    return total


def shm_free_bytes() -> int | None:
    """Free bytes of /dev/shm (where torch's shared memory lives on Linux), None if unknown."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def pool_for(nbytes: int, workers: int, prefetch_factor: int, context: Any) -> SlotPool | None:
    """A pool for batches of about `nbytes`, or None where it would not pay or not fit (no
    workers or estimate, more than MAX_POOL_BYTES, or more than half of the free /dev/shm)."""
    if nbytes <= 0 or workers <= 0 or prefetch_factor <= 0:
        return None
    per_worker = prefetch_factor + 1
    size = SlotPool.size_for(nbytes, workers, per_worker)
    free = shm_free_bytes()
    if size > MAX_POOL_BYTES or (free is not None and size > free // 2):
        return None
    return SlotPool(workers, per_worker, nbytes, context)

