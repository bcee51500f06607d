"""Plots for people: labelled Mel-spectrograms, training learning curves (loss and validation score per
epoch, :func:`plot_learning_curves`), and the figure helpers every plot of the package uses.

Figures are made with :class:`matplotlib.figure.Figure` on an explicit Agg canvas, never through
``pyplot``'s global state, so plotting from specfusion never changes the caller's matplotlib backend and
never leaves figures open. Confusion matrices and per-class F1 charts live in :mod:`specfusion.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specfusion.spectrogram import MelSpecParams, frame_times, mel_band_frequencies

#: Round frequencies (Hz) offered as Mel-axis ticks; those inside the plotted range are used.
ROUND_FREQUENCIES_HZ = (0, 100, 250, 500, 1000, 2000, 4000, 8000, 16000)


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


def mel_axis_ticks(freqs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Positions (band index, fractional) and labels of round-Hz ticks for a Mel-band axis.

    ``freqs`` are the bands' centre frequencies (increasing); a tick sits where its frequency falls
    between two centres, so the labels are round numbers (500, 1000, 2000 Hz, ...) rather than the
    centre frequencies of arbitrary bands.
    """
    inside = [f for f in ROUND_FREQUENCIES_HZ if freqs[0] <= f <= freqs[-1]]
    positions = np.interp(inside, freqs, np.arange(len(freqs), dtype=float))
    labels = [f"{f / 1000:g}k" if f >= 1000 else f"{f:g}" for f in inside]
    return positions, labels


def plot_melspectrogram(
    spec: np.ndarray,
    sr: int,
    *,
    params: MelSpecParams | None = None,
    path=None,
    title: str = "",
    colormap: str = "viridis",
):
    """Plot a dB Mel-spectrogram with time (s) and frequency (Hz) axes and a colour bar.

    Parameters
    ----------
    spec : ndarray, shape (n_mels, n_frames)
        dB values, e.g. from :func:`specfusion.spectrogram.melspectrogram`.
    sr : int
        Sample rate the spectrogram was computed at.
    params : MelSpecParams, optional
        The parameters it was computed with (for the axes); default the paper's.
    path : path-like, optional
        Write the figure here (PNG) and close it; otherwise return it.
    title : str
        Figure title.
    colormap : str
        matplotlib colour map.

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    params = MelSpecParams() if params is None else params
    times = frame_times(spec.shape[1], sr, params)
    freqs = mel_band_frequencies(sr, params)
    hop = params.hop_s
    fig = new_figure((8, 4), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(
        np.append(times - hop / 2, times[-1] + hop / 2),
        np.arange(spec.shape[0] + 1),
        spec,
        cmap=colormap,
        shading="flat",
    )
    positions, labels = mel_axis_ticks(freqs)
    ax.set_yticks(positions + 0.5, labels=labels)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz, Mel scale)")
    ax.set_title(title or "Mel-spectrogram")
    fig.colorbar(mesh, ax=ax, format="%+.0f dB", label="dB (max = 0)")
    if path is None:
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return None


def plot_learning_curves(histories: dict, path, *, metric: str = "accuracy", title: str | None = None) -> Path:
    """Save the training loss and validation loss/score per epoch of one or more models as a PNG.

    Parameters
    ----------
    histories : dict of str to list of dict
        Per model (e.g. ``"fold 1"``), its :attr:`specfusion.crnn.CRNNClassifier.history_`.
    path : path-like
        The PNG to write (folders are created).
    metric : str
        The validation score's name (``val_<metric>`` in the records).
    title : str, optional

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, score_axes = figure.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        loss_axes.plot(epochs, [r["loss"] for r in history], color=colour, label=f"{name} training")
        if any("val_loss" in r for r in history):
            val = [(r["epoch"], r["val_loss"]) for r in history if "val_loss" in r]
            loss_axes.plot(*zip(*val), color=colour, linestyle="--", label=f"{name} validation")
        key = f"val_{metric}"
        if any(key in r for r in history):
            val = [(r["epoch"], 100 * r[key]) for r in history if key in r]
            score_axes.plot(*zip(*val), color=colour, label=name)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss (training: with dropout/augmentation)")
    score_axes.set(xlabel="epoch", ylabel=f"validation {metric} (%)", title=f"held-out {metric}")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
