"""Labels and context of an NWB file: interval tables per window, the electrodes table per session.

Interval tables: every TimeIntervals table of the file (trials, epochs, invalid_times, tables in
`/intervals`, and TimeIntervals anywhere else, e.g. in processing modules), or only those named
by the converter's `intervals=` (by name or HDF5 path), is read once, and each window's metadata
gets, under `"intervals"`, `{table: [row, ...]}`: the rows overlapping the window `[start,
stop)` (`start_time < stop and stop_time > start`; a row with a NaN time overlaps nothing), in
start-time order, each `{"id": ..., "start_time": ..., "stop_time": ..., <column>: ...}`. Every
table has its key in every window, with `[]` when no row overlaps. A table is keyed by its name,
or by its HDF5 path when two tables share a name. At most `MAX_WINDOW_ROWS` rows per table and
window are stored; a window with more (a table of short events under long windows) keeps the
first ones and says under `"intervals_truncated"`: `{table: rows overlapping}`.

Columns (interval tables and the electrodes table alike) are stored JSON-ready: numbers as int
or float (NaN and infinities as null), booleans, text as str (never shortened: a long text column
makes every window's metadata long), references to NWB objects as the object's name (an
electrode group's name), references to rows of another table as that table's row ids, ragged
columns of such scalars (`tags`) as lists. Multi-dimensional columns, ragged columns of ragged
columns, time series references and anything else are left out; the session context lists them
under `skipped_columns` with the reason.

The session context (once per session in the manifest, `extra.sessions[key]`): `"intervals"`
(per table: path, row count, columns stored and skipped) and `"electrodes"`: the electrodes
table as columns (`{"columns": {"id": [...], "location": [...], "group": [...], "x": [...],
...}, "skipped_columns": {...}}`; row i of every column is the electrode whose id is
`columns["id"][i]`; lfp and eeg `channel_ids` are these ids), or None without a table.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from neurocodec.nwb.extract import NWBError, object_path

MAX_WINDOW_ROWS = 1000
"""Rows of one table stored in one window's metadata, at most (see the module documentation)."""

TIME_COLUMNS = ("start_time", "stop_time")
_UNSUPPORTED = object()


def json_scalar(value: Any) -> Any:
    """`value` as a JSON scalar (NaN and infinities as None, an NWB object as its name), or
    `_UNSUPPORTED`."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    name = getattr(value, "name", None)
    if isinstance(name, str) and hasattr(value, "object_id"):  # an hdmf Container (electrode group)
        return name
    return _UNSUPPORTED


def json_values(data: Any) -> list[Any] | None:
    """A 1-D column's values as JSON scalars, or None when they are not all scalars."""
    if isinstance(data, np.ndarray):
        if data.ndim != 1:
            return None
        if data.dtype.kind in "biu":
            return data.tolist()
        if data.dtype.kind == "f":
            values = data.astype(np.float64)
            finite = np.isfinite(values)
            listed = values.tolist()
            return listed if finite.all() else [v if ok else None for v, ok in zip(listed, finite.tolist())]
        if data.dtype.kind not in "OSU":
            return None
        data = data.tolist()
    values = [json_scalar(v) for v in data]
    return None if any(v is _UNSUPPORTED for v in values) else values


def table_path(table: Any) -> str:
    """The HDF5 (or Zarr) path of a DynamicTable read from a file (`/intervals/trials`)."""
    name = getattr(getattr(table.id, "data", None), "name", None)
    if isinstance(name, str) and name.startswith("/") and name.endswith("/id"):
        return name[: -len("/id")]
    return object_path(table)


def _region_ids(region: Any, rows: np.ndarray) -> list[int]:
    """Ids of the rows `rows` of the table a DynamicTableRegion points into."""
    ids = np.asarray(region.table.id.data[:], dtype=np.int64)
    return ids[rows.astype(np.int64)].tolist()


