"""The Newton solver of the linear SVM against liblinear: its objective on generated data, its C search on
real features (Mel-band statistics of ESC-50 clips, the features of tests/test_classifiers.py); where its fits
run and how they are reported, passed explicitly (fit backend, progress callback)."""

import contextlib

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from test_classifiers import esc50_features  # noqa: F401  (the module's fixture)

from specfusion.errors import ConfigError
from specfusion.fusion.methods import fuse
from specfusion.models import svm_solver
from specfusion.models.svm import LinearSVM
from specfusion.models.svm_protocol import out_of_fold_decisions, svm_fold_protocol
from specfusion.threads import limit_threads, resolve_threads


def liblinear_objective(Xs, y_codes, svc, C, class_weight=None):
    """liblinear's primal objective per problem for a fitted LinearSVC on standardised ``Xs``."""
    n_classes = len(svc.classes_)
    Y = svm_solver.ovr_targets(y_codes, n_classes)
    W = np.vstack([svc.coef_.T, svc.intercept_[None, :]])  # intercept_scaling 1: the bias is a weight
    Xa = np.hstack([Xs, np.ones((len(Xs), 1))])
    Cm = svm_solver.cost_matrix(Y, C, class_weight)
    return 0.5 * (W**2).sum(axis=0) + (Cm * np.maximum(0, 1 - Y * (Xa @ W)) ** 2).sum(axis=0)


@pytest.mark.parametrize("n, d, n_classes, C", [(80, 12, 4, 0.05), (60, 150, 3, 1.0), (70, 10, 2, 0.3)])
def test_newton_minimises_linearsvc_objective(n, d, n_classes, C):
    rng = np.random.default_rng(d)
    centres = rng.normal(size=(n_classes, d))
    codes = np.arange(n) % n_classes
    X = centres[codes] + 1.5 * rng.normal(size=(n, d)) + 3.0  # offset: standardisation matters
    weights = np.linspace(0.5, 2.0, n_classes)
    for class_weight in (None, weights):
        ((coef, intercept),) = svm_solver.linear_models_path(X, codes, [C], class_weight=class_weight)[0]
        scaler = StandardScaler().fit(X)
        Xs = scaler.transform(X)
        cw = None if class_weight is None else dict(enumerate(class_weight))
        svc = LinearSVC(C=C, dual=True, tol=1e-10, max_iter=1_000_000, class_weight=cw).fit(Xs, codes)
        # the same problem: Newton's weights on standardised features = liblinear's, and no higher objective
        W_std = coef * scaler.scale_[None, :]
        assert np.allclose(W_std, svc.coef_, atol=1e-4 * np.abs(svc.coef_).max())
        assert np.allclose(X @ coef.T + intercept, svc.decision_function(Xs).reshape(n, -1), atol=1e-4)
        ours = svm_solver.objective(*_basis_problem(X, codes, C, class_weight))
        assert (ours <= liblinear_objective(Xs, codes, svc, C, class_weight) * (1 + 1e-9)).all()


def _basis_problem(X, codes, C, class_weight):
    scaler = StandardScaler().fit(X)
    basis = svm_solver.make_basis(X, mean=scaler.mean_, scale=scaler.scale_)
    Y = svm_solver.ovr_targets(codes, int(codes.max()) + 1)
    Cm = svm_solver.cost_matrix(Y, C, class_weight)
    W = svm_solver.solve(basis, Y, Cm)
    return basis.Z, Y, Cm, W


def test_path_warm_starts_reach_the_cold_solution():
    rng = np.random.default_rng(0)
    X, codes = rng.normal(size=(90, 40)), np.arange(90) % 5
    path, info = svm_solver.linear_models_path(X, codes, [1e-3, 1e-1, 1.0])
    ((cold_coef, cold_b),) = svm_solver.linear_models_path(X, codes, [1.0])[0]
    assert info.not_converged == 0
    assert np.allclose(path[-1][0], cold_coef, atol=1e-6) and np.allclose(path[-1][1], cold_b, atol=1e-6)


