"""Predictions files: exact round trip, clear errors, channel combination."""

import json

import numpy as np
import pytest

from specfusion.errors import StoreError
from specfusion.predictions import (
    MAGIC,
    Predictions,
    combine_channels,
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
    assert not (tmp_path / "p.csv.tmp").exists()


def test_file_layout_is_plain_csv_after_the_metadata_line(tmp_path):
    path = write_predictions(tmp_path / "p.csv", _example())
    lines = path.read_text().splitlines()
    assert lines[0].startswith(MAGIC)
    meta = json.loads(lines[0][len(MAGIC) :])
    assert meta["kind"] == "decision" and meta["classes"] == ["dog", "cat", "cafe/restaurant"]
    assert lines[1] == "name,fold,partition,label,score_dog,score_cat,score_cafe/restaurant"
    assert lines[2].startswith("a,1,dev,dog,")


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
    good = path.read_text()

    _rewrite(path, 4, "c,2,dev,dog,1.0,2.0")  # a field short
    with pytest.raises(StoreError, match=r"p\.csv:4: 6 fields, expected 7"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 5, "d,2,dev,dog,1.0,abc,2.0")
    with pytest.raises(StoreError, match=r"p\.csv:5: .*scores numbers"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 2, "name,fold,partition,label,score_x,score_y,score_z")
    with pytest.raises(StoreError, match=r"p\.csv:2: header does not match"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 1, "name,fold")
    with pytest.raises(StoreError, match=r"p\.csv:1: not a specfusion predictions file"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 4, good.splitlines()[2])  # duplicate item "a"
    with pytest.raises(StoreError, match="duplicate item name 'a'"):
        read_predictions(path)

    path.write_text(good)
    _rewrite(path, 3, "a,0,dev,dog,1,2,3")  # fold 0 inside the development partition
    with pytest.raises(StoreError, match="fold 0 must mark exactly the test partition"):
        read_predictions(path)

    with pytest.raises(StoreError, match="not found"):
        read_predictions(tmp_path / "missing.csv")


def test_invalid_predictions_are_refused():
    p = _example()
    with pytest.raises(StoreError, match="kind"):
        Predictions(names=p.names, folds=p.folds, partitions=p.partitions, labels=p.labels, scores=p.scores, classes=p.classes, kind="logits")
    with pytest.raises(StoreError, match="shape"):
        Predictions(names=p.names, folds=p.folds, partitions=p.partitions, labels=p.labels, scores=p.scores[:, :2], classes=p.classes, kind="proba")
    bad = p.scores.copy()
    bad[0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        Predictions(names=p.names, folds=p.folds, partitions=p.partitions, labels=p.labels, scores=bad, classes=p.classes, kind="decision")
    with pytest.raises(StoreError, match="not one of the classes"):
        Predictions(names=p.names, folds=p.folds, partitions=p.partitions, labels=["owl"] * 6, scores=p.scores, classes=p.classes, kind="decision")


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
