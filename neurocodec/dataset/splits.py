"""Splits stored with the data: which samples (and which stretches of each recording) belong to
train, valid and test, the same on every machine.

`make_split(path, by=..., ...)` assigns and writes `<dataset>/.neurocodec/splits/<name>.json`
atomically (`splits/<name>.json` in a dataset of the older top-level layout); loaders take
`split="train"` (the split named "default") or `split="<name>/<part>"`.

- `by="session"` or `by="subject"`: whole sessions (or all sessions of a subject) go to one part,
  chosen by `u = unit_hash(id, seed)`, a number in [0, 1) from SHA-256 of the seed and the id
  (no generator, no file order, no machine state): the first part whose cumulative fraction
  exceeds u. With `folds=k, fold=i`: part "test" when `floor(u * k) == i`, else "train".
- `by="time"`: every session's recording, from its first sample's start to its last sample's
  stop, is cut at the cumulative fractions (or into k equal folds) in time order, and a guard band
  (`guard_s`, at least one window) is left out around every cut. A sample (a stored window)
  belongs to a part when it lies wholly inside one of the part's ranges; load-time windows are
  cut inside the ranges only. No window of one part can then overlap a window of another.

The file records the rule, the assignment (per session: its part, and per part: its time ranges
per session and the runs of stored samples it holds) and a SHA-256 of the manifest it was made
for. Assignments by session or subject depend only on (id, seed): sessions added to the dataset
later are assigned by the same rule and never move existing ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.dataset.metadata import sample_metadata
from neurocodec.dataset.versions import version_files
from neurocodec.format.home import home, manifest_path
from neurocodec.errors import DatasetError
from neurocodec.fsutil import atomic_write_bytes, read_capped
from neurocodec.format import layout

SPLIT_DIR = "splits"
SPLIT_VERSION = 1
BY = ("session", "subject", "time")
DEFAULT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
MAX_SPLIT_BYTES = 64 << 20


def unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) from SHA-256 of `seed` and `key`: the same everywhere, for ever."""
    digest = hashlib.sha256(f"{int(seed)}\0{key}".encode("utf8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@attrs.frozen
class SplitRule:
    """How parts are assigned: `by`, the parts' `fractions` (in order) or k `folds` with the
    held-out `fold`, the `seed`, and for time splits the `guard_s` left out around every cut."""

    by: str
    fractions: tuple[tuple[str, float], ...]
    seed: int = 0
    folds: int | None = None
    fold: int | None = None
    guard_s: float = 0.0

    @classmethod
    def of(cls, by: str, fractions: Mapping[str, float] | None, seed: int, folds: int | None, fold: int | None,
           guard_s: float) -> "SplitRule":
        """A checked rule; ValueError in the words of `make_split`'s arguments."""
        if by not in BY:
            raise ValueError(f"by must be one of {BY}, got {by!r}")
        if type(seed) is not int or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if folds is not None or fold is not None:
            if fractions is not None:
                raise ValueError("give fractions= or folds= and fold=, not both")
            if type(folds) is not int or folds < 2 or type(fold) is not int or not 0 <= fold < folds:
                raise ValueError(f"folds must be an integer >= 2 and fold one of 0..folds-1, got {folds!r} and {fold!r}")
            parts: tuple[tuple[str, float], ...] = (("train", 1 - 1 / folds), ("test", 1 / folds))
        else:
            parts = tuple(_fractions(DEFAULT_FRACTIONS if fractions is None else fractions))
        if isinstance(guard_s, bool) or not isinstance(guard_s, (int, float)) or not (math.isfinite(guard_s)
                                                                                     and guard_s >= 0):
            raise ValueError(f"guard_s must be a non-negative number of seconds, got {guard_s!r}")
        return cls(by, parts, seed, folds, fold, float(guard_s))

    @property
    def names(self) -> tuple[str, ...]:
        """The parts, in order."""
        return tuple(name for name, _ in self.fractions)

    def part_of(self, key: str) -> str:
        """The part of a session or subject id."""
        u = unit_hash(key, self.seed)
        if self.folds is not None:
            return "test" if int(u * self.folds) == self.fold else "train"
        edge = 0.0
        for name, fraction in self.fractions:
            edge += fraction
            if u < edge:
                return name
        return self.fractions[-1][0]

    def time_ranges(self, start: float, stop: float) -> dict[str, list[list[float]]]:
        """Each part's ranges of the recording [start, stop), cut in time order (k-fold: fold
        `fold` of k equal pieces is "test"), the guard band left out around every cut."""
        span, half = stop - start, self.guard_s / 2
        if self.folds is not None:
            pieces = [("test" if i == self.fold else "train", i / self.folds, (i + 1) / self.folds)
                      for i in range(self.folds)]
        else:
            edges = np.cumsum([0.0] + [f for _, f in self.fractions]).tolist()
            pieces = [(name, edges[i], edges[i + 1]) for i, (name, _) in enumerate(self.fractions)]
        out: dict[str, list[list[float]]] = {name: [] for name in self.names}
        for n, (name, lo, hi) in enumerate(pieces):
            a = start + lo * span + (half if n > 0 else 0.0)
            b = start + hi * span - (half if n < len(pieces) - 1 else 0.0)
            if b > a:
                if out[name] and math.isclose(out[name][-1][1], a):
                    out[name][-1][1] = b  # k-fold: neighbouring train pieces are one range
                else:
                    out[name].append([a, b])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"by": self.by, "fractions": [list(p) for p in self.fractions], "seed": self.seed,
                "folds": self.folds, "fold": self.fold, "guard_s": self.guard_s}


def _fractions(fractions: Mapping[str, float]) -> list[tuple[str, float]]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"fractions must map part names to fractions, got {fractions!r}")
    out = []
    for name, value in fractions.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"a part's name must be a non-empty string without '/', got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"fraction of {name!r} must be in (0, 1], got {value!r}")
        out.append((name, float(value)))
    if abs(sum(v for _, v in out) - 1) > 1e-9:
        raise ValueError(f"fractions must add up to 1, got {sum(v for _, v in out)!r}")
    return out


