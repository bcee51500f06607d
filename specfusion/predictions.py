"""Predictions files: the one interface between base systems (SVMs, CRNNs) and fusion / reports.

A predictions file is a CSV file whose first line is a comment holding the metadata as one line of JSON::

    #specfusion-predictions {"version": 1, "kind": "decision", "classes": [...], "config": {...}}
    name,fold,partition,label,score_dog,score_rooster,...
    1-100032-A-0,1,dev,dog,0.8123,-1.0331,...
    ...

* ``name`` -- the item (for DCASE 2018 task 5: the segment, after the channel scores were combined;
  with ``aggregate="none"`` the channel item ``<segment>@ch<c>``); unique within the file.
* ``fold`` -- development fold ``1..K``; ``0`` for the test partition.
* ``partition`` -- ``dev`` or ``test``.
* ``label`` -- the true class (empty when unknown).
* ``score_<class>`` -- one column per class, in the order of the metadata's ``classes``. For
  development items these are **out-of-fold** scores (from a model that never saw the item's fold);
  for test items they come from the model(s) trained on the development partition.

Metadata: ``kind`` is ``"decision"`` (SVM decision values, unbounded) or ``"proba"`` (CRNN class
probabilities, rows sum to 1); ``config`` is the system's configuration (JSON object) — what produced
the scores. Scores are written with 17 significant digits, so reading a file back gives the exact
float64 values.

Any CSV reader can read the table by skipping the first line (``pandas.read_csv(path, skiprows=1)``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specfusion.errors import ConfigError, StoreError

#: First characters of every predictions file.
MAGIC = "#specfusion-predictions "
FORMAT_VERSION = 1
KINDS = ("decision", "proba")
PARTITIONS = ("dev", "test")
SCORE_PREFIX = "score_"
FIXED_COLUMNS = ("name", "fold", "partition", "label")


@dataclasses.dataclass
class Predictions:
    """Per-item class scores of one system, with the items' folds, partitions and true labels.

    Attributes
    ----------
    names : ndarray of str, shape (n,)
    folds : ndarray of int, shape (n,)
        ``1..K`` for development items, ``0`` for test items.
    partitions : ndarray of str, shape (n,)
        ``"dev"`` or ``"test"``.
    labels : ndarray of str, shape (n,)
        True class names (``""`` where unknown).
    scores : ndarray of float64, shape (n, n_classes)
        Column ``j`` is the score of ``classes[j]``.
    classes : list of str
    kind : {"decision", "proba"}
    config : dict
        The producing system's configuration.
    """

    names: np.ndarray
    folds: np.ndarray
    partitions: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    classes: list[str]
    kind: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.names = np.asarray(self.names, dtype=object)
        self.folds = np.asarray(self.folds, dtype=np.int64)
        self.partitions = np.asarray(self.partitions, dtype=object)
        self.labels = np.asarray(["" if lab is None else lab for lab in self.labels], dtype=object)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.classes = [str(c) for c in self.classes]
        problem = self.validate()
        if problem:
            raise StoreError(f"invalid predictions: {problem}")

    def validate(self) -> str | None:
        """What is inconsistent, or None."""
        n = len(self.names)
        if self.kind not in KINDS:
            return f"kind must be one of {KINDS}, got {self.kind!r}"
        if self.scores.ndim != 2 or self.scores.shape != (n, len(self.classes)):
            return f"scores have shape {self.scores.shape}, expected ({n}, {len(self.classes)})"
        for field in ("folds", "partitions", "labels"):
            if len(getattr(self, field)) != n:
                return f"{field} has {len(getattr(self, field))} entries for {n} names"
        if len(set(self.classes)) != len(self.classes):
            return "duplicate class names"
        if len(set(self.names.tolist())) != n:
            seen, dup = set(), None
            for name in self.names:
                if name in seen:
                    dup = name
                    break
                seen.add(name)
            return f"duplicate item name {dup!r}"
        bad = [p for p in set(self.partitions.tolist()) if p not in PARTITIONS]
        if bad:
            return f"partition must be 'dev' or 'test', got {bad[0]!r}"
        if ((self.partitions == "test") != (self.folds == 0)).any():
            return "fold 0 must mark exactly the test partition"
        if (self.folds < 0).any():
            return "folds must be >= 0"
        unknown = set(self.labels.tolist()) - set(self.classes) - {""}
        if unknown:
            return f"label {sorted(unknown)[0]!r} is not one of the classes"
        if not np.isfinite(self.scores).all():
            return "scores contain NaN or infinite values"
        return None

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, mask) -> "Predictions":
        """The items selected by a boolean mask or index array."""
        mask = np.asarray(mask)
        return dataclasses.replace(
            self,
            names=self.names[mask],
            folds=self.folds[mask],
            partitions=self.partitions[mask],
            labels=self.labels[mask],
            scores=self.scores[mask],
            classes=list(self.classes),
            config=dict(self.config),
        )

    def dev(self) -> "Predictions":
        """Development items (out-of-fold scores)."""
        return self.subset(self.partitions == "dev")

    def test(self) -> "Predictions":
        """Test items."""
        return self.subset(self.partitions == "test")

    def predicted(self) -> np.ndarray:
        """Predicted class names (arg-max of the scores; ties go to the first class)."""
        return np.asarray(self.classes, dtype=object)[np.argmax(self.scores, axis=1)] if len(self) else np.array([], dtype=object)

    def align(self, names: Sequence[str]) -> "Predictions":
        """These predictions re-ordered to ``names`` (StoreError if one is missing)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise StoreError(f"{len(missing)} item(s) have no predictions, e.g. {missing[0]!r}")
        return self.subset(np.array([index[n] for n in names], dtype=np.int64))


