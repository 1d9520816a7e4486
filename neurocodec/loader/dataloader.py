"""`create_webdataset_dataloader`: batched, multi-worker, multi-rank loading with exact resume.

Each DataLoader worker builds and collates whole batches (worker `j` of `w` builds the rank's
batches `j, j + w, ...`) and the DataLoader runs with `batch_size=None`, returning them in order.
The main process knows the position by counting the batches it has handed to the training loop,
never those prefetched, so `state_dict()` is exact at any moment and needs nothing from the
workers.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy.random  # noqa: F401  (see below)
import torch
import torch.utils.data

from neurocodec.loader.batch_stream import BATCH, EMPTY, SKIPPED, SKIPS, STOP, WAITING, BatchStream
from neurocodec.loader.heap import forks, frozen_heap
from neurocodec.loader.slots import batch_bytes, pool_for
from neurocodec.loader.mix import open_stream
from neurocodec.loader.stream import EpochStream, StreamState
from neurocodec.loader.transform import Transform, check_picklable, check_transform
from neurocodec.loader.worker_start import WorkerStart, expected_startup_s, note_startup, stop_workers
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry

_DONE = object()  # a generator's end, for next(..., _DONE)
# numpy.random is imported above although nothing here uses it: every torch DataLoader worker
# seeds it on start (`np.random.seed`), and a worker forked before anything imported it pays
# the import itself, ~50 ms of the first batch on a 2-core machine.


def _as_is(batch: Any) -> Any:
    """The inner DataLoader's collate: batches are already collated in the workers (torch's
    default would turn tuples from a custom collate_fn into lists and arrays into tensors)."""
    return batch


class WebDatasetDataLoader(StreamState):
    """An iterable of batches with `state_dict()` / `load_state_dict()` for exact resume.

    Iterating it runs one epoch from the current position; a complete pass moves to the next
    epoch, and so does the next iteration of a loop that stopped after the epoch's last batch
    without asking for more (Lightning stops after `len(loader)` batches): the state then,
    `(epoch, total_samples)`, resumes with the next epoch as `(epoch + 1, 0)` does.

    With workers, the first batch of each iteration is built in this process before they
    start, and the next ones while they start, until every worker is ready (so `collate_fn`
    runs here for them, and `worker_init_fn` has not run yet): the training loop gets the first
    in the time one batch takes to read, and does not wait for the workers' start-up (seconds
    under spawn and forkserver, where each imports torch; under forkserver they are started
    from a thread, as starting the fork server blocks). While the rest of the epoch would take
    this process less time to build than the workers take to start (`worker_startup_s`), they
    are not started at all (a short epoch under spawn or forkserver). An epoch finished before
    they are ready stops them without waiting for them (under forkserver, once the fork server
    has forked them). The workers continue from where this process stopped, exactly as a
    loader resumed there would; their batches arrive through shared-memory slots
    (`neurocodec.loader.slots`).

    The state counts batches handed to the training loop only. Restoring works across a
    different `num_workers` and a different world size (the remaining samples of the epoch are
    then split over the new ranks). With `persistent_workers=True` the workers (and their
    shared-memory slots) stay up between epochs; only the first iteration builds batches here,
    and each epoch's start is handed to them through shared memory.
    """

    build_while_workers_start: bool = True
    """False: only the first batch of an iteration that starts workers is built in this process."""

    worker_startup_s: float | None = None
    """Seconds the workers are expected to take to start. None: 0 under fork, else the last
    start seen in this process under the same start method (2 s before any; see
    `neurocodec.loader.worker_start.expected_startup_s`). 0: always start them."""

    def __init__(self, stream: EpochStream, *, num_workers: int, prefetch_factor: int | None,
                 pin_memory: bool, collate_fn: Callable | None, timeout: float,
                 multiprocessing_context: Any, worker_init_fn: Callable | None, persistent_workers: bool = False,
                 generator: Any = None, pin_memory_device: str = "") -> None:
        self.stream = stream
        self.dataset = BatchStream(stream, collate_fn)
        self.batch_size = stream.batch_size
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers
        self._kwargs = dict(
            batch_size=None, collate_fn=_as_is, num_workers=num_workers, pin_memory=pin_memory,
            timeout=timeout, generator=generator, persistent_workers=persistent_workers,
            worker_init_fn=worker_init_fn, multiprocessing_context=multiprocessing_context if num_workers else None,
            prefetch_factor=prefetch_factor if num_workers else None,
        )
        if pin_memory_device:
            self._kwargs["pin_memory_device"] = pin_memory_device
        self._workers: torch.utils.data.DataLoader | None = None  # the persistent workers' DataLoader

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.stream.epoch_plan())

    @property
    def sampler(self) -> "EpochHook":
        """What frameworks that call `loader.sampler.set_epoch(epoch)` as each epoch starts find
        (Lightning does, for every DataLoader): see `EpochHook`."""
        return EpochHook(self)

    @property
    def stats(self) -> Any:
        """The statistics `normalize=` scales with (a `neurocodec.Stats`; for a mix, a list of
        them, one per dataset), or None without `normalize=`: hand them to the model."""
        return self.stream.stats

    def __iter__(self) -> Iterator[Any]:
        stream = self.stream
        stream.settle()
        plan = stream.plan()
        epoch = stream.epoch
        if not len(plan):  # an empty epoch
            stream.end_epoch()
            return
        if self.num_workers and self._workers is None:
            if stream.source.registry is None:
                default_registry()  # load plugins once here, so forked workers inherit them
            yield from self._start_workers(plan)
        else:
            yield from self._from_workers(plan)
        if (stream.epoch, stream.position) == (epoch, plan.total):  # (unless a newer iteration moved it)
            stream.end_epoch()

    def _start_workers(self, plan: Any) -> Iterator[Any]:
        """An iteration that starts the workers. The first batch is built here before any
        worker exists, so the training loop has it in the time one batch takes to read. While
        the rest of the epoch would take this process less time to build than the workers take
        to start (see `worker_startup_s`; a short epoch under spawn or forkserver, where each
        worker imports torch), its batches are built here and no worker is started: starting
        them would only take CPU from this process. Once it would take longer, the workers are
        started, and the next batches are built here until every worker is ready; the workers
        then take over from the position reached, exactly as a loader resumed there would read.
        An epoch built whole here does not wait for its workers to start (see
        `WorkerStart.abandon`)."""
        here = self._batches_here(plan)
        try:
            first = next(here, _DONE)
            if first is _DONE:
                return
            if first is not None:
                yield first
            if self.build_while_workers_start:
                yield from self._here_while_quicker(here)
            rest = self.stream.plan()
            if len(rest):  # (else the epoch was built whole here)
                yield from self._from_workers(rest, here if self.build_while_workers_start else None)
        finally:
            here.close()

    def _here_while_quicker(self, here: Iterator[Any]) -> Iterator[Any]:
        """Batches built here while the rest of the plan, at the mean time a batch has taken
        here so far (the first, which opens the shards, not counted), would take less time than
        the workers take to start."""
        context = self._kwargs["multiprocessing_context"]
        startup = expected_startup_s(context) if self.worker_startup_s is None else self.worker_startup_s
        left = len(self.stream.plan())
        built, seconds = 0, 0.0
        while startup > 0 and left and (not built or left * seconds / built < startup):
            began = time.perf_counter()
            batch = next(here, _DONE)
            seconds += time.perf_counter() - began
            if batch is _DONE:
                return
            built, left = built + 1, left - 1
            if batch is not None:
                yield batch

    def _batches_here(self, plan: Any) -> Iterator[Any]:
        """Build `plan`'s batches in this process, each counted as delivered before it is
        yielded (None for a batch whose every sample was skipped)."""
        stream = self.stream
        registry = stream.source.registry or default_registry()
        batches = stream.batches(plan, 0, 1)
        try:
            for k, positions, samples in batches:
                values = [s for _, s in samples]
                batch = self.dataset._collate(values, stream, registry)
                stream.skipped += len(positions) - len(values)
                stream.position = plan.position_after(k + 1)
                if batch.pop(EMPTY, False):
                    yield None
                    continue
                if self._kwargs["pin_memory"] and torch.cuda.is_available():
                    batch = _pinned(batch)
                yield _unwrapped(batch)
        finally:
            batches.close()

    def _from_workers(self, plan: Any, here: Iterator[Any] | None = None) -> Iterator[Any]:
        """`plan`'s batches from the workers; with `here` (batches built in this process),
        those first, until the workers are ready (see `_start_workers`)."""
        stream = self.stream
        delivered, start, failed = 0, None, True
        context = self._kwargs["multiprocessing_context"]
        self.dataset.start[0], self.dataset.start[1] = stream.epoch, stream.position if here is None else WAITING
        self.dataset.expect_workers(self.num_workers)
        try:
            with frozen_heap(self.num_workers > 0 and forks(context)):
                began = time.perf_counter()
                loader = self._loader()
                start = WorkerStart(lambda: iter(loader), context)
                if here is not None:
                    yield from self._until_ready(here, start, began)
                    plan = stream.plan()
                    if not len(plan):  # built whole here: the workers are not needed
                        return
                    self.dataset.start[1] = stream.position
                for batch in start.get():
                    number, skipped = batch.pop(BATCH), batch.pop(SKIPPED)
                    stream.source.skips.add(*batch.pop(SKIPS, (None, {})))
                    if number != delivered:  # DataLoader returns worker outputs in order; guard anyway
                        raise RuntimeError(f"batch {number} arrived where batch {delivered} was expected")
                    delivered += 1
                    stream.skipped += int(skipped)
                    stream.position = plan.position_after(delivered)
                    if batch.pop(EMPTY, False):
                        continue
                    yield _unwrapped(batch)
            failed = False
        except GeneratorExit:  # the loop stopped early: persistent workers stay for the next iteration
            failed = False
            raise
        finally:
            self._finish(start, failed)

    def _finish(self, start: WorkerStart | None, failed: bool) -> None:
        """After an iteration: stop the workers unless they persist and the iteration went well;
        those never handed work are stopped without waiting for them (see WorkerStart.abandon)."""
        handed_over = int(self.dataset.start[1]) >= 0
        if self._workers is None or failed or not handed_over:
            self._workers = self.dataset.pool = None
            if start is None:
                return
            if not handed_over:
                self.dataset.start[1] = STOP
                start.abandon()
            else:
                start.stop()

    def _until_ready(self, here: Iterator[Any], start: WorkerStart, began: float) -> Iterator[Any]:
        """Batches built here until every worker is ready or the plan is done; how long the
        workers took to start (since `began`), or had taken by then, is noted for the next
        iteration's choice (see `_here_while_quicker`)."""
        context = self._kwargs["multiprocessing_context"]
        while not (start.ready() and self.dataset.workers_ready()):
            batch = next(here, _DONE)
            if batch is _DONE:
                note_startup(context, time.perf_counter() - began, finished=False)
                return
            if batch is not None:
                yield batch
        note_startup(context, time.perf_counter() - began, finished=True)
        start.get()  # (raises what starting the workers raised)

    def _loader(self) -> torch.utils.data.DataLoader:
        """The DataLoader of this iteration's workers: a new one, or the persistent one."""
        if self._workers is not None:
            return self._workers
        stream = self.stream
        self.dataset.pool = pool_for(batch_bytes(stream.fields, stream.batch_size), self.num_workers,
                                     self._kwargs["prefetch_factor"] or 0, self._kwargs["multiprocessing_context"])
        loader = torch.utils.data.DataLoader(self.dataset, **self._kwargs)
        if self.persistent_workers:
            self._workers = loader
            weakref.finalize(self, _stop_persistent_workers, loader)
        return loader


