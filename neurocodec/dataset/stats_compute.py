"""`compute_stats`: normalisation statistics of a dataset's training part (or of every sample),
written to `<dataset>/.neurocodec/stats/<split name>.json` atomically (see `neurocodec.dataset.stats`).

How each number is made (docs/stats.md):

- Fields: every array field of an integer or float dtype as decoded by default (binned spike
  counts, LFP, EEG, behavior, calcium, video, fMRI...), with at least one dimension; axis 0 is
  time. Bool fields (masks) and per-sample scalars (labels) get none.
- Rows: a sample's time rows are counted once per session. When stored windows overlap in time
  (a conversion with overlap > 0), a sample gives only its rows that start at or after the stop
  of the samples of its session before it in time (by the metadata's start_time / stop_time);
  a sample without that metadata gives every row.
- count, mean, std (population), min, max: exact, in float64, over the finite values (NaN and
  infinities are left out): each sample's numbers are merged into the running ones with Chan's
  formula; the pooled ("dataset") numbers merge the sessions' the same way.
- Quantiles (`QUANTILES`, numpy's linear interpolation) come from a deterministic subsample of
  at most `MAX_SUBSAMPLE_ROWS` rows per session and field: every k-th row taken, k the smallest
  power of two that leaves no more (every row when there are fewer). For fields of 3 or more
  dimensions, where one value stands for all elements, a "row" of the subsample is one element.
  The pooled quantiles subsample the part's rows in storage order the same way.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.dataset.metadata import sample_metadata
from neurocodec.dataset.reader import Dataset
from neurocodec.dataset.splits import SPLIT_DIR, parse_split_arg, read_split
from neurocodec.dataset.stats import (ALL, MAX_SUBSAMPLE_ROWS, NUMERIC_DTYPES, QUANTILES, FieldStats, Stats,
                                      Summary, manifest_sha256, stats_path)
from neurocodec.errors import DatasetError
from neurocodec.format import layout
from neurocodec.format.home import home
from neurocodec.fsutil import atomic_write_bytes
from neurocodec.storage.location import dataset_path, is_remote

_ROW_TOLERANCE = 1e-6  # of a row: a window starting where the last one stopped keeps its first row


def compute_stats(path: str | Path, split: str | None = "train", *, overwrite: bool = False) -> Stats:
    """Compute the statistics of the local dataset at `path` from the samples of one split part
    (`split="train"`: part train of the split named "default"; `"<name>/<part>"`; None: every
    sample) and write them to `<path>/.neurocodec/stats/<split name, or "all">.json` atomically (see the
    module documentation for how). FileExistsError for an existing file unless `overwrite`;
    DatasetError for a split that does not exist or a dataset that cannot be read."""
    path = dataset_path(path)
    if is_remote(path):
        raise ValueError("statistics need a local dataset (they are written beside its manifest)")
    named = parse_split_arg(split)
    if named is not None and named[0] == ALL:
        raise ValueError(f"a split named {ALL!r} cannot have statistics: stats/{ALL}.json holds those of every "
                         "sample (split=None); give the split another name")
    target = stats_path(path, None if named is None else named[0])
    with Dataset(path) as ds:
        sha = manifest_sha256(path)
        chosen = None if named is None else _split_part(path, named, len(ds))
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: pass overwrite=True to compute the statistics again")
        ids = np.arange(len(ds), dtype=np.int64) if chosen is None else chosen[0].sample_ids(chosen[1])
        plan = row_plan(path, ids)
        collector = Collector(_stat_fields(ds))
        for n, sample_id in enumerate(ids.tolist()):
            collector.add(ds[sample_id], plan.session[n], plan.cut[n], sample_id)
            if plan.last[n]:
                collector.close(plan.session[n])
    stats = Stats(None if chosen is None else chosen[0].name, None if chosen is None else chosen[1],
                  None if chosen is None else chosen[0].fingerprint(chosen[1]), sha, len(ids), collector.finish())
    target.parent.mkdir(exist_ok=True)
    atomic_write_bytes(target, stats.encode())
    return stats


def refresh_stats(path: str | Path) -> list[str]:
    """Compute every statistics file stored with the local dataset at `path` again, from the same
    split part (or every sample), for the dataset as it is now (after an append and its split
    refresh); return their names. A pass over each part's samples."""
    from neurocodec.dataset.stats import read_stats

    directory = stats_path(path, None).parent
    names = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
    for name in names:
        old = read_stats(path, name)
        compute_stats(path, None if old.split is None else f"{old.split}/{old.part}", overwrite=True)
    return names


def _split_part(path: Path, named: tuple[str, str], total: int) -> tuple[Any, str]:
    if not (home(path) / SPLIT_DIR / f"{named[0]}.json").exists():
        raise DatasetError(f"{path}: no split {named[0]!r} to take part {named[1]!r} from: make one "
                           "(neurocodec.make_split, `neurocodec split`), or pass split=None for the statistics of "
                           "every sample")
    chosen = read_split(path, named[0], total)
    return chosen, chosen.part(named[1])


