"""`NWBToWebDatasetConverter`: NWB sessions to shards, in parallel, resumably, deterministically.

Each input file becomes a part (a small dataset under `<output>/.neurocodec-parts/`), converted
in this process, in `workers` processes, or on any `concurrent.futures.Executor` (a Dask
client's `get_executor()` converts across machines when the output directory is shared).
`finalize()` concatenates the parts in input order, copying stored bytes unchanged, so the
dataset (samples, order, checksums) is identical for any number of workers and any executor.
A finished part is kept until `finalize()` succeeds, so re-running after a crash converts only
the files that had not finished (a part is reused when the source file's path, size and
modification time and the conversion settings are unchanged; for NWB-Zarr folders and URLs see
docs/storage.md).

A local output directory is locked while the converter works on it (from creation to
`finalize()` or `close()`; a failed call releases it and the next call takes it again): a
second converter or writer on it gets DatasetLockedError at once. `finalize()` replaces a
dataset already there (with `overwrite=True`) atomically: until the new manifest is in place
the old dataset stays whole and readable.

Windows: `sequence_length` bins of `bin_size_ms`, `step = round(sequence_length * (1 -
overlap))` bins apart, anchored at the start of the time every requested modality covers
(`coverage="all"`, the default: a window needs all modalities; windows missing one are
skipped and counted). With `coverage="fill"` windows span the union of the modalities' times
and a modality that does not cover a window is zero-filled, listed in the window's metadata
under `missing`. Modalities at other rates keep their native rate with a fixed number of samples
per window (see `neurocodec.nwb.windows`). What each window's metadata and each session's
manifest record hold: docs/nwb.md.

Bad input (unreadable or non-NWB file, missing modality, non-monotonic timestamps, NaN with
`nan_policy="error"`) raises an error naming the file and the object; with `on_error="skip"`
the file is skipped with a warning and listed with its reason in the summary and in
`conversion-report.json` (written by `finalize()` next to the shards). Nothing already written
is damaged either way.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import attrs

from neurocodec.dataset.finish import Finish
from neurocodec.errors import DatasetExistsError
from neurocodec.format.compression import check_compression
from neurocodec.format.home import has_manifest, manifest_path
from neurocodec.fsutil import atomic_write_bytes
from neurocodec.nwb.agree import describe, disagreeing_fields, parts_to_redo
from neurocodec.nwb.fields import names, plan_fields
from neurocodec.nwb.pool import ConversionError, run_tasks
from neurocodec.nwb.report import build_report, write_report
from neurocodec.nwb.part import (
    ConvertSettings, codecs_tuple, convert_file, options_tuple, source_fingerprint, wrap_error,
)
from neurocodec.nwb.session import session_key
from neurocodec.nwb.timeline import build_timeline, is_chunked
from neurocodec.nwb.extract import NWBError
from neurocodec.nwb.source import NWBSource, SourceVersion, identifies_version
from neurocodec.nwb.windows import WindowSpec
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry
from neurocodec.storage.location import dataset_path, is_remote
from neurocodec.storage.local_output import make_output_dir
from neurocodec.storage.lock import OutputLock
from neurocodec.storage.output import local_staging_dir, manifest_exists

log = logging.getLogger("neurocodec.nwb")
PARTS_DIR = ".neurocodec-parts"
PART_SUMMARY = "part.json"
ON_ERROR = ("raise", "skip")


def _convert_part(path: str, part_dir: str, settings: ConvertSettings, version: SourceVersion,
                  registry: Registry | None = None) -> dict[str, Any]:
    """Worker entry point: convert `version.source` (whose location is `path`; a URL travels with
    its storage options and is opened here), check that the source is still the version the run
    planned with, then record the part as finished (atomically, last)."""
    summary = convert_file(version.source, part_dir, settings, registry)
    if version.source.fingerprint() != version.record:
        raise NWBError(f"{path}: changed while it was being converted; convert it again")
    record = {"summary": summary, "source": version.record, "settings": _settings_hash(settings)}
    atomic_write_bytes(Path(part_dir) / PART_SUMMARY, json.dumps(record, sort_keys=True).encode(),
                       fsync=settings.fsync)
    return summary


def _reader_field(name: str, fields: tuple[str, ...]) -> str:
    """The converted field a sample field comes from: itself, or the field it is named after
    (`units_a_observed` comes from `units_a`)."""
    if name in fields:
        return name
    owners = [f for f in fields if name.startswith(f)]
    return max(owners, key=len) if owners else name


def _settings_hash(settings: ConvertSettings) -> str:
    doc = {**settings.to_dict(), "compression": settings.compression}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def _objects(series: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The object (HDF5 path, or list of paths) each field was read from."""
    return {field: described.get("object") for field, described in series.items()}