def test_newton_search_matches_converged_liblinear_on_real_features(esc50_features):  # noqa: F811
    f = esc50_features
    dev = f["partitions"] == "dev"
    X, y, folds = f["X"][dev], f["y"][dev], f["folds"][dev]
    grid = [1e-4, 1e-3, 1e-2, 1e-1]  # (C = 1: tests above; converged liblinear takes long there)
    newton = LinearSVM(c_grid=grid).fit(X, y, folds=folds)
    reference = LinearSVM(c_grid=grid, solver="liblinear", max_iter=200_000, tol=1e-6).fit(X, y, folds=folds)
    assert reference.n_not_converged_ == 0 and newton.n_not_converged_ == 0
    assert newton.best_C_ == reference.best_C_
    assert np.allclose(
        [r["mean_score"] for r in newton.cv_table()], [r["mean_score"] for r in reference.cv_table()], atol=0.01
    )
    scores, expected = newton.decision_function(f["X"][~dev]), reference.decision_function(f["X"][~dev])
    assert np.corrcoef(scores.ravel(), expected.ravel())[0, 1] > 0.9999
    assert np.mean(newton.predict(f["X"][~dev]) == reference.predict(f["X"][~dev])) >= 0.98
    assert newton.pipeline_.named_steps["svc"].coef_.shape == (len(newton.classes_), X.shape[1])


def test_out_of_fold_scores_reuse_the_search_models(esc50_features):  # noqa: F811
    f = esc50_features
    dev = f["partitions"] == "dev"
    X, y, folds = f["X"][dev], f["y"][dev], f["folds"][dev]
    model = LinearSVM(c_grid=[1e-3, 1e-1]).fit(X, y, folds=folds)
    reused, fold_C = out_of_fold_decisions(model, X, y, folds)
    model.cv_decisions_ = None  # refit each fold by hand: the same models up to the solver's tolerance
    refitted, _ = out_of_fold_decisions(model, X, y, folds)
    assert set(fold_C.values()) == {model.best_C_}
    assert np.allclose(reused, refitted, atol=1e-5 * np.abs(refitted).max())
    # other data (another labelling) must not reuse them
    other, _ = out_of_fold_decisions(LinearSVM(c_grid=[1e-3, 1e-1]).fit(X, y, folds=folds), X, np.roll(y, 1), folds)
    assert not np.allclose(other, reused)


def test_parallel_folds_and_progress_give_the_same_result(esc50_features):  # noqa: F811
    f = esc50_features
    serial = svm_fold_protocol(
        f["X"], f["y"], f["folds"], f["partitions"], names=f["names"], estimator=LinearSVM(c_grid=[1e-2, 1.0])
    )
    parallel = svm_fold_protocol(
        f["X"],
        f["y"],
        f["folds"],
        f["partitions"],
        names=f["names"],
        estimator=LinearSVM(c_grid=[1e-2, 1.0], n_jobs=2),
        progress=True,
    )
    assert parallel.best_C == serial.best_C
    assert np.allclose(parallel.predictions.scores, serial.predictions.scores)


def test_solver_and_thread_options_are_checked():
    with pytest.raises(ConfigError, match="solver"):
        LinearSVM(solver="sag").fit(np.eye(4), ["a", "b", "a", "b"])
    with pytest.raises(ConfigError, match="only one class"):
        svm_solver._trained_problem(LinearSVM(), np.zeros(5, dtype=int))
    assert resolve_threads(3) == 3 and resolve_threads(-1) == resolve_threads(None) >= 1
    with pytest.raises(ConfigError):
        resolve_threads(0)
    from threadpoolctl import threadpool_info

    with limit_threads(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())


class InProcessFits:
    """A fit backend that runs every call here, in order, and records what it was asked."""

    def __init__(self):
        self.calls: list[str] = []
        self.joblib_blocks = 0

    def map(self, func, shared, calls, *, on_done=None):
        results = []
        for i, args in enumerate(calls):
            results.append(func(*shared, *args))
            self.calls.append(func.__name__)
            if on_done is not None:
                on_done(i)
        return results

    @contextlib.contextmanager
    def parallel_config(self):
        self.joblib_blocks += 1
        yield


