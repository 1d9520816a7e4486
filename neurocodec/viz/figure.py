"""One sample as one figure: a panel per field, stacked on a shared time axis, titled with the
session, subject and window times; written to PNG (or PDF, SVG) atomically.

    fig = neurocodec.show_sample("./shards", index=3)
    fig.savefig("sample3.png")            # or neurocodec.viz.save_figure(fig, "sample3.png")
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

from neurocodec.errors import NeurocodecError
from neurocodec.fsutil import atomic_write_bytes
from neurocodec.viz.mpl import matplotlib, new_figure
from neurocodec.viz.panels import PANELS, Span, kind_of
from neurocodec.viz.sample import FieldView, SampleView, read_sample

WIDTH = 11.0
"""Default figure width in inches."""
HEIGHTS = {"raster": 2.2, "counts": 2.2, "traces": 2.8, "calcium": 2.6, "lines": 1.8, "frames": 1.6,
           "slices": 1.8, "heatmap": 1.8}
"""Height of each kind of panel in inches, its title included."""
MARGINS = {"left": 0.9, "right": 0.75, "top": 0.65, "bottom": 0.5, "gap": 0.35}
"""Inches around the panels (row labels left; colour bars and scale bars right; the title on top;
the time axis below) and between them (each panel's own title). Fixed margins instead of a
layout engine: drawing stays fast and every panel spans the same times at the same width."""
FORMATS = ("png", "pdf", "svg")


@attrs.frozen(slots=True)
class Panel:
    """One panel of the figure: the field it draws and how."""

    kind: str
    field: FieldView


def plan(view: SampleView) -> tuple[list[Panel], list[str]]:
    """The panels for `view`'s fields in manifest order, and the names of the fields that hold
    nothing to draw on a time axis (text, JSON, scalars)."""
    panels, skipped = [], []
    for field in view.fields:
        kind = kind_of(field)
        if kind is None:
            skipped.append(field.name)
        else:
            panels.append(Panel(kind, field))
    return panels, skipped


def span_of(view: SampleView) -> tuple[Span, str]:
    """The x limits and the x axis' label: the window's times in seconds, or, when the
    metadata does not give them, the window as a fraction."""
    if view.start is not None and view.stop is not None:
        return Span(view.start, view.stop), "time (s)"
    return Span(0.0, 1.0, seconds=False), "fraction of the window (the metadata holds no start_time / stop_time)"


def title_of(view: SampleView) -> str:
    """Two lines: session, subject and the window's times; the dataset and the sample."""
    times = f"{view.start:.3f}–{view.stop:.3f} s" if view.start is not None else "times unknown"
    first = " · ".join([f"session {view.session or '?'}", f"subject {view.subject or '?'}", times])
    return f"{first}\n{view.dataset} · {view.key}"


def figure_height(panels: list[Panel]) -> float:
    """Inches the panels need, margins included."""
    return MARGINS["top"] + MARGINS["bottom"] - MARGINS["gap"] + sum(HEIGHTS[p.kind] for p in panels)


def _grid(fig: Any, panels: list[Panel]) -> dict[str, Any]:
    """The grid's placement in `fig` (any size: margins shrink to a third of it at most)."""
    width, height = fig.get_size_inches()
    margin = {k: min(v, width / 3 if k in ("left", "right") else height / 3) for k, v in MARGINS.items()}
    ratios = [HEIGHTS[p.kind] - MARGINS["gap"] for p in panels]
    room = height - margin["top"] - margin["bottom"]
    gap = min(MARGINS["gap"] * height / figure_height(panels), room / 2)
    mean_axes = (room - gap * (len(panels) - 1)) / len(panels)
    return {"height_ratios": ratios, "left": margin["left"] / width, "right": 1 - margin["right"] / width,
            "top": 1 - margin["top"] / height, "bottom": margin["bottom"] / height, "hspace": gap / mean_axes}


def _strip_count(kind: str, field: FieldView, width: float, height: float) -> int:
    """How many images fit across the panel at about their own aspect ratio (2 to 8)."""
    value = field.value
    if kind == "frames":
        aspect = value.shape[2] / max(value.shape[1], 1)
    else:
        x, y, z = value.shape[-3:]
        aspect = (y + 2 * x + 2) / max(y, z, 1)
    return max(2, min(8, int(width / (1.1 * height * aspect))))


def draw(view: SampleView, *, fig: Any = None, width: float = WIDTH, dpi: float = 100) -> Any:
    """Draw `view` into `fig` (cleared first) or a new Figure sized to its panels; return it."""
    panels, skipped = plan(view)
    if not panels:
        raise NeurocodecError(f"{view.dataset}: sample {view.key} holds no field to draw "
                              f"({', '.join(skipped) or 'no fields'})")
    if fig is None:
        fig = new_figure(width, figure_height(panels), dpi)
    else:
        matplotlib()
        fig.clear()
    span, xlabel = span_of(view)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw=_grid(fig, panels))[:, 0]
    fig_width, fig_height = fig.get_size_inches()
    scale = fig_height / figure_height(panels)
    for ax, panel in zip(axes, panels):
        extra = {}
        if panel.kind in ("frames", "slices"):
            size = fig_width - MARGINS["left"] - MARGINS["right"], scale * (HEIGHTS[panel.kind] - MARGINS["gap"])
            extra["wanted"] = _strip_count(panel.kind, panel.field, *size)
        PANELS[panel.kind](ax, panel.field, span, **extra)
        ax.set_label(f"{panel.kind}:{panel.field.name}")
        ax.tick_params(labelsize=8)
    axes[0].set_xlim(span.start, span.stop)
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title_of(view), fontsize=10, y=1 - 0.08 / fig_height, va="top")
    if skipped:
        fig.text(0.005, 0.002, f"not drawn (no time axis): {', '.join(skipped)}", fontsize=7, color="0.4")
    return fig


