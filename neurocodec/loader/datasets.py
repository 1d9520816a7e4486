"""The user-facing datasets: `WebDatasetLoader`, `ResumableWebDatasetLoader`, `RandomAccessWebDataset`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch.utils.data

from neurocodec.format.manifest import check_local_shards
from neurocodec.dataset.reader import Dataset
from neurocodec.fsutil import atomic_write_bytes
from neurocodec.process import PerProcess
from neurocodec.loader.batch import sample_to_tensors
from neurocodec.loader.mix import open_stream
from neurocodec.loader.normalize import normalizing
from neurocodec.loader.stream import StreamState
from neurocodec.loader.order import DEFAULT_SEED
from neurocodec.loader.transform import Transform, apply_transform, check_transform
from neurocodec.loader.windows import SlotCache, WindowSettings, WindowSource
from neurocodec.loader.worker_passes import (
    PassRecord, WorkerCursor, restore_worker, start_pass, worker_samples, worker_state,
)
from neurocodec.dataset.splits import chosen_part
from neurocodec.plugin.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote

log = logging.getLogger("neurocodec.loader")


class WebDatasetLoader(StreamState, torch.utils.data.IterableDataset):
    """Iterate a dataset's samples (dicts of tensors, plus `metadata` and `__key__`) in a
    reproducible, resumable order.

    The order of epoch `e` is a pure function of (dataset, `seed`, `e`, `shuffle`,
    `buffer_size`, `chunk_size`), whatever the number of DataLoader workers or ranks (see
    `neurocodec.loader.order`); `seed` defaults to 0, never the clock. Each complete pass moves to
    the next epoch, and so does the next iteration of a loop that stopped after the epoch's last
    sample (`len(loader)` of them); `set_epoch` jumps to one. `get_state()` / `set_state()` (or
    `state_dict()` / `load_state_dict()`) save and restore the position exactly.

    Ranks come from an initialised torch.distributed group or RANK / WORLD_SIZE (or pass
    `rank` and `world_size`); every rank takes its share of each global step. When you wrap this
    in your own DataLoader with workers, pass that DataLoader's batch size as `batch_size` so
    that the stream is the same for any number of workers (with `batch_size=1` workers
    interleave single samples: still every sample exactly once). Each DataLoader iteration then
    reads the next epoch, its workers agreeing on it through shared memory (`set_epoch` and
    `load_state_dict` here set the next one's start, persistent workers included); the position
    lives in the workers: torchdata's `StatefulDataLoader` saves and restores it exactly (this
    dataset's `state_dict()` answers in each worker), while `state_dict()` here is refused once
    workers have read it (docs/training.md; `neurocodec.loader.worker_passes`). For batched
    training use `create_webdataset_dataloader`, which tracks the state from the main process.

    `on_error="skip"` logs and leaves out unreadable samples (counted in the state as
    `skipped`) instead of raising `ShardError`.

    `shard_dir` may be an fsspec URL (`s3://bucket/ds`, ...) opened with `storage_options`;
    shards are then read through `cache` (a `neurocodec.storage.ShardCache`, shared by the
    DataLoader workers of this machine) and the next ones prefetched. The order and the state
    are the same as for the same dataset on local disk.

    `decode` gives fields their load-time decode options (see `neurocodec.Dataset`), e.g.
    `{"spikes": {"bin_size_ms": 5}}`; they are checked here, before any sample is read.

    `transform(sample, rng)` runs on every decoded sample where it is read (in the DataLoader
    workers), before tensors are made, with `rng` seeded by (seed, epoch, the sample's global id)
    (see `neurocodec.loader.transform`): the same samples come out transformed the same way for
    any number of workers or ranks and after `set_state`, and differently each epoch. With
    workers started by spawn or forkserver it must be picklable. A transform that raises is a
    `TransformError` naming the sample (left out and counted as `skipped` with `on_error="skip"`).

    `window_ms=` / `window_bins=` / `window_mode=` read windows cut at load time from a chunked
    dataset (docs/sampling.md section 4); `split="train"` (or `"<split name>/<part>"`) reads only
    that part of a split stored with the dataset (`neurocodec.make_split`; docs/splits.md).

    `shard_dir` may be a list of datasets mixed by `weights` (see `create_webdataset_dataloader`).
    `normalize="session"` or `"dataset"` scales the fields with the dataset's statistics before
    `transform` (see `create_webdataset_dataloader`); `.stats` holds them.
    `version=n` reads an earlier version of a dataset samples were appended to (docs/versions.md).
    `readahead_bytes`: how far ahead of the epoch's order a local dataset's reads are asked of the
    kernel (default `NEUROCODEC_READAHEAD_BYTES`, else 64 MiB; 0 turns it off; docs/storage.md).
    """

    def __init__(
        self, shard_dir: str | os.PathLike, shuffle: bool = True, buffer_size: int = 1000, *,
        seed: int | None = None, batch_size: int = 1, drop_last: bool = False,
        rank: int | None = None, world_size: int | None = None, chunk_size: int | None = None,
        on_error: str = "raise", verify: str = "crc", registry: Registry | None = None, epoch: int = 0,
        storage_options: Mapping[str, Any] | None = None, cache: Any = None,
        max_member_bytes: int | None = None, decode: Mapping[str, Mapping[str, Any]] | None = None,
        transform: Transform | None = None, window_ms: float | None = None, window_bins: int | None = None,
        window_mode: str | None = None, split: str | None = None, weights: Sequence[float] | None = None,
        normalize: str | None = None,
        weight_by: str = "samples", epoch_samples: int | None = None, version: int | None = None,
        readahead_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self.stream = open_stream(
            shard_dir, weights=weights, weight_by=weight_by, epoch_samples=epoch_samples, shuffle=shuffle, buffer_size=buffer_size, seed=seed, batch_size=batch_size,
            drop_last=drop_last, rank=rank, world_size=world_size, chunk_size=chunk_size,
            on_error=on_error, verify=verify, registry=registry, epoch=epoch,
            storage_options=storage_options, cache=cache, max_member_bytes=max_member_bytes, decode=decode,
            transform=transform, window_ms=window_ms, window_bins=window_bins, window_mode=window_mode,
            normalize=normalize, split=split, version=version, readahead_bytes=readahead_bytes,
        )
        self.shard_dir = self.stream.path
        self._passes = PassRecord(self.stream.epoch, 0)  # shared with the copies DataLoader workers read
        self._cursor: WorkerCursor | None = None  # a worker's position in its pass

    @property
    def stats(self) -> Any:
        """The statistics `normalize=` scales with (a `neurocodec.Stats`; for a mix, a list of
        them, one per dataset), or None without `normalize=`: hand them to the model."""
        return self.stream.stats

    def __len__(self) -> int:
        """Samples this rank yields in a whole epoch."""
        return self.stream.epoch_plan().sample_count()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None:  # a DataLoader worker's copy: see neurocodec.loader.worker_passes
            self._cursor = start_pass(self.stream, self._passes, info, self._cursor)
            return worker_samples(self.stream, self._cursor)
        read = self._passes.last_read()
        if read is not None:  # DataLoader workers read epochs since: go on after the last
            self.set_epoch(read + 1)
        if self.stream.settle():  # the loop stopped after the epoch's last sample
            self._on_epoch_end()
        return self._samples(self.stream.plan())

    def _samples(self, plan: Any) -> Iterator[dict[str, Any]]:
        """The main process's samples of `plan`, the position counted as each is handed out."""
        stream = self.stream
        epoch = stream.epoch
        yield from (self._singles(plan) if plan.batch_size == 1 else self._batched(plan))
        if (stream.epoch, stream.position) == (epoch, plan.total):  # (unless a newer iteration moved it)
            stream.end_epoch()
            self._on_epoch_end()

    def _singles(self, plan: Any) -> Iterator[dict[str, Any]]:
        """`_batched` for batches of one sample: after batch k, the position is where every rank
        has taken k + 1 of them; a bad sample skipped is counted as the position passes it."""
        stream, before, to_tensors = self.stream, self._before_yield, sample_to_tensors
        start, step, count, total = plan.start, plan.step, len(plan), plan.total
        for k, sample in stream.singles(plan):
            if sample is None:
                stream.skipped += 1
                stream.position = start + (k + 1) * step if k + 1 < count else total
                continue
            before()
            stream.position = start + (k + 1) * step if k + 1 < count else total
            yield to_tensors(sample)

    def _batched(self, plan: Any) -> Iterator[dict[str, Any]]:
        """The samples of `plan`'s batches, the position and the bad samples skipped counted as
        each sample is handed out."""
        stream = self.stream
        single, before = plan.world_size == 1, self._before_yield
        for k, positions, samples in stream.batches(plan):
            last = len(samples) - 1
            counted = 0  # bad samples of this batch already in stream.skipped
            for n, (i, sample) in enumerate(samples):
                before()
                # State counts this sample as handed out. With several ranks a batch is
                # counted once whole: a partial batch is read again after a resume.
                # Skipped samples are counted once the position has passed them.
                passed = counted
                if n == last:
                    stream.position = plan.position_after(k + 1)
                    passed = len(positions) - last - 1
                elif single:
                    stream.position = int(positions[i]) + 1
                    passed = i - n
                if passed != counted:
                    stream.skipped += passed - counted
                    counted = passed
                yield sample_to_tensors(sample)
            if last < 0:
                stream.position = plan.position_after(k + 1)
                stream.skipped += len(positions)

    def _worker_only(self, what: str) -> None:
        """Refuse `what` in the main process once DataLoader workers have read this dataset."""
        if self._passes.last_read() is not None:
            raise ValueError(
                f"cannot {what}: this WebDatasetLoader was read by DataLoader workers, each reading a copy of it, "
                "so its position is in them. Save the state of torchdata's StatefulDataLoader (it asks each "
                "worker), or use neurocodec.create_webdataset_dataloader, whose state_dict() is exact with any "
                "number of workers")

    def get_state(self) -> dict[str, Any]:
        """Where the loader is (everything handed out so far counted), as a small JSON-ready dict.
        Inside a DataLoader worker: that worker's position (torchdata's `Stateful` protocol)."""
        if torch.utils.data.get_worker_info() is not None:
            return worker_state(self.stream, self._cursor)
        self._worker_only("take its state")
        return super().get_state()

    def set_state(self, state: Mapping[str, Any], allow_new_mix: bool = False) -> None:
        """Continue exactly after the last sample handed out when `state` was taken (see
        `StreamState.set_state`); inside a DataLoader worker, a state that worker saved."""
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self._cursor = restore_worker(self.stream, state, info)
            return
        super().set_state(state, allow_new_mix=allow_new_mix)
        self._passes.reset(*self.stream.next_start())

    state_dict = get_state
    load_state_dict = set_state

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning on the next iteration (also in DataLoader workers,
        persistent ones included)."""
        super().set_epoch(epoch)
        self._passes.reset(self.stream.epoch, 0)

    @property
    def epoch(self) -> int:
        """The epoch being read (see `StreamState.epoch`); once DataLoader workers have read
        this dataset, the epoch their next iteration reads."""
        read = self._passes.last_read()
        return self.stream.epoch if read is None else read + 1

    def _before_yield(self) -> None:
        """Called in the main process before each sample is handed out (state = all before it)."""

    def _on_epoch_end(self) -> None:
        """Called in the main process when an epoch has been fully consumed."""


class ResumableWebDatasetLoader(WebDatasetLoader):
    """A `WebDatasetLoader` that checkpoints itself to `checkpoint_path` and resumes from it.

    Every `checkpoint_interval` samples handed out (and at the end of each epoch) the state is
    written atomically (temp file, fsync, rename) as JSON. A new loader with the same
    `checkpoint_path` resumes from it automatically. A checkpoint is written when the loop asks
    for the next sample, so it counts every sample the loop has finished with; after a crash, the
    samples handed out since the last checkpoint (fewer than `checkpoint_interval`) are handed out
    again, in the same order. Use it in the main process (`num_workers=0`); with DataLoader
    workers use `create_webdataset_dataloader` and save its `state_dict()` with your model.
    `shard_dir` may be a URL (see `WebDatasetLoader`); `checkpoint_path` is a local file.
    """

    def __init__(self, shard_dir: str | os.PathLike, checkpoint_path: str | os.PathLike,
                 checkpoint_interval: int = 1000, **kwargs: Any) -> None:
        super().__init__(shard_dir, **kwargs)
        if type(checkpoint_interval) is not int or checkpoint_interval < 1:
            raise ValueError(f"checkpoint_interval must be a positive integer, got {checkpoint_interval!r}")
        self.checkpoint_path = Path(checkpoint_path)
        self.checkpoint_interval = checkpoint_interval
        self._since_checkpoint = 0
        if self.checkpoint_path.exists():
            with open(self.checkpoint_path, encoding="utf8") as f:
                doc = json.load(f)
            self.set_state(doc.get("loader_state", doc))
            log.info("resumed %s at epoch %d position %d", self.shard_dir, self.stream.epoch, self.stream.position)

    def _before_yield(self) -> None:
        if self._since_checkpoint >= self.checkpoint_interval:
            self.save_checkpoint()
        self._since_checkpoint += 1

    def _on_epoch_end(self) -> None:
        self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Write the current state to `checkpoint_path` now (atomically)."""
        doc = {"shard_dir": str(self.shard_dir), "loader_state": self.get_state()}
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.checkpoint_path, (json.dumps(doc, indent=1) + "\n").encode())
        self._since_checkpoint = 0


class RandomAccessWebDataset(torch.utils.data.Dataset):
    """Map-style access to the same shards: `len(ds)` and `ds[i]` (sample i of the dataset in
    storage order), for evaluation and debugging. Reads only the shard holding sample i (for a
    URL dataset, downloading it whole into `cache` first). `decode` as for `neurocodec.Dataset`;
    `normalize=` as for `WebDatasetLoader` (the statistics in `.stats`).

    `transform(sample, rng)` runs on sample i as it is read, with `rng` seeded by (`seed`,
    `epoch`, i) as in `WebDatasetLoader`. This dataset has no epochs of its own: `epoch` is 0
    unless `set_epoch` changes it; call it before each epoch's DataLoader iteration (workers get
    a copy of the dataset when an iteration starts, so with `persistent_workers=True` they keep
    the epoch they started with). A transform that raises is a `TransformError` naming sample i.

    With `window_ms=` or `window_bins=` (a chunked dataset; see docs/sampling.md section 4),
    `ds[i]` is window slot i of `epoch`, on a fixed grid by default (`window_mode="grid"`: the
    same windows every epoch, for evaluation); with `"jitter"`, `set_epoch` moves them and
    `len(ds)` is that epoch's count. `split="train"` (or `"<split name>/<part>"`) keeps only that
    part of a split stored with the dataset: `ds[i]` is its i-th sample (or window). `version=n`
    reads an earlier version of a dataset samples were appended to (docs/versions.md)."""

    def __init__(self, shard_dir: str | os.PathLike, *, verify: str = "crc",
                 registry: Registry | None = None, tensors: bool = True,
                 storage_options: Mapping[str, Any] | None = None, cache: Any = None,
                 max_member_bytes: int | None = None, decode: Mapping[str, Mapping[str, Any]] | None = None,
                 transform: Transform | None = None, seed: int | None = None, epoch: int = 0,
                 window_ms: float | None = None, window_bins: int | None = None, normalize: str | None = None,
                 window_mode: str | None = None, split: str | None = None, version: int | None = None) -> None:
        self.transform = check_transform(transform)
        self.seed = DEFAULT_SEED if seed is None else seed
        if type(self.seed) is not int or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.set_epoch(epoch)
        self.shard_dir = dataset_path(shard_dir)
        self._decode = decode
        self._verify, self._registry, self.tensors = verify, registry, tensors
        self._storage_options, self._cache, self._max_member_bytes = storage_options, cache, max_member_bytes
        self._dataset: PerProcess[Dataset] = PerProcess()
        self._version = version
        manifest = self._open().manifest
        self._version = manifest.version  # every process opens this one, even after an append
        self._len = len(self._open())
        if not is_remote(self.shard_dir):
            # A sampler sizes its permutation by len(self): check the counts against the files.
            check_local_shards(self.shard_dir, manifest)
        settings = WindowSettings.choose(manifest, window_ms=window_ms, window_bins=window_bins,
                                         window_mode=window_mode, shuffle=False)
        chosen = chosen_part(self.shard_dir, split, manifest.total_samples, manifest.version)
        self.stats, self.transform = normalizing(self.shard_dir, normalize, split, manifest, decode=decode,
                                                 registry=registry, transform=self.transform)
        self._selection = None if chosen is None or settings is not None else chosen[0].sample_ids(chosen[1])
        ranges = None if chosen is None else chosen[0].ranges[chosen[1]]
        self._windows = None if settings is None else WindowSource(
            self.shard_dir, slots=SlotCache(settings, self.seed, ranges), verify=verify, on_error="raise",
            registry=registry,
            storage_options=storage_options, cache=cache, max_member_bytes=max_member_bytes, decode=decode,
            transform=self.transform, seed=self.seed, version=self._version)
        if self._windows is not None:
            self._windows.dataset  # opened now: a window that cannot be cut is an error here, not at ds[0]

    def _open(self) -> Dataset:
        return self._dataset.get(lambda: Dataset(
            self.shard_dir, verify=self._verify, registry=self._registry, storage_options=self._storage_options,
            cache=self._cache, max_member_bytes=self._max_member_bytes, decode=self._decode,
            version=self._version))

    def __len__(self) -> int:
        if self._windows is not None:
            return len(self._windows.slots(self.epoch))
        return self._len if self._selection is None else len(self._selection)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._windows is not None:
            return self._window(index)
        if self._selection is not None:  # i-th sample of the split's part
            if not -len(self) <= index < len(self):
                raise IndexError(f"the split's part has {len(self)} samples, index {index} is out of range")
            index = int(self._selection[index])
        dataset = self._open()
        index = index + self._len if index < 0 else index  # a sample's id is its place, counted from 0
        # Read into a buffer of its own: its arrays become the tensors without a copy.
        sample = dataset.read_local(*dataset.locate(index), writable=True)
        if self.transform is not None:
            sample = apply_transform(self.transform, sample, seed=self.seed, epoch=self.epoch,
                                     sample_id=int(index), dataset=self.shard_dir)
        return sample_to_tensors(sample) if self.tensors else sample

    def _window(self, index: int) -> dict[str, Any]:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"epoch {self.epoch} has {count} windows, index {index} is out of range")
        ids = np.array([index % count], dtype=np.int64)
        [(_, sample)] = list(self._windows.read(ids, self.epoch))  # transformed there, seeded by the slot
        return sample_to_tensors(sample) if self.tensors else sample

    def set_epoch(self, epoch: int) -> None:
        """The epoch the transform's generators are seeded with from now on (and, with jittered
        windows, the windows)."""
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    @property
    def fields(self):
        """The dataset's fields as decoded (see `neurocodec.Dataset.fields`), or a window's."""
        return (self._open() if self._windows is None else self._windows.dataset).fields