def _stat_fields(ds: Dataset) -> list[str]:
    """The fields that get statistics: arrays of integers or floats, with at least one axis."""
    return [f.name for f in ds.fields
            if f.kind == "array" and f.dtype in NUMERIC_DTYPES and (f.shape is None or len(f.shape) >= 1)]


@attrs.frozen
class RowPlan:
    """Per selected sample (in the order given): its session key (None without one), the time
    from which its rows count (None: every row), and whether it is its session's last."""

    session: list[str | None]
    cut: list[tuple[float, float, float] | None]
    last: list[bool]


def row_plan(path: Path, ids: np.ndarray) -> RowPlan:
    """Which rows of each selected sample count (see the module documentation), from the
    samples' metadata (read alone, without the signals)."""
    wanted = set(ids.tolist())
    meta: dict[int, Mapping[str, Any]] = {n: {} for n in wanted}
    with Dataset(path) as ds:
        has_metadata = any(f.name == layout.METADATA_FIELD for f in ds.manifest.fields)
    for n, doc in enumerate(sample_metadata(path) if has_metadata else ()):
        if n in wanted and isinstance(doc, Mapping):
            meta[n] = doc
    sessions = [_session(meta[i]) for i in ids.tolist()]
    spans = [_span(meta[i]) for i in ids.tolist()]
    cut: list[tuple[float, float, float] | None] = [None] * len(ids)
    stops: dict[str, float] = {}
    timed = [n for n in range(len(ids)) if sessions[n] is not None and spans[n] is not None]
    for n in sorted(timed, key=lambda n: (sessions[n], spans[n][0], spans[n][1])):
        start, stop = spans[n]
        before = stops.get(sessions[n], -math.inf)
        cut[n] = (start, stop, max(start, before))
        stops[sessions[n]] = max(before, stop)
    last_of = {key: n for n, key in enumerate(sessions)}
    return RowPlan(sessions, cut, [last_of[key] == n for n, key in enumerate(sessions)])


def _session(meta: Mapping[str, Any]) -> str | None:
    key = meta.get("session")
    return key if isinstance(key, str) and key else None


def _span(meta: Mapping[str, Any]) -> tuple[float, float] | None:
    a, b = meta.get("start_time"), meta.get("stop_time")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (a, b)):
        return None
    return (float(a), float(b)) if b > a else None


def first_row(rows: int, cut: tuple[float, float, float] | None) -> int:
    """The first of a sample's `rows` that starts at or after `cut`'s time (start, stop, from)."""
    if cut is None:
        return 0
    start, stop, after = cut
    return min(rows, max(0, math.ceil((after - start) / (stop - start) * rows - _ROW_TOLERANCE)))


class Subsample:
    """Every k-th row added (k a power of two, doubled whenever more than `limit` rows would be
    kept), rows of any width; deterministic."""

    def __init__(self, limit: int = MAX_SUBSAMPLE_ROWS) -> None:
        self.limit, self.k, self.seen, self.kept = limit, 1, 0, 0
        self.parts: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        """Add `rows` (rows, width), in order."""
        taken = rows[(-self.seen) % self.k::self.k]
        self.seen += len(rows)
        if len(taken):
            self.parts.append(np.array(taken))
            self.kept += len(taken)
        while self.kept > self.limit:
            self._halve()

    def _halve(self) -> None:
        """Keep the rows whose place among the kept ones is even: every (2k)-th row."""
        parts, offset = [], 0
        for part in self.parts:
            kept = part[offset % 2::2]
            offset += len(part)
            if len(kept):
                parts.append(kept)
        self.parts, self.k = parts, self.k * 2
        self.kept = sum(len(p) for p in parts)


