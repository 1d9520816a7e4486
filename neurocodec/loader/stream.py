"""The shared core of every iterable loader: settings, epoch order, rank plan, worker striping."""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import numpy as np

from neurocodec.dataset.decode import decode_plan
from neurocodec.format import limits
from neurocodec.format.home import manifest_label
from neurocodec.format.manifest import Manifest, check_local_shards
from neurocodec.format.shard_table import shard_columns
from neurocodec.format.readahead import readahead_bytes as readahead_limit
from neurocodec.dataset.reader import read_manifest
from neurocodec.dataset.splits import Split, chosen_part
from neurocodec.loader.normalize import normalizing, scaled_fields
from neurocodec.loader.order import DEFAULT_SEED, EpochOrder, default_chunk_size
from neurocodec.loader.plan import StepPlan, detect_rank_world
from neurocodec.loader.source import SampleSource
from neurocodec.loader.state import LoaderState
from neurocodec.loader.transform import Transform
from neurocodec.loader.windows import SlotCache, WindowSettings, WindowSource
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote

GROUP_SAMPLES = 256
"""Positions whose ids `EpochStream.batches` looks up in the epoch order together (whole batches)."""


class EpochStream:
    """Settings and position of a loader; yields (batch number, samples) for this process.

    The order of an epoch depends only on (dataset, seed, epoch, shuffle, buffer_size,
    chunk_size); `batch_size`, `world_size` and `rank` only decide who reads which part of it.
    For a URL dataset (`storage_options`, `cache`) the shards of the next batches are
    prefetched into the cache; nothing about the cache enters the state. `transform` runs on
    each sample as it is read (see `neurocodec.loader.transform`), seeded by (seed, epoch, id);
    `normalize` puts `Normalize` with the dataset's statistics before it (`stats`; see
    `neurocodec.loader.normalize`).
    """

    def __init__(self, shard_dir: str | os.PathLike, *, window_ms: float | None = None,
                 window_bins: int | None = None, window_mode: str | None = None, split: str | None = None,
                 normalize: str | None = None, version: int | None = None, manifest: Manifest | None = None,
                 **settings: Any) -> None:
        """`manifest`: the dataset's manifest when already read (a mix reads its sources' first)."""
        self._settings(**settings)
        self.path = dataset_path(shard_dir)
        self.manifest = manifest or read_manifest(
            self.path, storage_options=self._source_options["storage_options"],
            max_member_bytes=self._source_options["max_member_bytes"], version=version)
        # Every process reads this version, even if samples are appended while the loader runs.
        self._source_options["version"] = self.manifest.version
        if not is_remote(self.path):
            # Sample counts size the epoch's order: check them against the files first.
            check_local_shards(self.path, self.manifest)
        self.windows = WindowSettings.choose(self.manifest, window_ms=window_ms, window_bins=window_bins,
                                             window_mode=window_mode, shuffle=self.shuffle)
        self.split, self.selection = self._split(split)
        self.stats, self._source_options["transform"] = normalizing(
            self.path, normalize, split, self.manifest, decode=self._source_options["decode"],
            registry=self._source_options["registry"], transform=self._source_options["transform"])
        # The fields as decoded (load-time options checked here, before any worker starts).
        self._fields = decode_plan(self.manifest.fields, self._source_options["registry"] or default_registry(),
                                   manifest_label(self.path), self._source_options["decode"],
                                   None if self.windows is None else self.windows.grid).fields
        self._fields = scaled_fields(self._fields, [self.stats])
        if self.windows is None:
            self.slots = None
            self.source = SampleSource(self.path, **self._source_options)
        else:
            ranges = None if self.split is None else self.split[0].ranges[self.split[1]]
            self.slots = SlotCache(self.windows, self.seed, ranges)
            self.source = WindowSource(self.path, slots=self.slots, **self._source_options)

    def _settings(
        self, *, shuffle: bool, buffer_size: int, seed: int | None, batch_size: int, drop_last: bool,
        rank: int | None, world_size: int | None, chunk_size: int | None, on_error: str, verify: str,
        registry: Registry | None, epoch: int, storage_options: Mapping[str, Any] | None = None, cache: Any = None,
        max_member_bytes: int | None = None, decode: Mapping[str, Mapping[str, Any]] | None = None,
        transform: Transform | None = None, readahead_bytes: int | None = None,
    ) -> None:
        """Check and keep the settings every stream has (one dataset or a mix): order, batches,
        ranks, epoch, and what each dataset's `SampleSource` is opened with."""
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if type(buffer_size) is not int or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive integer, got {buffer_size!r}")
        seed = DEFAULT_SEED if seed is None else seed
        if type(seed) is not int or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.shuffle, self.buffer_size, self.seed = bool(shuffle), buffer_size, seed
        if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.chunk_size = chunk_size or default_chunk_size(buffer_size)
        self.batch_size, self.drop_last = batch_size, bool(drop_last)
        if rank is None or world_size is None:
            detected_rank, detected_world = detect_rank_world()
            rank = detected_rank if rank is None else rank
            world_size = detected_world if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch, self.position, self.skipped = epoch, 0, 0
        self._source_options = dict(verify=verify, on_error=on_error, registry=registry,
                                    storage_options=storage_options, cache=cache,
                                    max_member_bytes=limits.max_member_bytes(max_member_bytes), decode=decode,
                                    transform=transform, seed=seed,
                                    readahead_bytes=readahead_limit(readahead_bytes))

    @property
    def fields(self):
        """The dataset's fields as decoded (the manifest's entries, as the `decode` options give them)."""
        return self._fields

    @property
    def total_samples(self) -> int:
        """Samples in the current epoch: the dataset's, or with load-time windows the epoch's
        window slots (which jitter changes from epoch to epoch)."""
        return self.epoch_samples(self.epoch)

    def epoch_samples(self, epoch: int) -> int:
        """Samples in `epoch`."""
        if self.slots is not None:
            return len(self.slots(epoch))
        return self.manifest.total_samples if self.selection is None else len(self.selection)

    def _split(self, split: str | None) -> tuple[tuple[Split, str] | None, np.ndarray | None]:
        """The split part named by `split=` and, for stored samples, the sample ids it holds."""
        chosen = chosen_part(self.path, split, self.manifest.total_samples, self.manifest.version)
        if chosen is None:
            return None, None
        return chosen, (None if self.windows is not None else chosen[0].sample_ids(chosen[1]))

    def order(self, epoch: int | None = None) -> EpochOrder:
        """The order of `epoch` (default: the current one). With load-time windows it permutes
        the epoch's slots, each session in the place of a shard."""
        epoch = self.epoch if epoch is None else epoch
        return EpochOrder(self.unit_sizes(epoch), seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                          buffer_size=self.buffer_size, chunk_size=self.chunk_size)

    def unit_sizes(self, epoch: int) -> Any:
        """What the order of `epoch` permutes: samples per shard, a split's samples per shard,
        or load-time window slots per session."""
        if self.slots is not None:
            return self.slots(epoch).session_counts()
        samples, starts = shard_columns(self.manifest.shards)  # arrays: a shard table's own, not made per shard
        if self.selection is not None:  # a split's samples, shard by shard
            return np.bincount(np.searchsorted(starts, self.selection, side="right") - 1, minlength=len(starts))
        return samples

    def plan(self, start: int | None = None) -> StepPlan:
        """This rank's batches from `start` (default: the current position) to the epoch's end."""
        return StepPlan(
            start=self.position if start is None else start, total=self.total_samples,
            batch_size=self.batch_size, world_size=self.world_size, rank=self.rank,
            drop_last=self.drop_last,
        )

    def next_start(self) -> tuple[int, int]:
        """(epoch, position) where the next iteration starts: here, or at the start of the next
        epoch once every sample of this one is handed out (see `settle`)."""
        return (self.epoch + 1, 0) if 0 < self.total_samples <= self.position else (self.epoch, self.position)

    def epoch_plan(self) -> StepPlan:
        """This rank's batches of a whole epoch: the one being read, or the next one once every
        sample of this one is handed out (what `len(loader)` counts)."""
        return StepPlan(start=0, total=self.epoch_samples(self.next_start()[0]), batch_size=self.batch_size,
                        world_size=self.world_size, rank=self.rank, drop_last=self.drop_last)

    def batches(self, plan: StepPlan, worker: int = 0, workers: int = 1, first: int | None = None
                ) -> Iterator[tuple[int, np.ndarray, list[tuple[int, dict[str, Any]]]]]:
        """(k, positions, [(i, sample at positions[i]), ...]) for this worker's batches
        k = worker, worker + workers, ... (from batch `first`, one of them, when given); bad
        samples are left out when skipping. Each batch is read when asked for; the order's ids
        are looked up for a run of them at once (GROUP_SAMPLES positions)."""
        def read(positions: np.ndarray, ends: list[int], ids: np.ndarray, epoch: int) -> Iterator[Any]:
            runs = self.source.read_runs(ids, ends, epoch)
            for start, end in zip([0, *ends], ends):
                yield positions[start:end], next(runs)

        numbers = range(worker if first is None else first, len(plan), workers)
        for k, (positions, run) in self._walk(plan, numbers, worker, workers, read):
            yield k, positions, run

    def singles(self, plan: StepPlan) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """(k, the sample of this rank's batch k, or None when it is bad and skipped) for a plan
        of one-sample batches, in order: what `batches` gives, without a list and positions per
        sample (a loader iterated sample by sample)."""
        if plan.batch_size != 1:
            raise ValueError(f"singles reads batches of one sample, not {plan.batch_size}")
        return self._walk(plan, range(len(plan)), 0, 1,
                          lambda positions, ends, ids, epoch: self.source.each(ids, epoch))

    def _walk(self, plan: StepPlan, numbers: range, worker: int, workers: int, read: Any) -> Iterator[tuple[int, Any]]:
        """(k, what `read` gives for batch k) for the batches `numbers`, their ids looked up
        GROUP_SAMPLES positions at a time: `read(positions, ends, ids, epoch)` gives one item per
        batch of the group (`ends`: where each batch's run of positions ends); what they read
        next is prefetched or read ahead as the batches go by."""
        order = self.order()
        ahead = self._prefetcher(order, plan, worker, workers)
        per_group = max(1, GROUP_SAMPLES // plan.batch_size)
        for at in range(0, len(numbers), per_group):
            group = numbers[at:at + per_group]
            positions, ends = plan.positions_of(group)
            for k, item in zip(group, read(positions, ends, self._ids(order.take(positions)), order.epoch)):
                if ahead is not None and ahead.due():
                    self._prefetch(ahead, k)
                yield k, item

    def _prefetch(self, ahead: Any, k: int) -> None:
        """Ask for what this worker's batches from batch `k` on read: their shards downloaded (a
        URL dataset), their bytes read ahead (a local one)."""
        ahead.ask(self.source.dataset, k)

    def _prefetcher(self, order: Any, plan: StepPlan, worker: int, workers: int) -> Any:
        """What prefetches or reads ahead this worker's next batches (None: readahead is off)."""
        return self._lookahead(order, plan, worker, workers)

    def _ids(self, indices: np.ndarray) -> np.ndarray:
        """The ids an order's indices stand for: a split's selected samples, else themselves."""
        return indices if self.selection is None else self.selection[indices]

    def _lookahead(self, order: EpochOrder, plan: StepPlan, worker: int, workers: int):
        from neurocodec.loader.lookahead import lookahead_for

        starts = shard_columns(self.manifest.shards)[1]
        stored = _window_chunks(self.slots(order.epoch)) if self.slots is not None \
            else (None if self.selection is None else self._ids)
        return lookahead_for(self.source.dataset, order, plan, worker, workers, starts, stored=stored)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> LoaderState:
        """The current state."""
        return self._state_at(self.epoch, self.position, self.skipped)

    def state_of(self, epoch: int, position: int, skipped: int) -> LoaderState:
        """The state of this loader at `position` of `epoch` (a DataLoader worker's, say)."""
        return self._state_at(epoch, position, skipped)

    def _state_at(self, epoch: int, position: int, skipped: int) -> LoaderState:
        return LoaderState(
            epoch=epoch, position=position, seed=self.seed, shuffle=self.shuffle,
            buffer_size=self.buffer_size, chunk_size=self.chunk_size,
            total_samples=self.epoch_samples(epoch), skipped=skipped,
            windows=None if self.windows is None else self.windows.describe(),
            split=None if self.split is None else self.split[0].fingerprint(self.split[1]),
            dataset_version=self._version(),
        )

    def _version(self) -> int | None:
        """The dataset's version for the state: None for version 1 (states keep their old form)."""
        return self.manifest.version if self.manifest.version > 1 else None

    def restore(self, state: Mapping[str, Any] | LoaderState, allow_new_mix: bool = False) -> None:
        """Continue from `state` (from `state()`, possibly of a loader with other workers or
        ranks). `allow_new_mix` matters only to mixes of datasets (`neurocodec.loader.mix`)."""
        loaded = state if isinstance(state, LoaderState) else LoaderState.from_dict(state)
        if (loaded.windows is None) != (self.windows is None):
            loaded.check_compatible(self._state_at(self.epoch, 0, 0))  # says which: the windows differ
        loaded.check_compatible(self._state_at(loaded.epoch, 0, 0))
        self.epoch, self.position, self.skipped = loaded.epoch, loaded.position, loaded.skipped
        self.epoch, self.position = self.next_start()  # (epoch, total) is the next epoch's start

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning on the next iteration."""
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch, self.position = epoch, 0

    def end_epoch(self) -> None:
        """Move to the start of the next epoch, logging how many samples were skipped as bad data
        in the one that ended (`neurocodec.loader.skips`)."""
        self.source.skips.end_epoch(self.epoch)
        self.epoch, self.position = self.epoch + 1, 0

    def settle(self) -> bool:
        """At the end of a non-empty epoch (every sample handed out, the loop stopped without
        asking for more: Lightning stops after `len(loader)` batches), move to the start of the
        next one (`end_epoch`); say whether it did. Iterating calls it first; a state saved
        there, `(epoch, total_samples)`, is restored as `(epoch + 1, 0)`."""
        if 0 < self.total_samples <= self.position:
            self.end_epoch()
            return True
        return False


def _window_chunks(slots: Any) -> Any:
    """Slot numbers -> the stored samples (chunks) their windows read, for prefetching."""
    def stored(ids: np.ndarray) -> np.ndarray:
        where = slots.locate(ids)
        return np.concatenate([where.sample, where.sample[where.crosses] + 1])
    return stored


def worker_slot() -> tuple[int, int]:
    """(worker id, number of workers) inside a DataLoader worker, else (0, 1)."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class StreamState:
    """State methods of every loader that wraps an `EpochStream` as `self.stream`."""

    stream: EpochStream

    def get_state(self) -> dict[str, Any]:
        """Where the loader is (everything handed out so far counted), as a small JSON-ready dict."""
        return self.stream.state().to_dict()

    def set_state(self, state: Mapping[str, Any], allow_new_mix: bool = False) -> None:
        """Continue exactly after the last sample or batch handed out when `state` was taken. A
        loader over a mix of datasets refuses a state of another mix unless `allow_new_mix`,
        which starts that state's epoch again from its beginning with this mix."""
        self.stream.restore(state, allow_new_mix=allow_new_mix)

    state_dict = get_state
    load_state_dict = set_state

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning on the next iteration."""
        self.stream.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        """The epoch being read, or the next one once a loop has exhausted the last. (A loop that
        stopped after the epoch's last item without asking for more leaves it at that epoch
        until the next iteration starts the next one.)"""
        return self.stream.epoch