class EpochHook:
    """`set_epoch(e)` as a training framework calls it at the start of epoch `e` (Lightning, on
    `loader.sampler`): the loader reads epoch `e` from where it stands if it is in that epoch
    (a state restored in the middle of it), else from its start. Lightning restores a loader's
    state only when resuming inside an epoch; from a checkpoint saved at an epoch's end it
    relies on this call for the order of the next one."""

    def __init__(self, loader: "WebDatasetDataLoader") -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Read `epoch` next: continue it if the loader is in it, else start it."""
        self.loader.stream.settle()  # an epoch whose every batch was handed out is over
        if self.loader.epoch != epoch:
            self.loader.set_epoch(epoch)


def _stop_persistent_workers(loader: torch.utils.data.DataLoader) -> None:
    """Stop the persistent workers of a loader that is being collected. Run as a weakref
    callback, before the collector finalizes anything in the cycle: torch's own shutdown, run
    from the iterator's __del__ when the loader was in a garbage cycle (a training framework's
    loop holds one), waited 5 s for each worker before killing it (30 s for the 6 workers of
    three Lightning fits, in whichever later code triggered the collection)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        stop_workers(iterator)


def _unwrapped(batch: dict[str, Any]) -> Any:
    """What the training loop gets: a custom collate_fn's own result, else the batch dict."""
    return batch.pop("__collated__") if "__collated__" in batch else batch


