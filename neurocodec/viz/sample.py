"""The sample a picture shows: chosen by index or key, read with the decoding a picture wants,
and described with what the manifest knows of its session (units, channel and column names).

Everything here comes from disk and is untrusted: metadata values are type-checked before
they reach a title or an axis (a name that is not text is left out, a time that is not a finite
number means the window's times are unknown), and labels are cut to a readable length.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.dataset.reader import KEY, Dataset, read_manifest
from neurocodec.errors import DatasetError
from neurocodec.format import layout
from neurocodec.format.manifest import FieldSpec, Manifest
from neurocodec.viz.errors import ShowError

MAX_LABEL = 60
"""Longest label (session, subject, unit, channel or column name) drawn, in characters."""
_KEY = re.compile(r"sample_(\d{1,18})")


@attrs.frozen(slots=True)
class Words:
    """How a message names the ways of choosing: Python's arguments or the command's flags."""

    index: str = "index="
    key: str = "key="
    fields: str = "fields="
    window: str = "window_ms="


PYTHON, FLAGS = Words(), Words("--sample ", "--key ", "--field ", "--window-ms ")


@attrs.frozen(slots=True)
class FieldView:
    """One field of the sample as a panel draws it: its value, the modality that chooses the
    panel, the physical `unit` recorded for its series ('' when unknown), one label per
    channel, unit, ROI or column where the manifest names them, and for spikes the
    (bins, units) observation mask of the field that follows it."""

    name: str
    modality: str
    value: Any
    unit: str = ""
    labels: tuple[str, ...] = ()
    series: str = ""
    observed: np.ndarray | None = None


@attrs.frozen(slots=True)
class SampleView:
    """A sample to draw: where it came from, its window's times (None when the metadata does
    not hold them), its session and subject ('' when unknown), and its fields in manifest order."""

    dataset: str
    key: str
    start: float | None
    stop: float | None
    session: str
    subject: str
    fields: tuple[FieldView, ...]


def text(value: Any) -> str:
    """A metadata value as a label: str or int as text (cut to MAX_LABEL), anything else ''."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    value = str(value).replace("\n", " ")
    return value if len(value) <= MAX_LABEL else value[:MAX_LABEL - 1] + "…"


def seconds(value: Any) -> float | None:
    """A metadata time: a finite number of seconds, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def picture_decode(fields: Sequence[FieldSpec], decode: Mapping[str, Mapping[str, Any]] | None,
                   raster: bool = True) -> dict[str, Mapping[str, Any]]:
    """The decode options a picture reads with: stored spike events as events (a raster; as
    counts unless `raster`), unless `decode` says otherwise for that field; `decode`'s own
    options as given."""
    form = "events" if raster else "counts"
    chosen = {f.name: {"as": form} for f in fields if f.codec.get("id") == "spike-events"}
    chosen.update(decode or {})
    return chosen


def index_of(count: int, index: Any, key: Any, dataset: str, words: Words = PYTHON, what: str = "samples") -> int:
    """The sample to show: `index` (negative counts from the end), the sample whose key is
    `key`, or 0; ShowError in `words` when it is not one of the dataset's `count` samples."""
    if index is not None and key is not None:
        raise ShowError(f"give {words.index.strip()} or {words.key.strip()}, not both")
    if key is not None:
        match = _KEY.fullmatch(key) if isinstance(key, str) else None
        number = int(match.group(1)) - 1 if match else -1
        if not 0 <= number < count or key != layout.sample_key(number):
            last = layout.sample_key(count - 1) if count else "none"
            raise ShowError(f"{words.key}{key!r} is not a sample of {dataset}: its keys run "
                            f"{layout.sample_key(0)} to {last}")
        return number
    if index is None:
        index = 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ShowError(f"{words.index}{index!r} must be an integer")
    if not -count <= index < count:
        raise ShowError(f"{words.index}{index} is out of range: {dataset} holds {count} {what}"
                        + (f" (0 to {count - 1})" if count else ""))
    return int(index) % count


def session_record(manifest: Manifest, session: str) -> Mapping[str, Any]:
    """What the NWB converter recorded of `session` in the manifest ({} when nothing)."""
    sessions = manifest.extra.get("sessions")
    record = sessions.get(session) if isinstance(sessions, Mapping) and session else None
    return record if isinstance(record, Mapping) else {}


def _get(doc: Any, *path: str) -> Any:
    for name in path:
        doc = doc.get(name) if isinstance(doc, Mapping) else None
    return doc


def _labels(record: Mapping[str, Any], field: str) -> tuple[str, ...]:
    """Unit, channel or ROI ids of `field`, or the names of its columns (behavior)."""
    ids = _get(record, "ids", field)
    for name in ("unit_ids", "channel_ids", "roi_ids"):
        values = _get(ids, name)
        if isinstance(values, list):
            return tuple(text(v) for v in values)
    columns = _get(record, "series", field, "columns")
    if not isinstance(columns, list):
        return ()
    labels: list[str] = []
    for column in columns:
        name, shape = text(_get(column, "name")), _get(column, "shape")
        width = shape[1] if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) else 1
        labels.extend([name] if width == 1 else [f"{name}[{i}]" for i in range(min(width, 1024))])
    return tuple(labels)