def write_predictions(path, predictions: Predictions) -> Path:
    """Write ``predictions`` to ``path`` (CSV with a JSON metadata line); returns the path.

    The file is written to a temporary name first and renamed, so an interrupted write never leaves a
    truncated predictions file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"version": FORMAT_VERSION, "kind": predictions.kind, "classes": predictions.classes, "config": predictions.config}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        handle.write(MAGIC + json.dumps(meta, sort_keys=True, default=str) + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(FIXED_COLUMNS) + [SCORE_PREFIX + c for c in predictions.classes])
        for i in range(len(predictions)):
            writer.writerow(
                [predictions.names[i], int(predictions.folds[i]), predictions.partitions[i], predictions.labels[i]]
                + [f"{v:.17g}" for v in predictions.scores[i]]
            )
    tmp.replace(path)
    return path


def read_predictions(path) -> Predictions:
    """Read a predictions file written by :func:`write_predictions`.

    Raises
    ------
    StoreError
        The file is missing, is not a predictions file, or a row is malformed (the message names the
        file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: predictions file not found")
    with open(path, newline="", encoding="utf-8") as handle:
        first = handle.readline()
        if not first.startswith(MAGIC):
            raise StoreError(f"{path}:1: not a specfusion predictions file (first line must start with {MAGIC.strip()!r})")
        try:
            meta = json.loads(first[len(MAGIC) :])
        except json.JSONDecodeError as err:
            raise StoreError(f"{path}:1: metadata is not valid JSON ({err})") from None
        for key in ("kind", "classes"):
            if key not in meta:
                raise StoreError(f"{path}:1: metadata lacks {key!r}")
        if meta.get("version", FORMAT_VERSION) > FORMAT_VERSION:
            raise StoreError(f"{path}:1: format version {meta['version']} is newer than this specfusion reads ({FORMAT_VERSION}); upgrade specfusion")
        classes = [str(c) for c in meta["classes"]]
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = list(FIXED_COLUMNS) + [SCORE_PREFIX + c for c in classes]
        if header != expected:
            raise StoreError(f"{path}:2: header does not match the metadata's classes; expected {','.join(expected[:6])}...")
        names, folds, partitions, labels, rows = [], [], [], [], []
        for row in reader:
            line = reader.line_num + 1  # +1 for the metadata line read outside the csv reader
            if not row:
                continue
            if len(row) != len(expected):
                raise StoreError(f"{path}:{line}: {len(row)} fields, expected {len(expected)}")
            try:
                folds.append(int(row[1]))
                rows.append([float(v) for v in row[4:]])
            except ValueError as err:
                raise StoreError(f"{path}:{line}: fold must be an integer and scores numbers ({err})") from None
            names.append(row[0])
            partitions.append(row[2])
            labels.append(row[3])
    scores = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(classes))
    try:
        return Predictions(
            names=names, folds=folds, partitions=partitions, labels=labels, scores=scores,
            classes=classes, kind=meta["kind"], config=meta.get("config", {}),
        )  # fmt: skip
    except StoreError as err:
        raise StoreError(f"{path}: {err}") from None


