"""The manifest's `extra` section of a dataset that samples are appended to.

An append keeps every key the dataset had and adds the new samples' own, by these rules:

* `sessions` (a conversion's per-session records): the union; a session already in the
  dataset is refused (appending a recording twice would train on it twice).
* `timeline` (chunked conversions, docs/sampling.md): the same `chunk_s` and `bin_s`, the new
  sessions listed with `first_sample` counted on from the dataset's end; a dataset with a
  timeline takes only samples with one (load-time windows need every session in it).
* `sources` and `skipped_files`: the lists, concatenated.
* every other key (the conversion's settings, user metadata): the same value on both sides,
  or a key only one side has; a value that differs is refused, naming the key.
"""

from __future__ import annotations

from typing import Any, Mapping

from neurocodec.errors import DatasetError

LISTS = ("sources", "skipped_files")


def merge_extra(old: Mapping[str, Any], new: Mapping[str, Any], first_sample: int, what: str) -> dict[str, Any]:
    """`old`'s extra section with `new`'s (samples numbered from `first_sample`) appended;
    DatasetError naming `what` (the dataset) and the key that cannot be merged."""
    merged = dict(old)
    for key, value in new.items():
        if key == "sessions":
            merged[key] = _sessions(old.get(key, {}), value, what)
        elif key == "timeline":
            merged[key] = _timeline(old.get(key), value, first_sample, what)
        elif key in LISTS and isinstance(value, list):
            merged[key] = list(old.get(key, [])) + value
        elif key in old and old[key] != value:
            raise DatasetError(f"{what}: cannot append samples whose extra[{key!r}] differs from the dataset's "
                               f"({_short(value)} vs {_short(old[key])}); convert them with the same settings")
        else:
            merged[key] = value
    if "timeline" in old and "timeline" not in new:
        raise DatasetError(f"{what}: the dataset has a timeline (chunked sessions, for load-time windows) and "
                           "the appended samples have none; convert them with the same chunk_seconds")
    return merged


def _sessions(old: Any, new: Any, what: str) -> dict[str, Any]:
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        raise DatasetError(f"{what}: extra['sessions'] is not an object")
    again = sorted(set(old) & set(new))
    if again:
        raise DatasetError(f"{what}: session(s) {again[:5]} are already in the dataset; an append adds new "
                           "sessions only")
    return {**old, **new}


def _timeline(old: Any, new: Any, first_sample: int, what: str) -> Any:
    if old is None:
        raise DatasetError(f"{what}: the appended samples have a timeline and the dataset has none; "
                           "convert them with the dataset's settings")
    if not isinstance(old, Mapping) or not isinstance(new, Mapping) or not isinstance(new.get("sessions"), Mapping):
        raise DatasetError(f"{what}: extra['timeline'] is not a timeline")
    for key in ("chunk_s", "bin_s"):
        if old.get(key) != new.get(key):
            raise DatasetError(f"{what}: the appended samples' timeline has {key}={new.get(key)!r}, the "
                               f"dataset's {old.get(key)!r}")
    sessions = dict(old.get("sessions", {}))
    for key, entry in new["sessions"].items():
        if key in sessions:
            raise DatasetError(f"{what}: session {key!r} is already in the dataset's timeline")
        if not isinstance(entry, Mapping) or type(entry.get("first_sample")) is not int:
            raise DatasetError(f"{what}: the appended timeline's session {key!r} has no first_sample")
        sessions[key] = {**entry, "first_sample": entry["first_sample"] + first_sample}
    return {**old, "sessions": sessions}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
