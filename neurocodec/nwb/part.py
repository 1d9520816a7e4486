"""Converting one NWB file into one part dataset: the unit of work of parallel conversion.

Runs in any process (a pool worker, a Dask worker): it takes only plain, picklable arguments,
opens the file itself, and writes the part atomically (the part's manifest last), so an
interrupted run leaves no part that looks finished.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import attrs

from neurocodec.dataset.global_ids import id_prefixes
from neurocodec.errors import NeurocodecError
from neurocodec.nwb.columns import ColumnsReader
from neurocodec.nwb.context import WindowLabels, session_context
from neurocodec.nwb.extract import NAN_POLICIES, ExtractOptions, ModalityReader, NWBError
from neurocodec.nwb.source import NWBSource, SourceVersion
from neurocodec.nwb.session import Trials, session_info, session_key
from neurocodec.nwb.windows import WindowSpec
from neurocodec.plugin.manager import default_registry
from neurocodec.plugin.registry import Registry

log = logging.getLogger("neurocodec.nwb")
COVERAGE = ("all", "fill")
CODEC_STYLES = ("neural", "npy")


@attrs.frozen(slots=True)
class ConvertSettings:
    """Everything that decides a part's content (hashable into the part's name).

    `modalities` names the sample fields extracted, each by the extractor of its modality: the
    field's own name, or the modality `field_modalities` maps it to (only fields not named after
    their modality are listed there).
    """

    modalities: tuple[str, ...]
    window: WindowSpec
    shard_size: int
    compression: str
    series: tuple[tuple[str, str | tuple[str, ...]], ...] = ()
    modality_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    coverage: str = "all"
    nan_policy: str = "error"
    fsync: bool = True
    field_modalities: tuple[tuple[str, str], ...] = ()
    intervals: tuple[str, ...] | None = None
    """TimeIntervals tables whose overlapping rows go into each window's metadata, by name or
    path; None: every table in the file."""
    codecs: str = "neural"
    """"neural": the codecs that know neural data (spike events, raw integers with their scale,
    see docs/format.md); "npy": every field as plain `.npy` (readable by webdataset, Hugging Face
    datasets and Ray Data)."""
    field_codecs: tuple[tuple[str, str], ...] = ()
    plain_fields: tuple[str, ...] = ()
    """Fields read as plain arrays and stored as `.npy` whatever `codecs` says: the converter sets
    them when files would store a field with different codecs (see `neurocodec.nwb.agree`)."""
    """Codec configs (as sorted JSON) chosen by the user for fields, over what `codecs` gives
    (`{"video": {"id": "av-video", "codec": "ffv1"}}`)."""

    def modality_of(self, field: str) -> str:
        """The modality whose extractor and plugin handle `field`."""
        return dict(self.field_modalities).get(field, field)

    def __attrs_post_init__(self) -> None:
        if not self.modalities:
            raise ValueError("modalities must name at least one modality")
        if self.coverage not in COVERAGE:
            raise ValueError(f"coverage must be one of {COVERAGE}, got {self.coverage!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if self.codecs not in CODEC_STYLES:
            raise ValueError(f"codecs must be one of {CODEC_STYLES}, got {self.codecs!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, recorded in the manifest."""
        modalities: Any = list(self.modalities)
        if self.field_modalities:  # recorded as given; a plain list stays a list (same hash)
            modalities = {f: self.modality_of(f) for f in self.modalities}
        return {
            "modalities": modalities, "bin_size_s": self.window.bin_size,
            "sequence_length": self.window.sequence_length, "step_bins": self.window.step,
            "series": dict(self.series), "coverage": self.coverage, "nan_policy": self.nan_policy,
            "modality_options": {k: dict(v) for k, v in self.modality_options},
            "intervals": None if self.intervals is None else list(self.intervals),
            "codecs": self.codecs,
            "field_codecs": {f: json.loads(c) for f, c in self.field_codecs},
            "plain_fields": list(self.plain_fields),
        }


def source_fingerprint(source: NWBSource | str | os.PathLike) -> SourceVersion:
    """The source (a path, URL or NWBSource) with what identifies its version now: absolute
    path, size and modification time of a file; path, file count, total size and newest
    modification time of an NWB-Zarr folder; URL, size and ETag of a file at a URL (see
    `neurocodec.nwb.source`)."""
    return NWBSource.of(source).version()


def open_readers(nwbfile: Any, path: Path, settings: ConvertSettings,
                 registry: Registry) -> dict[str, ModalityReader]:
    """One reader per requested field, through the extractors of `registry`'s plugins."""
    series, options = dict(settings.series), {k: dict(v) for k, v in settings.modality_options}
    readers, produced = {}, {}
    for field in settings.modalities:
        modality = settings.modality_of(field)
        extractor = registry.nwb_extractor(modality)
        if extractor is None:
            raise NWBError(f"no installed plugin extracts modality {modality!r} from NWB files")
        requested = series.get(field)
        names = requested if isinstance(requested, tuple) else (requested,)
        # Columns combine several series into one array: their parts are read as plain arrays.
        style = "npy" if isinstance(requested, tuple) or field in settings.plain_fields else settings.codecs
        opened = [_open_one(extractor, nwbfile, ExtractOptions(
            path=path, series=name, options=options.get(field, {}), nan_policy=settings.nan_policy,
            codecs=style, window=settings.window), field, modality, settings) for name in names]
        reader = opened[0] if not isinstance(requested, tuple) else ColumnsReader(modality, opened, path)
        for name in reader.fields():
            name = field_name(name, field, modality)
            if name in produced:
                raise NWBError(f"{path}: fields {field!r} and {produced[name]!r} both produce field {name!r}; "
                               "name them apart")
            produced[name] = field
        readers[field] = reader
    return readers


def _open_one(extractor: Any, nwbfile: Any, options: ExtractOptions, field: str, modality: str,
              settings: ConvertSettings) -> ModalityReader:
    reader = extractor.open(nwbfile, options)
    if reader is None:
        named = "" if field == modality else f" for field {field!r}"
        raise NWBError(f"{options.path}: holds no {modality} data{named} (requested modalities: "
                       f"{', '.join(settings.modalities)})")
    return reader


def reader_codecs(readers: Mapping[str, ModalityReader], settings: ConvertSettings) -> dict[str, Any]:
    """The codec configs the readers declare for their fields, by sample field name (none when
    the settings ask for plain npy)."""
    chosen = {}
    for field, reader in readers.items() if settings.codecs == "neural" else ():
        if field in settings.plain_fields:
            continue
        modality = settings.modality_of(field)
        for name, config in reader.codecs().items():
            config = dict(config)
            if isinstance(config.get("follows"), str):  # a renamed field's mask follows it by its new name
                config["follows"] = field_name(config["follows"], field, modality)
            chosen[field_name(name, field, modality)] = config
    chosen.update({field: json.loads(config) for field, config in settings.field_codecs})
    return chosen


def field_name(name: str, field: str, modality: str) -> str:
    """The sample field a reader's field `name` is stored as when its modality is extracted as
    `field`: the modality's own field becomes `field`, others are prefixed by it
    (`spikes_observed` -> `units_a_observed`). Unchanged when `field` is the modality."""
    if field == modality:
        return name
    if name.startswith(modality):
        return field + name[len(modality):]
    return f"{field}_{name}"


def _renamed(values: Mapping[str, Any], field: str, modality: str) -> dict[str, Any]:
    return {field_name(k, field, modality): v for k, v in values.items()}


def convert_file(path: str | os.PathLike | NWBSource, part_dir: str | os.PathLike, settings: ConvertSettings,
                 registry: Registry | None = None) -> dict[str, Any]:
    """Convert one NWB file into the part dataset `part_dir`; return the part's summary.

    `path` is a local NWB file, a local NWB-Zarr folder, or an NWBSource (a URL with its storage
    options): see `neurocodec.nwb.source`. Extractors, modalities and codecs come from
    `registry` (default: the installed plugins). Raises NWBError (or another NeurocodecError)
    naming the file for bad input; the part directory then holds no manifest.
    """
    from neurocodec.dataset.writer import WebDatasetWriter

    source = NWBSource.of(path)
    path, part_dir = source.path, Path(part_dir)
    with source.open() as (nwbfile, fingerprint):
        registry = registry or default_registry()
        readers = open_readers(nwbfile, path, settings, registry)
        spans = {m: r.span() for m, r in readers.items()}
        if settings.coverage == "all":
            begin, end = max(s for s, _ in spans.values()), min(e for _, e in spans.values())
        else:
            begin, end = min(s for s, _ in spans.values()), max(e for _, e in spans.values())
        labels = WindowLabels(Trials(nwbfile), nwbfile, path, settings.intervals)
        session = _describe_session(nwbfile, path, readers, spans, labels)
        session["source"] = fingerprint  # the file (path or URL) and version the windows come from
        options = {k: dict(v) for k, v in settings.modality_options}
        writer = WebDatasetWriter(part_dir, settings.shard_size, settings.compression, overwrite=True,
                                  fsync=settings.fsync, modality_options=options, registry=registry,
                                  modalities=dict(settings.field_modalities), codecs=reader_codecs(readers, settings),
                                  dataset_metadata={"session": session, "source": fingerprint,
                                                    "settings": settings.to_dict()})
        try:
            written, skipped = _write_windows(writer, readers, settings, session, labels, path, begin, end)
            if written == 0:
                raise NWBError(f"{path}: no window of {settings.window.duration:g} s is covered by every "
                               f"requested modality (spans: {spans})")
            for field, reader in readers.items():  # what reading found (e.g. windows resampled)
                session["series"][field].update(reader.describe())
            writer.dataset_metadata["session"] = session
            summary = writer.finalize()
        except BaseException:
            writer.abort()
            raise
    key = session["key"]
    summary.update(session=key, windows=written, skipped_windows=skipped, path=str(path))
    log.info("converted %s: %d windows (%d skipped)", path, written, skipped)
    return summary


