"""One drawing function per kind of panel, each on one matplotlib Axes whose x axis is time.

Every function takes the Axes, the field (`neurocodec.viz.sample.FieldView`) and the window's
span `(t0, t1)` in seconds, and draws the field's value across it: row i of a value with n rows
covers [t0 + i (t1 - t0) / n, t0 + (i + 1) (t1 - t0) / n). `kind_of` says which function suits
a field, by its modality first and then by what the value holds (a value of another shape than
its modality's falls back to a heat map). The caller sets the shared x limits.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from neurocodec.plugin.events import SpikeEvents
from neurocodec.viz.sample import FieldView



class Span(NamedTuple):
    """The window's start and stop on the x axis: seconds, or (`seconds` False) fractions of a
    window whose times the metadata does not give."""

    start: float
    stop: float
    seconds: bool = True


MAX_TRACES = 32
"""Most channels or ROIs stacked in one panel (evenly chosen among more)."""
MAX_LINES = 24
"""Most behavior columns drawn as lines (a heat map shows more)."""
MAX_TICK_LABELS = 40
"""Most rows named on a panel's y axis."""
UNKNOWN_UNITS = {"", "n.a.", "na", "none", "no unit", "unknown", "a.u.", "au", "arbitrary"}
_VOLTS = {"v": 1.0, "volt": 1.0, "volts": 1.0, "mv": 1e-3, "millivolt": 1e-3, "millivolts": 1e-3,
          "uv": 1e-6, "µv": 1e-6, "μv": 1e-6, "microvolt": 1e-6, "microvolts": 1e-6}


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim >= 1 and value.size > 0


def kind_of(field: FieldView) -> str | None:
    """The panel kind for `field` ('raster', 'counts', 'traces', 'calcium', 'lines', 'frames',
    'slices', 'heatmap'), or None when it holds nothing to draw on a time axis."""
    value, modality = field.value, field.modality
    if modality == "spikes" and isinstance(value, SpikeEvents):
        return "raster"
    if not _numeric(value):
        return None
    if modality == "spikes" and value.ndim == 2:
        return "counts"
    if modality in ("lfp", "eeg") and value.ndim <= 2:
        return "traces"
    if modality == "calcium" and value.ndim <= 2:
        return "calcium"
    if modality == "behavior":
        return "lines"
    if modality == "video" and (value.ndim == 3 or (value.ndim == 4 and value.shape[-1] in (1, 3, 4))):
        return "frames"
    if modality == "fmri" and value.ndim in (3, 4):
        return "slices"
    return "lines" if value.ndim == 1 else "heatmap"


def row_times(rows: int, span: Span) -> np.ndarray:
    """The start time of each of `rows` equal parts of the span."""
    return span[0] + np.arange(rows) * ((span[1] - span[0]) / max(rows, 1))


