"""Predictions files: exact round trip, clear errors, channel combination."""

import json

import numpy as np
import pytest

from specfusion.errors import StoreError
from specfusion.evaluation.predictions import (
    MAGIC,
    Predictions,
    combine_channels,
    metadata_path,
    predictions_from_items,
    read_predictions,
    write_predictions,
)


def _example(kind="decision"):
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((6, 3)) * 1e3
    if kind == "proba":
        scores = np.exp(scores / 1e3) / np.exp(scores / 1e3).sum(axis=1, keepdims=True)
    return Predictions(
        names=["a", "b,with comma", "c", "d", 'e"quoted"', "f"],
        folds=[1, 1, 2, 2, 0, 0],
        partitions=["dev", "dev", "dev", "dev", "test", "test"],
        labels=["dog", "cat", "cafe/restaurant", "dog", "cat", ""],
        scores=scores,
        classes=["dog", "cat", "cafe/restaurant"],
        kind=kind,
        config={"system": "test", "C": 1e-3, "nested": {"x": [1, 2]}},
    )


@pytest.mark.parametrize("kind", ["decision", "proba"])
def test_round_trip_is_exact(tmp_path, kind):
    original = _example(kind)
    path = write_predictions(tmp_path / "p.csv", original)
    back = read_predictions(path)
    assert back.kind == kind and back.classes == original.classes and back.config == original.config
    assert list(back.names) == list(original.names)
    assert np.array_equal(back.folds, original.folds)
    assert list(back.partitions) == list(original.partitions) and list(back.labels) == list(original.labels)
    assert np.array_equal(back.scores, original.scores)  # bit-exact float64
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.csv", "p.json"]  # no temporary file left


def test_file_layout_is_a_plain_csv_with_metadata_beside_it(tmp_path):
    import pandas as pd

    original = _example()
    path = write_predictions(tmp_path / "p.csv", original)
    lines = path.read_text().splitlines()
    assert lines[0] == "name,fold,partition,label,predicted,score_dog,score_cat,score_cafe/restaurant"
    assert lines[1].startswith(f"a,1,dev,dog,{original.predicted()[0]},")
    meta = json.loads(metadata_path(path).read_text())
    assert meta["format"] == "specfusion-predictions" and meta["version"] == 2
    assert meta["kind"] == "decision" and meta["classes"] == ["dog", "cat", "cafe/restaurant"]
    table = pd.read_csv(path, keep_default_na=False)  # pandas reads it as it is (no skiprows, no comment)
    assert list(table["name"]) == list(original.names)
    assert list(table["predicted"]) == list(original.predicted())
    assert np.array_equal(table[[f"score_{c}" for c in original.classes]].to_numpy(), original.scores)


def test_format_1_files_are_still_read(tmp_path):
    import csv

    original = _example()
    meta = {"version": 1, "kind": original.kind, "classes": original.classes, "config": original.config}
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as handle:
        handle.write(MAGIC + json.dumps(meta) + "\n")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "fold", "partition", "label"] + [f"score_{c}" for c in original.classes])
        for i in range(len(original)):
            writer.writerow([original.names[i], original.folds[i], original.partitions[i], original.labels[i]]
                            + [f"{v:.17g}" for v in original.scores[i]])  # fmt: skip
    back = read_predictions(path)
    assert list(back.names) == list(original.names) and np.array_equal(back.scores, original.scores)
    assert back.config == original.config and list(back.labels) == list(original.labels)


def test_table_and_metadata_of_different_runs_are_refused(tmp_path):
    first = write_predictions(tmp_path / "a" / "p.csv", _example())
    other = _example()
    other.scores = other.scores + 1.0
    second = write_predictions(tmp_path / "b" / "p.csv", other)
    metadata_path(first).write_bytes(metadata_path(second).read_bytes())  # as if a rewrite died between the files
    with pytest.raises(StoreError, match="does not match its metadata"):
        read_predictions(first)
    metadata_path(first).unlink()
    with pytest.raises(StoreError, match="metadata p.json is missing"):
        read_predictions(first)