def read_column(table: Any, name: str) -> tuple[list[Any] | None, str]:
    """One column of a DynamicTable, one JSON-ready value per row; (None, why) when left out."""
    from hdmf.common import DynamicTableRegion, VectorIndex

    column = table[name]
    if isinstance(column, VectorIndex):
        target = column.target
        if isinstance(target, VectorIndex):
            return None, "ragged column of ragged values"
        if type(target).__name__ == "TimeSeriesReferenceVectorData":
            return None, "references to time series"
        flat = np.asarray(target.data[:]) if isinstance(target, DynamicTableRegion) else target.data[:]
        values = _region_ids(target, flat) if isinstance(target, DynamicTableRegion) else json_values(flat)
        if values is None:
            return None, "ragged column of values that are not scalars"
        ends = np.asarray(column.data[:], dtype=np.int64).tolist()
        return [values[a:b] for a, b in zip([0, *ends[:-1]], ends)], ""
    if type(column).__name__ == "TimeSeriesReferenceVectorData":
        return None, "references to time series"
    if isinstance(column, DynamicTableRegion):
        rows = np.asarray(column.data[:])
        return (_region_ids(column, rows), "") if rows.ndim == 1 else (None, "multi-dimensional references")
    data = column.data
    if len(getattr(data, "shape", ())) > 1:
        return None, f"multi-dimensional ({'x'.join(map(str, data.shape[1:]))} values per row)"
    values = json_values(data[:])
    return (values, "") if values is not None else (None, "values that are not scalars")


def table_columns(table: Any, exclude: Iterable[str] = ()) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """Every storable column of `table` as `{"id": [...], column: [...]}`, and the columns left
    out with the reason (see the module documentation)."""
    columns: dict[str, list[Any]] = {"id": np.asarray(table.id.data[:], dtype=np.int64).tolist()}
    skipped: dict[str, str] = {}
    excluded = set(exclude)
    for name in table.colnames:
        if name in excluded or name in columns:
            continue
        values, why = read_column(table, name)
        if values is None:
            skipped[name] = why
        else:
            columns[name] = values
    return columns, skipped


