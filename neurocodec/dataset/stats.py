"""Normalisation statistics stored with the data: what `compute_stats` writes to
`<dataset>/.neurocodec/stats/<split name>.json` (or `stats/all.json`, from every sample) and `read_stats`
reads back, checked as untrusted input.

Per array field, per session and per channel (the last axis of a (time, channels) field; one
channel for a 1-D field; one value over all elements for fields of 3 or more dimensions), a
`Summary` holds the count of finite values, their mean, population standard deviation, minimum,
maximum and the quantiles `QUANTILES`; `Stats.dataset` holds the same pooled over every session
of the part. How each number is computed: `neurocodec.dataset.stats_compute` and docs/stats.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

import attrs
import numpy as np

from neurocodec import npy
from neurocodec.errors import DatasetError
from neurocodec.fsutil import read_capped
from neurocodec.format.home import home, manifest_path

STATS_DIR = "stats"
STATS_VERSION = 1
ALL = "all"
"""The file name (without .json) of the statistics of every sample (`split=None`)."""
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_KEYS = ("q01", "q05", "q25", "q50", "q75", "q95", "q99")
MAX_SUBSAMPLE_ROWS = 65_536
MAX_STATS_BYTES = 128 << 20
MAX_NDIM = 32
_NUMBERS = ("mean", "std", "min", "max", *QUANTILE_KEYS)
NUMERIC_DTYPES = tuple(d for d in npy.DTYPES if d[1] in "iuf")
"""The dtypes of fields that get statistics: integers and floats (bool masks and complex do not)."""


def stats_path(path: str | Path, split_name: str | None) -> Path:
    """Where the statistics of split `split_name` (None: every sample) of the dataset at `path`
    (or of the version whose manifest the directory `path` holds) live."""
    return home(path) / STATS_DIR / f"{ALL if split_name is None else split_name}.json"


def manifest_sha256(path: str | Path) -> str:
    """SHA-256 of the dataset's manifest file, as statistics and splits record it."""
    return hashlib.sha256(manifest_path(path).read_bytes()).hexdigest()


@attrs.frozen(eq=False)
class Summary:
    """The numbers of one field of one session (or of the pooled part), one entry per channel:
    `count` (finite values), `mean`, `std` (population), `min`, `max` (NaN where `count` is 0),
    `quantiles` ((len(QUANTILES), channels), from the subsample) and the time `rows` counted."""

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    quantiles: np.ndarray
    rows: int

    @property
    def channels(self) -> int:
        """Entries per number (1 for one value over all channels or elements)."""
        return len(self.count)

    def quantile(self, q: float) -> np.ndarray:
        """The quantile `q` (one of QUANTILES) per channel."""
        return self.quantiles[QUANTILES.index(q)]

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) ready to scale with, float64: a mean that is not defined (no finite value)
        is 0, a std that is 0 or not defined is 1, so such channels pass through unscaled."""
        mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        std = np.where(np.isfinite(self.std) & (self.std > 0), self.std, 1.0)
        return mean, std

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists per number (null where not defined)."""
        doc: dict[str, Any] = {"rows": self.rows, "count": self.count.tolist()}
        for key, values in zip(_NUMBERS, (self.mean, self.std, self.min, self.max, *self.quantiles)):
            doc[key] = [float(v) if math.isfinite(v) else None for v in values.tolist()]
        return doc


@attrs.frozen(eq=False)
class FieldStats:
    """A field's statistics: its decoded `dtype` and number of dimensions `ndim`, a `Summary`
    per session key, and `dataset`, pooled over every session (per channel when every session
    has the same channel count, else one value)."""

    dtype: str
    ndim: int
    sessions: Mapping[str, Summary]
    dataset: Summary


@attrs.frozen(eq=False)
class Stats:
    """A dataset's normalisation statistics (see the module documentation): made from the part
    `part` of split `split` (both None: every sample) whose fingerprint is `split_fingerprint`,
    for the manifest whose SHA-256 is `manifest_sha256`, from `total_samples` stored samples."""

    split: str | None
    part: str | None
    split_fingerprint: str | None
    manifest_sha256: str
    total_samples: int
    fields: Mapping[str, FieldStats]

    def summary(self, field: str, session: str | None = None) -> Summary:
        """The numbers of `field` for `session`; the pooled ones for None or a session without
        statistics of its own (e.g. a held-out session of a split by session)."""
        entry = self.fields[field]
        return entry.sessions.get(session, entry.dataset) if session is not None else entry.dataset

    def mean_std(self, session: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{field: (mean, std)} to scale `session`'s samples with, as `Normalize` does (a session
        without statistics of its own, or None, gets the pooled ones; see `Summary.mean_std`)."""
        return {name: self.summary(name, session).mean_std() for name in self.fields}

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {"version": STATS_VERSION, "split": self.split, "part": self.part,
                "split_fingerprint": self.split_fingerprint, "manifest_sha256": self.manifest_sha256,
                "total_samples": self.total_samples, "quantiles": list(QUANTILES),
                "max_subsample_rows": MAX_SUBSAMPLE_ROWS,
                "fields": {name: {"dtype": f.dtype, "ndim": f.ndim, "dataset": f.dataset.to_dict(),
                                  "sessions": {k: s.to_dict() for k, s in f.sessions.items()}}
                           for name, f in self.fields.items()}}

    def encode(self) -> bytes:
        """The file's bytes (strict JSON: undefined numbers are null, never NaN)."""
        return (json.dumps(self.to_dict(), sort_keys=True, allow_nan=False) + "\n").encode()


