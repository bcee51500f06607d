"""LinearSVM and the SVM fold protocol on cheap but real features (Mel-band statistics of ESC-50 clips)."""

import numpy as np
import pytest
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from specfusion.data.datasets import load_esc50
from specfusion.errors import ConfigError
from specfusion.models.crnn.spectrograms import compute_spectrograms
from specfusion.models.svm import LinearSVM, log_c_grid
from specfusion.models.svm_protocol import out_of_fold_decisions, svm_fold_protocol

N_CLASSES = 8


def band_statistics(S):
    """Mean and standard deviation of every Mel band over time: (n, 2 * n_mels)."""
    return np.concatenate([S.mean(axis=2), S.std(axis=2)], axis=1).astype(np.float64)


@pytest.fixture(scope="module")
def esc50_features(esc50_root, tmp_path_factory):
    """ESC-50, first 8 classes; folds 1-3 development, fold 4 playing the test partition."""
    table = load_esc50(esc50_root, test_folds=(4,))
    keep = [i for i, item in enumerate(table) if item.label in table.classes[:N_CLASSES]]
    table = table.subset(keep)
    table.classes = table.classes[:N_CLASSES]
    S = compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path_factory.mktemp("spec"))
    return {
        "table": table,
        "S": S,
        "X": band_statistics(S),
        "y": table.labels(),
        "folds": table.folds(),
        "partitions": table.partitions(),
        "names": table.uids(),
    }


def hand_run_search(X, y, folds, grid):
    """The paper's procedure written out with plain scikit-learn: CV over the predefined folds, best macro F1."""
    means = []
    for C in grid:
        scores = []
        for k in np.unique(folds):
            model = Pipeline(
                [("s", StandardScaler()), ("svc", LinearSVC(C=C, dual=True, max_iter=1000, random_state=0))]
            )
            model.fit(X[folds != k], y[folds != k])
            scores.append(
                f1_score(
                    y[folds == k], model.predict(X[folds == k]), average="macro", labels=sorted(set(y)), zero_division=0
                )
            )
        means.append(np.mean(scores))
    best = grid[int(np.argmax(means))]
    final = Pipeline(
        [("s", StandardScaler()), ("svc", LinearSVC(C=best, dual=True, max_iter=1000, random_state=0))]
    ).fit(X, y)
    return best, np.array(means), final


def test_c_grid_is_the_papers():
    assert np.allclose(log_c_grid(), 10.0 ** np.arange(-9, 1))
    assert len(log_c_grid(per_decade=2)) == 19
    with pytest.raises(ConfigError):
        log_c_grid(per_decade=0)


def test_svm_chooses_c_by_predefined_folds_like_sklearn_by_hand(esc50_features):
    f = esc50_features
    dev = f["partitions"] == "dev"
    X, y, folds = f["X"][dev], f["y"][dev], f["folds"][dev]
    svm = LinearSVM(solver="liblinear").fit(X, y, folds=folds)  # the newton solver: tests/test_svm_solver.py
    best, means, final = hand_run_search(X, y, folds, log_c_grid())
    assert svm.best_C_ == best
    assert np.allclose([row["mean_score"] for row in svm.cv_table()], means)
    assert len(svm.cv_results_["split0_test_score"]) == 10 and "split3_test_score" not in svm.cv_results_  # 3 dev folds
    assert np.allclose(svm.decision_function(f["X"][~dev]), final.decision_function(f["X"][~dev]))
    assert list(svm.classes_) == sorted(set(y))
    assert np.mean(svm.predict(f["X"][~dev]) == f["y"][~dev]) > 3 / N_CLASSES  # real features: far above chance


def test_rowspace_projection_changes_no_decision_value(esc50_features):
    """More features than items (subsampled flattened spectrograms, 512-d): same search, same scores."""
    f = esc50_features
    dev = f["partitions"] == "dev"
    X = f["S"][:, ::2, ::4].reshape(len(f["S"]), -1).astype(np.float64)
    assert X.shape[1] > dev.sum()
    options = {"c_grid": [1e-4, 1e-2, 1.0], "max_iter": 300, "solver": "liblinear"}
    plain = LinearSVM(rowspace=False, **options).fit(X[dev], f["y"][dev], folds=f["folds"][dev])
    projected = LinearSVM(**options).fit(X[dev], f["y"][dev], folds=f["folds"][dev])
    assert "rowspace" in projected.pipeline_.named_steps and "rowspace" not in plain.pipeline_.named_steps
    assert projected.pipeline_["rowspace"].n_components_ == dev.sum()
    assert projected.best_C_ == plain.best_C_
    assert np.allclose([r["mean_score"] for r in projected.cv_table()], [r["mean_score"] for r in plain.cv_table()])
    assert projected.n_not_converged_ == plain.n_not_converged_
    reference = plain.decision_function(X[~dev])
    assert np.abs(projected.decision_function(X[~dev]) - reference).max() < 1e-8 * np.abs(reference).max()
    # no projection when items outnumber features, or without standardisation
    assert (
        "rowspace"
        not in LinearSVM(c_grid=[1e-2], solver="liblinear").fit(f["X"][dev][:, :128], f["y"][dev]).pipeline_.named_steps
    )
    assert not LinearSVM(standardize=False).uses_rowspace(10, 100)
    with pytest.raises(ConfigError, match="rowspace"):
        LinearSVM(rowspace="yes").uses_rowspace(10, 100)


