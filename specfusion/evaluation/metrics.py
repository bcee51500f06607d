"""Metrics, confusion matrices and evaluation files (their figures: :mod:`specfusion.evaluation.plots`).

Measures, as the paper reports them (section 4):

* **accuracy** (DCASE 2017 task 1, ESC-50): fraction of items classified correctly;
* **macro F1** (DCASE 2018 task 5): the class-wise F1 scores averaged over *all* the task's classes,
  as the official task-5 evaluation computes it (``sklearn.metrics.f1_score(..., labels=classes,
  average=None)`` then the mean). A class that is neither present nor predicted counts as F1 0 -- so
  pass the task's class list. On the development partition the official evaluation averages the
  per-fold macro F1 over the four folds; :func:`devel_score` does the same for ``macro_f1`` and pools
  all out-of-fold predictions for ``accuracy`` (identical to the fold mean when folds have equal size,
  as in ESC-50).

All functions take class *names*; results are fractions in [0, 1] except in ``metrics.json``, which
holds percentages as the paper's tables do.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError
from specfusion.evaluation.coverage import Coverage

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1")


def _arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=object)
    y_pred = np.asarray(y_pred, dtype=object)
    if y_true.shape != y_pred.shape:
        raise ConfigError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    return y_true, y_pred


def _classes(y_true, classes) -> list:
    return sorted(set(np.asarray(y_true, dtype=object).tolist())) if classes is None else list(classes)


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Fraction of correct predictions (NaN for no items)."""
    y_true, y_pred = _arrays(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def class_f1(y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str] | None = None) -> np.ndarray:
    """F1 of every class in ``classes`` (default: the sorted classes present in ``y_true``).

    A class without true and without predicted items gets F1 0 (scikit-learn's ``zero_division=0``).
    """
    from sklearn.metrics import f1_score

    y_true, y_pred = _arrays(y_true, y_pred)
    labels = _classes(y_true, classes)
    return np.asarray(f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0), dtype=np.float64)


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str] | None = None) -> float:
    """Macro-averaged F1: the class-wise F1 (:func:`class_f1`) averaged over ``classes``.

    This is DCASE 2018 task 5's measure; it equals ``sklearn.metrics.f1_score(average="macro")``
    whenever every class of ``classes`` occurs in ``y_true``.
    """
    return float(np.mean(class_f1(y_true, y_pred, classes=classes)))


