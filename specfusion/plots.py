"""Plots for people: labelled Mel-spectrograms (confusion matrices live in :mod:`specfusion.evaluation`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specfusion.spectrogram import MelSpecParams, frame_times, mel_band_frequencies


def plot_melspectrogram(
    spec: np.ndarray,
    sr: int,
    *,
    params: MelSpecParams = MelSpecParams(),
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
    params : MelSpecParams
        The parameters it was computed with (for the axes).
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
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    times = frame_times(spec.shape[1], sr, params)
    freqs = mel_band_frequencies(sr, params)
    hop = params.hop_s
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    mesh = ax.pcolormesh(
        np.append(times - hop / 2, times[-1] + hop / 2),
        np.arange(spec.shape[0] + 1),
        spec,
        cmap=colormap,
        shading="flat",
    )
    ticks = np.linspace(0, spec.shape[0] - 1, 6).round().astype(int)
    ax.set_yticks(ticks + 0.5)
    ax.set_yticklabels([f"{freqs[t]:.0f}" for t in ticks])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz, Mel scale)")
    ax.set_title(title or "Mel-spectrogram")
    fig.colorbar(mesh, ax=ax, format="%+.0f dB", label="dB (max = 0)")
    fig.tight_layout()
    if path is None:
        return fig
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
