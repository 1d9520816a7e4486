"""Reading samples by global id inside a loader process, with the bad-data policy applied and the
user's per-sample transform run on each (see `neurocodec.loader.transform`)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from neurocodec.errors import ShardError
from neurocodec.process import PerProcess
from neurocodec.loader.transform import Transform, TransformError, apply_transform, check_transform
from neurocodec.dataset.reader import Dataset
from neurocodec.plugin.registry import Registry
from neurocodec.loader.skips import SkipLog

ON_ERROR = ("raise", "skip")


class SampleSource:
    """Opens the dataset lazily once per process (shard maps are not shared across a fork) and
    reads samples by id. With `on_error="skip"` a bad sample is left out instead of raising;
    `skipped` counts them in this process, and `skips` logs the first of each shard per epoch and
    keeps the counts for the epoch's summary (`neurocodec.loader.skips`; a mix's sources share one). A URL dataset reads through `cache`.
    `transform(sample, rng)` runs on every sample read, with the generator of (seed, sample's
    epoch, sample id); one that raises is a bad sample too. `version`: the version of an appended
    dataset every process opens (the one the loader chose, even if samples are appended meanwhile)."""

    owned = True
    """Whether nothing here keeps the samples read: their arrays decoded without a copy are then
    writable views of each sample's own buffer (`Dataset.read_local(..., writable=True)`), which
    the loaders hand on as tensors without copying; writing into one changes nothing else. A
    source that keeps what it reads for later (`WindowSource`'s chunks) says False: its arrays
    stay read-only and are copied into tensors."""

    reads_stored = True
    """Whether `_read_one` reads the stored sample of each id as it is (then consecutive ones
    are read together); a source that reads something else from an id (`WindowSource`'s
    windows) says False."""

    def __init__(self, path: Path | str, *, verify: str, on_error: str, registry: Registry | None,
                 storage_options: Mapping[str, Any] | None = None, cache: Any = None,
                 max_member_bytes: int | None = None,
                 decode: Mapping[str, Mapping[str, Any]] | None = None,
                 transform: Transform | None = None, seed: int = 0, version: int | None = None,
                 readahead_bytes: int | None = None) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.path, self.verify, self.on_error, self.registry = path, verify, on_error, registry
        self.storage_options, self.cache, self.max_member_bytes = storage_options, cache, max_member_bytes
        self.decode, self.version, self.readahead_bytes = decode, version, readahead_bytes
        self.transform, self.seed = check_transform(transform), seed
        self._dataset: PerProcess[Dataset] = PerProcess()
        self._bad_shards: dict[int, ShardError] = {}
        self.skipped = 0
        self.skips = SkipLog()

    @property
    def dataset(self) -> Dataset:
        """This process's open dataset."""
        return self._dataset.get(self._open)

    def _open(self) -> Dataset:
        self._bad_shards = {}
        return Dataset(self.path, registry=self.registry, verify=self.verify, storage_options=self.storage_options,
                       cache=self.cache, max_member_bytes=self.max_member_bytes, decode=self.decode,
                       window=self._window_grid(), version=self.version, readahead_bytes=self.readahead_bytes)

    def _window_grid(self) -> Any:
        """The window grid the dataset decodes chunks for (None: stored samples as they are)."""
        return None

    def read(self, ids: np.ndarray, epoch: int = 0,
             transform_ids: list[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """(i, decoded and transformed sample ids[i]) in order, leaving out bad ones when skipping.
        `transform_ids`: the ids the transform's generators are seeded with (default `ids`; a
        mix of datasets seeds them with its own numbering)."""
        for i, sample in enumerate(self.each(ids, epoch, transform_ids)):
            if sample is not None:
                yield i, sample

    def read_runs(self, ids: np.ndarray, ends: Sequence[int], epoch: int = 0) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        """For each run of `ids` (the runs end at `ends`, in order): what `read` gives for that
        run's ids, as a list, each run read only when asked for. Reads a batch after another
        without the per-call work of `read` (the loaders read batches of one sample)."""
        each, start = self.each(ids, epoch), 0
        for end in ends:
            run = []
            for i in range(end - start):
                sample = next(each)
                if sample is not None:
                    run.append((i, sample))
            yield run
            start = end

    def each(self, ids: np.ndarray, epoch: int = 0, transform_ids: list[int] | None = None) -> Iterator[dict[str, Any] | None]:
        """Each of `ids` in order, decoded and transformed, or None when it is bad and skipped;
        read when asked for. Consecutive stored samples of one shard are read together
        (`Dataset.read_run`)."""
        ds = self.dataset
        context = self._prepare(ids, epoch)
        values = ids.tolist()
        seeds = values if transform_ids is None else transform_ids
        if not self.reads_stored:
            for i, sample_id in enumerate(values):
                yield self._one(ds, i, sample_id, context, epoch, seeds[i])
            return
        kept, i = self._kept, 0
        for number, local, count in _stretches(ds, ids):
            for sample in self._stored_run(ds, number, local, count):
                yield kept(i, values[i], sample, context, epoch, seeds[i])
                i += 1

    def _stored_run(self, ds: Dataset, number: int, local: int, count: int) -> Iterator[Any]:
        """Samples `local` to `local + count - 1` of shard `number`, or the ShardError of each."""
        try:
            reader = self._reader(ds, number)
            if count == 1:  # a shuffled order's usual stretch: read it without a run's set-up
                return (ds.read_with(reader, number, local, writable=self.owned),)
        except ShardError as exc:
            return itertools.repeat(exc, count)
        return ds.read_run(number, local, local + count, writable=self.owned)

    def _one(self, ds: Dataset, i: int, sample_id: int, context: Any, epoch: int,
             seeded: int) -> dict[str, Any] | None:
        """Decoded and transformed sample `sample_id` (`i`: its place among the ids read; `seeded`:
        the id its transform's generator is seeded with), or None when it is bad and skipped."""
        try:
            sample = self._read_one(ds, i, sample_id, context)
        except ShardError as exc:
            sample = exc
        return self._kept(i, sample_id, sample, context, epoch, seeded)

    def _kept(self, i: int, sample_id: int, sample: dict[str, Any] | ShardError, context: Any, epoch: int,
              seeded: int) -> dict[str, Any] | None:
        """`sample` (read for `sample_id`, or the ShardError reading it raised) transformed, or
        None when it is bad and skipped."""
        try:
            if isinstance(sample, ShardError):
                raise sample
            if self.transform is not None:
                sample = apply_transform(self.transform, sample, seed=self.seed, epoch=epoch,
                                         sample_id=seeded, dataset=self.path)
        except TransformError as exc:
            if self.on_error == "raise":
                raise
            self._skip(epoch, None, self._what(i, sample_id, context), exc)
            return None
        except ShardError as exc:
            if self.on_error == "raise":
                err = ShardError(f"{exc} (reading {self._what(i, sample_id, context)} of {self.path})")
                err.shard, err.member, err.sample = exc.shard, exc.member, sample_id
                raise err from exc
            shard = exc.shard or self._shard_of(self.dataset, self._stored_id(i, sample_id, context))
            self._skip(epoch, shard, self._what(i, sample_id, context), exc)
            return None
        return sample

    def _prepare(self, ids: np.ndarray, epoch: int) -> Any:
        """What `_read_one` needs to know about a batch of ids besides each id (nothing here)."""
        return None

    def _read_one(self, ds: Dataset, i: int, sample_id: int, context: Any) -> dict[str, Any]:
        """Decoded sample `sample_id` (`i`: its place in the batch)."""
        return self.read_sample(ds, sample_id)

    def _what(self, i: int, sample_id: int, context: Any) -> str:
        """What was being read, for error messages."""
        return f"sample {sample_id}"

    def _stored_id(self, i: int, sample_id: int, context: Any) -> int:
        """The stored sample read first for `sample_id` (itself here)."""
        return sample_id

    @staticmethod
    def _shard_of(ds: Dataset, stored_id: int) -> str:
        return ds.shards[ds.locate(stored_id)[0]].name

    def read_sample(self, ds: Dataset, sample_id: int) -> dict[str, Any]:
        """Decoded stored sample `sample_id`; a shard found bad once fails again at once."""
        number, local = ds.locate(sample_id)
        return ds.read_with(self._reader(ds, number), number, local, writable=self.owned)

    def _reader(self, ds: Dataset, number: int) -> Any:
        """Shard `number`'s reader; a shard found bad once fails again at once."""
        if number in self._bad_shards:
            raise self._bad_shards[number]
        try:
            return ds.shard(number)
        except ShardError as exc:
            self._bad_shards[number] = exc
            raise

    def _skip(self, epoch: int, shard: str | None, what: str, exc: Exception) -> None:
        self.skipped += 1
        self.skips.skip(epoch, self.path, shard, what, exc)


def _stretches(ds: Dataset, ids: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(shard number, first sample in it, count) for each stretch of consecutive `ids` within
    one shard, in order."""
    numbers, places = ds.locate_all(np.asarray(ids, dtype=np.int64))
    cuts = np.flatnonzero((np.diff(ids) != 1) | (np.diff(numbers) != 0)) + 1
    bounds = [0, *cuts.tolist(), len(ids)]
    numbers_list, places_list = numbers.tolist(), places.tolist()
    for start, stop in zip(bounds, bounds[1:]):
        if stop > start:
            yield numbers_list[start], places_list[start], stop - start
