"""Stacking fusion on predictions files made from real ESC-50 features: no test information leaks."""

import numpy as np
import pytest

from specfusion.audio import load_audio
from specfusion.classifiers import LinearSVM, svm_fold_protocol
from specfusion.datasets import load_esc50
from specfusion.errors import StoreError
from specfusion.fusion import align_systems, meta_features, stack
from specfusion.predictions import read_predictions, write_predictions
from specfusion.spectrogram import melspectrogram

N_CLASSES = 8


@pytest.fixture(scope="module")
def esc50_subset(esc50_root):
    """8 ESC-50 classes (256 clips); folds 1-3 development, fold 4 plays the test partition."""
    table = load_esc50(esc50_root)
    keep = [i for i, item in enumerate(table) if item.label in table.classes[:N_CLASSES]]
    table = table.subset(keep)
    specs = np.stack([melspectrogram(load_audio(item.path)[0][0], 16000, clip_db=-80) for item in table])
    folds = table.folds()
    partitions = np.where(folds == 4, "test", "dev").astype(object)
    folds = np.where(folds == 4, 0, folds)
    return table, specs, folds, partitions


@pytest.fixture(scope="module")
def base_predictions(esc50_subset, tmp_path_factory):
    """Two real base systems (SVMs on band means and on band standard deviations), written to files."""
    table, specs, folds, partitions = esc50_subset
    out = tmp_path_factory.mktemp("fusion")
    paths = []
    for name, features in (("means", specs.mean(axis=2)), ("stds", specs.std(axis=2))):
        result = svm_fold_protocol(
            features, table.labels(), folds, partitions, names=table.uids(), classes=table.classes[:N_CLASSES],
            estimator=LinearSVM(metric="accuracy", c_grid=[1e-3, 1e-2, 1e-1]),
        )  # fmt: skip
        paths.append(write_predictions(out / f"{name}.csv", result.predictions))
    return [read_predictions(p) for p in paths]


def test_stacking_beats_chance_and_uses_out_of_fold_dev_scores(base_predictions):
    fused = stack(base_predictions, system_names=["means", "stds"], metric="accuracy")
    preds = fused.predictions
    assert len(preds) == len(base_predictions[0]) and preds.kind == "decision"
    dev, test = preds.dev(), preds.test()
    assert (dev.folds > 0).all() and (test.folds == 0).all()
    dev_acc = np.mean(dev.predicted() == dev.labels)
    test_acc = np.mean(test.predicted() == test.labels)
    assert dev_acc > 2 / N_CLASSES and test_acc > 2 / N_CLASSES  # well above chance (1/8)
    # the meta-features are exactly the base systems' (out-of-fold) scores, concatenated
    X = meta_features(base_predictions)
    assert X.shape == (len(preds), 2 * N_CLASSES)
    np.testing.assert_array_equal(X[:, :N_CLASSES], base_predictions[0].scores)
    assert preds.config["members"] == ["means", "stds"]


def test_test_labels_cannot_change_any_choice(base_predictions):
    before = stack(base_predictions, metric="accuracy")
    test = base_predictions[0].partitions == "test"
    order = np.random.default_rng(0).permutation(int(test.sum()))
    tampered = []
    for p in base_predictions:
        q = p.subset(np.arange(len(p)))
        q.labels = q.labels.copy()
        q.labels[test] = q.labels[test][order]
        tampered.append(q)
    assert (tampered[0].labels[test] != base_predictions[0].labels[test]).any()
    after = stack(tampered, metric="accuracy")
    assert after.best_C == before.best_C and after.fold_C == before.fold_C
    svc_before = before.model.pipeline_.named_steps["svc"]
    svc_after = after.model.pipeline_.named_steps["svc"]
    np.testing.assert_array_equal(svc_before.coef_, svc_after.coef_)
    np.testing.assert_array_equal(svc_before.intercept_, svc_after.intercept_)
    np.testing.assert_array_equal(before.predictions.scores, after.predictions.scores)


def test_test_scores_only_change_test_outputs(base_predictions):
    before = stack(base_predictions, metric="accuracy")
    shifted = []
    for p in base_predictions:
        q = p.subset(np.arange(len(p)))
        q.scores = q.scores.copy()
        q.scores[q.partitions == "test"] += 5.0
        shifted.append(q)
    after = stack(shifted, metric="accuracy")
    dev = before.predictions.partitions == "dev"
    assert after.best_C == before.best_C
    np.testing.assert_array_equal(after.predictions.scores[dev], before.predictions.scores[dev])
    assert not np.array_equal(after.predictions.scores[~dev], before.predictions.scores[~dev])


def test_systems_must_agree_on_items(base_predictions):
    a, b = base_predictions
    shuffled = b.subset(np.random.default_rng(1).permutation(len(b)))
    aligned = align_systems([a, shuffled])
    np.testing.assert_array_equal(aligned[1].names, a.names)
    np.testing.assert_array_equal(aligned[1].scores, b.scores)
    relabelled = b.subset(np.arange(len(b)))
    relabelled.folds = relabelled.folds.copy()
    relabelled.folds[0] = 3 if relabelled.folds[0] != 3 else 2
    with pytest.raises(StoreError, match="has fold"):
        align_systems([a, relabelled], system_names=["a", "b"])
    with pytest.raises(StoreError, match="items"):
        align_systems([a, b.subset(np.arange(10))], system_names=["a", "b"])