def test_test_partition_never_influences_the_choice(esc50_features):
    f = esc50_features
    test = f["partitions"] == "test"
    reference = svm_fold_protocol(f["X"], f["y"], f["folds"], f["partitions"], names=f["names"])
    shuffled = f["y"].copy()
    shuffled[test] = np.random.default_rng(1).permutation(shuffled[test])
    other_X = f["X"].copy()
    other_X[test] = other_X[test][::-1]
    changed = svm_fold_protocol(other_X, shuffled, f["folds"], f["partitions"], names=f["names"])
    assert changed.best_C == reference.best_C and changed.fold_C == reference.fold_C
    dev = reference.predictions.partitions == "dev"
    assert np.array_equal(changed.predictions.scores[dev], reference.predictions.scores[dev])
    # the test items' scores come from the same model, only reordered with their features
    assert np.allclose(changed.predictions.scores[~dev], reference.predictions.scores[~dev][::-1])


def test_out_of_fold_scores_do_not_leak(esc50_features):
    f = esc50_features
    dev = f["partitions"] == "dev"
    X, y, folds = f["X"][dev], f["y"][dev], f["folds"][dev]
    result = svm_fold_protocol(f["X"], f["y"], f["folds"], f["partitions"], names=f["names"])
    p = result.predictions
    assert list(p.names) == f["names"] and set(p.folds[p.partitions == "dev"]) == {1, 2, 3}
    assert set(p.folds[p.partitions == "test"]) == {0} and p.kind == "decision"
    # fold 2's scores = a model trained by hand on folds 1 and 3 with the chosen C (liblinear converged)
    by_hand = Pipeline(
        [
            ("s", StandardScaler()),
            ("svc", LinearSVC(C=result.best_C, dual=True, max_iter=100_000, tol=1e-6, random_state=0)),
        ]
    )
    by_hand.fit(X[folds != 2], y[folds != 2])
    expected = by_hand.decision_function(X[folds == 2])
    assert np.allclose(p.scores[: len(X)][folds == 2], expected, atol=1e-3 * np.abs(expected).max())
    # with C fixed, relabelling fold 2 changes every other fold's scores but not fold 2's own
    fixed = LinearSVM(c_grid=[result.best_C]).fit(X, y)
    relabelled = y.copy()
    relabelled[folds == 2] = np.roll(relabelled[folds == 2], 7)
    before, _ = out_of_fold_decisions(fixed, X, y, folds)
    after, _ = out_of_fold_decisions(fixed, X, relabelled, folds)
    assert np.array_equal(before[folds == 2], after[folds == 2])
    assert not np.allclose(before[folds != 2], after[folds != 2])
    # test scores come from the model refitted on the whole development partition
    assert np.allclose(p.scores[p.partitions == "test"], result.model.decision_function(f["X"][~dev]))


def test_parallel_search_counts_unconverged_fits_and_matches_serial(esc50_features, recwarn):
    f = esc50_features
    dev = f["partitions"] == "dev"
    X, y, folds = f["X"][dev], f["y"][dev], f["folds"][dev]
    options = {"c_grid": [1e-3, 1.0], "max_iter": 3, "solver": "liblinear"}
    serial = LinearSVM(n_jobs=1, **options).fit(X, y, folds=folds)
    parallel = LinearSVM(n_jobs=2, **options).fit(X, y, folds=folds)
    # 3 iterations cannot converge at C = 1: the 3 search fits at C = 1 in the workers are counted
    assert parallel.n_not_converged_ == serial.n_not_converged_ >= 3
    assert (
        LinearSVM(c_grid=[1e-3, 1.0], n_jobs=2, solver="liblinear").fit(X, y, folds=folds).n_not_converged_
        < serial.n_not_converged_
    )
    assert parallel.best_C_ == serial.best_C_ and parallel.cv_table() == serial.cv_table()
    assert not [w for w in recwarn if "converge" in str(w.message)]
    before, _ = out_of_fold_decisions(serial, X, y, folds)
    after, _ = out_of_fold_decisions(parallel, X, y, folds)
    assert np.array_equal(before, after)


def test_nested_selection_chooses_c_without_the_outer_fold(esc50_features):
    f = esc50_features
    result = svm_fold_protocol(f["X"], f["y"], f["folds"], f["partitions"], names=f["names"], c_selection="nested")
    dev = f["partitions"] == "dev"
    for k, C in result.fold_C.items():
        inner = dev & (f["folds"] != k)
        assert C == LinearSVM().fit(f["X"][inner], f["y"][inner], folds=f["folds"][inner]).best_C_


