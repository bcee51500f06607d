"""Issue 17.2: a 50-class confusion matrix stays readable in report.html (docs/img/report-esc50.png)."""

import numpy as np
import pytest

from specfusion.evaluation.plots import plot_confusion_matrix
from specfusion.evaluation.report import WIDE_CONFUSION_CLASSES, render_html

RESULTS = {"dataset": "toy", "metric": "accuracy", "title": "toy",
           "systems": [{"name": "S", "kind": "base", "block": "B", "status": "ok", "reason": "", "devel": 50.0, "test": None}]}  # fmt: skip


def details(n_classes: int) -> dict:
    return {"system": "S", "partition": "devel", "png": "confusion_best.png", "f1_png": "class_f1_best.png",
            "class_f1": {f"class {i}": 50.0 for i in range(n_classes)}}  # fmt: skip


@pytest.mark.parametrize("n_classes, wide", [(10, False), (WIDE_CONFUSION_CLASSES - 1, False), (50, True)])
def test_many_classes_get_a_window_wide_confusion_matrix_linked_to_its_full_size(n_classes, wide):
    page = render_html(RESULTS, details(n_classes))
    assert ("<div class=wide><a href='confusion_best.png'>" in page) is wide
    assert ("<img class=cm src='confusion_best.png'" in page) is not wide
    assert page.count("<a href='confusion_best.png'>") == 1 and page.count("<a href='class_f1_best.png'>") == 1


def test_confusion_matrix_fonts_fill_the_cells_at_50_classes():
    rng = np.random.default_rng(0)
    classes = [f"class_{i:02d}" for i in range(50)]
    y = rng.choice(classes, 400)
    fig = plot_confusion_matrix(y, y, classes=classes)
    ax = fig.axes[0]
    cell_pt = ax.get_window_extent().height / fig.dpi * 72 / len(classes)  # a cell's side in points
    label_pt = ax.get_yticklabels()[0].get_fontsize()
    count_pt = ax.texts[0].get_fontsize()
    assert label_pt >= 0.4 * cell_pt and label_pt >= 9  # 6 pt before: 4 px on screen in report.html
    assert count_pt >= 0.3 * cell_pt and count_pt >= 8
