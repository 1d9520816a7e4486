"""Spike times as integer ticks: choosing the tick rate of a session and turning one window's
spike times and observation intervals into ticks (used by neurocodec_plugins.nwb_spikes).

The tick rate is the session's clock when the spike times sit on one (the Units table's
`resolution`, the rate of an ElectricalSeries in the file, or a common acquisition or decimal
rate: see `CANDIDATE_HZ`), else `DEFAULT_TICK_HZ` (1 MHz); it is then made a multiple of 1000 and
of the conversion's bin rate, so every whole-millisecond bin and the conversion's bin are whole
ticks. Ticks count from each window's start.

A spike at `x = (t - t0) * tick_hz` ticks from the window's start `t0` is stored at tick
`floor(x + delta)`, `delta = min(BIN_EPS * ticks_per_bin, 0.5)`: binned at the conversion's bin
size this is exactly the converter's rule `floor((t - t0) / b + BIN_EPS)` (floor(floor(y)/n) =
floor(y/n)), and for spike times on the clock (x within float error of an integer) it is the
integer itself, so counts at any other bin size equal binning the times directly too.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable

import attrs
import numpy as np

from neurocodec.nwb import EPS, NWBError, WindowSpec
from neurocodec.plugin import COMMON_CLOCKS, DEFAULT_TICK_HZ, ObservedIntervals, SpikeEvents

BIN_EPS = 1e-6
"""The converter's tolerance in bins (neurocodec.nwb.windows.BIN_EPS)."""
CANDIDATE_HZ = (*COMMON_CLOCKS, 1_000_000)
"""Clocks tried besides the file's own (Units resolution, ElectricalSeries rates): common
acquisition rates, and 1 MHz for times written with 6 decimals."""
MAX_TICK_HZ = 2**31
MAX_WINDOW_TICKS = 2**32 - 1


def on_clock(times: np.ndarray, hz: int) -> bool:
    """Whether every time is a whole number of 1/hz s, up to float64 error (relative 4.5e-16 of
    the tick count, and 1e-7 of a tick)."""
    x = times * hz
    return bool(np.all(np.abs(x - np.rint(x)) <= 1e-7 + 4.5e-16 * np.abs(x)))


class ClockFinder:
    """Which candidate clocks all spike times seen so far sit on (fed block by block)."""

    def __init__(self, declared: Iterable[int]) -> None:
        self.declared = sorted({int(h) for h in declared if 0 < h <= MAX_TICK_HZ})
        self.alive = sorted(set(self.declared) | set(CANDIDATE_HZ))

    def feed(self, times: np.ndarray) -> None:
        """Drop the candidates some of `times` are not on."""
        if len(times):
            self.alive = [hz for hz in self.alive if on_clock(times, hz)]

    def clock(self) -> tuple[int, str]:
        """The slowest clock every time sits on, and where it came from; else the default."""
        if not self.alive:
            return DEFAULT_TICK_HZ, "none found: default"
        hz = self.alive[0]
        return hz, "declared in the file" if hz in self.declared else "common rate"


def declared_clocks(units: Any, nwbfile: Any) -> list[int]:
    """Whole-number clocks the file declares: the Units table's `resolution` (seconds) and the
    rates of its ElectricalSeries."""
    found = []
    resolution = getattr(units, "resolution", None)
    if isinstance(resolution, (int, float)) and resolution > 0 and math.isfinite(resolution):
        found.append(1 / resolution)
    try:
        from pynwb.ecephys import ElectricalSeries

        found += [s.rate for s in nwbfile.objects.values() if isinstance(s, ElectricalSeries) and s.rate]
    except Exception:  # noqa: BLE001 - a file without ecephys, or one pynwb reads oddly: no candidates
        pass
    return [round(h) for h in found if isinstance(h, (int, float)) and h >= 1 and abs(h - round(h)) < 1e-6 * h]


def bin_ms(spec: WindowSpec) -> Fraction:
    """The window's bin size in ms, exactly (as the decimal the user gave)."""
    return Fraction(repr(spec.bin_size * 1000)).limit_denominator(10**9)


def tick_rate(clock: int, spec: WindowSpec) -> int:
    """`clock` made a multiple of 1000 and of the bin rate (a bin is whole ticks)."""
    ms = bin_ms(spec)
    per_bin = 1000 * ms.denominator // math.gcd(1000 * ms.denominator, ms.numerator)
    hz = math.lcm(clock, 1000, per_bin)
    window = ms * spec.sequence_length * hz / 1000
    if hz > MAX_TICK_HZ or window > MAX_WINDOW_TICKS:
        raise NWBError(f"spike events at {hz} ticks/s: a window of {spec.duration:g} s is {float(window):.0f} ticks, "
                       f"above {MAX_WINDOW_TICKS}; convert with codecs='npy' (dense counts) or shorter windows")
    return hz


@attrs.frozen(slots=True)
class TickWindow:
    """Ticks of the windows of one WindowSpec at one tick rate."""

    hz: int
    per_bin: int
    window: int

    @classmethod
    def of(cls, hz: int, spec: WindowSpec) -> "TickWindow":
        """The window of `spec` at `hz`."""
        per_bin = bin_ms(spec) * hz / 1000
        return cls(hz, int(per_bin), int(per_bin) * spec.sequence_length)

    def events(self, times: list[np.ndarray], start: float) -> SpikeEvents:
        """Each unit's spike `times` (around the window at `start`) as events of the window."""
        units = len(times)
        every = np.concatenate(times) if units else np.zeros(0)
        unit = np.repeat(np.arange(units, dtype=np.int64), [len(t) for t in times])
        delta = min(BIN_EPS * self.per_bin, 0.5)
        ticks = np.floor((every - start) * self.hz + delta)
        inside = (ticks >= 0) & (ticks < self.window)
        ticks, unit = ticks[inside].astype(np.int64), unit[inside]
        order = np.lexsort((unit, ticks))
        return SpikeEvents.from_ticks(ticks[order], unit[order], units, self.hz)

    def observed(self, intervals: np.ndarray, units: np.ndarray, unit_count: int, start: float) -> ObservedIntervals:
        """Observation `intervals` (n, 2) in seconds of `units` as ticks of the window at `start`:
        the first tick at or after a start - EPS and the last at or before a stop + EPS, so that a
        bin lies wholly inside in ticks exactly when it does by the converter's rule."""
        first = np.ceil((intervals[:, 0] - EPS - start) * self.hz)
        last = np.floor((intervals[:, 1] + EPS - start) * self.hz)
        bounds = np.clip(np.stack([first, last], axis=1), 0, self.window)
        keep = bounds[:, 1] > bounds[:, 0]
        return ObservedIntervals.from_ticks(bounds[keep], units[keep], unit_count, self.hz)

    def everything(self, unit_count: int) -> ObservedIntervals:
        """Every unit observed over the whole window."""
        bounds = np.tile(np.array([[0, self.window]]), (unit_count, 1))
        return ObservedIntervals.from_ticks(bounds, np.arange(unit_count), unit_count, self.hz)

    def nothing(self, unit_count: int) -> tuple[SpikeEvents, ObservedIntervals]:
        """No spikes and nothing observed."""
        return (SpikeEvents.from_ticks(np.zeros(0), np.zeros(0, np.int64), unit_count, self.hz),
                ObservedIntervals.from_ticks(np.zeros((0, 2)), np.zeros(0, np.int64), unit_count, self.hz))