@attrs.frozen(eq=False)
class Split:
    """A split as stored: its `name`, `rule`, the manifest it was made for, and per part the
    sessions' time ranges (`ranges[part][session] = [[start, stop], ...]`) and the stored samples
    it holds as runs (`samples[part]`, an (n, 2) array of [first, stop) sample ids)."""

    name: str
    rule: SplitRule
    manifest_sha256: str
    sessions: Mapping[str, str]
    ranges: Mapping[str, Mapping[str, list[list[float]]]]
    samples: Mapping[str, np.ndarray]

    def part(self, part: str) -> str:
        """`part` if this split has it; ValueError naming the parts otherwise."""
        if part not in self.rule.names:
            raise ValueError(f"split {self.name!r} has parts {list(self.rule.names)}, not {part!r}")
        return part

    def sample_ids(self, part: str) -> np.ndarray:
        """The stored samples of `part`, sorted."""
        runs = self.samples[self.part(part)]
        if not len(runs):
            return np.zeros(0, dtype=np.int64)
        lengths = runs[:, 1] - runs[:, 0]
        return np.repeat(runs[:, 0] - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))

    def fingerprint(self, part: str) -> str:
        """What a loader state records: "<name>/<part>:<SHA-256 of the split's assignment>"."""
        doc = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return f"{self.name}/{self.part(part)}:{hashlib.sha256(doc.encode()).hexdigest()}"

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON document."""
        return {"version": SPLIT_VERSION, "name": self.name, "rule": self.rule.to_dict(),
                "manifest_sha256": self.manifest_sha256, "sessions": dict(self.sessions),
                "parts": {p: {"ranges": self.ranges[p], "samples": self.samples[p].tolist()}
                          for p in self.rule.names}}


def make_split(path: str | Path, by: str = "session", fractions: Mapping[str, float] | None = None, *,
               seed: int = 0, folds: int | None = None, fold: int | None = None, guard_s: float | None = None,
               name: str = "default", overwrite: bool = False) -> Split:
    """Assign a local dataset's sessions (or subjects, or stretches of time) to parts and write
    `<path>/.neurocodec/splits/<name>.json` atomically (see the module documentation). `fractions`
    default to train 0.8, valid 0.1, test 0.1. For `by="time"`, `guard_s` defaults to the longest window a
    loader can read (a chunk for chunked datasets, else the longest stored window) and may not be
    less. FileExistsError for an existing split unless `overwrite`."""
    path = Path(path)
    _check_name(name)
    target = home(path) / SPLIT_DIR / f"{name}.json"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: pass overwrite=True to replace split {name!r}")
    samples = _samples(path)
    longest = _longest_window(path, samples)
    if by == "time" and guard_s is not None and guard_s < longest - 1e-9:
        raise ValueError(f"guard_s={guard_s!r} is shorter than a window ({longest!r} s): a window could "
                         "straddle two parts")
    rule = SplitRule.of(by, fractions, seed, folds, fold, longest if guard_s is None else guard_s)
    split = _assign(name, rule, samples, _manifest_sha256(home(path)))
    target.parent.mkdir(exist_ok=True)
    atomic_write_bytes(target, (json.dumps(split.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return split


def refresh_splits(path: str | Path) -> list[str]:
    """Make every split stored with the local dataset at `path` again, by its own rule, for the
    dataset as it is now (after an append); return their names. Sessions already assigned keep
    their parts (the rule depends only on each session or subject, its id and the seed); new
    sessions get theirs. DatasetError if an existing assignment would change (a time split
    whose guard band is now shorter than the dataset's longest window, say)."""
    path = Path(path)
    folder = home(path) / SPLIT_DIR
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    if not names:
        return []
    samples, sha = _samples(path), _manifest_sha256(home(path))
    longest = _longest_window(path, samples)
    for name in names:
        old = read_split(path, name)
        if old.rule.by == "time" and old.rule.guard_s < longest - 1e-9:
            raise DatasetError(f"{path}: split {name!r} leaves {old.rule.guard_s} s between parts, less than the "
                               f"longest window now in the dataset ({longest} s); make it again with --overwrite")
        new = _assign(name, old.rule, samples, sha)
        _check_kept(path, old, new)
        atomic_write_bytes(folder / f"{name}.json",
                           (json.dumps(new.to_dict(), indent=1, sort_keys=True) + "\n").encode())
    return names


def _check_kept(path: Path, old: Split, new: Split) -> None:
    """DatasetError unless every session of `old` has the same part (or time ranges) in `new`."""
    moved = [k for k, part in old.sessions.items() if new.sessions.get(k) != part]
    moved += [k for p in old.rule.names for k, spans in old.ranges[p].items() if new.ranges[p].get(k) != spans]
    if moved:
        raise DatasetError(f"{path}: split {old.name!r} would move session(s) {sorted(set(moved))[:5]} to another "
                           "part; existing assignments never change: make a new split instead")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name) \
            or name.startswith("."):
        raise ValueError(f"a split's name must be letters, digits, '-', '_' or '.', got {name!r}")


