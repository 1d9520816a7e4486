"""matplotlib, imported only when a picture is drawn, with an error naming the extra to install.

Figures are made as `matplotlib.figure.Figure` objects, never through `pyplot`: no display,
no global figure registry, no backend switch; they are written with the Agg canvas.
"""

from __future__ import annotations

from typing import Any

from neurocodec.viz.errors import MissingExtraError

INSTALL = "pip install 'neurocodec[plot]'"


def matplotlib() -> Any:
    """The matplotlib package (3.7 or later); MissingExtraError when it is not installed."""
    try:
        import matplotlib as mpl
        import matplotlib.figure  # noqa: F401  (the submodules used by the panels)
        import matplotlib.colors  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"drawing a sample needs matplotlib, which is not installed ({exc}): "
                                f"{INSTALL}") from None
    return mpl


def new_figure(width: float, height: float, dpi: float) -> Any:
    """An empty Figure of `width` x `height` inches, on an Agg canvas."""
    mpl = matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = mpl.figure.Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure
