"""Predictions files: the one interface between base systems (SVMs, CRNNs) and fusion / reports.

A predictions file is a plain CSV table that any CSV reader loads without options
(``pandas.read_csv("predictions.csv")``), with its metadata in a JSON file beside it::

    predictions.csv
        name,fold,partition,label,predicted,score_dog,score_rooster,...
        1-100032-A-0,1,dev,dog,dog,0.8123,-1.0331,...
    predictions.json
        {"format": "specfusion-predictions", "version": 2, "kind": "decision", "classes": [...],
         "config": {...}, "csv_sha256": "..."}

* ``name`` -- the item (for DCASE 2018 task 5: the segment, after the channel scores were combined;
  with ``aggregate="none"`` the channel item ``<segment>@ch<c>``); unique within the file.
* ``fold`` -- development fold ``1..K``; ``0`` for the test partition.
* ``partition`` -- ``dev`` or ``test``.
* ``label`` -- the true class (empty when unknown).
* ``predicted`` -- the class with the highest score (first in ``classes`` order on ties).
* ``score_<class>`` -- one column per class, in the order of the metadata's ``classes``. For
  development items these are **out-of-fold** scores (from a model that never saw the item's fold);
  for test items they come from the model(s) trained on the development partition.

Metadata: ``kind`` is ``"decision"`` (SVM decision values, unbounded) or ``"proba"`` (CRNN class
probabilities, rows sum to 1); ``config`` is the system's configuration (JSON object) — what produced
the scores; ``csv_sha256`` is the digest of the CSV it describes, so a table and metadata from two
different runs (an interrupted rewrite) are never read as one. Files made by hand may leave it out.
Scores are written with 17 significant digits, so reading a file back gives the exact float64 values.

Files of format version 1 (one CSV whose first line is ``#specfusion-predictions {json}``) are still read.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specfusion.errors import ConfigError, StoreError
from specfusion.files import write_atomic
from specfusion.identity import text_digest

#: First characters of a format-1 predictions file (metadata in the CSV's first line); still read.
MAGIC = "#specfusion-predictions "
FORMAT_NAME = "specfusion-predictions"
FORMAT_VERSION = 2
KINDS = ("decision", "proba")
PARTITIONS = ("dev", "test")
SCORE_PREFIX = "score_"
FIXED_COLUMNS = ("name", "fold", "partition", "label")
PREDICTED_COLUMN = "predicted"


def metadata_path(path) -> Path:
    """The JSON metadata file that sits beside the predictions CSV ``path`` (``x.csv`` -> ``x.json``)."""
    path = Path(path)
    return path.with_name(path.stem + ".json")


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

    def subset(self, mask) -> Predictions:
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

    def dev(self) -> Predictions:
        """Development items (out-of-fold scores)."""
        return self.subset(self.partitions == "dev")

    def test(self) -> Predictions:
        """Test items."""
        return self.subset(self.partitions == "test")

    def predicted(self) -> np.ndarray:
        """Predicted class names (arg-max of the scores; ties go to the first class)."""
        return (
            np.asarray(self.classes, dtype=object)[np.argmax(self.scores, axis=1)]
            if len(self)
            else np.array([], dtype=object)
        )

    def align(self, names: Sequence[str]) -> Predictions:
        """These predictions re-ordered to ``names`` (StoreError if one is missing)."""
        index = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise StoreError(f"{len(missing)} item(s) have no predictions, e.g. {missing[0]!r}")
        return self.subset(np.array([index[n] for n in names], dtype=np.int64))


def write_predictions(path, predictions: Predictions) -> Path:
    """Write ``predictions`` to the CSV ``path`` and its metadata beside it; returns the CSV's path.

    Both files are written to temporary names and renamed, the metadata first and the CSV last, so the
    CSV's presence marks a finished write; the metadata's ``csv_sha256`` ties the two together.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, PREDICTED_COLUMN, *(SCORE_PREFIX + c for c in predictions.classes)])
    predicted = predictions.predicted()
    for i in range(len(predictions)):
        writer.writerow(
            [
                predictions.names[i],
                int(predictions.folds[i]),
                predictions.partitions[i],
                predictions.labels[i],
                predicted[i],
            ]
            + [f"{v:.17g}" for v in predictions.scores[i]]
        )
    table = buffer.getvalue().encode("utf-8")
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": predictions.kind, "classes": predictions.classes,
        "config": predictions.config, "csv_sha256": text_digest(table),
    }  # fmt: skip
    write_atomic(metadata_path(path), (json.dumps(meta, sort_keys=True, indent=1, default=str) + "\n").encode("utf-8"))
    write_atomic(path, table)
    return path


def read_predictions(path) -> Predictions:
    """Read a predictions file written by :func:`write_predictions` (format 2, or the older format 1).

    Raises
    ------
    StoreError
        The file or its metadata is missing, is not a predictions file, does not match its metadata, or a
        row is malformed (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: predictions file not found")
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if text.startswith(MAGIC):
        first, _, rest = text.partition("\n")
        meta = _parse_metadata(first[len(MAGIC) :], f"{path}:1")
        return _parse_table(path, rest, meta, first_line=2, predicted_column=False)
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise StoreError(f"{path}: not a specfusion predictions file (its metadata {meta_file.name} is missing)")
    meta = _parse_metadata(meta_file.read_text(encoding="utf-8"), str(meta_file))
    if meta.get("format") != FORMAT_NAME:
        raise StoreError(f"{meta_file}: not specfusion predictions metadata ('format' must be {FORMAT_NAME!r})")
    digest = meta.get("csv_sha256")
    if digest is not None and digest != text_digest(data):
        raise StoreError(
            f"{path}: does not match its metadata {meta_file.name} (written by another run, or changed since)"
        )
    return _parse_table(path, text, meta, first_line=1, predicted_column=True)


def _parse_metadata(text: str, where: str) -> dict:
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreError(f"{where}: metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{where}: metadata must be a JSON object")
    for key in ("kind", "classes"):
        if key not in meta:
            raise StoreError(f"{where}: metadata lacks {key!r}")
    if meta.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise StoreError(
            f"{where}: format version {meta['version']} is newer than this specfusion reads ({FORMAT_VERSION}); upgrade specfusion"
        )
    return meta


def _parse_table(path: Path, text: str, meta: dict, *, first_line: int, predicted_column: bool) -> Predictions:
    """The CSV table of a predictions file; ``first_line`` is the header's line number in the file."""
    classes = [str(c) for c in meta["classes"]]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    fixed = [*FIXED_COLUMNS, PREDICTED_COLUMN] if predicted_column else list(FIXED_COLUMNS)
    expected = fixed + [SCORE_PREFIX + c for c in classes]
    if header != expected:
        raise StoreError(
            f"{path}:{first_line}: header does not match the metadata's classes; expected {','.join(expected[:6])}..."
        )
    names, folds, partitions, labels, rows = [], [], [], [], []
    for row in reader:
        line = reader.line_num + first_line - 1
        if not row:
            continue
        if len(row) != len(expected):
            raise StoreError(f"{path}:{line}: {len(row)} fields, expected {len(expected)}")
        try:
            folds.append(int(row[1]))
            rows.append([float(v) for v in row[len(fixed) :]])
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
                    raise StoreError(
                        f"segment {segment!r}: its channel items disagree on the {field} ({values[j]!r} vs {values[i]!r})"
                    )
    return Predictions(
        names=keys, folds=folds[first], partitions=partitions[first], labels=labels[first],
        scores=combined, classes=list(classes), kind=kind, config=dict(config or {}),
    )  # fmt: skip