def nice(value: float) -> float:
    """The largest of 1, 2, 5 x 10^k not above `value` (value > 0)."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (5, 2, 1) if step * power <= value * (1 + 1e-9))


def _label_rows(ax: Any, positions: np.ndarray, labels: tuple[str, ...], rows: np.ndarray) -> None:
    """Name the rows drawn at `positions` (row i of the field is `rows[i]`) when few enough."""
    if len(rows) > MAX_TICK_LABELS:
        return
    names = [labels[r] if r < len(labels) and labels[r] else str(r) for r in rows]
    ax.set_yticks(positions, names, fontsize=7)


def _title(ax: Any, field: FieldView, what: str) -> None:
    series = f" ({field.series})" if field.series and field.series != field.name else ""
    ax.set_title(f"{field.name}{series} · {what}", loc="left", fontsize=9)


# -- spikes ---------------------------------------------------------------------------------------
def _grey_unobserved(ax: Any, observed: np.ndarray | None, units: int, span: Span) -> None:
    """Shade the bins in which a unit was not observed."""
    if observed is None or observed.shape[1] != units or observed.all():
        return
    import matplotlib.colors as colors

    shade = np.ma.masked_where(observed.T, np.ones(observed.T.shape))
    ax.imshow(shade, aspect="auto", origin="lower", extent=(span[0], span[1], -0.5, units - 0.5),
              cmap=colors.ListedColormap(["0.85"]), interpolation="nearest", zorder=0)


def raster(ax: Any, field: FieldView, span: Span) -> None:
    """Spike events: one tick per spike, one row per unit, unobserved stretches grey."""
    events: SpikeEvents = field.value
    units = events.unit_count
    _grey_unobserved(ax, field.observed, units, span)
    ax.vlines(span[0] + events.times, events.units - 0.4, events.units + 0.4, color="black", linewidth=0.7)
    ax.set_ylim(-0.5, max(units, 1) - 0.5)
    _label_rows(ax, np.arange(units), field.labels, np.arange(units))
    ax.set_ylabel("unit")
    _title(ax, field, f"spike raster, {len(events)} spikes of {units} units")


def counts(ax: Any, field: FieldView, span: Span) -> None:
    """Binned counts: units x bins heat map, bins where a unit was not observed grey."""
    import matplotlib.ticker

    values = field.value.astype(np.float64)
    bins, units = values.shape
    observed = field.observed if field.observed is not None and field.observed.shape == values.shape else None
    shown = np.ma.masked_where(~observed.T, values.T) if observed is not None else np.ma.masked_invalid(values.T)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
    image = ax.imshow(shown, aspect="auto", origin="lower", extent=(span[0], span[1], -0.5, units - 0.5),
                      cmap=cmap, interpolation="nearest", vmin=0)
    bar = ax.figure.colorbar(image, cax=ax.inset_axes((1.005, 0.0, 0.012, 1.0)),
                             ticks=matplotlib.ticker.MaxNLocator(nbins=5, integer=True))
    bar.ax.tick_params(labelsize=7)
    _label_rows(ax, np.arange(units), field.labels, np.arange(units))
    ax.set_ylabel("unit")
    size = f"per {1000 * (span[1] - span[0]) / bins:.3g} ms bin" if span.seconds else f"in {bins} bins"
    grey = ", grey: not observed" if observed is not None and not observed.all() else ""
    _title(ax, field, f"spike counts {size}, {units} units{grey}")


# -- stacked traces -------------------------------------------------------------------------------
def volts_per_unit(unit: str) -> float | None:
    """Volts per recorded unit for a voltage unit ('volts', 'mV', 'uV', ...), else None."""
    return _VOLTS.get(unit.strip().lower())


def _display(unit: str, spread: float) -> tuple[float, str]:
    """(factor, unit label) to draw values of `unit` spread over about `spread`: voltages in
    the one of V, mV, µV that suits their size; other units as they are."""
    volts = volts_per_unit(unit)
    if volts is None:
        return 1.0, "a.u." if unit.strip().lower() in UNKNOWN_UNITS else unit
    size = spread * volts
    for factor, label in ((1e6, "µV"), (1e3, "mV")):
        if size * factor < 1000:
            return volts * factor, label
    return volts, "V"


def time_major(value: np.ndarray, time_first: bool) -> np.ndarray:
    """(time, channels): a 1-D value as one channel; a 2-D one as it is when `time_first`
    (the NWB conversion's layout), else with its longer axis as time."""
    if value.ndim == 1:
        return value.reshape(-1, 1)
    return value if time_first or value.shape[0] >= value.shape[1] else value.T


def _spread(values: np.ndarray) -> float:
    """A robust peak-to-peak size of the channels: the 90th percentile of their 0.5 to 99.5
    percentile ranges (one wild channel does not flatten the rest, most stay apart)."""
    finite = [c[np.isfinite(c)] for c in values.T]
    ranges = [np.percentile(c, 99.5) - np.percentile(c, 0.5) for c in finite if len(c)]
    ranges = [r for r in ranges if r > 0]
    return float(np.percentile(ranges, 90)) if ranges else 1.0


def stacked(ax: Any, field: FieldView, span: Span, what: str, unit: str) -> None:
    """Channels (columns of a (time, channels) value) one under another, with a scale bar."""
    values = time_major(field.value, bool(field.series))
    rows = np.unique(np.linspace(0, values.shape[1] - 1, min(values.shape[1], MAX_TRACES)).round().astype(int))
    data = values[:, rows].astype(np.float64)
    factor, label = _display(unit, _spread(data))
    data = np.where(np.isfinite(data), data * factor, np.nan)
    spacing = _spread(data)
    centre = np.array([np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else 0.0 for c in data.T])
    offsets = -np.arange(len(rows)) * spacing
    drawn = data - centre + offsets
    ax.plot(row_times(len(data), span), drawn, color="black", linewidth=0.6)
    low, high = (np.nanmin(drawn), np.nanmax(drawn)) if np.isfinite(drawn).any() else (offsets[-1], 0.0)
    ax.set_ylim(min(low, offsets[-1] - spacing / 2) - 0.05 * spacing, max(high, spacing / 2) + 0.3 * spacing)
    _label_rows(ax, offsets, field.labels, rows)
    _scale_bar(ax, span, spacing, label)
    shown = f"{len(rows)} of {values.shape[1]}" if len(rows) < values.shape[1] else f"{values.shape[1]}"
    _title(ax, field, f"{what}, {shown} channels")


def _scale_bar(ax: Any, span: Span, spacing: float, label: str) -> None:
    """A vertical bar of a round length just right of the panel, labelled with length and unit."""
    length = nice(0.8 * spacing)
    top = ax.get_ylim()[1] - 0.1 * spacing
    edge = ax.get_yaxis_transform()  # x in axes fractions, y in data
    ax.plot([1.008, 1.008], [top - length, top], transform=edge, clip_on=False, color="tab:red", linewidth=2,
            solid_capstyle="butt")
    ax.text(1.014, top - length / 2, f"{length:.3g}\n{label}", transform=edge, color="tab:red", fontsize=7,
            ha="left", va="center")


def traces(ax: Any, field: FieldView, span: Span) -> None:
    """LFP or EEG: stacked voltage traces with a scale bar in µV, mV or V where the unit is known."""
    stacked(ax, field, span, f"{field.modality.upper()} traces", field.unit)
    ax.set_ylabel("channel")


def calcium(ax: Any, field: FieldView, span: Span) -> None:
    """Calcium imaging: stacked ROI traces (dF/F where the series says so)."""
    hint = f"{field.series} {field.unit}".lower().replace(" ", "")
    unit = "ΔF/F" if any(word in hint for word in ("dff", "dfoverf", "df/f")) else field.unit
    stacked(ax, field, span, "calcium traces", unit)
    ax.set_ylabel("ROI")


# -- behavior and anything else over time ---------------------------------------------------------
def lines(ax: Any, field: FieldView, span: Span) -> None:
    """One line per column, labelled (behavior, or any 1-D value)."""
    values = field.value.reshape(len(field.value), -1).astype(np.float64)
    columns = values.shape[1]
    if columns > MAX_LINES:
        heatmap(ax, field, span)
        return
    times = row_times(len(values), span)
    for c in range(columns):
        base = field.series or field.name
        name = field.labels[c] if c < len(field.labels) and field.labels[c] else (
            base if columns == 1 else f"{base}[{c}]")
        ax.plot(times, values[:, c], linewidth=1.0, label=name)
    ax.legend(loc="upper right", fontsize=7, ncols=min(columns, 6), frameon=False)
    unit = field.unit if field.unit.strip().lower() not in UNKNOWN_UNITS else ""
    ax.set_ylabel(unit or "value")
    _title(ax, field, f"{field.modality}, {columns} column{'s' if columns != 1 else ''}")


def heatmap(ax: Any, field: FieldView, span: Span) -> None:
    """Any array: time down its first axis, everything else flattened into rows."""
    import matplotlib

    values = field.value.reshape(len(field.value), -1).astype(np.float64)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(values.T), aspect="auto", origin="lower", cmap=cmap,
                      extent=(span[0], span[1], -0.5, values.shape[1] - 0.5), interpolation="nearest")
    bar = ax.figure.colorbar(image, cax=ax.inset_axes((1.005, 0.0, 0.012, 1.0)))
    bar.ax.tick_params(labelsize=7)
    ax.set_ylabel("value")
    _title(ax, field, f"{field.modality} {tuple(field.value.shape)}, heat map")


