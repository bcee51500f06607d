"""LinearSVM keeps scikit-learn's estimator contract; runs on generated data (no corpus needed).

The estimator checks are scikit-learn's own (``parametrize_with_checks``); the checks LinearSVM fails on
purpose are listed with their reason in :data:`EXPECTED_FAILED_CHECKS`, as scikit-learn does for its own
estimators. A listed check that starts to pass is reported by pytest as XPASS.
"""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from specfusion.errors import ConfigError, SpecfusionError
from specfusion.models.svm import LinearSVM, ParameterError

#: Checks LinearSVM fails by design, with the reason (scikit-learn's ``expected_failed_checks``).
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_train": (
        "decision_function has one column per class also for two classes (shape (n, 2), not (n,)): "
        "stacking fusion and the predictions files need a score per class"
    ),
    "check_classifiers_classes": (
        "same cause: with two classes decision_function is (n, 2), so the check's sign rule on a "
        "raveled (n,) vector does not apply; predict() itself agrees with the argmax of the columns"
    ),
}


@parametrize_with_checks(
    [LinearSVM(c_grid=[1.0]), LinearSVM(c_grid=[1e-2, 1.0], cv=2)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def blobs(n_per_class=30, n_classes=3, dim=8, seed=0, labels=None):
    """Gaussian blobs, one per class, with class means 3 standard deviations apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(n_classes, dim))
    X = np.concatenate([c + rng.normal(size=(n_per_class, dim)) for c in centres])
    codes = np.repeat(np.arange(n_classes), n_per_class)
    y = codes if labels is None else np.asarray(labels)[codes]
    order = rng.permutation(len(X))
    return X[order], y[order]


def test_integer_labels_give_real_cross_validation_scores():
    X, y = blobs(labels=[3, 7, 11])
    scores = cross_val_score(LinearSVM(c_grid=[1.0]), X, y, cv=StratifiedKFold(4, shuffle=True, random_state=0))
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert scores.mean() > 0.9  # well-separated blobs: nan (the old object classes_) or chance would fail
    model = LinearSVM(c_grid=[1.0]).fit(X, y)
    assert model.classes_.dtype == y.dtype and list(model.classes_) == [3, 7, 11]
    assert model.predict(X).dtype == y.dtype
    assert model.score(X, y) == pytest.approx(np.mean(model.predict(X) == y))


def test_labels_keep_their_dtype_and_given_class_order():
    X, y = blobs(labels=np.array(["dog", "cat", "rain"], dtype=object))
    model = LinearSVM(c_grid=[1.0]).fit(X, y)
    assert list(model.classes_) == ["cat", "dog", "rain"]
    ordered = LinearSVM(c_grid=[1.0], classes=["rain", "dog", "cat", "wind"]).fit(X, y)
    assert list(ordered.classes_) == ["rain", "dog", "cat", "wind"]
    scores = ordered.decision_function(X)
    assert scores.shape == (len(X), 4)
    assert (scores[:, 3] < scores[:, :3].min(axis=1)).all()  # a class without items never wins
    assert np.array_equal(ordered.predict(X), model.predict(X))
    with pytest.raises(ConfigError, match="'sun' is not one of the classes"):
        LinearSVM(c_grid=[1.0], classes=["dog", "cat"]).fit(X, np.where(y == "rain", "sun", y))


def test_grid_search_over_the_svm_with_integer_labels():
    X, y = blobs(labels=[0, 1, 2])
    search = GridSearchCV(LinearSVM(c_grid=[1.0]), {"standardize": [True, False]}, cv=3).fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.n_features_in_ == X.shape[1]


def test_fitted_attributes_and_not_fitted_error():
    X, y = blobs()
    with pytest.raises(NotFittedError):
        LinearSVM().predict(X)
    with pytest.raises(NotFittedError):
        LinearSVM().decision_function(X)
    model = LinearSVM(c_grid=[1e-3, 1.0], cv=3).fit(X, y)
    assert model.n_features_in_ == X.shape[1]
    assert isinstance(model.n_iter_, int) and 1 <= model.n_iter_ <= model.max_iter
    assert model.best_C_ in (1e-3, 1.0) and len(model.cv_table()) == 2
    with pytest.raises(ConfigError, match="features"):
        model.predict(X[:, :3])


@pytest.mark.parametrize(
    "params, match",
    [
        ({"metric": "auc"}, "'metric' parameter"),
        ({"rowspace": "yes"}, "'rowspace' parameter"),
        ({"max_iter": 0}, "'max_iter' parameter"),
        ({"tol": -1.0}, "'tol' parameter"),
        ({"cv": 1}, "'cv' parameter"),
    ],
)
def test_invalid_parameters_are_config_errors_and_value_errors(params, match):
    X, y = blobs()
    with pytest.raises(ParameterError, match=match) as info:
        LinearSVM(**params).fit(X, y)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_bad_data_raises_config_error_which_is_a_value_error():
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, SpecfusionError)
    X, y = blobs()
    bad = X.copy()
    bad[0, 0] = np.nan
    for args, match in [
        ((bad, y), "NaN"),
        ((X[:, 0], y), "2D array"),
        ((X, y[:-1]), "inconsistent numbers of samples"),
        ((X, X[:, 0]), "Unknown label type"),
        ((X, np.zeros(len(X))), "two classes"),
        ((X[:0], y[:0]), "0 sample"),
    ]:
        with pytest.raises(ConfigError, match=match):
            LinearSVM(c_grid=[1.0]).fit(*args)


def test_crnn_labels_keep_their_dtype_like_the_svm(tmp_path):
    """The CRNN encodes labels as LinearSVM does: integer labels give integer classes_ and predictions (also
    after a checkpoint round trip); string labels an object array."""
    from specfusion.models.crnn import CRNNClassifier, torch_threads

    rng = np.random.default_rng(0)
    y = np.array([3, 7, 11] * 6)
    S = rng.uniform(-80, 0, size=(len(y), 128, 8)).astype(np.float32)
    tiny = dict(filters=(4, 4, 4, 4), gru_units=8, batch_size=6, epochs=1, num_threads=1)
    with torch_threads(1):
        model = CRNNClassifier(**tiny).fit(S, y)
        assert model.classes_.dtype == y.dtype and list(model.classes_) == [3, 7, 11]
        assert model.predict(S).dtype == y.dtype and set(model.predict(S)) <= {3, 7, 11}
        assert model.score(S, y) == pytest.approx(np.mean(model.predict(S) == y))
        loaded = CRNNClassifier.load(model.save(tmp_path / "int.pt"), num_threads=1)
        assert loaded.classes_.dtype == y.dtype and np.array_equal(loaded.predict(S), model.predict(S))
        named = CRNNClassifier(**tiny).fit(S, np.array(["b", "a", "c"] * 6))
        assert named.classes_.dtype == object and list(named.classes_) == ["a", "b", "c"]
        with pytest.raises(ConfigError, match="label 5 is not one of the classes"):
            CRNNClassifier(**tiny, classes=[3, 7, 11]).fit(S, np.where(y == 11, 5, y))
