"""The SVM fold protocol and stacking fusion on generated data: their leakage contracts hold without the corpus.

The real-data versions (tests/test_classifiers.py, tests/test_fusion.py) use ESC-50 and skip without it.
"""

import numpy as np
import pytest
from sklearn.base import clone

from specfusion.fusion.methods import stack
from specfusion.models.svm import LinearSVM
from specfusion.models.svm_protocol import svm_fold_protocol

CLASSES = np.array(["bird", "dog", "rain"], dtype=object)


def generated_task(seed=0, n_per_class=24, dim=6, noise=2.0):
    """Gaussian blobs of 3 classes; folds 1-3 development, every 4th item the test partition."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(len(CLASSES), dim))
    codes = np.repeat(np.arange(len(CLASSES)), n_per_class)
    X = centres[codes] + rng.normal(scale=noise, size=(len(codes), dim))
    folds = np.tile([1, 2, 3, 0], len(codes) // 4)
    return {
        "X": X,
        "y": CLASSES[codes],
        "folds": folds,
        "partitions": np.where(folds == 0, "test", "dev").astype(object),
        "names": [f"item{i:03d}" for i in range(len(codes))],
    }


def system(task, X, seed=0):
    return svm_fold_protocol(
        X, task["y"], task["folds"], task["partitions"], names=task["names"],
        estimator=LinearSVM(c_grid=[1e-3, 1e-1], random_state=seed),
    ).predictions  # fmt: skip


@pytest.fixture(scope="module")
def task():
    return generated_task()


@pytest.fixture(scope="module")
def base_systems(task):
    """Two base systems, each seeing half of the feature dimensions."""
    return [system(task, task["X"][:, :3]), system(task, task["X"][:, 3:])]


def test_fold_protocol_gives_out_of_fold_and_test_scores(task):
    X, y, folds = task["X"], task["y"], task["folds"]
    result = svm_fold_protocol(
        X, y, folds, task["partitions"], names=task["names"], estimator=LinearSVM(c_grid=[1e-3, 1.0])
    )
    dev = task["partitions"] == "dev"
    template = LinearSVM(c_grid=[result.best_C])
    for k in (1, 2, 3):  # fold k's scores come from a model that never saw fold k
        held = folds == k
        expected = clone(template).fit(X[dev & ~held], y[dev & ~held]).decision_function(X[held])
        assert np.allclose(result.predictions.scores[held], expected, atol=1e-6)
    assert np.allclose(result.predictions.scores[~dev], result.model.decision_function(X[~dev]), atol=1e-6)
    assert set(result.fold_C) == {1, 2, 3} and list(result.predictions.classes) == list(CLASSES)


def test_test_labels_never_change_the_protocol(task):
    before = svm_fold_protocol(task["X"], task["y"], task["folds"], task["partitions"], names=task["names"])
    test = task["partitions"] == "test"
    shuffled = task["y"].copy()
    shuffled[test] = np.random.default_rng(1).permutation(shuffled[test])
    assert (shuffled != task["y"]).any()
    after = svm_fold_protocol(task["X"], shuffled, task["folds"], task["partitions"], names=task["names"])
    assert after.best_C == before.best_C and after.fold_C == before.fold_C
    np.testing.assert_array_equal(after.predictions.scores, before.predictions.scores)


def test_stacking_on_generated_systems_keeps_test_items_out(base_systems):
    before = stack(base_systems, metric="accuracy", per_decade=1)
    test = base_systems[0].partitions == "test"
    tampered = []
    for p in base_systems:
        q = p.subset(np.arange(len(p)))
        q.labels = q.labels.copy()
        q.labels[test] = np.roll(q.labels[test], 1)
        q.scores = q.scores.copy()
        q.scores[test] += 3.0
        tampered.append(q)
    after = stack(tampered, metric="accuracy", per_decade=1)
    dev = ~test
    assert after.best_C == before.best_C and after.fold_C == before.fold_C
    np.testing.assert_array_equal(after.predictions.scores[dev], before.predictions.scores[dev])
    assert not np.array_equal(after.predictions.scores[test], before.predictions.scores[test])
    # the fusion is a real classifier of these well-separated classes, not chance
    predicted = np.asarray(before.predictions.classes, dtype=object)[before.predictions.scores.argmax(axis=1)]
    assert np.mean(predicted[dev] == base_systems[0].labels[dev]) > 0.6


def test_integer_labels_give_the_scores_of_their_text(task):
    # labels 0, 1, 2 are scored as "0", "1", "2" (the predictions file's text), not refused as an unknown type
    codes = np.searchsorted(CLASSES, task["y"])
    as_int = svm_fold_protocol(task["X"], codes, task["folds"], task["partitions"], names=task["names"],
                               estimator=LinearSVM(c_grid=[1e-3, 1e-1])).predictions  # fmt: skip
    as_text = svm_fold_protocol(task["X"], codes.astype(str), task["folds"], task["partitions"], names=task["names"],
                                estimator=LinearSVM(c_grid=[1e-3, 1e-1])).predictions  # fmt: skip
    assert list(as_int.classes) == ["0", "1", "2"]
    np.testing.assert_array_equal(as_int.scores, as_text.scores)