def score(metric: str, y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str] | None = None) -> float:
    """``accuracy`` or ``macro_f1`` by name."""
    if metric == "accuracy":
        return accuracy(y_true, y_pred)
    if metric == "macro_f1":
        return macro_f1(y_true, y_pred, classes=classes)
    raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def devel_score(metric: str, y_true, y_pred, folds, *, classes: Sequence[str] | None = None) -> float:
    """Cross-validation score on the development partition from out-of-fold predictions.

    ``macro_f1``: mean over folds of each fold's macro F1 (the DCASE 2018 task 5 evaluation);
    ``accuracy``: accuracy of all out-of-fold predictions pooled.
    """
    y_true, y_pred = _arrays(y_true, y_pred)
    if metric == "macro_f1":
        folds = np.asarray(folds)
        return float(
            np.mean([macro_f1(y_true[folds == k], y_pred[folds == k], classes=classes) for k in np.unique(folds)])
        )
    return score(metric, y_true, y_pred, classes=classes)


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str]) -> np.ndarray:
    """Counts, shape (n_classes, n_classes): row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    y_true, y_pred = _arrays(y_true, y_pred)
    return sk_confusion(y_true, y_pred, labels=list(classes))


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    *,
    classes: Sequence[str],
    markdown: bool = True,
    title: str = "",
) -> str:
    """Per-class precision, recall, F1 and support, then accuracy and macro F1 (percent).

    ``markdown=True`` gives a Markdown table, otherwise aligned plain text.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_true, y_pred = _arrays(y_true, y_pred)
    classes = [str(c) for c in classes]
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    header = ["class", "precision", "recall", "F1", "support"]
    rows = [
        [c, f"{100 * p:.1f}", f"{100 * r:.1f}", f"{100 * f:.1f}", str(s)]
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    summary = [
        [
            "macro average",
            f"{100 * np.mean(precision):.1f}",
            f"{100 * np.mean(recall):.1f}",
            f"{100 * np.mean(f1):.1f}",
            str(int(support.sum())),
        ],
    ]
    acc = (
        f"accuracy: {100 * accuracy(y_true, y_pred):.1f} %   macro F1: {100 * np.mean(f1):.1f} %   items: {len(y_true)}"
    )
    lines = [f"### {title}", ""] if (title and markdown) else ([title, ""] if title else [])
    if markdown:
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * 4) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows + summary]
        lines += ["", acc]
    else:
        width = max(len(h) for h in [*classes, "macro average"])
        lines.append(f"{header[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:]))
        lines += [f"{r[0]:<{width}}  " + "  ".join(f"{v:>9}" for v in r[1:]) for r in rows + summary]
        lines += ["", acc]
    return "\n".join(lines) + "\n"


def partition_metrics(y_true, y_pred, *, classes: Sequence[str], folds=None, metric: str = "accuracy") -> dict:
    """Accuracy, macro F1, class-wise F1 and (with ``folds``) per-fold scores of one partition, in percent."""
    y_true, y_pred = _arrays(y_true, y_pred)
    out = {
        "n_items": int(len(y_true)),
        "accuracy": 100 * accuracy(y_true, y_pred),
        "macro_f1": 100 * macro_f1(y_true, y_pred, classes=classes),
        "class_f1": {c: 100 * f for c, f in zip(classes, class_f1(y_true, y_pred, classes=classes))},
    }
    if folds is not None:
        folds = np.asarray(folds)
        out["folds"] = {
            str(int(k)): {
                "n_items": int((folds == k).sum()),
                "accuracy": 100 * accuracy(y_true[folds == k], y_pred[folds == k]),
                "macro_f1": 100 * macro_f1(y_true[folds == k], y_pred[folds == k], classes=classes),
            }
            for k in np.unique(folds)
        }
        out["score"] = 100 * devel_score(metric, y_true, y_pred, folds, classes=classes)
    else:
        out["score"] = out[metric]
    return out


def evaluate_predictions(predictions, *, metric: str = "accuracy") -> dict:
    """Development (out-of-fold, 4-fold CV) and test metrics of a :class:`~specfusion.evaluation.predictions.Predictions`.

    Returns a JSON-ready dict: ``metric``, ``devel`` and ``test`` (the headline numbers in percent;
    ``test`` is None without a labelled test partition) and the details per partition.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    result: dict = {"metric": metric, "unit": "percent", "devel": None, "test": None, "partitions": {}}
    dev = predictions.dev()
    dev = dev.subset(dev.labels != "")
    if len(dev):
        details = partition_metrics(
            dev.labels, dev.predicted(), classes=predictions.classes, folds=dev.folds, metric=metric
        )
        result["devel"] = details["score"]
        result["partitions"]["devel"] = details
    test = predictions.test()
    test = test.subset(test.labels != "")
    if len(test):
        details = partition_metrics(test.labels, test.predicted(), classes=predictions.classes, metric=metric)
        result["test"] = details["score"]
        result["partitions"]["test"] = details
    return result


def md(text) -> str:
    """``text`` for a Markdown page: raw HTML escaped (as report.html escapes it), table pipes protected, line
    breaks made spaces.

    Labels and system names come from users' files: a class called ``<img src=x onerror=...>`` must show as
    text in a Markdown viewer, not run, and a ``|`` or a newline in a label must not move numbers into other
    columns of a table.
    """
    import html

    return re.sub(r"[\r\n]+", " ", html.escape(str(text), quote=False).replace("|", "\\|"))


def _escaped_report(subset, classes, title: str) -> str:
    """:func:`classification_report` of ``subset`` with HTML in class names escaped."""
    lookup = {c: md(c) for c in classes}
    return classification_report(
        [lookup.get(v, md(v)) for v in subset.labels], [lookup[v] for v in subset.predicted()],
        classes=[lookup[c] for c in classes], title=title,
    )  # fmt: skip


def write_evaluation(
    out_dir, predictions, *, metric: str = "accuracy", name: str = "", extra: dict | None = None
) -> dict:
    """Write ``metrics.json``, ``report.md`` and one confusion-matrix PNG per labelled partition.

    Files: ``metrics.json``; ``report.md`` (classification reports); ``confusion_devel.png`` (out-of-fold
    development predictions) and ``confusion_test.png`` (when the test partition is labelled), each with a
    sorted per-class F1 chart beside it (``class_f1_devel.png``, ``class_f1_test.png``).
    Returns the metrics dict.
    """
    from specfusion.evaluation import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_predictions(predictions, metric=metric)
    metrics["system"] = name
    metrics["kind"] = predictions.kind
    metrics["config"] = predictions.config
    if extra:
        metrics.update(extra)
    coverage = Coverage.from_dict(predictions.config.get("coverage"))
    if coverage is not None:
        metrics["coverage"] = coverage.as_dict()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=False, default=str) + "\n")
    report = [
        f"# {md(name or 'system')}",
        "",
        f"metric: {metric}; devel = 4-fold cross-validation (out-of-fold predictions)",
        "",
    ]
    if coverage is not None and not coverage.complete:
        report += [f"**Incomplete: {coverage.headline()}.** Missing items:", ""]
        report += [f"- {md(m['item'])}: {md(m['reason'])}" for m in coverage.missing] + [""]
    for partition, subset, label in (
        ("devel", predictions.dev(), "development (out-of-fold)"),
        ("test", predictions.test(), "test"),
    ):
        subset = subset.subset(subset.labels != "")
        if not len(subset):
            continue
        report.append(_escaped_report(subset, predictions.classes, label))
        plots.plot_confusion_matrix(
            subset.labels, subset.predicted(), classes=predictions.classes, path=out_dir / f"confusion_{partition}.png",
            title=f"{name + ': ' if name else ''}{label}, {metric} {metrics[partition]:.1f} %",
        )  # fmt: skip
        plots.plot_class_f1(metrics["partitions"][partition]["class_f1"], path=out_dir / f"class_f1_{partition}.png",
                      title=f"{name + ': ' if name else ''}{label}, per-class F1")  # fmt: skip
        report += [
            f"![confusion matrix, {label}](confusion_{partition}.png) ![per-class F1, {label}](class_f1_{partition}.png)",
            "",
        ]
    (out_dir / "report.md").write_text("\n".join(report))
    return metrics
