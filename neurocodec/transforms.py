"""Built-in neural augmentations: examples of the `transform=` protocol of the loaders.

Each is a frozen attrs class, so it pickles to spawned DataLoader workers and prints its
parameters; calling it as `t(sample, rng)` returns a new sample dict. The fields it works on
are parameters, and it never changes the arrays it is given (they may be read-only views of a
chunk the loader keeps for later windows): every changed field is a new array or a new
`SpikeEvents`; other fields are passed through as they are. Compose several with `Compose`.

Time runs along axis 0 of array fields: binned counts are (time, units), continuous signals
(time, channels). Spike events (`decode={"spikes": {"as": "events"}}`) are `SpikeEvents` with
times in seconds from the window's start.

Like a plugin, this module uses only the public plugin API (`neurocodec.plugin`); the loaders
only call the transform they are given, except `Normalize`, which their `normalize=` builds.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping, Sequence

import attrs
import numpy as np

from neurocodec.plugin import SpikeEvents


def _fields(value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"fields must be a field name or a non-empty sequence of them, got {value!r}")
    return names


def _probability(instance: Any, attribute: Any, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _positive_seconds(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


def _exact(seconds: float) -> Fraction:
    """Seconds as the decimal they print as (0.1 is 1/10), so grids divide exactly."""
    return Fraction(seconds) if isinstance(seconds, int) else Fraction(repr(float(seconds)))


def _field(sample: dict[str, Any], name: str, what: str) -> Any:
    if name not in sample:
        raise KeyError(f"{what}: the sample has no field {name!r} (it has {sorted(sample)})")
    return sample[name]


def _count_of(value: Any, name: str, axis: int, what: str) -> int:
    """The unit or channel count of one field's value."""
    if isinstance(value, SpikeEvents):
        return value.unit_count
    if isinstance(value, np.ndarray) and value.ndim >= 1:
        return value.shape[axis]
    raise TypeError(f"{what}: field {name!r} is {type(value).__name__}, not an array or SpikeEvents")


def _shared_count(sample: dict[str, Any], names: Sequence[str], axis: int, what: str) -> int:
    counts = {n: _count_of(_field(sample, n, what), n, axis, what) for n in names}
    if len(set(counts.values())) != 1:
        raise ValueError(f"{what}: fields differ in their count along the masked axis: {counts}")
    return next(iter(counts.values()))


def _masked(array: np.ndarray, keep: np.ndarray, axis: int, value: Any) -> np.ndarray:
    """A copy of `array` with the positions along `axis` where `keep` is False set to `value`."""
    out = np.array(array, copy=True)
    index = [slice(None)] * out.ndim
    index[axis] = ~keep
    out[tuple(index)] = value
    return out


def _kept_events(events: SpikeEvents, keep: np.ndarray) -> SpikeEvents:
    spikes = keep[events.units]
    return SpikeEvents(events.times[spikes], events.units[spikes], events.unit_count, events.tick_hz)


@attrs.frozen
class UnitDropout:
    """Drop each unit of a window with probability `p`: its column of binned counts
    (time, units) becomes 0 and its spikes leave `SpikeEvents`. One draw per sample,
    `rng.random(unit_count) < p`, is applied to every field in `fields` (which must agree on the
    unit count), so counts and events of the same units lose the same units."""

    fields: tuple[str, ...] = attrs.field(default=("spikes",), converter=_fields)
    p: float = attrs.field(default=0.1, validator=_probability)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample with the dropped units removed from every field in `fields`."""
        what = repr(self)
        keep = ~(rng.random(_shared_count(sample, self.fields, -1, what)) < self.p)
        out = dict(sample)
        for name in self.fields:
            value = sample[name]
            out[name] = _kept_events(value, keep) if isinstance(value, SpikeEvents) else _masked(value, keep, -1, 0)
        return out


@attrs.frozen
class ChannelMask:
    """Mask each channel of a continuous signal (time, channels) with probability `p`: the
    masked channels are set to `value` over the whole window. One draw per sample,
    `rng.random(channels) < p`, applies to every field in `fields` (same channel count)."""

    fields: tuple[str, ...] = attrs.field(converter=_fields)
    p: float = attrs.field(default=0.1, validator=_probability)
    value: float = 0.0

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample with the masked channels set to `value` in every field in `fields`."""
        what = repr(self)
        keep = ~(rng.random(_shared_count(sample, self.fields, -1, what)) < self.p)
        out = dict(sample)
        for name in self.fields:
            if not isinstance(sample[name], np.ndarray):
                raise TypeError(f"{what}: field {name!r} is {type(sample[name]).__name__}, not an array")
            out[name] = _masked(sample[name], keep, -1, self.value)
        return out


