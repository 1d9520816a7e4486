"""Globally unique string ids of units, channels and ROIs, read from a dataset's NWB session records.

A unit, a channel or an ROI is named by the recording it was recorded in and its row in the NWB
table that lists it: `<identifier>/<table>/<row id>`, where

- `<identifier>` is the NWB file's `identifier` (`NWBFile.identifier`, "a unique text identifier
  for the file"; DANDI files carry UUIDs). It travels inside the file, so it is the same on every
  machine, for every conversion of the file (other windows, other fields, chunks) and in every
  dataset that holds it: the same unit always gets the same id, and a model keeps its embedding.
  Neither the session key (a hash of the file's absolute path) nor the output directory's name
  has these properties.
- `<table>` is `units` for the file's Units table (the table's path without its leading `/` for
  another Units table, `processing/ecephys/units_ks`), `electrodes` for channels (lfp and eeg
  channels are rows of the file's electrodes table), the PlaneSegmentation's name for ROIs.
- `<row id>` is the row's id in that table, as the record's `unit_ids`, `channel_ids` and
  `roi_ids` hold it.

The converter stores the prefixes (everything up to the row id) in each session record, under
`id_prefixes[field][list]` (`{"spikes": {"unit_ids": "sess-uuid/units/"}}`); for a dataset
converted before that they are derived from the record by the same rule, so old and new
conversions of a file give the same ids.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs

from neurocodec.errors import DatasetError

KINDS = {"units": "unit_ids", "channels": "channel_ids", "rois": "roi_ids"}
"""Vocabulary kind -> the list of local ids a session record holds for it in `ids[field]`."""
PREFIXES = "id_prefixes"
"""The session record's key holding each field's global id prefixes."""


@attrs.frozen(slots=True)
class SessionIds:
    """One session's global ids of one kind, by field (each in the order of the field's columns)."""

    key: str
    recording: tuple[Any, ...]
    """(identifier, session_id, subject_id, session_start_time): what tells two recordings apart."""
    fields: Mapping[str, tuple[str, ...]]
    prefixes: Mapping[str, str]
    """field -> the prefix of its ids (recording and table)."""


def derived_prefix(session: Mapping[str, Any], field: str, name: str) -> str:
    """The prefix of the global ids of `session["ids"][field][name]` by the module's rule."""
    identifier = session.get("identifier")
    if not isinstance(identifier, str) or not identifier:
        raise ValueError("the session record has no NWB identifier")
    series = _mapping(_mapping(session.get("series")).get(field))
    if name == "unit_ids":
        table = series.get("object") if isinstance(series.get("object"), str) else "/units"
        return f"{identifier}/{table.strip('/')}/"
    if name == "roi_ids":
        segmentation = series.get("plane_segmentation")
        return f"{identifier}/{segmentation if isinstance(segmentation, str) else 'rois'}/"
    if name == "channel_ids":
        return f"{identifier}/electrodes/"
    raise ValueError(f"no global ids for {name!r}")


def id_prefixes(session: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """`{field: {list: prefix}}` for every list of unit, channel or ROI ids in `session["ids"]`:
    what the converter stores under `id_prefixes`."""
    prefixes: dict[str, dict[str, str]] = {}
    for field, ids in session.get("ids", {}).items():
        named = {name: derived_prefix(session, field, name) for name in KINDS.values() if name in ids}
        if named:
            prefixes[field] = named
    return prefixes


def session_ids(sessions: Any, kind: str, source: str, fields: Iterable[str] | None = None) -> list[SessionIds]:
    """The global ids of `kind` ("units", "channels", "rois") of every session record in
    `sessions` (a manifest's `extra["sessions"]`), restricted to `fields` when given; sessions
    without any are left out. DatasetError naming `source`, the session and the field for a
    record that is not what the converter writes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not isinstance(sessions, Mapping) or not sessions:
        raise DatasetError(f"{source}: the manifest holds no NWB session records (extra.sessions); "
                           "a vocabulary reads the ids of datasets converted from NWB")
    wanted = None if fields is None else set(fields)
    found = []
    for key, session in sessions.items():
        where = f"{source}: session {key!r}"
        if not isinstance(session, Mapping) or not isinstance(session.get("ids", {}), Mapping):
            raise DatasetError(f"{where}: the record is not an object with an object of ids")
        by_field, prefixes = {}, {}
        for field, ids in session.get("ids", {}).items():
            if (wanted is None or field in wanted) and isinstance(ids, Mapping) and KINDS[kind] in ids:
                prefixes[field], by_field[field] = _field_ids(session, field, KINDS[kind], f"{where}, field {field!r}")
        if by_field:
            recording = tuple(session.get(k) for k in ("identifier", "session_id", "subject_id", "session_start_time"))
            found.append(SessionIds(str(key), recording, by_field, prefixes))
    return found


def _field_ids(session: Mapping[str, Any], field: str, name: str, where: str) -> tuple[str, tuple[str, ...]]:
    local = session["ids"][field][name]
    if not isinstance(local, list) or not all(_plain_id(i) for i in local):
        raise DatasetError(f"{where}: ids.{name} must be a list of integer or text ids")
    if len(set(map(str, local))) != len(local):
        raise DatasetError(f"{where}: ids.{name} names a row twice; its global ids would not be unique")
    prefix = _mapping(_mapping(session.get(PREFIXES)).get(field)).get(name)
    if prefix is None:
        try:
            prefix = derived_prefix(session, field, name)
        except ValueError as exc:
            raise DatasetError(f"{where}: {exc}; its global ids cannot be made") from None
    if not isinstance(prefix, str) or not prefix:
        raise DatasetError(f"{where}: {PREFIXES}.{field}.{name} must be a non-empty text")
    return prefix, tuple(f"{prefix}{i}" for i in local)


def _plain_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one (a part of a record that is absent)."""
    return value if isinstance(value, Mapping) else {}