class IntervalIndex:
    """Intervals sorted by start time: the rows overlapping a window by two binary searches and a
    test of the rows between them (only those overlapping, unless an earlier row is long)."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray) -> None:
        starts, stops = np.asarray(starts, dtype=np.float64), np.asarray(stops, dtype=np.float64)
        self.order = np.argsort(starts, kind="stable")  # NaN starts sort last, never below a stop
        self.starts, self.stops = starts[self.order], stops[self.order]
        # the latest stop among rows up to i: rows before the first one above `start` cannot overlap
        self.reach = np.fmax.accumulate(np.where(np.isnan(self.stops), -np.inf, self.stops)) \
            if len(self.stops) else self.stops

    def __len__(self) -> int:
        return len(self.order)

    def overlapping(self, start: float, stop: float) -> np.ndarray:
        """Row numbers (in table order) of the intervals overlapping [start, stop), by start time."""
        hi = int(self.starts.searchsorted(stop, "left"))
        lo = int(self.reach.searchsorted(start, "right"))
        if lo >= hi:
            return self.order[:0]
        return self.order[lo:hi][self.stops[lo:hi] > start]


class IntervalTable:
    """One TimeIntervals table, read once: its columns (JSON-ready) and an IntervalIndex; the rows
    of a window are made from the columns when asked for (a large table is not held as dicts)."""

    def __init__(self, table: Any, key: str, path: str) -> None:
        self.key, self.path = key, path
        self.columns, self.skipped = table_columns(table)
        times = [np.array(self.columns[name], dtype=np.float64) for name in TIME_COLUMNS]  # null: NaN
        self.index = IntervalIndex(*times)

    def overlapping(self, start: float, stop: float, limit: int = MAX_WINDOW_ROWS) -> tuple[list[dict[str, Any]], int]:
        """The first `limit` rows overlapping [start, stop) by start time, and how many overlap."""
        rows = self.index.overlapping(start, stop)
        columns = self.columns.items()
        return [{name: values[i] for name, values in columns} for i in rows[:limit].tolist()], len(rows)

    def describe(self) -> dict[str, Any]:
        """Path, rows, and the columns stored and left out."""
        return {"path": self.path, "rows": len(self.index), "columns": list(self.columns),
                "skipped_columns": dict(self.skipped)}


def interval_tables(nwbfile: Any, path: Path, selected: Sequence[str] | None) -> list[IntervalTable]:
    """The file's TimeIntervals tables by HDF5 path, or those named in `selected` (by name or path)
    in that order; NWBError for a name that matches no table or two."""
    from pynwb.epoch import TimeIntervals

    found = sorted(((table_path(t), t) for t in nwbfile.objects.values() if isinstance(t, TimeIntervals)),
                   key=lambda pair: pair[0])
    names = [t.name for _, t in found]
    keys = {p: (t.name if names.count(t.name) == 1 else p) for p, t in found}
    if selected is None:
        chosen = found
    else:
        chosen = []
        for want in selected:
            matches = [(p, t) for p, t in found if want in (p, t.name)]
            listed = ", ".join(p for p, _ in found) or "none"
            if not matches:
                raise NWBError(f"{path}: no interval table named {want!r}; tables: {listed}")
            if len(matches) > 1:
                raise NWBError(f"{path}: {len(matches)} interval tables are named {want!r}; name one by "
                               f"its path: {', '.join(p for p, _ in matches)}")
            if matches[0] not in chosen:
                chosen.append(matches[0])
    return [_read_table(t, keys[p], p, path) for p, t in chosen]


def _read_table(table: Any, key: str, table_at: str, path: Path) -> IntervalTable:
    try:
        return IntervalTable(table, key, table_at)
    except (KeyError, IndexError, ValueError, TypeError, OSError) as exc:
        raise NWBError(f"{path}: cannot read interval table {table_at} ({type(exc).__name__}: {exc})") from None


class WindowLabels:
    """What each window's metadata says about the file's interval tables: `trials` (ids of the
    trials overlapping the window, as before interval tables were stored, whatever `selected`
    says) and `intervals`. `trials` is the session's `Trials` (anything with `overlapping`)."""

    def __init__(self, trials: Any, nwbfile: Any, path: Path, selected: Sequence[str] | None) -> None:
        self.trials = trials
        self.tables = interval_tables(nwbfile, path, selected)

    def labels(self, start: float, stop: float) -> dict[str, Any]:
        """`trials`, `intervals` and, when a table had more than MAX_WINDOW_ROWS overlapping rows,
        `intervals_truncated` for the window [start, stop)."""
        intervals, truncated = {}, {}
        for table in self.tables:
            intervals[table.key], count = table.overlapping(start, stop)
            if count > MAX_WINDOW_ROWS:
                truncated[table.key] = count
        found = {"trials": self.trials.overlapping(start, stop), "intervals": intervals}
        if truncated:
            found["intervals_truncated"] = truncated
        return found

    def describe(self) -> dict[str, Any]:
        """Per table: path, rows, columns stored and left out (stored once per session)."""
        return {t.key: t.describe() for t in self.tables}


def electrodes_context(nwbfile: Any, path: Path) -> dict[str, Any] | None:
    """The electrodes table as columns (see the module documentation), or None without one."""
    table = getattr(nwbfile, "electrodes", None)
    if table is None:
        return None
    try:
        columns, skipped = table_columns(table)
    except (KeyError, IndexError, ValueError, TypeError, OSError) as exc:
        raise NWBError(f"{path}: cannot read the electrodes table ({type(exc).__name__}: {exc})") from None
    return {"path": table_path(table), "columns": columns, "skipped_columns": skipped}


def session_context(labels: WindowLabels, nwbfile: Any, path: Path) -> Mapping[str, Any]:
    """What the session's manifest entry holds of the file's context: interval tables and electrodes."""
    return {"intervals": labels.describe(), "electrodes": electrodes_context(nwbfile, path)}