def combine_channels(
    names: Sequence[str],
    segments: Sequence[str],
    scores: np.ndarray,
    *,
    how: str = "mean",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Combine the scores of a segment's channel items (DCASE 2018 task 5).

    Parameters
    ----------
    names : sequence of str
        Item keys (e.g. ``"seg@ch0"``); returned unchanged with ``how="none"``.
    segments : sequence of str
        The segment every item belongs to.
    scores : ndarray, shape (n, n_classes)
    how : {"mean", "max", "none"}
        ``"mean"`` -- the official baseline's rule -- averages the channels' scores, ``"max"`` takes the
        class-wise maximum, ``"none"`` keeps one row per channel item.

    Returns
    -------
    keys : list of str
        Segment names (or item names with ``"none"``), in order of first appearance.
    scores : ndarray, shape (n_keys, n_classes)
    first : ndarray of int
        Index of each key's first item (to take its fold, partition and label from).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return list(names), scores, np.arange(len(names))
    if how not in ("mean", "max"):
        raise ConfigError(f"channel combination must be 'mean', 'max' or 'none', got {how!r}")
    keys, inverse = np.unique(np.asarray(segments, dtype=object), return_inverse=True)
    first = np.full(len(keys), len(segments), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(segments)))
    order = np.argsort(first, kind="stable")  # keep the items' order
    if how == "mean":
        summed = np.zeros((len(keys), scores.shape[1]))
        np.add.at(summed, inverse, scores)
        combined = summed / np.bincount(inverse, minlength=len(keys))[:, None]
    else:
        combined = np.full((len(keys), scores.shape[1]), -np.inf)
        np.maximum.at(combined, inverse, scores)
    return [keys[i] for i in order], combined[order], first[order]


def predictions_from_items(
    *,
    names: Sequence[str],
    segments: Sequence[str] | None,
    folds: Sequence[int],
    partitions: Sequence[str],
    labels: Sequence[str],
    scores: np.ndarray,
    classes: Sequence[str],
    kind: str,
    config: dict | None = None,
    combine: str = "mean",
) -> Predictions:
    """:class:`Predictions` from per-item scores, combining channel items into segments.

    ``segments=None`` means every item is its own segment (no channels). With channel items, every
    channel of a segment must share fold, partition and label (StoreError otherwise).
    """
    names = list(names)
    if segments is None:
        combine = "none"
        segments = names
    keys, combined, first = combine_channels(names, segments, scores, how=combine)
    folds = np.asarray(folds, dtype=np.int64)
    partitions = np.asarray(partitions, dtype=object)
    labels = np.asarray(["" if lab is None else lab for lab in labels], dtype=object)
    if combine != "none":
        first_of: dict[str, int] = {}
        for i, segment in enumerate(segments):
            j = first_of.setdefault(segment, i)
            for field, values in (("fold", folds), ("partition", partitions), ("label", labels)):
                if values[j] != values[i]:
                    raise StoreError(f"segment {segment!r}: its channel items disagree on the {field} ({values[j]!r} vs {values[i]!r})")
    return Predictions(
        names=keys, folds=folds[first], partitions=partitions[first], labels=labels[first],
        scores=combined, classes=list(classes), kind=kind, config=dict(config or {}),
    )  # fmt: skip