# -- images along the window ----------------------------------------------------------------------
def _strip(ax: Any, images: list[np.ndarray], starts: list[float], span: Span, **style: Any) -> None:
    """Images side by side in equal slots across the span, each labelled with its time."""
    slot = (span[1] - span[0]) / len(images)
    for j, (image, time) in enumerate(zip(images, starts)):
        left, right = span[0] + (j + 0.04) * slot, span[0] + (j + 0.96) * slot
        ax.imshow(image, extent=(left, right, 0.0, 1.0), aspect="auto", interpolation="nearest", **style)
        ax.text((left + right) / 2, 1.03, f"{time:.3f} s" if span.seconds else f"{time:.3f}", ha="center",
                va="bottom", fontsize=7)
    ax.set_ylim(0.0, 1.16)
    ax.set_yticks([])


def picks(count: int, wanted: int) -> np.ndarray:
    """`wanted` indices of `count`, evenly spread (the middle of each of `wanted` parts)."""
    wanted = max(1, min(count, wanted))
    return np.unique(((np.arange(wanted) + 0.5) * count / wanted).astype(int))


def frames(ax: Any, field: FieldView, span: Span, wanted: int = 6) -> None:
    """Video: a few frames evenly spaced across the window, each with its time."""
    video = field.value
    chosen = picks(len(video), wanted)
    times = row_times(len(video), span)
    images = [video[i][..., 0] if video.ndim == 4 and video.shape[-1] == 1 else video[i] for i in chosen]
    style = {"cmap": "gray"} if images[0].ndim == 2 else {}
    if images[0].ndim == 2 or video.dtype != np.uint8:
        low, high = _limits(np.stack(images))
        style.update(vmin=low, vmax=high)
        if images[0].ndim == 3:  # colour of another dtype: scaled to 0..1
            images = [np.clip((im - low) / (high - low), 0, 1) for im in images]
    _strip(ax, images, [float(times[i]) for i in chosen], span, **style)
    _title(ax, field, f"video, {len(chosen)} of {len(video)} frames ({video.shape[1]}x{video.shape[2]})")