def show_sample(dataset: Any, index: int | None = None, *, key: str | None = None,
                fields: Sequence[str] | None = None, window_ms: float | None = None,
                decode: Mapping[str, Mapping[str, Any]] | None = None, fig: Any = None,
                raster: bool = True, width: float = WIDTH, dpi: float = 100,
                storage_options: Mapping[str, Any] | None = None) -> Any:
    """Draw one sample of a dataset as a matplotlib Figure: one panel per field, chosen by the
    field's modality (spike raster or count heat map, stacked LFP/EEG traces with a scale bar,
    calcium traces, behavior lines, a strip of video frames, fMRI slices, a heat map for any
    other array), on a shared time axis from the window's start_time to stop_time, titled with
    its session, subject and times.

    `dataset` is a dataset path or URL, or an open `neurocodec.Dataset` (read with its own
    decoding). Choose the sample by `index` (default 0; negative from the end) or `key`
    (`"sample_000000004"`); `window_ms` shows window `index` of a chunked dataset on the grid
    of windows of that length (as `RandomAccessWebDataset(window_ms=...)` cuts them). `fields`
    keeps only those fields; stored spike events are drawn as a raster, or with `raster=False`
    as a heat map of binned counts; `decode` as for `Dataset` (e.g. `{"spikes": {"as": "counts",
    "bin_size_ms": 5}}`). `fig` draws into an existing Figure (e.g.
    `plt.figure()`), cleared first; otherwise a new Figure of `width` inches is made, on the
    Agg canvas (no display needed). Needs matplotlib: `pip install 'neurocodec[plot]'`."""
    matplotlib()  # before reading anything: the missing extra is the first thing to say
    view = read_sample(dataset, index=index, key=key, window_ms=window_ms, decode=decode, fields=fields,
                       raster=raster, storage_options=storage_options)
    return draw(view, fig=fig, width=width, dpi=dpi)


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: float | None = None) -> Path:
    """Write `fig` to `path` atomically, in the format its suffix names (png, pdf or svg)."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise ValueError(f"cannot tell the picture format from {path.name!r}: end it in "
                         f"{', '.join('.' + f for f in FORMATS)}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, dpi=dpi or fig.dpi)
    atomic_write_bytes(path, buffer.getvalue(), fsync=False)
    return path
