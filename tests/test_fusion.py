"""Fusion on predictions files made from real ESC-50 features (and on generated scores): no test
information leaks, development numbers are out-of-fold at the fusion's own level, and the calibrated
methods behave as documented."""

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.data.datasets import load_esc50
from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.predictions import read_predictions, write_predictions
from specfusion.features.spectrogram import melspectrogram
from specfusion.fusion.methods import FUSION_METHODS, align_systems, fuse, meta_features, stack
from specfusion.models.svm import LinearSVM
from specfusion.models.svm_protocol import svm_fold_protocol

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


# -- fusion methods (specfusion.fusion.methods.fuse) ----------------------------------------------------------
NEW_METHODS = ("calibrated-mean", "weighted", "stacking-logreg", "auto")


def _copy(p):
    q = p.subset(np.arange(len(p)))
    q.labels, q.scores = q.labels.copy(), q.scores.copy()
    return q


def _noise_member(like, seed=0):
    """A member of pure noise: decision values drawn independently of the items."""
    q = _copy(like)
    q.scores = np.random.default_rng(seed).normal(size=q.scores.shape)
    return q


def _options(method):
    """Small C grids for the meta-learners (the tests run on a shared 2-core machine)."""
    if method == "auto":
        return {"svm": LinearSVM(c_grid=[1e-3, 1e-1]), "c_grid": (0.1, 1.0)}
    return (
        {"c_grid": [1e-3, 1e-1]}
        if method == "stacking-svm"
        else {"c_grid": (0.1, 1.0)}
        if method == "stacking-logreg"
        else {}
    )


def _fitted_state(result):
    """Everything a fusion learned: weights, calibration, chosen methods, C, auto's CV scores."""
    config = result.predictions.config
    return result.weights, config["fitted"], result.chosen, result.fold_choices


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_every_method_ignores_test_labels(base_predictions, method):
    before = fuse(
        base_predictions, method=method, metric="accuracy", system_names=["means", "stds"], **_options(method)
    )
    test = base_predictions[0].partitions == "test"
    order = np.random.default_rng(0).permutation(int(test.sum()))
    tampered = [_copy(p) for p in base_predictions]
    for q in tampered:
        q.labels[test] = q.labels[test][order]
    assert (tampered[0].labels[test] != base_predictions[0].labels[test]).any()
    after = fuse(tampered, method=method, metric="accuracy", system_names=["means", "stds"], **_options(method))
    assert _fitted_state(after) == _fitted_state(before)
    np.testing.assert_array_equal(after.predictions.scores, before.predictions.scores)
    # and the fusion is a real one: well above chance (1/8) on its honest out-of-fold Devel
    dev = before.predictions.dev()
    assert np.mean(dev.predicted() == dev.labels) > 2 / N_CLASSES


def test_calibration_is_monotone_per_member_and_fitted_on_development_items_only(base_predictions):
    model = fuse(base_predictions, method="calibrated-mean", metric="accuracy").model
    assert (model.temperatures_ > 0).all()
    X = meta_features(base_predictions)
    for m in range(len(base_predictions)):
        for k in (0, N_CLASSES - 1):  # raising a member's score of class k raises its calibrated p(k)
            column = m * N_CLASSES + k
            raised = X.copy()
            raised[:, column] += 0.5 * np.std(X[:, column])
            before, after = model.calibrated_log_proba(X)[m, :, k], model.calibrated_log_proba(raised)[m, :, k]
            assert (after > before).all()
    # the temperatures depend on the development rows only: change every test score and test label
    shifted = [_copy(p) for p in base_predictions]
    test = shifted[0].partitions == "test"
    for q in shifted:
        q.scores[test] = np.random.default_rng(3).normal(size=q.scores[test].shape) * 10
        q.labels[test] = q.labels[test][::-1]
    again = fuse(shifted, method="calibrated-mean", metric="accuracy")
    np.testing.assert_array_equal(again.model.temperatures_, model.temperatures_)
    dev = ~test
    np.testing.assert_array_equal(
        again.predictions.scores[dev],
        fuse(base_predictions, method="calibrated-mean", metric="accuracy").predictions.scores[dev],
    )


def test_one_member_weighted_fusion_reproduces_the_member(base_predictions):
    member = base_predictions[0]
    fused = fuse([member], method="weighted", metric="accuracy", system_names=["means"])
    assert fused.weights == {"means": 1.0}
    np.testing.assert_array_equal(fused.predictions.predicted(), member.predicted())
    np.testing.assert_array_equal(fused.predictions.names, member.names)
    # the scores are the member's temperature-scaled probabilities: same order within every item
    np.testing.assert_array_equal(
        np.argsort(fused.predictions.scores, axis=1, kind="stable")[:, -3:],
        np.argsort(member.scores, axis=1, kind="stable")[:, -3:],
    )
    assert fused.predictions.kind == "proba"
    np.testing.assert_allclose(fused.predictions.scores.sum(axis=1), 1.0)


@pytest.mark.parametrize("search", ["greedy", "logloss"])
def test_a_pure_noise_member_gets_near_zero_weight(base_predictions, search):
    members = [*base_predictions, _noise_member(base_predictions[0])]
    fused = fuse(members, method="weighted", metric="accuracy", system_names=["means", "stds", "noise"], search=search)
    assert fused.weights["noise"] < 0.02, fused.weights
    assert fused.weights["means"] > 0.2 and fused.weights["stds"] > 0.2
    assert abs(sum(fused.weights.values()) - 1) < 1e-9