def _manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / layout.MANIFEST).read_bytes()).hexdigest()


@attrs.frozen
class _Samples:
    session: list[str]
    subject: list[str]
    start: np.ndarray
    stop: np.ndarray


def _samples(path: Path) -> _Samples:
    session, subject, start, stop = [], [], [], []
    for n, meta in enumerate(sample_metadata(path)):
        key = meta.get("session") if isinstance(meta, Mapping) else None
        a, b = (meta.get("start_time"), meta.get("stop_time")) if isinstance(meta, Mapping) else (None, None)
        if not isinstance(key, str) or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (a, b)):
            raise DatasetError(f"{path}: sample {n}'s metadata names no session with start_time and stop_time; "
                               "splits need datasets converted from NWB (or metadata holding those keys)")
        session.append(key)
        subject.append(str(meta.get("subject_id")) if meta.get("subject_id") is not None else key)
        start.append(float(a))
        stop.append(float(b))
    return _Samples(session, subject, np.array(start), np.array(stop))


def _longest_window(path: Path, samples: _Samples) -> float:
    doc = json.loads(manifest_path(path).read_text())
    timeline = doc.get("extra", {}).get("timeline") if isinstance(doc.get("extra"), Mapping) else None
    chunk = float(timeline["chunk_s"]) if isinstance(timeline, Mapping) and "chunk_s" in timeline else 0.0
    stored = float((samples.stop - samples.start).max()) if len(samples.start) else 0.0
    return max(chunk, stored)


def _assign(name: str, rule: SplitRule, samples: _Samples, manifest_sha256: str) -> Split:
    keys = list(dict.fromkeys(samples.session))
    session = np.array(samples.session, dtype=object)
    extent = {k: (float(samples.start[session == k].min()), float(samples.stop[session == k].max())) for k in keys}
    owners = dict(zip(samples.session, samples.subject))
    if rule.by == "time":
        parts_of = {k: rule.time_ranges(*extent[k]) for k in keys}
        sessions: dict[str, str] = {}
    else:
        sessions = {k: rule.part_of(k if rule.by == "session" else owners[k]) for k in keys}
        parts_of = {k: {p: ([list(extent[k])] if sessions[k] == p else []) for p in rule.names} for k in keys}
    ranges = {p: {k: parts_of[k][p] for k in keys if parts_of[k][p]} for p in rule.names}
    runs = {p: _runs(_inside(samples, session, ranges[p])) for p in rule.names}
    return Split(name, rule, manifest_sha256, sessions, ranges, runs)


