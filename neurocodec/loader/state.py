"""Loader state: small, JSON-serialisable, holding no sample data.

The state is where the training loop is, `(epoch, position)` with position counting the epoch's
samples consumed by all ranks together, plus the settings that define the order (seed, shuffle,
buffer and chunk size, the epoch's size and, for load-time windows, the window and a
fingerprint of the timeline) and the version of the order's algorithm (`order_version`, see
`neurocodec.loader.order`; 1 for states that lack it, saved before it was recorded). Restoring
into a loader whose order settings differ is an error, because the position would point into
another order.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from neurocodec.loader.order import ORDER_VERSION

STATE_VERSION = 1
_ORDER_KEYS = ("dataset_version", "seed", "shuffle", "buffer_size", "chunk_size", "total_samples", "windows", "split", "mix")
_OPTIONAL = ("windows", "split", "mix", "dataset_version")


@attrs.frozen(slots=True)
class LoaderState:
    """Where a loader is: epoch, position in the epoch's order, samples skipped as bad data."""

    epoch: int
    position: int
    seed: int
    shuffle: bool
    buffer_size: int
    chunk_size: int
    total_samples: int
    skipped: int = 0
    windows: str | None = None
    """Load-time windows: "mode:window bins:timeline SHA-256" (absent for stored samples)."""
    split: str | None = None
    """A split's part: "<split name>/<part>:<SHA-256 of the split>" (absent without one)."""
    mix: str | None = None
    """A mix of datasets: SHA-256 of its sources, counts and rule (absent for one dataset)."""
    dataset_version: int | None = None
    """The version of an appended dataset the loader reads (absent for version 1)."""
    order_version: int = ORDER_VERSION
    """The algorithm of the epoch order (`neurocodec.loader.order.ORDER_VERSION`); a state
    without it was saved under version 1."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        doc = {"version": STATE_VERSION, **attrs.asdict(self)}
        for key in _OPTIONAL:
            if doc[key] is None:
                del doc[key]  # states of loaders without them keep their old form
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "LoaderState":
        """Validate and load a dict produced by `to_dict`."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"a loader state must be a dict, got {type(doc).__name__}")
        if doc.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(f"loader state version {doc.get('version')} is not {STATE_VERSION}")
        values = {}
        for field in attrs.fields(cls):
            value = doc.get(field.name, field.default if field.default is not attrs.NOTHING else None)
            if field.name == "shuffle":
                ok = isinstance(value, bool)
            elif field.name == "dataset_version":
                ok = value is None or (type(value) is int and value > 1)
            elif field.name == "order_version":
                value = doc.get("order_version", 1)
                ok = type(value) is int and value >= 1
            elif field.name in _OPTIONAL:
                ok = value is None or isinstance(value, str)
            else:
                ok = type(value) is int and value >= 0
            if not ok:
                raise ValueError(f"loader state field {field.name!r} is missing or invalid: {value!r}")
            values[field.name] = value
        state = cls(**values)
        if state.position > state.total_samples:
            raise ValueError(f"loader state position {state.position} exceeds {state.total_samples} samples")
        return state

    def check_compatible(self, other: "LoaderState") -> None:
        """Raise ValueError if `other` (a loader's settings) orders the data differently."""
        if self.order_version != other.order_version:
            raise ValueError(
                f"the state was saved under epoch order version {self.order_version} and this loader computes "
                f"version {other.order_version} (docs/order.md), which puts other samples at each position: "
                f"it cannot resume epoch {self.epoch} exactly. Finish that epoch with the neurocodec that saved "
                f"the state, or start the next one here with loader.set_epoch({self.epoch + 1})")
        if self.dataset_version != other.dataset_version:
            mine, theirs = self.dataset_version or 1, other.dataset_version or 1
            raise ValueError(f"the state was saved reading version {mine} of the dataset and this loader reads "
                             f"version {theirs}: pass version={mine} to the loader to resume exactly (the "
                             "dataset's samples changed by an append)")
        diffs = [f"{k}: state {getattr(self, k)!r} vs loader {getattr(other, k)!r}"
                 for k in _ORDER_KEYS if getattr(self, k) != getattr(other, k)]
        if diffs:
            raise ValueError("cannot restore a state into a loader with another order (" + "; ".join(diffs) + ")")
