"""Small matplotlib charts rendered to base64 PNG, for inlining in report.html.

Figures are drawn on the Agg canvas directly (no pyplot): no display is
needed and the caller's global matplotlib state is left alone.
"""

from __future__ import annotations

import base64
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_SIZE = (6.4, 3.2)
_COLOR = "#3a6ea5"


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram(histogram: dict | None, title: str, xlabel: str, log_x: bool = False) -> str | None:
    """A histogram from ``{"edges", "counts"}`` as stored in report.json."""
    if not histogram or not histogram["counts"]:
        return None
    figure = Figure(figsize=_SIZE)
    axes = figure.add_subplot()
    edges = histogram["edges"]
    widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    axes.bar(edges[:-1], histogram["counts"], width=widths, align="edge", color=_COLOR,
             edgecolor="white")
    if log_x:
        axes.set_xscale("log")
    axes.set(title=title, xlabel=xlabel, ylabel="records")
    return _png(figure)


def bars(values: dict[str, float], title: str, xlabel: str) -> str | None:
    """Horizontal bars, one per key, in the given order (top to bottom)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    figure = Figure(figsize=(_SIZE[0], max(1.6, 0.3 * len(values) + 0.9)))
    axes = figure.add_subplot()
    labels = list(values)[::-1]
    numbers = [values[k] for k in labels]
    axes.barh(labels, numbers, color=[_COLOR if v >= 0 else "#c0504d" for v in numbers])
    axes.axvline(0, color="black", linewidth=0.6)
    axes.set(title=title, xlabel=xlabel)
    return _png(figure)