def wrap_error(path: Path, exc: BaseException) -> NeurocodecError:
    """An error from converting `path` as a NeurocodecError that names the file."""
    if isinstance(exc, NeurocodecError) and str(path) in str(exc):
        return exc
    return NWBError(f"{path}: {type(exc).__name__}: {exc}")


def codecs_tuple(codecs: Mapping[str, Mapping[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    """Per-field codec configs as a hashable tuple for ConvertSettings (TypeError in plain words
    for anything that is not a JSON codec config)."""
    if codecs is None:
        return ()
    if not isinstance(codecs, Mapping):
        raise TypeError(f"field_codecs must map field names to codec configs, got {type(codecs).__name__}")
    pairs = []
    for field, config in codecs.items():
        if not isinstance(config, Mapping) or not isinstance(config.get("id"), str):
            raise TypeError(f"field_codecs[{field!r}] must be a codec config, a dict with a string 'id' "
                            f"(e.g. {{'id': 'av-video', 'codec': 'ffv1'}}), got {config!r}")
        try:
            pairs.append((field, json.dumps(dict(config), sort_keys=True, allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"field_codecs[{field!r}] is not JSON: {exc}") from None
    return tuple(sorted(pairs))


def options_tuple(options: Mapping[str, Mapping[str, Any]] | None) -> tuple:
    """modality_options as a hashable tuple for ConvertSettings."""
    return tuple(sorted((k, tuple(sorted(v.items()))) for k, v in (options or {}).items()))


def _describe_session(nwbfile: Any, path: Path, readers: Mapping[str, Any], spans: Mapping[str, Any],
                      labels: WindowLabels) -> dict[str, Any]:
    """The session as the part's manifest records it: ids, its series (each reader's description),
    unit and channel ids with their columns, spans, the interval tables and the electrodes table
    (see neurocodec.nwb.context), and `id_prefixes`: what makes those ids globally unique (see
    neurocodec.dataset.global_ids)."""
    session = {**session_info(nwbfile, path), "key": session_key(path),
               "series": {m: dict(r.describe()) for m, r in readers.items()},
               "ids": {m: dict(r.ids()) for m, r in readers.items()},
               "span_s": {m: list(s) for m, s in spans.items()},
               **session_context(labels, nwbfile, path)}
    session["id_prefixes"] = id_prefixes(session)
    return session


def _write_windows(writer: Any, readers: Mapping[str, Any], settings: ConvertSettings, session: Mapping[str, Any],
                   labels: WindowLabels, path: Path, begin: float, end: float) -> tuple[int, int]:
    """Write every window of [begin, end) that the coverage policy admits; (written, skipped).

    Each window's metadata: session, file and subject, window index and times, what `labels`
    says of it (`trials`, `intervals`, see neurocodec.nwb.context) and the fields `missing`."""
    spec = settings.window
    written = skipped = 0
    for index, start in enumerate(spec.starts(begin, end).tolist()):
        sample, missing = {}, []
        for field, reader in readers.items():
            values = reader.read(start, spec)
            if values is None:
                missing.append(field)
            else:
                sample.update(_renamed(values, field, settings.modality_of(field)))
        if missing and (settings.coverage == "all" or len(missing) == len(readers)):
            skipped += 1
            continue
        for field in missing:  # coverage "fill": zeros, and the metadata says so
            sample.update(_renamed(readers[field].blank(spec), field, settings.modality_of(field)))
        stop = start + spec.duration
        writer.write_sample(sample, metadata={
            "session": session["key"], "source_file": path.name, "session_id": session["session_id"],
            "subject_id": session["subject_id"], "window_index": index,
            "start_time": start, "stop_time": stop, **labels.labels(start, stop),
            "missing": missing, "source": session["source"],
        })
        written += 1
    return written, skipped
