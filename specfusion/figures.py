"""Figures on an explicit Agg canvas: :class:`matplotlib.figure.Figure` without ``pyplot``'s global state.

Plotting from specfusion never changes the caller's matplotlib backend and never leaves figures open.
Part of the core: the DEEP SPECTRUM image path (features) and every plot (evaluation) draw on these.
"""

from __future__ import annotations


def new_figure(figsize: tuple[float, float], *, dpi: int = 100, layout: str | None = None):
    """A :class:`~matplotlib.figure.Figure` with its own Agg canvas (no pyplot, no backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def overflow_inches(fig) -> tuple[float, float, float, float]:
    """How far drawn content reaches outside the canvas: (left, bottom, right, top) in inches, >= 0."""
    renderer = fig.canvas.get_renderer()
    box = fig.get_tightbbox(renderer)
    width, height = fig.get_size_inches()
    return (max(0.0, -box.x0), max(0.0, -box.y0), max(0.0, box.x1 - width), max(0.0, box.y1 - height))


def grow_to_fit(fig, *, pad: float = 0.05, max_rounds: int = 6) -> None:
    """Enlarge a constrained-layout figure until no label, title or colour bar lies outside it."""
    for _ in range(max_rounds):
        fig.canvas.draw()
        left, bottom, right, top = overflow_inches(fig)
        if max(left, bottom, right, top) <= 0.0:
            return
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + left + right + 2 * pad, height + bottom + top + 2 * pad)