# generated scores: the core contracts without audio
def _generated(n_classes=6, per_class=40, strengths=(1.5, 1.0, 0.0), seed=0):
    from specfusion.evaluation.predictions import Predictions

    rng = np.random.default_rng(seed)
    n = n_classes * per_class
    codes = np.repeat(np.arange(n_classes), per_class)
    folds = np.tile([1, 2, 3, 4, 0], n // 5)
    classes = [f"c{k}" for k in range(n_classes)]
    members = []
    for strength in strengths:
        scores = rng.normal(size=(n, n_classes))
        scores[np.arange(n), codes] += strength
        members.append(
            Predictions(
                names=[f"i{i}" for i in range(n)],
                folds=folds,
                partitions=np.where(folds == 0, "test", "dev"),
                labels=np.asarray(classes, dtype=object)[codes],
                scores=scores,
                classes=classes,
                kind="decision",
            )  # fmt: skip
        )
    return members


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_a_folds_devel_scores_never_saw_its_labels(method):
    """Honest Devel: every choice scoring fold 1 (calibration, weights, C, method) was fitted without fold 1."""
    members = _generated()
    before = fuse(members, method=method, metric="accuracy", **_options(method))
    fold1 = members[0].folds == 1
    order = np.random.default_rng(1).permutation(int(fold1.sum()))
    tampered = [_copy(p) for p in members]
    for q in tampered:
        q.labels[fold1] = q.labels[fold1][order]
    after = fuse(tampered, method=method, metric="accuracy", **_options(method))
    np.testing.assert_array_equal(after.predictions.scores[fold1], before.predictions.scores[fold1])
    assert not np.array_equal(after.predictions.scores[~fold1], before.predictions.scores[~fold1])


def test_weighted_fusion_beats_its_best_member_and_drops_noise_on_generated_scores():
    from specfusion.evaluation.metrics import evaluate_predictions

    members = _generated(strengths=(1.5, 1.5, 0.0), per_class=60)
    fused = fuse(members, method="weighted", metric="accuracy", system_names=["a", "b", "noise"])
    best = max(evaluate_predictions(m)["devel"] for m in members)
    assert evaluate_predictions(fused.predictions)["devel"] > best + 3
    assert fused.weights["noise"] < 0.02 and min(fused.weights["a"], fused.weights["b"]) > 0.3


def test_auto_picks_by_inner_cv_and_unknown_methods_are_rejected():
    members = _generated()
    result = fuse(members, method="auto", metric="accuracy", candidates=("calibrated-mean", "weighted"))
    scores = result.predictions.config["fitted"]["auto_scores"]
    assert set(scores) == {"calibrated-mean", "weighted"} and result.chosen == max(scores, key=scores.get)
    assert set(result.fold_choices) == {1, 2, 3, 4}
    with pytest.raises(ConfigError, match="unknown fusion method"):
        fuse(members, method="median")


def test_recipe_method_key():
    from specfusion.pipeline.recipes import parse_recipe

    text = (
        '[dataset]\nkind = "esc50"\n[[systems]]\nname = "a"\nkind = "crnn"\n[[fusions]]\nname = "f"\nmembers = ["a"]\n'
    )
    assert parse_recipe(text).fusions[0].method == "stacking-svm"
    assert parse_recipe(text + 'method = "weighted"\n').fusions[0].method == "weighted"
    with pytest.raises(ConfigError, match="'method' must be one of"):
        parse_recipe(text + 'method = "median"\n')


def test_report_flags_a_fusion_below_its_best_member_and_shows_weights():
    from specfusion.evaluation.report import render_html, render_markdown

    results = {
        "dataset": "esc50", "metric": "accuracy", "title": "t",
        "systems": [
            {"name": "strong", "kind": "base", "devel": 75.3, "test": None},
            {"name": "weak", "kind": "base", "devel": 40.0, "test": None},
            {"name": "stacked", "kind": "fusion", "devel": 71.8, "test": None, "members": ["strong", "weak"], "method": "stacking-svm"},
            {"name": "pooled", "kind": "fusion", "devel": 78.0, "test": None, "members": ["strong", "weak"], "method": "weighted",
             "weights": {"strong": 0.8, "weak": 0.2}},
        ],
    }  # fmt: skip
    md = render_markdown(results, None)
    stacked = next(line for line in md.splitlines() if "| stacked |" in line)
    pooled = next(line for line in md.splitlines() if "| pooled |" in line)
    assert "| stacking-svm |" in stacked and "BELOW ITS BEST MEMBER (strong, 75.3)" in stacked
    assert "| weighted |" in pooled and "BELOW" not in pooled and "weights: strong 0.80, weak 0.20" in pooled
    page = render_html(results, None)
    assert "BELOW ITS BEST MEMBER (strong, 75.3)" in page and "<td>weighted</td>" in page


@pytest.mark.parametrize("method", ("stacking-logreg", "auto"))
def test_logistic_stacking_searches_c_by_macro_f1(base_predictions, method):
    # scikit-learn 1.9's LogisticRegressionCV rebuilds a labels-taking scorer and refused ours (a TypeError)
    result = fuse(
        base_predictions, method=method, metric="macro_f1", system_names=["means", "stds"], **_options(method)
    )
    dev = result.predictions.dev()
    assert np.mean(dev.predicted() == dev.labels) > 2 / N_CLASSES