@attrs.frozen
class SpikeTimeJitter:
    """Move every spike of the `SpikeEvents` in `field` by its own normal draw of standard
    deviation `sigma_s` seconds, on the events' own tick grid: ticks + rint(rng.normal(0, sigma_s, n)
    * tick_hz). A spike moved out of the window [0, `window_s`) is reflected back in at the edge it
    crossed (then clipped, for shifts longer than the window), so no spike is lost or piled up;
    the result is sorted again (simultaneous spikes by unit)."""

    window_s: float = attrs.field(validator=_positive_seconds)
    sigma_s: float = attrs.field(default=0.001, validator=_positive_seconds)
    field: str = "spikes"

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample with the spikes of `field` jittered."""
        events = _field(sample, self.field, repr(self))
        if not isinstance(events, SpikeEvents):
            raise TypeError(f"{self!r}: field {self.field!r} is {type(events).__name__}, not SpikeEvents "
                            "(decode it with {'as': 'events'})")
        hz = events.tick_hz
        last = math.ceil(_exact(self.window_s) * hz) - 1  # the last tick inside the window
        ticks = np.rint(events.times * hz).astype(np.int64)
        ticks = ticks + np.rint(rng.normal(0.0, self.sigma_s, len(ticks)) * hz).astype(np.int64)
        ticks = np.where(ticks < 0, -ticks, ticks)
        ticks = np.clip(np.where(ticks > last, 2 * last - ticks, ticks), 0, last)
        order = np.lexsort((events.units, ticks))
        out = dict(sample)
        out[self.field] = SpikeEvents.from_ticks(ticks[order], events.units[order], events.unit_count, hz)
        return out


@attrs.frozen
class TimeCrop:
    """Cut a random `length_s` seconds out of windows of `window_s` seconds, the same stretch of
    time from every field in `fields`: arrays along axis 0 (time), `SpikeEvents` by time (shifted
    to start at 0). The start is drawn uniformly from the multiples of `step_s` that leave the
    crop inside the window: `rng.integers(0, starts)`. `step_s` defaults to the coarsest grid
    every array field's samples lie on (window_s / gcd of their lengths), or one tick of the
    events when there are only events. Every start and length must fall on whole samples of
    every field (checked with exact fractions of the decimals given)."""

    fields: tuple[str, ...] = attrs.field(converter=_fields)
    window_s: float = attrs.field(validator=_positive_seconds)
    length_s: float = attrs.field(validator=_positive_seconds)
    step_s: float | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_seconds))

    def __attrs_post_init__(self) -> None:
        if _exact(self.length_s) > _exact(self.window_s):
            raise ValueError(f"length_s={self.length_s} is longer than window_s={self.window_s}")

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample with every field in `fields` cropped to the same stretch of time."""
        values = {name: _field(sample, name, repr(self)) for name in self.fields}
        window, length = _exact(self.window_s), _exact(self.length_s)
        step = self._step(values, window)
        starts = math.floor((window - length) / step) + 1
        start = int(rng.integers(0, starts)) * step
        out = dict(sample)
        for name, value in values.items():
            out[name] = self._crop(name, value, start, length, window)
        return out

    def _step(self, values: dict[str, Any], window: Fraction) -> Fraction:
        if self.step_s is not None:
            return _exact(self.step_s)
        lengths = [v.shape[0] for v in values.values() if isinstance(v, np.ndarray) and v.ndim >= 1]
        if lengths:
            return window / math.gcd(*lengths)
        return Fraction(1, math.lcm(*(v.tick_hz for v in values.values() if isinstance(v, SpikeEvents))))

    def _crop(self, name: str, value: Any, start: Fraction, length: Fraction, window: Fraction) -> Any:
        if isinstance(value, SpikeEvents):
            first, count = self._whole(name, start * value.tick_hz, length * value.tick_hz, "ticks")
            ticks = np.rint(value.times * value.tick_hz).astype(np.int64)
            inside = (ticks >= first) & (ticks < first + count)
            return SpikeEvents.from_ticks(ticks[inside] - first, value.units[inside], value.unit_count, value.tick_hz)
        if not isinstance(value, np.ndarray) or value.ndim < 1:
            raise TypeError(f"{self!r}: field {name!r} is {type(value).__name__}, not an array or SpikeEvents")
        rate = value.shape[0] / window
        first, count = self._whole(name, start * rate, length * rate, "samples")
        return np.array(value[first:first + count], copy=True)

    def _whole(self, name: str, first: Fraction, count: Fraction, unit: str) -> tuple[int, int]:
        if first.denominator != 1 or count.denominator != 1:
            raise ValueError(f"{self!r}: field {name!r} would start at {float(first)} {unit} and span "
                             f"{float(count)}; choose length_s and step_s that are whole {unit} of it")
        return int(first), int(count)


