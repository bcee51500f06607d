"""Metrics (accuracy, DCASE-style macro F1), confusion-matrix PNGs and reports."""

import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from specfusion.data.datasets import load_esc50
from specfusion.evaluation.metrics import (
    accuracy,
    class_f1,
    classification_report,
    devel_score,
    macro_f1,
    write_evaluation,
)
from specfusion.evaluation.plots import plot_confusion_matrix
from specfusion.evaluation.predictions import Predictions

Y_TRUE = ["a", "a", "a", "b", "b", "c", "c", "c", "c", "a"]
Y_PRED = ["a", "b", "a", "b", "c", "c", "c", "a", "b", "a"]


def test_macro_f1_known_case():
    # a: tp 3, fp 1, fn 1 -> F1 3/4; b: tp 1, fp 2, fn 1 -> 2/5; c: tp 2, fp 1, fn 2 -> 4/7
    expected = np.array([3 / 4, 2 / 5, 4 / 7])
    assert np.allclose(class_f1(Y_TRUE, Y_PRED, classes=["a", "b", "c"]), expected)
    assert macro_f1(Y_TRUE, Y_PRED, classes=["a", "b", "c"]) == pytest.approx(expected.mean())
    assert macro_f1(Y_TRUE, Y_PRED, classes=["a", "b", "c"]) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.6)


def test_macro_f1_averages_over_all_task_classes():
    # DCASE 2018 task 5 averages over the task's classes: a class never present nor predicted counts 0
    with_absent = macro_f1(Y_TRUE, Y_PRED, classes=["a", "b", "c", "d"])
    assert with_absent == pytest.approx((3 / 4 + 2 / 5 + 4 / 7) / 4)
    assert with_absent < f1_score(Y_TRUE, Y_PRED, average="macro")


def test_devel_score_rules():
    folds = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    f1_1 = macro_f1(Y_TRUE[:5], Y_PRED[:5], classes=["a", "b", "c"])
    f1_2 = macro_f1(Y_TRUE[5:], Y_PRED[5:], classes=["a", "b", "c"])
    assert devel_score("macro_f1", Y_TRUE, Y_PRED, folds, classes=["a", "b", "c"]) == pytest.approx((f1_1 + f1_2) / 2)
    assert devel_score("accuracy", Y_TRUE, Y_PRED, folds) == pytest.approx(0.6)


@pytest.fixture(scope="module")
def esc50_labels(esc50_root):
    table = load_esc50(esc50_root)
    return table.classes, table.labels(), table.folds()


def test_confusion_png_has_class_names_and_scales(esc50_labels, tmp_path):
    classes, y_true, _ = esc50_labels
    rng = np.random.default_rng(0)
    y_pred = np.where(rng.random(len(y_true)) < 0.6, y_true, rng.choice(classes, len(y_true)))
    path = tmp_path / "cm.png"
    assert plot_confusion_matrix(y_true, y_pred, classes=classes, path=path, title="ESC-50") is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        description = image.text["Description"]
        width, height = image.size
    assert all(name in description for name in classes)
    assert width >= 2000 and height >= 1800  # 50 classes get a big figure

    fig = plot_confusion_matrix(y_true, y_pred, classes=classes)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == classes
    assert [t.get_text() for t in ax.get_yticklabels()] == classes
    counts = {(int(round(t.get_position()[1])), int(round(t.get_position()[0]))): int(t.get_text()) for t in ax.texts}
    assert sum(counts.values()) == len(y_true)  # every item is annotated once
    small = plot_confusion_matrix(Y_TRUE, Y_PRED, classes=["a", "b", "c"])
    assert small.get_size_inches()[0] < fig.get_size_inches()[0]
    # rows are normalised per true class
    image = ax.images[0].get_array()
    assert np.allclose(np.asarray(image).sum(axis=1), 1.0)


def test_classification_report_markdown():
    text = classification_report(Y_TRUE, Y_PRED, classes=["a", "b", "c"], title="toy")
    lines = text.splitlines()
    assert lines[0] == "### toy"
    assert "| a | 75.0 | 75.0 | 75.0 | 4 |" in lines
    assert "| c | 66.7 | 50.0 | 57.1 | 4 |" in lines
    assert any(line.startswith("| macro average |") for line in lines)
    assert "accuracy: 60.0 %" in text
    plain = classification_report(Y_TRUE, Y_PRED, classes=["a", "b", "c"], markdown=False)
    assert "|" not in plain and "57.1" in plain


def test_write_evaluation_outputs(tmp_path):
    classes = ["a", "b", "c"]
    onehot = np.eye(3)[[classes.index(p) for p in Y_PRED]]
    predictions = Predictions(
        names=[f"i{i}" for i in range(10)], folds=[1, 1, 1, 2, 2, 2, 0, 0, 0, 0],
        partitions=["dev"] * 6 + ["test"] * 4, labels=Y_TRUE, scores=onehot, classes=classes, kind="proba",
    )  # fmt: skip
    metrics = write_evaluation(tmp_path, predictions, metric="macro_f1", name="toy")
    stored = json.loads((tmp_path / "metrics.json").read_text())
    dev_folds = [1, 1, 1, 2, 2, 2]
    assert stored["devel"] == pytest.approx(
        100 * devel_score("macro_f1", Y_TRUE[:6], Y_PRED[:6], dev_folds, classes=classes)
    )
    assert stored["test"] == pytest.approx(100 * macro_f1(Y_TRUE[6:], Y_PRED[6:], classes=classes))
    assert stored["partitions"]["devel"]["accuracy"] == pytest.approx(100 * accuracy(Y_TRUE[:6], Y_PRED[:6]))
    assert set(stored["partitions"]["devel"]["folds"]) == {"1", "2"}
    assert metrics["devel"] == stored["devel"]
    assert (tmp_path / "confusion_devel.png").is_file() and (tmp_path / "confusion_test.png").is_file()
    assert "development (out-of-fold)" in (tmp_path / "report.md").read_text()


def test_labels_with_a_pipe_or_a_newline_keep_the_report_table_in_its_columns(tmp_path):
    """A label ``a|b`` or ``c\\nd`` from a user's CSV must not move numbers into other columns of report.md."""
    classes = ["a|b", "c\nd", "<e>"]
    y = [classes[i % 3] for i in range(9)]
    predictions = Predictions(
        names=[f"i{i}" for i in range(9)], folds=[1, 2, 3] * 3, partitions=["dev"] * 9, labels=y,
        scores=np.eye(3)[[i % 3 for i in range(9)]], classes=classes, kind="proba",
    )  # fmt: skip
    write_evaluation(tmp_path, predictions, metric="accuracy", name="x|y")
    report = (tmp_path / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 1  # header, one row per class, macro average
    for row in rows:  # five columns: six unescaped pipes
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row
    assert "| a\\|b | 100.0 |" in report and "| c d | 100.0 |" in report and "&lt;e&gt;" in report
    assert report.startswith("# x\\|y\n")