def _pinned(value: Any) -> Any:
    """`value` with its CPU tensors copied to pinned memory, as the DataLoader's pin thread does."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if type(value) is dict:
        return {k: _pinned(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_pinned(v) for v in value)
    return value


def create_webdataset_dataloader(
    shard_dir: str | os.PathLike, batch_size: int = 32, num_workers: int = 4, shuffle: bool = True,
    buffer_size: int = 1000, prefetch_factor: int | None = 2, pin_memory: bool | None = None,
    seed: int | None = None, drop_last: bool = False, *, collate_fn: Callable | None = None,
    rank: int | None = None, world_size: int | None = None, chunk_size: int | None = None,
    on_error: str = "raise", verify: str = "crc", timeout: float = 0,
    multiprocessing_context: Any = None, worker_init_fn: Callable | None = None,
    registry: Registry | None = None, epoch: int = 0,
    storage_options: Mapping[str, Any] | None = None, cache: Any = None,
    max_member_bytes: int | None = None, decode: Mapping[str, Mapping[str, Any]] | None = None,
    transform: Transform | None = None, window_ms: float | None = None, window_bins: int | None = None,
    window_mode: str | None = None, split: str | None = None, weights: Sequence[float] | None = None,
    normalize: str | None = None,
    weight_by: str = "samples", epoch_samples: int | None = None, version: int | None = None,
    persistent_workers: bool = False, generator: torch.Generator | None = None, in_order: bool = True,
    pin_memory_device: str = "", readahead_bytes: int | None = None,
) -> WebDatasetDataLoader:
    """A DataLoader over the shards in `shard_dir` yielding dicts of batched tensors.

    Batches follow the epoch order of `WebDatasetLoader` (the same for any `num_workers`),
    split over torch.distributed ranks by global step, collated by each modality's rule (see
    `collate_webdataset`) or by `collate_fn`, which receives a list of sample dicts of tensors.
    `pin_memory` defaults to whether CUDA is available. The tail of an epoch follows
    `neurocodec.loader.plan` (`drop_last=False`: every rank still takes the same number of
    batches). Save `loader.state_dict()` with your checkpoint and `load_state_dict()` it to resume
    exactly, with any number of workers or ranks. `shard_dir` may be an fsspec URL opened with
    `storage_options`, read through `cache` (a `neurocodec.storage.ShardCache` the workers share).
    `max_member_bytes` raises (or lowers) the ceiling on one member's decoded size (see `Dataset`).
    `decode` gives fields their load-time decode options (`{"spikes": {"bin_size_ms": 5}}`; see
    `Dataset`), applied in the workers; they are checked here first.

    `transform(sample, rng)` runs on each decoded sample in the workers, before collation, with
    `rng = numpy.random.default_rng(numpy.random.SeedSequence([seed, epoch, 2, sample_id]))`
    (`sample_id`: the sample's global index in the dataset; see `neurocodec.loader.transform`), so
    augmented batches are the same for any `num_workers` or world size and after
    `load_state_dict`, and differ between epochs. With a spawn or forkserver
    `multiprocessing_context` it must be picklable (checked here). One that raises is a
    `TransformError` naming the sample; with `on_error="skip"` the sample is left out.

    `normalize="session"` (or `"dataset"`) scales every array field that has statistics stored
    with the dataset (`neurocodec.compute_stats`) to `(x - mean) / std` per channel, float32, with
    the numbers of the sample's session (or those pooled over the sessions), in the workers before
    `transform`. They must come from the first (training) part of the split read (without
    `split=`: from every sample, `stats/all.json`); `loader.stats` holds them (docs/stats.md).

    torch's DataLoader options keep their meaning: `persistent_workers=True` keeps the workers
    (and their shared-memory slots) between epochs, each epoch still in its own order and the
    state exact; `generator` seeds the workers' base seed (torch, `random` and numpy in each
    worker), never the order, which `seed` alone decides; `pin_memory_device` is passed on
    (torch deprecates it). `in_order=False` is refused: the order and exact resume need the
    batches in order. See docs/training.md (Lightning, plain and stateful DataLoaders).

    `window_ms=` / `window_bins=` / `window_mode=`: windows cut at load time (docs/sampling.md 4);
    `split=`: one part of a stored split (docs/splits.md); a list as `shard_dir`: datasets mixed
    by `weights` (`weight_by`, `epoch_samples`; docs/mixing.md); `version=n`: an earlier version of
    a dataset samples were appended to (docs/versions.md; default the current one).
    `readahead_bytes`: how far ahead of its own batches each worker asks the kernel to read a
    local dataset (default `NEUROCODEC_READAHEAD_BYTES`, else 64 MiB; 0: off; docs/storage.md).
    """
    if type(num_workers) is not int or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    _check_torch_options(num_workers, persistent_workers, generator, in_order, pin_memory_device)
    check_transform(transform)
    if num_workers and not forks(multiprocessing_context):
        check_picklable(transform, multiprocessing_context)
    stream = open_stream(
        shard_dir, weights=weights, weight_by=weight_by, epoch_samples=epoch_samples, shuffle=shuffle, buffer_size=buffer_size, seed=seed, batch_size=batch_size,
        drop_last=drop_last, rank=rank, world_size=world_size, chunk_size=chunk_size,
        on_error=on_error, verify=verify, registry=registry, epoch=epoch,
        storage_options=storage_options, cache=cache, max_member_bytes=max_member_bytes, decode=decode,
        transform=transform, window_ms=window_ms, window_bins=window_bins, window_mode=window_mode, split=split,
        normalize=normalize,
        version=version, readahead_bytes=readahead_bytes,
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return WebDatasetDataLoader(
        stream, num_workers=num_workers, prefetch_factor=prefetch_factor, pin_memory=pin_memory,
        collate_fn=collate_fn, timeout=timeout, multiprocessing_context=multiprocessing_context,
        worker_init_fn=worker_init_fn, persistent_workers=bool(persistent_workers), generator=generator,
        pin_memory_device=pin_memory_device,
    )


def _check_torch_options(num_workers: int, persistent_workers: Any, generator: Any, in_order: Any,
                         pin_memory_device: Any) -> None:
    """The DataLoader options passed on to torch, checked here (see create_webdataset_dataloader)."""
    if persistent_workers and not num_workers:
        raise ValueError("persistent_workers=True needs num_workers > 0 (as for torch's DataLoader)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not in_order:
        raise ValueError("in_order=False is not available: batches would come out of the epoch's order, which then "
                         "depended on the workers' timing, and the state (the batches handed out) could not resume "
                         "exactly; the loader hands batches out in order (a slow batch holds back the next ones)")
    if not isinstance(pin_memory_device, str):
        raise TypeError(f"pin_memory_device must be a str, got {type(pin_memory_device).__name__}")
