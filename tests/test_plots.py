"""Plots for people: nothing drawn outside the canvas, round Mel ticks, no backend side effects."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from specfusion.evaluation.plots import mel_axis_ticks, plot_class_f1, plot_confusion_matrix, plot_melspectrogram
from specfusion.features.spectrogram import MelSpecParams, mel_band_frequencies
from specfusion.figures import overflow_inches


def _labels(n_classes: int, length: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if length == 1:
        classes = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n_classes])
    else:
        classes = [f"{i:02d} " + "long class name with words " * 3 for i in range(n_classes)]
        classes = [c[:length] for c in classes]
    y_true = rng.choice(classes, size=8 * n_classes)
    y_pred = np.where(rng.random(y_true.size) < 0.6, y_true, rng.choice(classes, size=y_true.size))
    return classes, y_true, y_pred


@pytest.mark.parametrize(("n_classes", "length"), [(10, 1), (3, 1), (10, 40), (50, 40), (50, 1)])
def test_confusion_matrix_keeps_every_label_inside_the_figure(n_classes, length):
    classes, y_true, y_pred = _labels(n_classes, length)
    assert len(set(map(len, classes))) == 1 and len(classes[0]) == length
    fig = plot_confusion_matrix(
        y_true, y_pred, classes=classes, title=f"{n_classes} classes of {length} characters, accuracy 60.0 %"
    )
    fig.canvas.draw()
    assert overflow_inches(fig) == (0.0, 0.0, 0.0, 0.0)
    texts = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert texts == classes


@pytest.mark.parametrize("length", [1, 40])
def test_class_f1_chart_is_sorted_and_inside_the_figure(length):
    classes, _, _ = _labels(12, length)
    f1 = {c: float(v) for c, v in zip(classes, np.linspace(90, 10, len(classes)))}
    fig = plot_class_f1(f1, title="per-class F1")
    fig.canvas.draw()
    assert overflow_inches(fig) == (0.0, 0.0, 0.0, 0.0)
    shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert shown == sorted(classes, key=lambda c: f1[c])  # worst at the bottom (y = 0), best on top
    widths = [bar.get_width() for bar in fig.axes[0].patches]
    assert widths == sorted(widths)


def test_mel_ticks_are_round_frequencies_at_the_right_bands():
    freqs = mel_band_frequencies(44100, MelSpecParams())
    positions, labels = mel_axis_ticks(freqs)
    assert labels == ["100", "250", "500", "1k", "2k", "4k", "8k", "16k"]
    # each tick lies between the two bands whose centres bracket its frequency
    for pos, hz in zip(positions, [100, 250, 500, 1000, 2000, 4000, 8000, 16000]):
        below = int(np.floor(pos))
        assert freqs[below] <= hz <= freqs[min(below + 1, len(freqs) - 1)]


def test_melspectrogram_plot_has_round_ticks(tmp_path):
    spec = np.random.default_rng(0).uniform(-80, 0, size=(128, 32)).astype(np.float32)
    fig = plot_melspectrogram(spec, 16000)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["100", "250", "500", "1k", "2k", "4k"]
    assert plot_melspectrogram(spec, 16000, path=tmp_path / "mel.png") is None
    assert (tmp_path / "mel.png").stat().st_size > 1000


def test_plotting_leaves_the_callers_backend_alone(tmp_path):
    code = (
        "import matplotlib; matplotlib.use('svg'); import numpy as np\n"
        "from specfusion.evaluation.plots import plot_confusion_matrix, plot_class_f1\n"
        "from specfusion.evaluation.plots import plot_melspectrogram\n"
        f"plot_confusion_matrix(['a','b'], ['a','a'], classes=['a','b'], path=r'{tmp_path / 'cm.png'}')\n"
        f"plot_class_f1({{'a': 50.0, 'b': 0.0}}, path=r'{tmp_path / 'f1.png'}')\n"
        f"plot_melspectrogram(np.zeros((128, 10), np.float32), 16000, path=r'{tmp_path / 'm.png'}')\n"
        "import matplotlib.pyplot as plt\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["svg", "0"]
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("cm.png", "f1.png", "m.png"))