def generated_task(seed: int = 0, n_dev: int = 96, n_test: int = 24, dim: int = 12, n_classes: int = 3):
    """Gaussian classes, 4 development folds and a test partition."""
    rng = np.random.default_rng(seed)
    n = n_dev + n_test
    codes = rng.integers(0, n_classes, n)
    X = rng.normal(size=(n, dim)) + 0.5 * codes[:, None] * rng.normal(size=dim)
    folds = np.where(np.arange(n) < n_dev, np.arange(n) % 4 + 1, 0)
    partitions = np.where(folds > 0, "dev", "test")
    labels = np.array([f"class{c}" for c in codes], dtype=object)
    return (X, labels, folds, partitions), [f"item{i}" for i in range(n)]


@pytest.mark.parametrize("c_selection, n_calls", [("global", 4 + 1), ("nested", 4 + 1 + 4 * (3 + 1))])
def test_a_fit_backend_runs_every_newton_fit_and_changes_no_number(c_selection, n_calls):
    task, names = generated_task()
    estimator = LinearSVM(c_grid=[1e-3, 1e-2, 1e-1, 1.0])
    here = svm_fold_protocol(*task, names=names, estimator=estimator, c_selection=c_selection)
    backend, fits = InProcessFits(), []
    there = svm_fold_protocol(*task, names=names, estimator=estimator, c_selection=c_selection, backend=backend,
                              progress=fits.append)  # fmt: skip
    # one call per split of every search (the whole C path) and one per refit, each reported once
    assert backend.calls.count("_split") + backend.calls.count("_refit_model") == len(backend.calls) == n_calls
    assert len(fits) == n_calls and "refit" in fits
    assert there.best_C == here.best_C and there.fold_C == here.fold_C
    assert np.array_equal(there.predictions.scores, here.predictions.scores)
    assert np.array_equal(there.model.cv_results_["mean_test_score"], here.model.cv_results_["mean_test_score"])


def test_liblinear_fits_take_the_backend_through_joblib_only():
    task, names = generated_task(seed=1)
    estimator = LinearSVM(solver="liblinear", c_grid=[1e-2, 1.0])
    here = svm_fold_protocol(*task, names=names, estimator=estimator)
    backend = InProcessFits()
    there = svm_fold_protocol(*task, names=names, estimator=estimator, backend=backend)
    assert backend.calls == [] and backend.joblib_blocks == 2  # the grid search and the out-of-fold refits
    assert np.array_equal(there.predictions.scores, here.predictions.scores)


def test_progress_is_an_explicit_callback_and_nothing_is_left_set():
    task, names = generated_task(seed=2)
    fits = []
    svm_fold_protocol(*task, names=names, estimator=LinearSVM(c_grid=[0.01], n_jobs=2), progress=fits.append)
    assert fits == ["refit"] + [f"out-of-fold fit, fold {k}" for k in (1, 2, 3, 4)]
    fits.clear()
    svm_fold_protocol(*task, names=names, estimator=LinearSVM(c_grid=[0.01, 1.0]))  # no callback: none called
    assert fits == []
    assert not [name for name, value in vars(svm_solver).items() if type(value).__name__ == "ContextVar"]


def test_fuse_hands_the_backend_to_the_meta_svm_only():
    task, names = generated_task(seed=3)
    members = [svm_fold_protocol(*task, names=names, estimator=LinearSVM(c_grid=[c])).predictions for c in (1e-3, 1.0)]
    here = fuse(members, method="stacking-svm")
    backend = InProcessFits()
    there = fuse(members, method="stacking-svm", backend=backend)
    assert backend.calls and np.array_equal(there.predictions.scores, here.predictions.scores)
    with pytest.raises(ConfigError, match="stacking-svm"):
        fuse(members, method="weighted", backend=backend)