def _limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.reshape(-1)
    if not finite.size:
        return 0.0, 1.0
    low, high = float(np.percentile(finite, 1)), float(np.percentile(finite, 99))
    return (low, high) if high > low else (low, low + 1.0)


def ortho(volume: np.ndarray) -> np.ndarray:
    """The middle sagittal, coronal and axial slices of an (x, y, z) volume side by side
    (rows going up, padded with NaN to one height)."""
    x, y, z = volume.shape
    parts = [volume[x // 2, :, :].T, volume[:, y // 2, :].T, volume[:, :, z // 2].T]
    height = max(p.shape[0] for p in parts)
    gap = np.full((height, 1), np.nan)
    padded = []
    for part in parts:
        block = np.full((height, part.shape[1]), np.nan)
        block[:part.shape[0]] = part
        padded += [block, gap]
    return np.concatenate(padded[:-1], axis=1)


def slices(ax: Any, field: FieldView, span: Span, wanted: int = 4) -> None:
    """fMRI: the middle sagittal, coronal and axial slices of the volume at a few times."""
    import matplotlib

    volumes = field.value[None] if field.value.ndim == 3 else field.value
    chosen = picks(len(volumes), wanted)
    times = row_times(len(volumes), span)
    images = [ortho(volumes[i].astype(np.float64)) for i in chosen]  # only the volumes drawn
    low, high = _limits(np.stack(images))
    cmap = matplotlib.colormaps["gray"].with_extremes(bad="black")
    _strip(ax, [np.ma.masked_invalid(i) for i in images], [float(times[i]) for i in chosen], span, cmap=cmap,
           vmin=low, vmax=high, origin="lower")
    shape = "x".join(str(n) for n in volumes.shape[1:])
    _title(ax, field, f"fMRI, middle slices (sagittal, coronal, axial) of {len(chosen)} of {len(volumes)} "
                      f"volumes ({shape})")


PANELS: dict[str, Callable[..., None]] = {
    "raster": raster, "counts": counts, "traces": traces, "calcium": calcium, "lines": lines,
    "frames": frames, "slices": slices, "heatmap": heatmap,
}
"""Panel kind -> the function drawing it."""