def _inside(samples: _Samples, session: np.ndarray, ranges: Mapping[str, Sequence[Sequence[float]]]) -> np.ndarray:
    """Whether each stored sample lies wholly inside one of its session's ranges."""
    inside = np.zeros(len(session), dtype=bool)
    for key, spans in ranges.items():
        mine = session == key
        for a, b in spans:
            inside |= mine & (samples.start >= a - 1e-9) & (samples.stop <= b + 1e-9)
    return inside


def _runs(inside: np.ndarray) -> np.ndarray:
    """[first, stop) runs of True."""
    edges = np.diff(np.concatenate(([0], inside.astype(np.int8), [0])))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).astype(np.int64)


def read_split(path: str | Path, name: str = "default", total_samples: int | None = None,
               version: int | None = None) -> Split:
    """The split `name` of the dataset at `path` (a local directory), checked as untrusted input:
    DatasetError saying what is wrong, naming the file. `version`: the split as made for that
    version of an appended dataset (default: the current one)."""
    _check_name(name)
    target = (home(path) if version is None else version_files(path, version)) / SPLIT_DIR / f"{name}.json"
    data = read_capped(target, MAX_SPLIT_BYTES, f"no split {name!r} (make one with neurocodec.make_split or "
                       "`neurocodec split`)", "a split file")
    try:
        doc = json.loads(data)
        return _parsed(doc, name, total_samples)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DatasetError(f"{target}: not a valid split file: {exc}") from None


def _parsed(doc: Any, name: str, total: int | None) -> Split:
    if not isinstance(doc, Mapping) or doc.get("version") != SPLIT_VERSION:
        raise ValueError(f"version must be {SPLIT_VERSION}")
    rule_doc = doc["rule"]
    fractions = rule_doc["fractions"]
    rule = SplitRule.of(rule_doc["by"], None if rule_doc.get("folds") is not None else
                        {str(n): f for n, f in fractions}, rule_doc["seed"], rule_doc.get("folds"),
                        rule_doc.get("fold"), rule_doc["guard_s"])
    sessions = {str(k): v for k, v in doc["sessions"].items()}
    if any(v not in rule.names for v in sessions.values()):
        raise ValueError("a session is assigned to a part the rule does not have")
    ranges, samples = {}, {}
    for part in rule.names:
        entry = doc["parts"][part]
        ranges[part] = {str(k): [[float(a), float(b)] for a, b in spans] for k, spans in entry["ranges"].items()}
        if any(not (math.isfinite(a) and math.isfinite(b) and a < b) for s in ranges[part].values() for a, b in s):
            raise ValueError(f"part {part!r} has a range that is not finite start < stop")
        runs = np.array(entry["samples"], dtype=np.int64).reshape(-1, 2)
        if len(runs) and (np.any(runs[:, 0] >= runs[:, 1]) or np.any(runs[1:, 0] < runs[:-1, 1]) or runs.min() < 0
                          or (total is not None and runs.max() > total)):
            raise ValueError(f"part {part!r} has sample runs out of order or outside the dataset")
        samples[part] = runs
    return Split(name, rule, str(doc["manifest_sha256"]), sessions, ranges, samples)


def parse_split_arg(split: Any) -> tuple[str, str] | None:
    """A loader's `split=` ("train" or "<name>/train") as (split name, part); None for None."""
    if split is None:
        return None
    if not isinstance(split, str) or not split or split.count("/") > 1:
        raise ValueError(f"split must be a part name such as 'train' or '<split name>/<part>', got {split!r}")
    name, _, part = split.rpartition("/")
    return (name or "default", part)


def chosen_part(path: Any, split: Any, total_samples: int, version: int = 1) -> tuple[Split, str] | None:
    """The split and part a loader's `split=` names, read from the local dataset at `path` as made
    for `version`; None for None. ValueError for a URL dataset or an unknown part, DatasetError
    for a bad file or a split made for another state of the dataset (stale)."""
    from neurocodec.storage.location import is_remote

    named = parse_split_arg(split)
    if named is None:
        return None
    if is_remote(path):
        raise ValueError("split= needs a local dataset (its splits/ directory is read from disk)")
    chosen = read_split(path, named[0], None, version)
    directory = version_files(path, version)
    target = directory / SPLIT_DIR / f"{named[0]}.json"
    if chosen.manifest_sha256 != _manifest_sha256(directory):
        raise DatasetError(f"{target}: split {named[0]!r} was made for another state of the dataset (its "
                           f"manifest changed since); run `neurocodec split {path} --refresh` (or "
                           "neurocodec.refresh_splits) to assign the samples it has now")
    if any(len(runs) and int(runs.max()) > total_samples for runs in chosen.samples.values()):
        raise DatasetError(f"{target}: not a valid split file: sample runs outside the dataset")
    return chosen, chosen.part(named[1])