def _check_arguments(shard_size: Any, workers: Any, on_error: Any, registry: Registry | None) -> None:
    """ValueError naming the argument for a value the converter cannot use."""
    if type(shard_size) is not int or shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if type(workers) is not int or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if registry is not None and workers > 1:
        raise ValueError("registry= cannot be sent to worker processes: pass workers=1 (or an executor "
                         "running in this process), or install the plugins")


ARGUMENT_WORDS = {"chunk_seconds": "chunk_seconds", "sequence_length": "sequence_length",
                  "overlap": "overlap", "bin_size_ms": "bin_size_ms"}
"""How `window_shape` names the arguments (the CLI passes its flags' names)."""


def window_shape(bin_size_ms: Any, sequence_length: Any, overlap: Any, chunk_seconds: Any,
                 words: Mapping[str, str] = ARGUMENT_WORDS) -> tuple[Any, Any]:
    """(sequence_length, overlap) from the arguments: defaults 100 bins and 0.5; with
    `chunk_seconds`, chunks of that length without overlap. ValueError in plain words (the
    arguments named by `words`) for a chunk length that is not a whole number of bins or that
    the other two contradict."""
    if chunk_seconds is None:
        return (100 if sequence_length is None else sequence_length), (0.5 if overlap is None else overlap)
    chunk, length, over, bin_ms = (words[k] for k in ("chunk_seconds", "sequence_length", "overlap", "bin_size_ms"))
    if not (isinstance(chunk_seconds, (int, float)) and not isinstance(chunk_seconds, bool)
            and math.isfinite(chunk_seconds) and chunk_seconds > 0):
        raise ValueError(f"{chunk} must be a positive number of seconds, got {chunk_seconds!r}")
    if not (isinstance(bin_size_ms, (int, float)) and bin_size_ms > 0 and math.isfinite(bin_size_ms)):
        raise ValueError(f"{bin_ms} must be a positive number, got {bin_size_ms!r}")
    bins = round(chunk_seconds * 1000.0 / bin_size_ms)
    if bins < 1 or abs(bins * bin_size_ms - chunk_seconds * 1000.0) > 1e-6 * bin_size_ms:
        raise ValueError(f"{chunk} {chunk_seconds!r} is not a whole number of {bin_size_ms!r} ms bins; "
                         f"choose a chunk length that is, or another {bin_ms}")
    if overlap not in (None, 0):
        raise ValueError(f"{chunk} writes consecutive chunks without overlap; {over} {overlap!r} "
                         f"contradicts it (leave {over} out, or give 0)")
    if sequence_length is not None and sequence_length != bins:
        raise ValueError(f"{chunk} {chunk_seconds!r} makes chunks of {bins} bins of {bin_size_ms!r} ms; "
                         f"{length} {sequence_length!r} contradicts it (leave {length} out)")
    return bins, 0.0


def _parts_dir(output_dir: Path | str, given: str | os.PathLike | None) -> Path:
    """Where the parts are kept: `given`, a local staging directory for a URL, else inside the output."""
    if given is not None:
        return Path(given)
    if is_remote(output_dir):
        return local_staging_dir(output_dir, "nwb-parts")
    return Path(output_dir) / PARTS_DIR