def _observed_masks(fields: Sequence[FieldSpec], sample: Mapping[str, Any]) -> dict[str, tuple[str, np.ndarray]]:
    """spikes field name -> (mask field, its (bins, units) observation mask): a field of
    modality spikes_observed following it (the codec's `follows`), or a boolean one named
    `<spikes field>_observed`, as plain writers and the npy conversion store it."""
    spikes = {f.name for f in fields if f.modality == "spikes"}
    masks = {}
    for spec in fields:
        follows = spec.codec.get("follows") if spec.modality == "spikes_observed" else None
        target = follows if isinstance(follows, str) else (
            spec.name[:-len("_observed")] if spec.name.endswith("_observed") else "")
        value = sample.get(spec.name)
        if target in spikes and isinstance(value, np.ndarray) and value.dtype == bool and value.ndim == 2:
            masks[target] = (spec.name, value)
    return masks


def describe(sample: Mapping[str, Any], manifest: Manifest, dataset: str,
             only: Sequence[str] | None = None, words: Words = PYTHON) -> SampleView:
    """A read sample as a SampleView: its metadata's window and names, each field with what the
    manifest records of its session; `only` keeps those fields (ShowError for one not there)."""
    metadata = sample.get(layout.METADATA_FIELD)
    metadata = metadata if isinstance(metadata, Mapping) else {}
    session = text(metadata.get("session"))
    record = session_record(manifest, session)
    specs = [f for f in manifest.fields if f.name != layout.METADATA_FIELD]
    if only is not None:
        unknown = [name for name in only if name not in {f.name for f in specs}]
        if unknown:
            raise ShowError(f"{words.fields}{unknown[0]!r} is not a field of {dataset}; its fields: "
                            f"{', '.join(f.name for f in specs)}")
        specs = [f for f in specs if f.name in only]
    masks = _observed_masks(manifest.fields, sample)
    drawn_with_spikes = {name for name, _ in masks.values()} if only is None else set()
    views = tuple(FieldView(
        name=f.name, modality=f.modality, value=sample.get(f.name),
        unit=text(_get(record, "series", f.name, "unit")), labels=_labels(record, f.name),
        series=text(_get(record, "series", f.name, "name")), observed=masks.get(f.name, ("", None))[1])
        for f in specs if f.name not in drawn_with_spikes)
    start, stop = seconds(metadata.get("start_time")), seconds(metadata.get("stop_time"))
    if start is None or stop is None or not stop > start:
        start = stop = None
    subject = text(metadata.get("subject_id")) or text(_get(record, "subject_id"))
    return SampleView(dataset=dataset, key=text(sample.get(KEY)), start=start, stop=stop,
                      session=session or text(metadata.get("session_id")), subject=subject, fields=views)


def read_sample(source: Any, *, index: Any = None, key: Any = None, window_ms: Any = None,
                decode: Mapping[str, Mapping[str, Any]] | None = None, fields: Sequence[str] | None = None,
                raster: bool = True, words: Words = PYTHON,
                storage_options: Mapping[str, Any] | None = None) -> SampleView:
    """Read the sample (or, with `window_ms`, the load-time window on the grid) to draw from a
    dataset path or URL, or from an open `Dataset` (read with its own decoding); see
    `picture_decode` for `decode` and `raster`."""
    if isinstance(source, Dataset):
        if window_ms is not None:
            raise ShowError(f"{words.window.strip()} needs the dataset's path, not an open Dataset")
        name = _name(source.path)
        return describe(source[index_of(len(source), index, key, name, words)], source.manifest, name,
                        fields, words)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"give a dataset path or a neurocodec.Dataset, got {type(source).__name__}")
    name = _name(source)
    manifest = read_manifest(source, storage_options=storage_options)
    decode = picture_decode(manifest.fields, decode, raster)
    if window_ms is not None:
        return _read_window(source, manifest, index, key, window_ms, decode, fields, words, storage_options)
    with Dataset(source, decode=decode, storage_options=storage_options) as ds:
        return describe(ds[index_of(len(ds), index, key, name, words)], ds.manifest, name, fields, words)


def _read_window(source: Any, manifest: Manifest, index: Any, key: Any, window_ms: Any,
                 decode: Mapping[str, Mapping[str, Any]] | None, fields: Sequence[str] | None,
                 words: Words, storage_options: Mapping[str, Any] | None) -> SampleView:
    """Window slot `index` of the grid of `window_ms` windows of a chunked dataset."""
    name = _name(source)
    from neurocodec.loader.datasets import RandomAccessWebDataset

    if key is not None:
        raise ShowError(f"{words.key.strip()} names a stored sample; a load-time window "
                        f"({words.window.strip()}) is chosen by {words.index.strip()}")
    try:
        windows = RandomAccessWebDataset(source, window_ms=window_ms, tensors=False, storage_options=storage_options,
                                         decode=decode)
    except (ValueError, DatasetError) as exc:
        if isinstance(exc, DatasetError) and "timeline" not in str(exc):
            raise
        message = str(exc).replace(PYTHON.window, words.window)
        asked = f"{window_ms:g}" if isinstance(window_ms, (int, float)) else repr(window_ms)
        raise ShowError(message if words.window in message else f"{words.window}{asked}: {message}") from None
    grid = f"the {window_ms:g} ms grid"
    number = index_of(len(windows), index, None, f"{name} in windows of {window_ms:g} ms", words, "windows")
    view = describe(windows[number], manifest, name, fields, words)
    return attrs.evolve(view, key=f"window {number} of {grid}")


def _name(path: Any) -> str:
    """The dataset's name for a title: its directory's name (or the URL's last part)."""
    text_path = os.fspath(path).rstrip("/")
    return text(text_path.rsplit("/", 1)[-1] or text_path)