@attrs.frozen
class Compose:
    """Apply `transforms` in order, each with the same generator (each draws after the last)."""

    transforms: tuple[Any, ...] = attrs.field(converter=tuple)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample after every transform."""
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


NORMALIZE_MODES = ("session", "dataset")


@attrs.frozen
class Normalize:
    """Scale every array field that `stats` describes to `(x - mean) / std`, float32, per channel
    (the last axis; one value for 1-D fields and for fields of 3 or more dimensions), where
    `stats` is a `neurocodec.Stats` (`compute_stats`, `read_stats`): with `mode="session"` the
    numbers of the sample's session (`metadata["session"]`), or the pooled ones for a session
    without numbers of its own (a held-out session of a split by session) or a sample without a
    session; with `mode="dataset"` always the pooled ones. A std of 0 counts as 1 (a constant
    channel is only shifted), a channel with no finite value is left as it was (as float32).
    Fields that are not arrays (spike events decoded as events) and fields without statistics
    are passed through; `fields` limits it to some fields. Draws nothing from `rng`."""

    stats: Any = attrs.field()
    mode: str = attrs.field(default="session")
    fields: tuple[str, ...] | None = attrs.field(default=None, converter=lambda v: None if v is None else _fields(v))

    @stats.validator
    def _check_stats(self, attribute: Any, value: Any) -> None:
        if not callable(getattr(value, "mean_std", None)):
            raise TypeError(f"stats must be a neurocodec.Stats (compute_stats, read_stats), got {type(value).__name__}")

    @mode.validator
    def _check_mode(self, attribute: Any, value: Any) -> None:
        if value not in NORMALIZE_MODES:
            raise ValueError(f"mode must be one of {NORMALIZE_MODES}, got {value!r}")

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The sample with its fields scaled."""
        meta = sample.get("metadata")
        session = meta.get("session") if self.mode == "session" and isinstance(meta, Mapping) else None
        out = dict(sample)
        for name, (mean, std) in self.stats.mean_std(session if isinstance(session, str) else None).items():
            value = sample.get(name)
            if (self.fields is None or name in self.fields) and isinstance(value, np.ndarray) and value.ndim:
                out[name] = _scaled(value, mean, std, name, session)
        return out


def _scaled(value: np.ndarray, mean: np.ndarray, std: np.ndarray, name: str, session: Any) -> np.ndarray:
    width = value.shape[-1] if value.ndim == 2 else 1
    if value.size == 0:  # no row or no channel (a session without units): nothing to scale
        return value.astype(np.float32)
    if len(mean) not in (1, width):
        raise ValueError(f"field {name!r} has {width} channels but its statistics (session {session!r}) have "
                         f"{len(mean)}")
    return ((value - mean) / std).astype(np.float32)