def test_binary_problem_gives_two_columns(esc50_features):
    f = esc50_features
    two = np.isin(f["y"], f["table"].classes[:2]) & (f["partitions"] == "dev")
    svm = LinearSVM(c_grid=[1e-3]).fit(f["X"][two], f["y"][two])
    scores = svm.decision_function(f["X"][two])
    assert scores.shape == (two.sum(), 2)
    assert np.allclose(scores[:, 0], -scores[:, 1])
    assert np.array_equal(svm.predict(f["X"][two]), svm.classes_[scores.argmax(axis=1)])


def test_class_order_and_missing_classes(esc50_features):
    f = esc50_features
    dev = f["partitions"] == "dev"
    order = list(f["table"].classes)  # ESC-50's own order, not alphabetical
    svm = LinearSVM(c_grid=[1e-2], classes=order + ["never seen"]).fit(f["X"][dev], f["y"][dev])
    plain = LinearSVM(c_grid=[1e-2]).fit(f["X"][dev], f["y"][dev])
    scores, reference = svm.decision_function(f["X"][~dev]), plain.decision_function(f["X"][~dev])
    for j, name in enumerate(order):  # liblinear's coordinate order depends on the label codes: tolerance
        assert np.allclose(scores[:, j], reference[:, list(plain.classes_).index(name)], atol=1e-4)
    assert (scores[:, -1] < scores[:, :-1].min(axis=1)).all()  # an untrained class never wins


def test_channel_items_are_trained_separately_and_averaged(esc50_features):
    """Two 'channels' per clip (its two halves), as DCASE 2018 task 5 segments have four."""
    f = esc50_features
    half = f["S"].shape[2] // 2
    X = np.concatenate([band_statistics(f["S"][:, :, :half]), band_statistics(f["S"][:, :, half:])])
    n = len(f["names"])
    twice = lambda a: np.concatenate([a, a])  # noqa: E731
    uids = [f"{name}@ch{c}" for c in (0, 1) for name in f["names"]]
    args = (X, twice(f["y"]), twice(f["folds"]), twice(f["partitions"]))
    mean = svm_fold_protocol(*args, names=uids, segments=twice(np.array(f["names"])), combine="mean")
    per_channel = svm_fold_protocol(*args, names=uids, segments=twice(np.array(f["names"])), combine="none")
    assert list(mean.predictions.names) == f["names"] and len(per_channel.predictions) == 2 * n
    assert np.allclose(
        mean.predictions.scores, (per_channel.predictions.scores[:n] + per_channel.predictions.scores[n:]) / 2
    )
    assert mean.predictions.config["combine"] == "mean"


def test_bad_input_is_refused(esc50_features):
    f = esc50_features
    with pytest.raises(ConfigError, match="two folds"):
        LinearSVM().fit(f["X"][:20], f["y"][:20], folds=np.ones(20))
    with pytest.raises(ConfigError, match="NaN"):
        LinearSVM().fit(np.full((4, 2), np.nan), ["a", "b", "a", "b"])
    with pytest.raises(ConfigError, match="'metric' parameter"):
        LinearSVM(metric="auc").fit(f["X"], f["y"], folds=f["folds"])


def test_svm_cli_on_a_feature_store(esc50_features, tmp_path, capsys):
    import json

    from specfusion.cli import main
    from specfusion.evaluation.predictions import read_predictions
    from specfusion.features.store import FeatureStore

    f = esc50_features
    store = FeatureStore.create_or_resume(
        tmp_path / "stats.h5", config={"extractor": "mel-band-statistics"}, dim=f["X"].shape[1], table=f["table"]
    )
    store.append(f["names"], f["X"].astype(np.float32))
    store.close()
    out = tmp_path / "svm"
    assert main(["svm", str(tmp_path / "stats.h5"), "--out", str(out), "-q"]) == 0
    assert "best C" in capsys.readouterr().out
    p = read_predictions(out / "predictions.csv")
    expected = svm_fold_protocol(
        f["X"].astype(np.float32), f["y"], f["folds"], f["partitions"], names=f["names"], classes=f["table"].classes
    )
    assert list(p.names) == f["names"] and p.classes == f["table"].classes
    assert np.allclose(p.scores, expected.predictions.scores)
    assert p.config["features"] == {"extractor": "mel-band-statistics"} and p.config["best_C"] == expected.best_C
    metrics = json.loads((out / "metrics.json").read_text())
    dev = p.partitions == "dev"
    assert metrics["metric"] == "accuracy" and metrics["devel"] == pytest.approx(
        100 * np.mean(p.predicted()[dev] == p.labels[dev])
    )
    assert metrics["test"] == pytest.approx(100 * np.mean(p.predicted()[~dev] == p.labels[~dev]))
    assert [row["C"] for row in metrics["c_search"]] == list(log_c_grid())
    assert (out / "confusion_devel.png").is_file() and (out / "confusion_test.png").is_file()
