"""Plots for people: labelled Mel-spectrograms, training learning curves (loss and validation score per
epoch, :func:`plot_learning_curves`), confusion matrices and per-class F1 charts.

Figures are made with :class:`matplotlib.figure.Figure` on an explicit Agg canvas (:mod:`specfusion.figures`),
never through ``pyplot``'s global state, so plotting from specfusion never changes the caller's matplotlib
backend and never leaves figures open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specfusion.evaluation.metrics import confusion_matrix
from specfusion.features.spectrogram import MelSpecParams, frame_times, mel_band_frequencies
from specfusion.figures import grow_to_fit, new_figure

#: Round frequencies (Hz) offered as Mel-axis ticks; those inside the plotted range are used.
ROUND_FREQUENCIES_HZ = (0, 100, 250, 500, 1000, 2000, 4000, 8000, 16000)


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
        dB values, e.g. from :func:`specfusion.features.spectrogram.melspectrogram`.
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
        Per model (e.g. ``"fold 1"``), its :attr:`specfusion.models.crnn.CRNNClassifier.history_`.
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


def plot_confusion_matrix(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    classes: Sequence[str],
    path=None,
    title: str = "",
    colormap: str = "Blues",
    dpi: int = 120,
):
    """Confusion matrix as a figure: colours normalised per true class (row), counts annotated.

    The figure grows with the number of classes and the fonts fill the cells (tick labels 45 %, counts 40 %
    of a cell's side, 6-11 pt and 5-11 pt), so that 50 classes stay readable when the page shrinks the PNG;
    zero cells are left blank. The class names are the tick labels and are also written into the PNG's
    ``Description`` text chunk.

    Parameters
    ----------
    y_true, y_pred : sequence of str
    classes : sequence of str
        Row/column order.
    path : path-like, optional
        Write a PNG here and close the figure; otherwise return the figure.
    title : str
    colormap : str
        matplotlib colour map of the per-row fractions.
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    classes = [str(c) for c in classes]
    counts = confusion_matrix(y_true, y_pred, classes=classes)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    n = len(classes)
    side = float(np.clip(1.5 + 0.3 * n, 5.0, 24.0))
    cell_pt = 72.0 * side / max(n, 1)  # a cell's side in points: fonts scale with it (50 classes: 24 pt cells)
    cell_font = float(np.clip(0.4 * cell_pt, 5.0, 11.0))
    label_font = float(np.clip(0.45 * cell_pt, 6.0, 11.0))
    longest = max((len(c) for c in classes), default=1)
    label_room = longest * label_font * 0.6 / 72  # inches a rotated/left label needs, roughly

    fig = new_figure((side + label_room + 1.5, side + label_room + 0.8), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap=colormap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(np.arange(n), labels=classes, rotation=90, fontsize=label_font)
    ax.set_yticks(np.arange(n), labels=classes, fontsize=label_font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix ({int(counts.sum())} items)", wrap=True)
    for i, j in zip(*np.nonzero(counts)):
        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=cell_font,
                color="white" if fractions[i, j] > 0.5 else "black")  # fmt: skip
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.set_label("fraction of the true class")
    grow_to_fit(fig)
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(
        path,
        format="png",
        metadata={"Title": title or "confusion matrix", "Description": "classes: " + ", ".join(classes)},
    )
    return None


def plot_class_f1(f1_by_class: dict, *, path=None, title: str = "", dpi: int = 100):
    """Horizontal bar chart of per-class F1 (percent), best class on top, worst at the bottom.

    Parameters
    ----------
    f1_by_class : dict of str -> float
        Class name -> F1 in percent (as in ``metrics.json``'s ``class_f1``).
    path : path-like, optional
        Write a PNG here; otherwise return the figure.
    title : str
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure or None
    """
    ordered = sorted(f1_by_class.items(), key=lambda kv: (kv[1], kv[0]))
    names = [str(k) for k, _ in ordered]
    values = np.array([float(v) for _, v in ordered])
    n = len(names)
    font = float(np.clip(260.0 / max(n, 1), 6.0, 10.0))
    fig = new_figure((6.0, float(np.clip(0.5 + 0.2 * n, 2.5, 14.0))), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.barh(np.arange(n), values, color="#3b7dd8")
    ax.set_yticks(np.arange(n), labels=names, fontsize=font)
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("F1 (%)")
    if n:
        ax.axvline(values.mean(), color="black", linestyle="--", linewidth=1, label=f"macro F1 {values.mean():.1f} %")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "per-class F1", wrap=True)
    grow_to_fit(fig)
    if path is None:
        return fig
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Title": title or "per-class F1"})
    return None
