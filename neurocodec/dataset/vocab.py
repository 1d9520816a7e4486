"""`Vocabulary`: globally unique unit (channel, ROI) ids to contiguous integers, for embeddings.

Built from one or several datasets converted from NWB (paths, URLs, opened `Dataset`s or their
`Manifest`s), it numbers the global ids of `neurocodec.dataset.global_ids`
(`<NWB identifier>/<table>/<row id>`) 0, 1, 2, ...: ordered by recording and table (the id
prefix, as text), then in the order of the session's columns. The order depends only on the ids,
never on the order the datasets are given in nor on the machine, so two machines build the same
vocabulary. The same recording in several datasets (converted again, with other windows) gives
the same ids, counted once.

It only grows: `add()` gives the ids it has not seen the next integers (in the same order among
themselves) and never renumbers one, and `load_state_dict()` restores a checkpoint's numbering
and appends whatever the attached datasets add to it, so a fine-tuned model keeps its
embeddings. `indices(session_key)` (also `unit_index`) is what a collate function needs: the
vocabulary index of each of that session's local units, in the order of the counts' columns and
of the events' unit indices.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from neurocodec.dataset.global_ids import KINDS, SessionIds, session_ids
from neurocodec.dataset.reader import Dataset, read_manifest
from neurocodec.errors import DatasetError
from neurocodec.format.manifest import Manifest
from neurocodec.fsutil import atomic_write_bytes

FORMAT = "neurocodec-vocabulary"
VERSION = 1
Source = Any
"""A dataset: a path or URL (str or os.PathLike), a `Dataset`, or a `Manifest`."""


class Vocabulary:
    """Global ids of one kind ("units", "channels" or "rois") numbered 0..n-1, append-only.

    `fields` restricts it to those sample fields (e.g. `("spikes",)`); default: every field
    whose session records hold ids of the kind.
    """

    def __init__(self, kind: str = "units", fields: Sequence[str] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        if isinstance(fields, str):
            fields = (fields,)
        self.kind = kind
        self.fields = None if fields is None else tuple(fields)
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self._sessions: dict[str, SessionIds] = {}
        self._recordings: dict[str, tuple[Any, ...]] = {}
        self._tables: dict[str, tuple[str, ...]] = {}  # units: the rows of each Units table seen
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def build(cls, datasets: Source | Iterable[Source], kind: str = "units",
              fields: Sequence[str] | None = None, *, storage_options: Mapping[str, Any] | None = None) -> "Vocabulary":
        """A vocabulary of every id of `kind` in `datasets` (one, or several)."""
        vocabulary = cls(kind, fields)
        vocabulary.add(datasets, storage_options=storage_options)
        return vocabulary

    def add(self, datasets: Source | Iterable[Source], *,
            storage_options: Mapping[str, Any] | None = None) -> list[str]:
        """Attach `datasets` (their sessions become known to `indices`) and append the ids not
        seen yet; return those ids. Nothing changes when a dataset is refused (DatasetError)."""
        found: list[SessionIds] = []
        for source in _sources(datasets):
            manifest, name = _manifest(source, storage_options)
            found += session_ids(manifest.extra.get("sessions"), self.kind, name, self.fields)
        recordings, sessions, tables = dict(self._recordings), dict(self._sessions), dict(self._tables)
        for session in found:
            _check_recording(recordings, session)
            if self.kind == "units":
                _check_units(tables, session)
            sessions[session.key] = _merged(sessions.get(session.key), session, self.kind)
        new = self._new_ids(found)
        self._recordings, self._sessions, self._tables = recordings, sessions, tables
        self._append(new)
        return new

    def _new_ids(self, found: Iterable[SessionIds]) -> list[str]:
        """The ids of `found` not in the vocabulary, in the canonical order: by prefix (recording
        and table), then each session's column order (several lists of one table, e.g. two
        series' channels: in sorted order of the lists)."""
        groups: dict[str, set[tuple[str, ...]]] = {}
        for session in found:
            for field, ids in session.fields.items():
                groups.setdefault(session.prefixes[field], set()).add(ids)
        new, seen = [], set(self._index)
        for prefix in sorted(groups):
            for ids in sorted(groups[prefix]):
                fresh = [i for i in ids if i not in seen]
                seen.update(fresh)
                new += fresh
        return new

    def _append(self, ids: Iterable[str]) -> None:
        for uid in ids:
            self._index[uid] = len(self._ids)
            self._ids.append(uid)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, uid: object) -> bool:
        return uid in self._index

    def __getitem__(self, uid: str) -> int:
        """The integer of global id `uid` (KeyError if it is not in the vocabulary)."""
        return self._index[uid]

    def __repr__(self) -> str:
        return f"Vocabulary(kind={self.kind!r}, ids={len(self)}, sessions={len(self._sessions)})"

    @property
    def ids(self) -> tuple[str, ...]:
        """Every global id, in the order of their integers."""
        return tuple(self._ids)

    @property
    def sessions(self) -> tuple[str, ...]:
        """The keys of the attached datasets' sessions that hold ids of this kind."""
        return tuple(self._sessions)

    def session_ids(self, session_key: str, field: str | None = None) -> tuple[str, ...]:
        """The global ids of a session's local units (channels, ROIs), in column order; `field`
        names the field when the session has ids of this kind in several."""
        session = self._session(session_key)
        return session.fields[_field(session, field, self.kind)]

    def indices(self, session_key: str, field: str | None = None) -> np.ndarray:
        """The vocabulary index (int64) of each local unit (channel, ROI) of the session
        `session_key` (a window's `metadata["session"]`), in column order; a read-only array."""
        session = self._session(session_key)
        chosen = _field(session, field, self.kind)
        cached = self._cache.get((session_key, chosen))
        if cached is None:
            cached = np.array([self._index[uid] for uid in session.fields[chosen]], dtype=np.int64)
            cached.flags.writeable = False
            self._cache[(session_key, chosen)] = cached
        return cached

    unit_index = indices
    """`indices` under the name the spike tokens' collate takes (`Callable[[str], np.ndarray]`)."""

    def _session(self, key: str) -> SessionIds:
        session = self._sessions.get(key)
        if session is None:
            raise KeyError(f"session {key!r} has no {self.kind} in this vocabulary's datasets; "
                           "attach its dataset with Vocabulary.add()")
        return session

    def state_dict(self) -> dict[str, Any]:
        """The numbering, JSON-ready and independent of the machine: format, kind and ids."""
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "ids": list(self._ids)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Number ids as `state` did (a checkpoint's `state_dict()`); ids of the attached
        datasets that `state` lacks follow, in their present order. ValueError for a state of
        another kind or that is not a vocabulary's."""
        ids = _checked_state(state, self.kind)
        restored = set(ids)
        extra = [uid for uid in self._ids if uid not in restored]
        self._ids, self._index, self._cache = [], {}, {}
        self._append(ids + extra)

    def save(self, path: str | os.PathLike) -> None:
        """Write `state_dict()` to `path` as JSON, atomically."""
        text = json.dumps(self.state_dict(), ensure_ascii=False, separators=(",", ":"))
        atomic_write_bytes(Path(path), text.encode("utf8"))

    @classmethod
    def load(cls, path: str | os.PathLike, datasets: Source | Iterable[Source] = (), *,
             fields: Sequence[str] | None = None, storage_options: Mapping[str, Any] | None = None) -> "Vocabulary":
        """The vocabulary `save()` wrote to `path`, with `datasets` attached (their new ids
        appended). ValueError naming the file if it is not one."""
        try:
            state = json.loads(Path(path).read_text(encoding="utf8"))
            kind = state.get("kind") if isinstance(state, dict) else None
            vocabulary = cls(kind if isinstance(kind, str) and kind in KINDS else "units", fields)
            vocabulary.load_state_dict(state)  # refuses a state without a valid kind
        except ValueError as exc:
            raise ValueError(f"{path} is not a neurocodec vocabulary: {exc}") from None
        vocabulary.add(datasets, storage_options=storage_options)
        return vocabulary


def _checked_state(state: Any, kind: str) -> list[str]:
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise ValueError(f"not a vocabulary state (format {FORMAT!r} expected)")
    if state.get("version") != VERSION:
        raise ValueError(f"vocabulary version {state.get('version')!r} is not supported (this is {VERSION})")
    if state.get("kind") != kind:
        raise ValueError(f"the state numbers {state.get('kind')!r}, this vocabulary {kind!r}")
    ids = state.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("the state's ids must be a list of text ids")
    if len(set(ids)) != len(ids):
        raise ValueError("the state's ids name an id twice")
    return list(ids)


def _check_recording(recordings: dict[Any, tuple[Any, ...]], session: SessionIds) -> None:
    """Refuse two different recordings (session id, subject or start time differ) that declare
    the same NWB identifier: their units would share ids."""
    identifier = session.recording[0]
    known = recordings.setdefault(identifier, session.recording)
    if identifier is not None and known != session.recording:
        raise DatasetError(f"session {session.key!r} declares NWB identifier {identifier!r} like another "
                           f"recording, but differs from it (session id, subject, start time: {known[1:]} "
                           f"vs {session.recording[1:]}); their units would share ids. Give the NWB files "
                           "distinct identifiers")


def _check_units(tables: dict[str, tuple[str, ...]], session: SessionIds) -> None:
    """Refuse two files whose Units tables share a prefix (identifier and table) but not their
    rows: a file sorted again under the same identifier, or files that copy one identifier. (The
    converter reads the whole table; channels and ROIs may be subsets, and are not compared.)"""
    for field, ids in session.fields.items():
        known = tables.setdefault(session.prefixes[field], ids)
        if known != ids:
            raise DatasetError(f"session {session.key!r}, field {field!r}: the Units table "
                               f"{session.prefixes[field]!r} has other units ({len(ids)}) than in another "
                               f"session with that NWB identifier ({len(known)}); their units would share "
                               "ids. Give the NWB files distinct identifiers")


def _merged(known: SessionIds | None, session: SessionIds, kind: str) -> SessionIds:
    """One session key seen in several datasets: the union of its fields, which must agree."""
    if known is None:
        return session
    if known.recording != session.recording or any(
            known.fields.get(f, ids) != ids for f, ids in session.fields.items()):
        raise DatasetError(f"session {session.key!r} appears in two datasets with different {kind} "
                           "(its file changed between conversions); build a vocabulary of one of them")
    return SessionIds(known.key, known.recording, {**known.fields, **session.fields},
                      {**known.prefixes, **session.prefixes})


def _field(session: SessionIds, field: str | None, kind: str) -> str:
    if field is None:
        if len(session.fields) == 1:
            return next(iter(session.fields))
        raise KeyError(f"session {session.key!r} has {kind} in fields {sorted(session.fields)}; name one with field=")
    if field not in session.fields:
        raise KeyError(f"session {session.key!r} has no {kind} in field {field!r} (it has {sorted(session.fields)})")
    return field


def _sources(datasets: Source | Iterable[Source]) -> list[Source]:
    if isinstance(datasets, (str, os.PathLike, Dataset, Manifest)):
        return [datasets]
    return list(datasets)


def _manifest(source: Source, storage_options: Mapping[str, Any] | None) -> tuple[Manifest, str]:
    if isinstance(source, Dataset):
        return source.manifest, str(source.path)
    if isinstance(source, Manifest):
        return source, "the manifest"
    if isinstance(source, (str, os.PathLike)):
        return read_manifest(source, storage_options=storage_options), str(source)
    raise TypeError(f"a dataset is a path, URL, Dataset or Manifest, got {type(source).__name__}")