def read_stats(path: str | Path, name: str | None = "default") -> Stats:
    """The statistics of split `name` (None or "all": of every sample) of the dataset at `path`
    (a local directory), checked as untrusted input: DatasetError naming the file and what is
    wrong (missing, too large, not JSON, wrong types or shapes, numbers that are not finite)."""
    target = stats_path(path, None if name == ALL else name)
    data = read_capped(target, MAX_STATS_BYTES, "no statistics (make them with neurocodec.compute_stats or "
                       "`neurocodec stats`)", "a statistics file")
    try:
        return parse_stats(json.loads(data, parse_constant=_no_constant))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{target}: not a valid statistics file: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a statistics file may hold")


def parse_stats(doc: Any) -> Stats:
    """A `Stats` from its JSON document; ValueError or TypeError saying what is wrong."""
    if not isinstance(doc, dict) or doc.get("version") != STATS_VERSION:
        raise ValueError(f"version must be {STATS_VERSION}")
    split, part, fingerprint = doc["split"], doc["part"], doc["split_fingerprint"]
    if split is None:
        if part is not None or fingerprint is not None:
            raise ValueError("statistics of every sample name no part and no split fingerprint")
    elif not all(isinstance(v, str) and v for v in (split, part, fingerprint)):
        raise ValueError("split, part and split_fingerprint must be non-empty strings (or all null)")
    sha = doc["manifest_sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError("manifest_sha256 must be 64 lowercase hex digits")
    total = _count(doc["total_samples"], "total_samples")
    if doc.get("quantiles") != list(QUANTILES):
        raise ValueError(f"quantiles must be {list(QUANTILES)}")
    fields = doc["fields"]
    if not isinstance(fields, dict):
        raise TypeError("fields must be an object")
    return Stats(split, part, fingerprint, sha, total,
                 {_name(name): _field(name, entry) for name, entry in fields.items()})


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"a field or session name must be a short non-empty string, got {str(name)[:40]!r}")
    return name


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")
    return value


def _field(name: str, entry: Any) -> FieldStats:
    if not isinstance(entry, dict):
        raise TypeError(f"field {name!r} must be an object")
    dtype, ndim = entry["dtype"], entry["ndim"]
    if not isinstance(dtype, str) or dtype not in NUMERIC_DTYPES:
        raise ValueError(f"field {name!r}: dtype must be an integer or float dtype, got {str(dtype)[:40]!r}")
    if type(ndim) is not int or not 1 <= ndim <= MAX_NDIM:
        raise ValueError(f"field {name!r}: ndim must be an integer from 1 to {MAX_NDIM}")
    sessions = entry["sessions"]
    if not isinstance(sessions, dict):
        raise TypeError(f"field {name!r}: sessions must be an object")
    parsed = {_name(k): _summary(v, f"field {name!r}, session {k!r}") for k, v in sessions.items()}
    if ndim != 2 and any(s.channels != 1 for s in parsed.values()):
        raise ValueError(f"field {name!r}: a field of {ndim} dimension(s) has one value per session")
    pooled = _summary(entry["dataset"], f"field {name!r}, dataset")
    widths = {s.channels for s in parsed.values()}
    if pooled.channels != 1 and widths and widths != {pooled.channels}:
        raise ValueError(f"field {name!r}: the pooled statistics have {pooled.channels} channels, the sessions "
                         f"{sorted(widths)}")
    return FieldStats(dtype, ndim, parsed, pooled)


def _summary(doc: Any, what: str) -> Summary:
    if not isinstance(doc, dict):
        raise TypeError(f"{what} must be an object")
    rows = _count(doc["rows"], f"{what}: rows")
    count = doc["count"]
    if not isinstance(count, list) or not count or any(type(c) is not int or c < 0 for c in count):
        raise ValueError(f"{what}: count must be a non-empty list of non-negative integers")
    counts = np.array(count, dtype=np.int64)
    numbers = {}
    for key in _NUMBERS:
        values = doc[key]
        if not isinstance(values, list) or len(values) != len(count):
            raise ValueError(f"{what}: {key} must be a list of {len(count)} numbers, one per channel")
        for c, v in zip(count, values):
            if v is None and c == 0:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{what}: {key} holds {str(v)[:40]!r}, not a finite number (null only where "
                                 "count is 0)")
        numbers[key] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if np.any(numbers["std"] < 0) or np.any(numbers["min"] > numbers["max"]):
        raise ValueError(f"{what}: a std below 0 or a min above the max")
    return Summary(counts, numbers["mean"], numbers["std"], numbers["min"], numbers["max"],
                   np.stack([numbers[k] for k in QUANTILE_KEYS]), rows)

