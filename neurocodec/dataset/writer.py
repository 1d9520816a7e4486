"""Writing datasets: `WebDatasetWriter` and `create_shards_from_arrays`."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from neurocodec import __version__
from neurocodec.errors import DatasetError, NeurocodecError, SampleError, WriterClosedError
from neurocodec.format import layout, limits
from neurocodec.format.compression import SUFFIX, check_compression, compressor
from neurocodec.format.manifest import MAX_MANIFEST_BYTES, Manifest, ShardEntry
from neurocodec.format.shard_table import TABLE_ABOVE
from neurocodec.format.shardfile import ShardSequence
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry
from neurocodec.dataset.schema import Schema, check_field_codecs, check_field_modalities
from neurocodec.dataset.append import staging_for_append
from neurocodec.storage.output import DatasetOutput


class WebDatasetWriter:
    """Writes samples into tar shards of `shard_size` samples plus a manifest.

    Every sample is a dict of field name to value (arrays, tensors, JSON values, str or bytes);
    a modality plugin decides how each field is stored (see `neurocodec plugins`): the one
    `modalities` maps the field to (`{"pupil_left": "behavior", "pupil_right": "behavior"}`, so
    several fields can share one plugin), else the one registered under the field's name, else
    generic storage. The manifest records each field's modality, and readers batch it by that.
    A modality in `modalities` that no installed plugin registers is an UnknownModalityError here;
    a field in it that the first sample lacks is a SampleError there. All samples must
    carry the same fields. `metadata` is stored per sample as `<key>.metadata.json`.

    Writes are atomic: shards appear under their final names only when complete, and
    `dataset_metadata.json` is written by `finalize()`, last. An output directory that already
    holds a dataset (a manifest) is refused unless `overwrite=True`; files an unfinished writer
    left (no manifest) are not a dataset and are cleared. Overwriting is atomic too: the new
    dataset is written beside the old one, which stays readable until `finalize()` replaces it
    (an interruption leaves the old dataset). The output directory is locked from creation to
    `finalize()` or `abort()`: a second writer on it gets DatasetLockedError at once. An output
    path that is not a directory raises DatasetError. Use as a context manager to finalize on
    success and discard partial output on error.

    Options: `modality_options` maps a field to its plugin's options (for example
    `{"lfp": {"dtype": "float16"}}`), `compression_level` tunes the compressor, `fsync=False`
    skips flushing to disk (faster, not crash-safe), `dataset_metadata` is stored in the
    manifest's `extra` section, `registry` replaces the installed plugins, `max_member_bytes`
    is the ceiling on one member's encoded size (the readers' default, `neurocodec.format.limits`:
    a larger member is refused here rather than written and refused by every reader).
    `codecs` gives a field another codec than its modality's, by config, stored in the manifest
    with the data (`{"lfp": {"id": "ndarray", "filters": ...}}`, `{"spikes": {"id":
    "spike-events", ...}}`; see docs/format.md): plain `.npy` stays the default, readable by
    webdataset, Hugging Face datasets and Ray Data. A dataset of more than `shard_table_above`
    shards (default 10,000) keeps its shard rows in a binary shard table beside the manifest
    (format version 3, docs/format.md): readers then open it in bounded time and memory.

    `output_dir` may be an fsspec URL (`s3://bucket/ds`, ...) opened with `storage_options`:
    shards are then staged in a local temp directory, each uploaded when finished, and the
    manifest uploaded last (see `neurocodec.storage.output`; a URL cannot be locked).

    `append=True` adds the samples to the local dataset already in `output_dir` as its next
    version, without rewriting it (docs/versions.md): they are written into a staging directory
    inside it and appended by `finalize()` (fields and codecs must be the dataset's; its lock is
    held until then). Keys returned by `write_sample` are the samples' keys in the dataset. With
    no dataset there yet, the writer writes one as usual.
    """

    def __init__(
        self, output_dir: str | os.PathLike, shard_size: int = 1000, compression: str = "none", *,
        overwrite: bool = False, modality_options: Mapping[str, Mapping[str, Any]] | None = None,
        compression_level: int | None = None, fsync: bool = True,
        dataset_metadata: Mapping[str, Any] | None = None, registry: Registry | None = None,
        storage_options: Mapping[str, Any] | None = None, max_member_bytes: int | None = None,
        modalities: Mapping[str, str] | None = None, codecs: Mapping[str, Mapping[str, Any]] | None = None,
        append: bool = False, shard_table_above: int = TABLE_ABOVE,
    ) -> None:
        if type(shard_size) is not int or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        if type(shard_table_above) is not int or shard_table_above < 0:
            raise ValueError(f"shard_table_above must be a non-negative integer, got {shard_table_above!r}")
        self.shard_table_above = shard_table_above
        self.compression = check_compression(compression)
        self.max_member_bytes = limits.max_member_bytes(max_member_bytes)
        self._output: DatasetOutput | None = None
        self.shard_size = shard_size
        self.fsync = fsync
        self.registry = registry or default_registry()
        self.modality_options = {k: dict(v) for k, v in (modality_options or {}).items()}
        self.dataset_metadata = dict(dataset_metadata or {})
        self.compression_level = compression_level
        self._compress = compressor(compression, compression_level)
        self.modalities = check_field_modalities(modalities, self.registry)
        self.codecs = check_field_codecs(codecs, self.registry)
        self._schema = Schema(self.registry, self.modality_options, self.modalities, self.codecs)
        self._shard_entry_bytes = 0  # what the shard entries will take in the manifest
        self._count = 0
        self._closed = False
        if append and overwrite:
            raise ValueError("append=True adds samples to the dataset and overwrite=True replaces it: give one")
        self._append = staging_for_append(output_dir) if append else None
        target = output_dir if self._append is None else self._append.directory
        try:
            self._output = DatasetOutput(target, storage_options=storage_options, overwrite=overwrite, fsync=fsync)
        except BaseException:
            if self._append is not None:
                self._append.abort()
            raise
        # A URL output uploads each shard as it is closed, in order: no background commits.
        self._shards = ShardSequence(self._output.directory, shard_size, fsync=fsync and not self._output.remote,
                                     background=not self._output.remote, on_commit=self._record)
        self.output_dir = self._output.target if self._append is None else self._append.target

    # -- writing ------------------------------------------------------------------------------
    def write_sample(self, sample: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> str:
        """Validate, encode and append one sample; return its key (`sample_000000001`, ...).

        An invalid sample raises SampleError naming the sample and field, and nothing of it is
        written: the writer stays usable.
        """
        return self._write(sample, metadata, prepared=False)

    def _write(self, sample: Mapping[str, Any], metadata: Mapping[str, Any] | None, *, prepared: bool) -> str:
        """`write_sample`; with `prepared`, the fields' values have been through their
        modality's `prepare` already (`create_shards_from_arrays` validates every row first)."""
        if self._closed:
            raise WriterClosedError(f"writer for {self.output_dir} is finalized or aborted")
        index = self._count
        if index >= layout.MAX_SAMPLES:
            raise SampleError(f"a dataset holds at most {layout.MAX_SAMPLES} samples")
        key = layout.sample_key(index)
        started = self._schema.fields is None
        try:
            names, payloads, raws, values = self._encode(sample, metadata, index, key, prepared)
        except BaseException:
            if started:
                self._schema.fields = None  # a rejected first sample must not fix the schema
            raise
        for state, value, raw, payload in zip(self._schema.field_order(), values, raws, payloads):
            state.update(value, raw, len(payload))
        try:
            self._shards.add(names, payloads, raws)
        except BaseException:
            self.abort()
            raise
        self._count += 1
        return key if self._append is None else layout.sample_key(self._append.first_sample + index)

    def _encode(self, sample: Mapping[str, Any], metadata: Mapping[str, Any] | None, index: int, key: str,
                prepared: bool = False):
        where = f"sample {index} ({key})"
        if not isinstance(sample, Mapping) or not sample:
            raise SampleError(f"{where}: a sample must be a non-empty dict of field name to value")
        for name in sample:
            problem = layout.field_name_problem(name)
            if problem:
                raise SampleError(f"{where}: {problem}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise SampleError(f"{where}: metadata must be a dict or None, got {type(metadata).__name__}")
        schema = self._schema
        if schema.fields is None:
            try:
                schema.start(sample)
            except NeurocodecError as exc:
                raise SampleError(f"{where}: {exc}") from None
            except ValueError as exc:
                raise SampleError(f"{where}: {exc}") from None
        elif set(sample) != set(schema.fields):
            missing = sorted(set(schema.fields) - set(sample))
            extra = sorted(set(sample) - set(schema.fields))
            raise SampleError(
                f"{where}: fields differ from the first sample's {sorted(schema.fields)} "
                f"(missing {missing}, extra {extra}); every sample must carry the same fields"
            )
        names, payloads, raws, values = [], [], [], []
        items = [(state, sample[state.name]) for state in schema.fields.values()]
        items.append((schema.metadata, {} if metadata is None else metadata))
        for state, value in items:
            field = f"{where}, field {state.name!r}"
            if state.spec.fallback and state.spec.accepts is not None and not state.spec.accepts(value):
                raise SampleError(f"{field}: a {type(value).__name__} where earlier samples held "
                                  f"{state.spec.name} values")
            try:
                ready = value if prepared and state is not schema.metadata else \
                    state.spec.prepare(value, self.modality_options.get(state.name, {}))
            except (TypeError, ValueError) as exc:
                raise SampleError(f"{field} ({state.spec.name}): {exc}") from None
            problem = state.check(ready)
            if problem:
                raise SampleError(f"{field}: {problem}")
            try:
                raw = state.codec.encode(ready)
            except (TypeError, ValueError) as exc:
                raise SampleError(f"{field}: codec {state.codec.codec_id!r} cannot encode it: {exc}") from None
            if len(raw) > self.max_member_bytes:
                raise SampleError(
                    f"{field}: encodes to {len(raw)} bytes, more than the {self.max_member_bytes} one member "
                    f"may hold (max_member_bytes, or {limits.ENV_MAX_MEMBER_BYTES}); split it over samples, "
                    "or raise the ceiling here and wherever the dataset is read")
            names.append(layout.member_name(key, state.name, state.codec.extension + SUFFIX[self.compression]))
            payloads.append(self._compress(raw))
            raws.append(len(raw))
            values.append(ready)
        return names, payloads, raws, values

    def _record(self, entry: ShardEntry) -> None:
        """A shard is committed: upload it (URL outputs), and fail as soon as the manifest is bound
        to exceed what readers accept, not at the end."""
        self._output.shard_done(entry)
        self._shard_entry_bytes += len(json.dumps(entry.to_dict(), separators=(",", ":"), sort_keys=True)) + 1
        if self._shard_entry_bytes > MAX_MANIFEST_BYTES and len(self._shards.entries) <= self.shard_table_above:
            raise DatasetError(
                f"{self.output_dir}: {len(self._shards.entries)} shards would make a manifest larger than the "
                f"{MAX_MANIFEST_BYTES} bytes readers accept; write fewer, larger shards (shard_size)")

    # -- ending -------------------------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        """Close the last shard, write `dataset_metadata.json`, and return a summary.

        The summary holds samples, shards, bytes (shards and indexes), modalities, compression
        and output_dir. Calling it twice returns the same summary.
        """
        if self._closed:
            if getattr(self, "_summary", None) is None:
                raise WriterClosedError(f"writer for {self.output_dir} was aborted")
            return self._summary
        if self._count == 0:
            self.abort()
            raise SampleError(f"no samples were written to {self.output_dir}; nothing to finalize")
        try:
            shards = self._shards.finish()
        except BaseException:
            self.abort()
            raise
        manifest = Manifest(
            compression=self.compression, total_samples=self._count, fields=self._schema.field_specs(),
            shards=tuple(shards), writer=self.settings(), extra=self.dataset_metadata,
            created_with={"neurocodec": __version__},
        )
        try:
            self._output.write_manifest(manifest)
            if self._append is not None:
                manifest = self._append.commit(fsync=self.fsync, registry=self.registry)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._summary = {
            "samples": self._count, "shards": len(shards),
            "bytes": sum(s.bytes + s.index_bytes for s in shards),
            "modalities": [f.name for f in manifest.modalities],
            "compression": self.compression, "output_dir": str(self.output_dir),
        }
        if self._append is not None:
            self._summary.update(version=manifest.version, total_samples=manifest.total_samples)
        return self._summary

    def settings(self) -> dict[str, Any]:
        """The writer settings recorded in the manifest."""
        settings = {
            "shard_size": self.shard_size, "compression": self.compression,
            "compression_level": self.compression_level, "modality_options": self.modality_options,
        }
        if self.shard_table_above != TABLE_ABOVE:  # recorded only when set: manifests stay as they were
            settings["shard_table_above"] = self.shard_table_above
        return settings

    def abort(self) -> None:
        """Discard the unfinished shard and write no manifest; finished shards stay on disk."""
        if getattr(self, "_shards", None) is not None:
            self._shards.abort()
        if self._output is not None:
            self._output.abort()
        if getattr(self, "_append", None) is not None:
            self._append.abort()
        self._closed = True
        self._summary = None

    def __enter__(self) -> "WebDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        elif not self._closed:
            self.abort()

    @property
    def samples_written(self) -> int:
        """Samples written so far."""
        return self._count


def create_shards_from_arrays(
    output_dir: str | os.PathLike, data_dict: Mapping[str, Any], shard_size: int = 1000,
    compression: str = "none", *, metadata: Sequence[Mapping[str, Any]] | None = None,
    progress: bool | None = None, **writer_options: Any,
) -> dict[str, Any]:
    """Write row `i` of every array in `data_dict` as sample `i`; return the writer's summary.

    Everything is validated before anything is written: arrays (or tensors) of at least one
    dimension, numeric dtypes their modality accepts, one common first dimension, valid field
    names, and one metadata dict per sample when `metadata` is given, and that `modalities` (a
    field-to-modality mapping, as for `WebDatasetWriter`) names fields of `data_dict` and
    installed modalities. `progress` shows a tqdm bar (default: only on a terminal). Other
    keyword arguments go to `WebDatasetWriter`.
    """
    from tqdm.auto import tqdm

    from neurocodec.plugin.modality import as_array

    if not isinstance(data_dict, Mapping) or not data_dict:
        raise SampleError("data_dict must be a non-empty dict of field name to array")
    arrays: dict[str, np.ndarray] = {}
    for name, value in data_dict.items():
        problem = layout.field_name_problem(name)
        if problem:
            raise SampleError(f"data_dict: {problem}")
        try:
            array = as_array(value) if not isinstance(value, (list, tuple)) else None
        except TypeError:
            array = None
        if array is None or array.ndim < 1:
            raise SampleError(f"data_dict[{name!r}] must be an array or tensor with a first (sample) "
                              f"dimension, got {type(value).__name__}")
        arrays[name] = array
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise SampleError(f"data_dict arrays differ in their first dimension: {lengths}")
    count = next(iter(lengths.values()))
    if count == 0:
        raise SampleError("data_dict arrays hold no samples (first dimension 0)")
    if metadata is not None and len(metadata) != count:
        raise SampleError(f"metadata holds {len(metadata)} entries for {count} samples")
    for i, entry in enumerate(metadata or ()):
        if entry is not None and not isinstance(entry, Mapping):
            raise SampleError(f"metadata[{i}] must be a dict or None, got {type(entry).__name__}")
    registry = writer_options.get("registry") or default_registry()
    options = writer_options.get("modality_options") or {}
    modalities = check_field_modalities(writer_options.get("modalities"), registry)
    for what, given in (("modalities", modalities), ("modality_options", options),
                        ("codecs", writer_options.get("codecs") or {})):
        unknown = sorted(set(given) - set(arrays))
        if unknown:
            raise SampleError(f"{what} name fields data_dict does not have: {unknown}")
    rows = {name: _prepared_rows(name, array, registry.resolve(name, array[0, ...], modality=modalities.get(name)),
                                 options.get(name, {})) for name, array in arrays.items()}
    with WebDatasetWriter(output_dir, shard_size, compression, **writer_options) as writer:
        for i in tqdm(range(count), desc="writing shards", unit="sample", disable=None if progress is None else not progress):
            writer._write({name: values[i] for name, values in rows.items()},
                          None if metadata is None else metadata[i], prepared=True)
    return writer.finalize()


def _prepared_rows(name: str, array: np.ndarray, spec: Any, options: Mapping[str, Any]) -> list[Any]:
    """Every row of `array` through its modality's `prepare`, once, before anything is written;
    SampleError naming the row that fails. (`array[i, ...]` keeps rows of 1-d arrays as 0-d
    arrays: `array[i]` would be a numpy scalar.)"""
    rows = []
    for i in range(len(array)):
        try:
            rows.append(spec.prepare(array[i, ...], options))
        except (TypeError, ValueError) as exc:
            raise SampleError(f"data_dict[{name!r}] row {i} ({spec.name}): {exc}") from None
    return rows