class NWBToWebDatasetConverter:
    """Converts NWB files into one sharded dataset (see the module documentation).

    Parameters as in the user guide (`output_dir`, `shard_size`, `modalities`, `bin_size_ms`,
    `sequence_length`, `overlap`; defaults 100 bins and 0.5), plus: `chunk_seconds`, which writes
    each session as consecutive chunks of that many seconds (`overlap` 0 and `sequence_length`
    bins making that length: giving either otherwise is a ValueError) and, like any conversion
    without overlap, records the sessions' timeline in `manifest.extra["timeline"]` (see
    `neurocodec.nwb.timeline`); `compression`; `workers` (processes) or `executor`;
    `fields` mapping a field to `(modality, series)` (`{"position": ("behavior", ["x", "y",
    "z"])}`: see `neurocodec.nwb.fields`; with `fields` and no `modalities` only the fields are
    converted); `series` to pick a series per field by name or path (`{"eeg": "EEG"}`, or a list
    of 1-D series combined into columns; by default the plugin's documented choice, reported in
    the summary); `intervals`, the TimeIntervals tables whose rows reach each window's metadata
    (default every table); `input_storage_options` for URL inputs (default `storage_options`);
    `modality_options` passed to the
    modality plugins; `registry` (as for the loaders) the plugins whose extractors, modalities and
    codecs are used, default the installed ones; `coverage` ("all" or "fill"); `nan_policy` ("error", "skip_window",
    "keep"); `on_error` ("raise" or "skip"); `overwrite`; `fsync`; `keep_parts`; `progress`;
    `codecs`: "neural" (default: spikes as events re-binnable at load time, integer signals as
    their raw integers with the scale in the manifest, see docs/format.md) or "npy" (every field
    as plain `.npy`, the layout webdataset, Hugging Face datasets and Ray Data read);
    Where files would store a field with different codecs (a scaled int16 series next to a
    float32 one), `finalize()` converts the parts concerned again with that field as plain npy,
    with a warning (`neurocodec.nwb.agree`). `field_codecs`: codec configs for fields, over that choice (`{"video": {"id": "av-video",
    "codec": "ffv1"}}` stores video through FFV1; video is npy by default, as decoding FFV1 is
    slower than reading npy and PyAV is an extra).

    `output_dir` may be an fsspec URL (`s3://bucket/ds`) opened with `storage_options`: the
    parts are then kept in a local `parts_dir` (default: a directory named after the URL under
    `$NEUROCODEC_STAGING_DIR` or ~/.cache/neurocodec/staging) and the merged shards uploaded,
    the manifest last.

    `modalities` is a list of modality names (each extracted into the field of its name) or a
    mapping from field name to modality (`{"pupil_left": "behavior", "pupil_right": "behavior"}`:
    one modality's extractor and plugin, two fields); `series` and `modality_options` are then
    keyed by field. A field's extra fields are renamed after it (`units_a_observed` for
    `{"units_a": "spikes"}`). A modality no installed plugin registers is an
    UnknownModalityError here. A `registry` cannot be sent to worker processes: with one, use
    `workers=1`, or an executor that runs in this process (threads).

    `split`: make_split's keyword arguments (`{"by": "time", "fractions": {"train": 0.8, "valid":
    0.1, "test": 0.1}}`), a split made once the dataset is written; `stats=True` then computes the
    normalisation statistics from its first (training) part, or from every sample without
    `split` (`neurocodec.compute_stats`; docs/stats.md). The summary names their files.

    Use it as a context manager (or call `close()`) to release the output directory's lock
    when not finalizing.
    """

    def __init__(
        self, output_dir: str | os.PathLike, shard_size: int = 1000,
        modalities: Sequence[str] | Mapping[str, str] | None = None, bin_size_ms: float = 10.0,
        sequence_length: int | None = None, overlap: float | None = None, *, chunk_seconds: float | None = None,
        compression: str = "none",
        workers: int = 1, executor: concurrent.futures.Executor | None = None,
        series: Mapping[str, str | Sequence[str]] | None = None, modality_options: Mapping[str, Mapping[str, Any]] | None = None,
        coverage: str = "all", nan_policy: str = "error", on_error: str = "raise", overwrite: bool = False,
        fsync: bool = True, keep_parts: bool = False, progress: bool | None = None,
        storage_options: Mapping[str, Any] | None = None, parts_dir: str | os.PathLike | None = None,
        registry: Registry | None = None, intervals: Sequence[str] | None = None,
        fields: Mapping[str, Any] | None = None,
        input_storage_options: Mapping[str, Any] | None = None, codecs: str = "neural",
        field_codecs: Mapping[str, Mapping[str, Any]] | None = None, append: bool = False,
        split: Mapping[str, Any] | None = None, stats: bool = False,
    ) -> None:
        _check_arguments(shard_size, workers, on_error, registry)
        self.finish = Finish.of(split, stats, append=append, remote=is_remote(dataset_path(output_dir)))
        if append and (overwrite or is_remote(dataset_path(output_dir))):
            raise ValueError("append=True adds sessions to a local dataset: not with overwrite=True or a URL output")
        self.registry = registry
        field_modalities, chosen = plan_fields(modalities, fields, series, registry or default_registry())
        unknown = sorted(set(modality_options or {}) - set(field_modalities))
        if unknown:
            raise ValueError(f"modality_options names fields that are not converted: {unknown}")
        self.settings = ConvertSettings(
            modalities=tuple(field_modalities),
            field_modalities=tuple((f, m) for f, m in field_modalities.items() if f != m),
            window=WindowSpec.from_user(bin_size_ms, *window_shape(bin_size_ms, sequence_length, overlap,
                                                                       chunk_seconds)),
            shard_size=shard_size, compression=check_compression(compression),
            series=tuple(sorted(chosen.items())), modality_options=options_tuple(modality_options),
            coverage=coverage, nan_policy=nan_policy, fsync=fsync,
            intervals=None if intervals is None else names("intervals", intervals), codecs=codecs,
            field_codecs=codecs_tuple(field_codecs),
        )
        self.output_dir = dataset_path(output_dir)
        self.storage_options = dict(storage_options or {})
        # Inputs at URLs are opened with the output's storage options unless given their own.
        self.input_storage_options = dict(self.storage_options if input_storage_options is None
                                          else input_storage_options)
        self.overwrite, self.append = overwrite, append
        self._lock: OutputLock | None = None
        self._hold_lock()
        try:
            if not overwrite and not append and manifest_exists(self.output_dir, self.storage_options):
                raise DatasetExistsError(
                    f"{self.output_dir} already holds a dataset; pass overwrite=True to replace it, or "
                    "append=True to add these sessions to it")
        except BaseException:
            self.close()
            raise
        self.parts_dir = _parts_dir(self.output_dir, parts_dir)
        self.workers, self.executor, self.on_error = workers, executor, on_error
        self.keep_parts, self.progress = keep_parts, progress
        self._files: list[Path] = []
        self._results: dict[Path, dict[str, Any]] = {}
        self._failures: list[dict[str, str]] = []
        self._summary: dict[str, Any] | None = None

    # -- the output directory's lock ------------------------------------------------------------
    def _hold_lock(self) -> None:
        """Take the local output directory's lock unless held (URLs cannot be locked)."""
        if is_remote(self.output_dir) or (self._lock is not None and self._lock.held):
            return
        make_output_dir(self.output_dir)
        self._lock = OutputLock(self.output_dir)

    def close(self) -> None:
        """Release the output directory's lock (finished parts stay for a later run)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "NWBToWebDatasetConverter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- converting ---------------------------------------------------------------------------
    def convert_nwb_file(self, path: str | os.PathLike) -> dict[str, Any] | None:
        """Convert one file; return its part summary (None if it was skipped as bad input)."""
        return self.convert_nwb_files([path])[0]

    def convert_nwb_files(self, paths: Iterable[str | os.PathLike]) -> list[dict[str, Any] | None]:
        """Convert files (in parallel when configured); return their summaries in input order."""
        if self._summary is not None:
            raise RuntimeError("the converter is finalized")
        self._hold_lock()
        try:
            return self._convert(paths)
        except BaseException:
            self.close()
            raise

    def _convert(self, paths: Iterable[str | os.PathLike | NWBSource]) -> list[dict[str, Any] | None]:
        given, todo, versions = [], [], {}
        for raw in paths:
            source = NWBSource.of(raw, self.input_storage_options)
            if source in self._results or source in self._files or source in given:
                raise ValueError(f"{source} was already converted by this converter")
            given.append(source)
            try:
                versions[source] = source.fingerprint()
            except FileNotFoundError:
                self._fail(source, NWBError(f"{source}: no such file"))
                continue
            except Exception as exc:
                self._fail(source, wrap_error(source.path, exc))
                continue
            self._files.append(source)
            todo.append(source)
        pending = {}
        for source in todo:
            part = self._part_dir(source)
            reused = self._reusable(part, versions[source])
            if reused is not None:
                log.info("reusing finished part for %s", source)
                self._results[source] = reused
            else:
                pending[source] = part
        self._run(pending)
        return [self._results.get(s) for s in given]

    def _part_dir(self, source: NWBSource, settings: ConvertSettings | None = None) -> Path:
        return self.parts_dir / f"{session_key(source.path)}-{_settings_hash(settings or self.settings)}"

    def _agreeing_parts(self, done: list[NWBSource]) -> tuple[list[Path], ConvertSettings]:
        """The parts of `done` and the settings they share: where files store a field with
        different codecs (an int16 series with a scale next to a float32 one), the parts using
        a neural codec for it are converted again with the field plain (`neurocodec.nwb.agree`)."""
        parts = [self._part_dir(p) for p in done]
        fields = disagreeing_fields(parts)
        if not fields:
            return parts, self.settings
        readers = sorted({_reader_field(name, self.settings.modalities) for name in fields})
        settings = attrs.evolve(self.settings, plain_fields=tuple(sorted({*self.settings.plain_fields, *readers})))
        warnings.warn(f"the files store {describe(parts, fields)}: storing {', '.join(readers)} as plain .npy "
                      "(the same values) so that they fit one dataset", stacklevel=4)
        for i in parts_to_redo(parts, fields):
            parts[i] = self._part_dir(done[i], settings)
            _convert_part(str(done[i]), str(parts[i]), settings, source_fingerprint(done[i]), self.registry)
        return parts, settings

    def _reusable(self, part: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
        """The finished part's summary if `part` was converted from this version of its source
        (`fingerprint`) with these settings, else None."""
        try:
            record = json.loads((part / PART_SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        if record.get("source") != fingerprint or record.get("settings") != _settings_hash(self.settings):
            return None
        if not identifies_version(fingerprint) or not has_manifest(part):
            return None
        return record["summary"]

    def _run(self, pending: dict[Path, Path]) -> None:
        if not pending:
            return
        from tqdm.auto import tqdm

        args = {p: (str(p), str(d), self.settings, source_fingerprint(p), self.registry) for p, d in pending.items()}
        bar = tqdm(total=len(pending), desc="converting", unit="file",
                   disable=None if self.progress is None else not self.progress)
        try:
            run_tasks(args, _convert_part, self._collect, workers=self.workers, executor=self.executor,
                      fail_fast=self.on_error == "raise", advance=bar.update)
        finally:
            bar.close()

    def _collect(self, path: Path, result) -> None:
        try:
            self._results[path] = result()
        except ConversionError:
            raise  # the conversion as a whole failed, not this file
        except Exception as exc:
            self._fail(path, wrap_error(path, exc))

    def _fail(self, path: Path, error: Exception) -> None:
        if self.on_error == "raise":
            raise error
        warnings.warn(f"skipping {path}: {error}", stacklevel=3)
        log.warning("skipping %s: %s", path, error)
        self._failures.append({"file": str(path), "error": str(error)})
        if path in self._files:
            self._files.remove(path)

    # -- finishing ----------------------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        """Merge the parts in input order into the output dataset; return a summary.

        The summary holds samples, shards, bytes, modalities, compression, output_dir, files
        (converted), skipped_files (path and error), skipped_windows, and the series chosen per
        file and modality.
        """
        if self._summary is not None:
            return self._summary
        self._hold_lock()
        try:
            return self._finalize()
        finally:
            self.close()

    def _finalize(self) -> dict[str, Any]:
        from neurocodec.errors import SampleError
        from neurocodec.dataset.append import append_datasets
        from neurocodec.dataset.merge import merge_datasets
        from neurocodec.dataset.reader import read_manifest

        done = [p for p in self._files if p in self._results]
        if not done:
            raise SampleError(f"no file was converted into {self.output_dir}; nothing to finalize")
        parts, settings = self._agreeing_parts(done)
        sessions = {}
        for part in parts:
            with open(manifest_path(part), encoding="utf8") as f:
                session = json.load(f)["extra"]["session"]
            sessions[session["key"]] = session
        extra = {"sessions": sessions, "conversion": settings.to_dict(),
                 "sources": [str(p) for p in done], "skipped_files": self._failures}
        window = settings.window
        if is_chunked(window.sequence_length, window.step):  # the order merge_datasets keeps
            extra["timeline"] = build_timeline(parts, window.duration, window.bin_size, self.registry)
        writer = {"shard_size": self.settings.shard_size, "compression": self.settings.compression,
                  "converter": "nwb"}
        before = 0
        if self.append and manifest_exists(self.output_dir):  # the next version, old shards untouched
            before = read_manifest(self.output_dir).total_samples
            manifest = append_datasets(self.output_dir, parts, extra=extra, lock=self._lock,
                                       fsync=self.settings.fsync, registry=self.registry)
        else:
            manifest = merge_datasets(parts, self.output_dir, self.settings.shard_size, writer=writer, extra=extra,
                                      storage_options=self.storage_options, lock=self._lock,
                                      fsync=self.settings.fsync, overwrite=self.overwrite)
        if not self.keep_parts:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        chosen = {str(p): _objects(sessions[self._results[p]["session"]]["series"]) for p in done}
        summary = {
            "samples": manifest.total_samples - before, "shards": len(manifest.shards),
            "version": manifest.version, "total_samples": manifest.total_samples,
            "bytes": sum(s.bytes + s.index_bytes for s in manifest.shards),
            "modalities": [f.name for f in manifest.modalities], "compression": manifest.compression,
            "output_dir": str(self.output_dir), "files": [str(p) for p in done],
            "skipped_files": list(self._failures),
            "skipped_windows": sum(self._results[p]["skipped_windows"] for p in done),
            "series": {Path(file).name: objects for file, objects in chosen.items()},
        }
        report = build_report(summary, {str(p): self._results[p] for p in done}, chosen, self.settings.to_dict())
        summary["report"] = write_report(self.output_dir, report, fsync=self.settings.fsync,
                                         storage_options=self.storage_options)
        self._summary = summary
        summary.update(self.finish.run(self.output_dir))  # the dataset stands even if this fails
        return summary