class Moments:
    """Running count, mean, sum of squared deviations, min and max per channel (float64; non-
    finite values left out), merged sample by sample with Chan's formula."""

    def __init__(self, width: int) -> None:
        self.n = np.zeros(width, dtype=np.int64)
        self.mean = np.zeros(width)
        self.m2 = np.zeros(width)
        self.min = np.full(width, np.inf)
        self.max = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        """Merge the rows of `x` (rows, width)."""
        values = x.astype(np.float64)
        finite = np.isfinite(values) if x.dtype.kind == "f" else np.ones(values.shape, dtype=bool)
        n = finite.sum(axis=0)
        inside = np.where(finite, values, 0.0)
        mean = inside.sum(axis=0) / np.maximum(n, 1)
        m2 = (np.where(finite, values - mean, 0.0) ** 2).sum(axis=0)
        self.merge(n, mean, m2)
        self.min = np.minimum(self.min, np.where(finite, values, np.inf).min(axis=0, initial=np.inf))
        self.max = np.maximum(self.max, np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf))

    def merge(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan's formula: the moments of this and another set of values together."""
        total = self.n + n
        delta = mean - self.mean
        share = np.divide(n, total, out=np.zeros(len(total)), where=total > 0)
        self.mean = self.mean + delta * share
        self.m2 = self.m2 + m2 + delta ** 2 * self.n * share
        self.n = total


def pooled(moments: Sequence[Moments], per_channel: bool) -> Moments:
    """The moments of several sets together, per channel (same widths) or over all channels."""
    if not moments:
        return Moments(1)
    out = Moments(moments[0].n.shape[0] if per_channel else 1)
    for m in moments:
        if per_channel:
            out.merge(m.n, m.mean, m.m2)
        else:
            for c in range(len(m.n)):
                out.merge(m.n[c:c + 1], m.mean[c:c + 1], m.m2[c:c + 1])
        out.min = np.minimum(out.min, m.min if per_channel else m.min.min(initial=np.inf))
        out.max = np.maximum(out.max, m.max if per_channel else m.max.max(initial=-np.inf))
    return out


def quantiles(sub: Subsample, per_channel: bool) -> np.ndarray:
    """QUANTILES of the finite values of the subsample: (len(QUANTILES), width) per channel, or
    (len(QUANTILES), 1) over every value."""
    if not sub.parts:
        return np.full((len(QUANTILES), 1), np.nan)
    if not per_channel:
        values = np.concatenate([p.ravel() for p in sub.parts]).astype(np.float64)
        values = values[np.isfinite(values)]
        return (np.quantile(values, QUANTILES) if len(values) else np.full(len(QUANTILES), np.nan))[:, None]
    rows = np.concatenate(sub.parts)
    out = np.empty((len(QUANTILES), rows.shape[1]))
    for c in range(0, rows.shape[1], 32):  # a block of channels at a time: float64 copies stay small
        block = rows[:, c:c + 32].astype(np.float64)
        block[~np.isfinite(block)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a channel without a finite value: NaN
            out[:, c:c + 32] = np.nanquantile(block, QUANTILES, axis=0)
    return out


class Running:
    """One field of one session (or of the pooled part) while samples are added."""

    def __init__(self, width: int) -> None:
        self.moments, self.sub, self.rows = Moments(width), Subsample(), 0

    def summary(self, per_channel: bool = True, moments: Moments | None = None) -> Summary:
        """The finished numbers."""
        m = moments or self.moments
        defined = m.n > 0
        nan = np.full(len(m.n), np.nan)
        mean = np.where(defined, m.mean, nan)
        std = np.where(defined, np.sqrt(np.divide(m.m2, np.maximum(m.n, 1))), nan)
        return Summary(m.n.copy(), mean, std, np.where(defined, m.min, nan), np.where(defined, m.max, nan),
                       quantiles(self.sub, per_channel), self.rows)


class Collector:
    """Adds samples field by field, session by session; `finish()` gives every `FieldStats`."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.ndim: dict[str, int] = {}
        self.dtype: dict[str, str] = {}
        self.open: dict[tuple[str, str | None], Running] = {}
        self.done: dict[str, dict[str, Summary]] = {name: {} for name in self.fields}
        self.moments: dict[str, list[Moments]] = {name: [] for name in self.fields}
        self.pool: dict[str, Running] = {}

    def add(self, sample: Mapping[str, Any], session: str | None, cut: Any, sample_id: int) -> None:
        """Count the rows of `sample` from `cut` on (see `first_row`)."""
        for name in self.fields:
            value = sample.get(name)
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.dtype.kind not in "iuf":
                continue
            if self.ndim.setdefault(name, value.ndim) != value.ndim:
                raise DatasetError(f"sample {sample_id}: field {name!r} has {value.ndim} dimensions, earlier "
                                   f"samples {self.ndim[name]}")
            self.dtype.setdefault(name, value.dtype.str)
            rows = value[first_row(len(value), cut):]
            table = rows.reshape(len(rows), -1) if value.ndim <= 2 else rows.reshape(-1, 1)
            if table.shape[1] == 0:
                continue  # no channel (a session without units): nothing to describe
            running = self.open.get((name, session))
            if running is None:
                running = self.open[(name, session)] = Running(table.shape[1])
            elif running.moments.n.shape[0] != table.shape[1]:
                raise DatasetError(f"sample {sample_id}: field {name!r} has {table.shape[1]} channels, earlier "
                                   f"samples of session {session!r} {running.moments.n.shape[0]}")
            running.moments.add(table)
            running.sub.add(table)
            running.rows += len(rows)
            self.pool.setdefault(name, Running(1)).sub.add(table)
            self.pool[name].rows += len(rows)

    def close(self, session: str | None) -> None:
        """Finish `session`'s numbers (its samples are all added): its subsample is let go."""
        for name in self.fields:
            running = self.open.pop((name, session), None)
            if running is None:
                continue
            self.moments[name].append(running.moments)
            if session is not None:
                self.done[name][session] = running.summary()

    def finish(self) -> dict[str, FieldStats]:
        """Every field seen, with its sessions' and pooled numbers."""
        for name, session in list(self.open):
            self.close(session)
        out = {}
        for name in self.fields:
            if name not in self.pool:
                continue
            widths = {m.n.shape[0] for m in self.moments[name]}
            per_channel = len(widths) == 1
            total = self.pool[name].summary(per_channel, pooled(self.moments[name], per_channel))
            out[name] = FieldStats(self.dtype[name], self.ndim[name], self.done[name], total)
        return out
