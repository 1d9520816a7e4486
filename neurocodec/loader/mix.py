"""A loader over several datasets mixed by weights (`create_webdataset_dataloader([a, b],
weights=[0.7, 0.3])`): the epoch order of `neurocodec.loader.mix_order`, the same plan, state
and resume as one dataset.

A mixed loader numbers the samples of its sources one after another (source i's sample k is
`offsets[i] + k`): transforms are seeded by that number, and the batches are built from the
sources' samples by the same collate rules, fields whose shapes differ between sources (unit or
channel counts) padded with a mask; a field only some sources have is zeros (an empty axis
where its length varies) in the others' samples, and `<field>_present` says which samples have it. The state records a fingerprint of the mix: every source's
path, sample count and shard checksums, the epoch's counts per source and how they were chosen.
Restoring a state of another mix is a ValueError unless `allow_new_mix=True`, which starts the
state's epoch again from its beginning with the new mix.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.dataset.reader import read_manifest
from neurocodec.format.manifest import FieldSpec
from neurocodec.loader.mix_lookahead import MixLookahead, SourceIds
from neurocodec.loader.mix_order import MixedOrder, epoch_counts
from neurocodec.loader.skips import SkipLog
from neurocodec.loader.state import LoaderState
from neurocodec.loader.stream import EpochStream
from neurocodec.storage.location import dataset_path


PRESENT_SUFFIX = "_present"
"""`<field>_present`: in a mix whose sources do not all have `<field>`, whether a sample has it."""


class MixedOrderIds:
    """A mixed epoch's order as the stream reads it: `take(positions)` gives the mixed ids."""

    def __init__(self, order: MixedOrder, offsets: np.ndarray) -> None:
        self.order, self.offsets, self.epoch = order, offsets, order.epoch

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Mixed sample ids (source offset + the source's sample id) at epoch `positions`."""
        source, ids = self.order.locate(np.asarray(positions, dtype=np.int64))
        return self.offsets[source] + ids


class MixedSource:
    """Reads mixed ids through each source's own stream (its `SampleSource`, and its split's
    selection), in the order asked. A field that some sources lack is filled in their samples
    (`absent`, per source) and every sample says whether it has it (`<field>_present`, a bool).
    `offsets(epoch)`: where each source's numbers start in the mix's numbering of that epoch."""

    def __init__(self, parts: Sequence[EpochStream], offsets: Callable[[int], np.ndarray],
                 absent: Sequence[Mapping[str, Any]] = (), partial: Sequence[str] = ()) -> None:
        self.parts, self.offsets = list(parts), offsets
        self.sources = [part.source for part in self.parts]
        self.skips = SkipLog()  # one for the mix: one summary per epoch
        for source in self.sources:
            source.skips = self.skips
        self.absent = list(absent) or [{} for _ in self.sources]
        self.partial = list(partial)
        self.registry = self.sources[0].registry
        self.transform, self.seed = self.sources[0].transform, self.sources[0].seed

    @property
    def skipped(self) -> int:
        """Bad samples left out in this process, all sources together."""
        return sum(s.skipped for s in self.sources)

    def read(self, ids: np.ndarray, epoch: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """(i, sample ids[i]) in order, each read from its source (transforms seeded by the mixed
        id); a source's samples of the batch are read in one call."""
        offsets = self.offsets(epoch)
        source = np.searchsorted(offsets, ids, side="right") - 1
        found: dict[int, dict[str, Any]] = {}
        for which in np.unique(source).tolist():
            places = np.flatnonzero(source == which)
            mixed = ids[places]
            stored = self.parts[which]._ids(mixed - offsets[which])  # a split's samples, else themselves
            for n, sample in self.sources[which].read(stored, epoch, transform_ids=mixed.tolist()):
                missing = self.absent[which]
                for name in self.partial:
                    sample[f"{name}{PRESENT_SUFFIX}"] = np.array(name not in missing)
                sample.update(missing)
                found[int(places[n])] = sample
        for i in sorted(found):
            yield i, found[i]

    def each(self, ids: np.ndarray, epoch: int = 0) -> Iterator[dict[str, Any] | None]:
        """Each of `ids` in order, read when asked for (as `read` reads it), or None when it is
        bad and skipped (as `SampleSource.each`)."""
        for i in range(len(ids)):
            found = list(self.read(ids[i:i + 1], epoch))
            yield found[0][1] if found else None

    def read_runs(self, ids: np.ndarray, ends: Sequence[int], epoch: int = 0) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        """For each run of `ids` (the runs end at `ends`): what `read` gives for it, as a list,
        each run read only when asked for (as `SampleSource.read_runs`)."""
        start = 0
        for end in ends:
            yield list(self.read(ids[start:end], epoch))
            start = end


class MixedEpochStream(EpochStream):
    """An `EpochStream` over several datasets mixed by weights (see the module documentation).
    Each source is a stream of its own (`parts`), with the loader's `split=`, windows and
    `normalize=` applied to it; the mix orders what they hold."""

    def __init__(self, shard_dirs: Sequence[Any], *, weights: Sequence[float] | None = None,
                 weight_by: str = "samples", epoch_samples: int | None = None, **options: Any) -> None:
        if not shard_dirs:
            raise ValueError("a mixed loader needs at least one dataset")
        if options.pop("version", None) is not None:
            raise ValueError("version= is not available when mixing several datasets (each is read at its "
                             "current version; a state records them all)")
        own = {name: options.pop(name, None) for name in ("window_ms", "window_bins", "window_mode", "split",
                                                          "normalize")}
        self._settings(**options)
        opened = self._source_options
        self.paths = [dataset_path(d) for d in shard_dirs]
        manifests = [read_manifest(p, storage_options=opened["storage_options"],
                                   max_member_bytes=opened["max_member_bytes"]) for p in self.paths]
        known = {f.name for m in manifests for f in m.fields}
        unknown = sorted(set(opened["decode"] or {}) - known) if isinstance(opened["decode"], Mapping) else []
        if unknown:
            raise ValueError(f"decode names fields no dataset of the mix has: {unknown} (fields: {sorted(known)})")
        self.parts = [EpochStream(p, manifest=m, **own, **{**options, "decode": _own(opened["decode"], m)})
                      for p, m in zip(self.paths, manifests)]
        self.manifests = manifests
        self._fields = merged_fields([part.fields for part in self.parts], self.paths)
        self.stats = None if own["normalize"] is None else [part.stats for part in self.parts]
        names = [[f.name for f in part.fields] for part in self.parts]
        partial = [f.name for f in self._fields if any(f.name not in n for n in names)]
        self._rule = (weights, epoch_samples, weight_by,
                      _seconds_per_sample(self.parts) if weight_by == "hours" else None)
        self.mix_rule = {"weights": None if weights is None else [float(w) for w in weights],
                         "weight_by": weight_by, "epoch_samples": epoch_samples}
        self._counts: dict[int, list[int]] = {}
        self.counts_of(self.epoch)  # a rule that does not fit the sources fails here
        self.source = MixedSource(self.parts, self.offsets_of, [absent_values(self._fields, n) for n in names],
                                  partial)
        self.path = list(self.paths)
        self.windows, self.slots, self.split, self.selection = None, None, None, None

    def counts_of(self, epoch: int) -> list[int]:
        """Samples each source gives `epoch` (with jittered windows, its sources' sizes vary)."""
        counts = self._counts.get(epoch)
        if counts is None:
            weights, total, weight_by, seconds = self._rule
            counts = epoch_counts(self._sizes(epoch), weights, total, weight_by, seconds)
            if len(self._counts) >= 4:
                self._counts.pop(next(iter(self._counts)))
            self._counts[epoch] = counts
        return counts

    @property
    def counts(self) -> list[int]:
        """Samples each source gives the current epoch."""
        return self.counts_of(self.epoch)

    def _sizes(self, epoch: int) -> list[int]:
        return [part.epoch_samples(epoch) for part in self.parts]

    def offsets_of(self, epoch: int) -> np.ndarray:
        """Where each source's numbers start in the mix's numbering of `epoch`."""
        return np.concatenate(([0], np.cumsum(self._sizes(epoch))[:-1])).astype(np.int64)

    def epoch_samples(self, epoch: int) -> int:
        """Samples in `epoch` of the mix."""
        return sum(self.counts_of(epoch))

    def order(self, epoch: int | None = None) -> MixedOrderIds:
        """The mixed order of `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return MixedOrderIds(MixedOrder([part.unit_sizes(epoch) for part in self.parts], seed=self.seed,
                                        epoch=epoch, counts=self.counts_of(epoch), shuffle=self.shuffle,
                                        buffer_size=self.buffer_size, chunk_size=self.chunk_size),
                             self.offsets_of(epoch))

    def _prefetcher(self, order: Any, plan: Any, worker: int, workers: int) -> Any:
        """Per source, what prefetches (URL) or reads ahead (local) its samples in this worker's
        next batches; None when no source does."""
        aheads = {i: part._lookahead(SourceIds(order, i), plan, worker, workers) for i, part in enumerate(self.parts)}
        aheads = {i: ahead for i, ahead in aheads.items() if ahead is not None}
        return MixLookahead(aheads) if aheads else None

    def _prefetch(self, ahead: Any, k: int) -> None:
        ahead.ask(_Datasets(self.parts), k)

    def fingerprint(self) -> str:
        """SHA-256 of the sources (paths, sample counts, shard checksums), the counts (of epoch 0),
        the rule, and each source's windows and split part where given."""
        doc: dict[str, Any] = {"sources": [[str(p), m.total_samples, _shard_checksums(m.shards)]
                                           for p, m in zip(self.paths, self.manifests)],
                               "counts": self.counts_of(0), "rule": self.mix_rule, "version": 1}
        for key, of in (("windows", lambda part: part.windows and part.windows.describe()),
                        ("split", lambda part: part.split and part.split[0].fingerprint(part.split[1]))):
            if any(of(part) for part in self.parts):  # keys absent otherwise: earlier mixes' states stay valid
                doc[key] = [of(part) for part in self.parts]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def _state_at(self, epoch: int, position: int, skipped: int) -> LoaderState:
        return attrs.evolve(super()._state_at(epoch, position, skipped), mix=self.fingerprint())

    def _version(self) -> int | None:
        return None  # each source's version is in the fingerprint, through its shards

    def restore(self, state: Mapping[str, Any] | LoaderState, allow_new_mix: bool = False) -> None:
        """Continue from `state`; with `allow_new_mix`, a state of another mix starts its epoch
        again from the beginning with this mix (otherwise that is a ValueError)."""
        loaded = state if isinstance(state, LoaderState) else LoaderState.from_dict(state)
        if loaded.mix is not None and loaded.mix != self.fingerprint():
            if not allow_new_mix:
                raise ValueError("the state was saved by another mix of datasets (their samples, the weights, the "
                                 "windows or the split differ): pass allow_new_mix=True to start its epoch again "
                                 "with this mix")
            ended = 0 < loaded.total_samples <= loaded.position  # that epoch was over: the next one
            self.epoch, self.position, self.skipped = loaded.epoch + ended, 0, loaded.skipped
            return
        super().restore(loaded)


def merged_fields(per_source: Sequence[Sequence[FieldSpec]], paths: Sequence[Any]) -> tuple[FieldSpec, ...]:
    """The fields of a mix: every field of any source (in the first source's order, then the
    others'), of one kind and dtype wherever it is; an axis whose length differs between sources
    becomes variable (None: padded with a mask)."""
    names = list(dict.fromkeys(f.name for fields in per_source for f in fields))
    out = []
    for name in names:
        found = [(path, f) for path, fields in zip(paths, per_source) for f in fields if f.name == name]
        field = found[0][1]
        if any(f.kind != field.kind or f.dtype != field.dtype for _, f in found):
            raise ValueError(f"field {name!r} is " + ", ".join(f"{f.kind} {f.dtype} in {p}" for p, f in found)
                             + ": a mix needs one kind and dtype per field")
        shapes = [f.shape for _, f in found]
        shape = field.shape
        if shape is not None and any(s is None or len(s) != len(shape) for s in shapes):
            raise ValueError(f"field {name!r} has shapes {shapes} in the datasets of the mix")
        if shape is not None:
            shape = tuple(a if all(s[i] == a for s in shapes) else None for i, a in enumerate(shape))
        out.append(attrs.evolve(field, shape=shape, max_raw_bytes=max(f.max_raw_bytes for _, f in found),
                                max_stored_bytes=max(f.max_stored_bytes for _, f in found),
                                max_value_bytes=max(f.max_value_bytes for _, f in found)))
    return tuple(out)


def absent_values(fields: Sequence[FieldSpec], present: Sequence[str]) -> dict[str, Any]:
    """What a sample of a source without some of the mix's fields holds in their place: zeros
    (an empty axis where the length varies, so a batch pads it and masks it), None for fields
    that are not arrays."""
    out: dict[str, Any] = {}
    for field in fields:
        if field.name in present:
            continue
        if field.kind == "array" and field.shape is not None and field.dtype is not None:
            value = np.zeros(tuple(0 if a is None else a for a in field.shape), dtype=np.dtype(field.dtype))
            value.flags.writeable = False
            out[field.name] = value
        else:
            out[field.name] = None
    return out


def _seconds_per_sample(parts: Sequence[EpochStream]) -> list[float]:
    """Each source's sample length in seconds: its load-time window, else its conversion's window."""
    out = []
    for part in parts:
        if part.windows is not None:
            out.append(part.windows.window_bins * part.windows.timeline.bin_s)
            continue
        manifest = part.manifest
        conversion = manifest.extra.get("conversion", {}) if isinstance(manifest.extra, Mapping) else {}
        try:
            seconds = float(conversion["sequence_length"]) * float(conversion["bin_size_s"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("weight_by='hours' needs datasets converted from NWB (their manifests record the "
                             "window length)") from None
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"weight_by='hours': a manifest records windows of {seconds!r} s")
        out.append(seconds)
    return out


def _own(decode: Mapping[str, Any] | None, manifest: Any) -> dict[str, Any] | None:
    """The decode options of the fields a source has (a mix's options name any source's fields)."""
    if decode is None:
        return None
    names = {f.name for f in manifest.fields}
    return {k: v for k, v in decode.items() if k in names}


def open_stream(shard_dir: Any, *, weights: Sequence[float] | None = None, weight_by: str = "samples",
                epoch_samples: int | None = None, **options: Any) -> EpochStream:
    """The stream of a loader: over one dataset, or over a list (or tuple) of datasets mixed."""
    if isinstance(shard_dir, (list, tuple)):
        return MixedEpochStream(shard_dir, weights=weights, weight_by=weight_by, epoch_samples=epoch_samples,
                                **options)
    if weights is not None or epoch_samples is not None or weight_by != "samples":
        raise ValueError("weights=, weight_by= and epoch_samples= mix several datasets: give a list of them")
    return EpochStream(shard_dir, **options)


class _Datasets:
    """The open dataset of each source, looked up by source number when asked for."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = parts

    def __getitem__(self, i: int) -> Any:
        return self.parts[i].source.dataset


def _shard_checksums(shards: Any) -> Any:
    """What a mix's fingerprint records of a source's shards: every shard's SHA-256, or for a
    shard table (format version 3) the SHA-256 of its head, whose block digests cover every
    record, so that 10^6 shards are not read to fingerprint the mix."""
    head = getattr(shards, "head_sha256", None)
    return ["table", head] if head is not None else [s.sha256 for s in shards]