def test_views_and_argmax():
    p = _example()
    assert len(p.dev()) == 4 and len(p.test()) == 2 and set(p.test().folds) == {0}
    assert list(p.predicted()) == [p.classes[i] for i in p.scores.argmax(axis=1)]
    aligned = p.align(["c", "a"])
    assert list(aligned.names) == ["c", "a"] and np.array_equal(aligned.scores[1], p.scores[0])
    with pytest.raises(StoreError, match="no predictions"):
        p.align(["zzz"])


def _rewrite(path, line_number, new_text):
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new_text
    path.write_text("\n".join(lines) + "\n")


def test_read_errors_name_file_and_line(tmp_path):
    path = write_predictions(tmp_path / "p.csv", _example())
    meta = json.loads(metadata_path(path).read_text())
    del meta["csv_sha256"]  # a table edited by hand: its metadata carries no digest
    metadata_path(path).write_text(json.dumps(meta))
    good = path.read_text()

    _rewrite(path, 3, "c,2,dev,dog,dog,1.0,2.0")  # a field short
    with pytest.raises(StoreError, match=r"p\.csv:3: 7 fields, expected 8"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 4, "d,2,dev,dog,dog,1.0,abc,2.0")
    with pytest.raises(StoreError, match=r"p\.csv:4: .*scores numbers"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 1, "name,fold,partition,label,predicted,score_x,score_y,score_z")
    with pytest.raises(StoreError, match=r"p\.csv:1: header does not match"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 3, good.splitlines()[1])  # duplicate item "a"
    with pytest.raises(StoreError, match="duplicate item name 'a'"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 2, "a,0,dev,dog,dog,1,2,3")  # fold 0 inside the development partition
    with pytest.raises(StoreError, match="fold 0 must mark exactly the test partition"):
        read_predictions(path)

    with pytest.raises(StoreError, match="not found"):
        read_predictions(tmp_path / "missing.csv")


def test_invalid_predictions_are_refused():
    p = _example()
    with pytest.raises(StoreError, match="kind"):
        Predictions(
            names=p.names,
            folds=p.folds,
            partitions=p.partitions,
            labels=p.labels,
            scores=p.scores,
            classes=p.classes,
            kind="logits",
        )
    with pytest.raises(StoreError, match="shape"):
        Predictions(
            names=p.names,
            folds=p.folds,
            partitions=p.partitions,
            labels=p.labels,
            scores=p.scores[:, :2],
            classes=p.classes,
            kind="proba",
        )
    bad = p.scores.copy()
    bad[0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        Predictions(
            names=p.names,
            folds=p.folds,
            partitions=p.partitions,
            labels=p.labels,
            scores=bad,
            classes=p.classes,
            kind="decision",
        )
    with pytest.raises(StoreError, match="not one of the classes"):
        Predictions(
            names=p.names,
            folds=p.folds,
            partitions=p.partitions,
            labels=["owl"] * 6,
            scores=p.scores,
            classes=p.classes,
            kind="decision",
        )


def test_combine_channels_mean_max_none():
    names = ["s1@ch0", "s1@ch1", "s2@ch0", "s2@ch1", "s0@ch0"]
    segments = ["s1", "s1", "s2", "s2", "s0"]
    scores = np.array([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [7.0, 1.0], [2.0, 2.0]])
    keys, mean, first = combine_channels(names, segments, scores, how="mean")
    assert keys == ["s1", "s2", "s0"]  # order of first appearance
    assert np.array_equal(mean, [[2.0, 2.0], [6.0, 3.0], [2.0, 2.0]])
    assert list(first) == [0, 2, 4]
    _, maximum, _ = combine_channels(names, segments, scores, how="max")
    assert np.array_equal(maximum, [[3.0, 4.0], [7.0, 5.0], [2.0, 2.0]])
    keys, same, _ = combine_channels(names, segments, scores, how="none")
    assert keys == names and np.array_equal(same, scores)


def test_channels_of_one_segment_must_agree():
    common = dict(names=["s@ch0", "s@ch1"], segments=["s", "s"], folds=[1, 1], partitions=["dev", "dev"],
                  scores=np.zeros((2, 2)), classes=["x", "y"], kind="decision")  # fmt: skip
    p = predictions_from_items(labels=["x", "x"], **common)
    assert list(p.names) == ["s"] and list(p.labels) == ["x"]
    with pytest.raises(StoreError, match="disagree on the label"):
        predictions_from_items(labels=["x", "y"], **common)
