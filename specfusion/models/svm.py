"""Linear SVMs on feature vectors, tuned with the dataset's predefined folds (paper, section 3.3).

:class:`LinearSVM` is standardisation + a linear SVM (liblinear, one-vs-rest) whose complexity ``C``
is searched on a logarithmic grid from 1e-9 to 1 by cross-validation over the *predefined* development
folds (:class:`~sklearn.model_selection.PredefinedSplit`), keeping the ``C`` with the best macro F1
(the paper's criterion; ``metric="accuracy"`` is the alternative); the pipeline is then refitted on all
the data it was given -- the whole development partition.

The paper's protocol around it (out-of-fold development scores, test scores, multi-channel segments) is
:func:`specfusion.models.svm_protocol.svm_fold_protocol`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import GridSearchCV, PredefinedSplit, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from specfusion.errors import ConfigError
from specfusion.models import svm_solver

log = logging.getLogger(__name__)

#: The paper's search range for C.
C_MIN, C_MAX = 1e-9, 1.0
#: The most C values one search may try: ten times the paper's density (``per_decade=10`` gives 91 values).
#: Each value costs one solve per split, and the Newton search keeps every development item's decision values
#: at every C (2 x n_C x n x n_classes float64: 4.2 GB at 100 values for DCASE 2018's 291,936 channel items
#: x 9 classes), so a grid of a million values would never finish, nor fit in memory.
MAX_C_VALUES = 100
#: The largest ``per_decade`` whose grid over the paper's range (9 decades) holds at most MAX_C_VALUES values.
MAX_PER_DECADE = (MAX_C_VALUES - 1) // round(np.log10(C_MAX / C_MIN))
SELECTION_METRICS = ("macro_f1", "accuracy")
#: Solvers of LinearSVM: the exact batched primal Newton solver (default) and liblinear (the reference).
SOLVERS = ("newton", "liblinear")


def encode_labels(y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(class array, label indices): ``classes`` in the given order, or the sorted labels.

    Numeric labels keep their dtype, as scikit-learn's ``classes_ = np.unique(y)`` (integer labels give an
    integer class array); any other labels give an object array (of str where ``classes`` is given).
    Shared by the CRNN and the fusion estimators; ConfigError for a label that is not one of ``classes``.
    """
    y = np.asarray(y)
    if y.dtype.kind in "biuf":
        classes_ = np.unique(y) if classes is None else np.asarray(list(classes))
        lookup = {c: i for i, c in enumerate(classes_.tolist())}
        unknown = [v for v in np.unique(y).tolist() if v not in lookup]
        if unknown:
            raise ConfigError(f"label {unknown[0]!r} is not one of the classes")
        return classes_, np.array([lookup[v] for v in y.tolist()], dtype=np.int64)
    y = y.astype(object)
    if classes is not None:
        classes_ = np.asarray([str(c) for c in classes], dtype=object)
    else:
        classes_ = np.asarray(sorted(set(y.tolist())), dtype=object)
    lookup = {c: i for i, c in enumerate(classes_)}
    unknown = [v for v in set(y.tolist()) if v not in lookup]
    if unknown:
        raise ConfigError(f"label {unknown[0]!r} is not one of the classes")
    return classes_, np.array([lookup[v] for v in y], dtype=np.int64)


class ParameterError(ConfigError, InvalidParameterError):
    """An invalid estimator parameter: a :class:`ConfigError` (the CLI reports it in one line) that is
    also scikit-learn's ``InvalidParameterError`` (a ``ValueError`` and ``TypeError``)."""


def log_c_grid(*, c_min: float = C_MIN, c_max: float = C_MAX, per_decade: int = 1) -> np.ndarray:
    """Logarithmic grid of C values from ``c_min`` to ``c_max`` with ``per_decade`` values per decade.

    >>> log_c_grid()
    array([1.e-09, 1.e-08, 1.e-07, 1.e-06, 1.e-05, 1.e-04, 1.e-03, 1.e-02, 1.e-01, 1.e+00])
    """
    if not (0 < c_min <= c_max and np.isfinite(c_max)):
        raise ConfigError(f"C range must satisfy 0 < c_min <= c_max < inf, got {c_min} and {c_max}")
    if per_decade < 1:
        raise ConfigError(f"per_decade must be at least 1, got {per_decade}")
    decades = np.log10(c_max) - np.log10(c_min)
    n = int(round(decades * per_decade)) + 1
    if n > MAX_C_VALUES:
        raise ConfigError(f"per_decade={per_decade} makes {n} C values; at most {MAX_C_VALUES} (MAX_C_VALUES)")
    return np.logspace(np.log10(c_min), np.log10(c_max), n)


def checked_c_grid(values) -> np.ndarray:
    """``values`` as a sorted float array of 1 to :data:`MAX_C_VALUES` finite C values > 0.

    Raises
    ------
    ParameterError
        Naming ``c_grid``, with the count or the first invalid value (never the whole grid).
    """
    values = np.asarray(values, dtype=object).ravel()
    check_c_grid_size(values.size)
    for value in values:
        if not _finite_positive(value):
            raise ParameterError(f"'c_grid' must hold finite C values > 0, got {value!r}")
    return np.sort(values.astype(float))


def check_c_grid_size(n_values: int) -> None:
    """:class:`ParameterError` unless a ``c_grid`` of ``n_values`` values holds 1 to :data:`MAX_C_VALUES`."""
    if n_values == 0:
        raise ParameterError("'c_grid' holds no values; give at least one C value > 0")
    if n_values > MAX_C_VALUES:
        raise ParameterError(
            f"'c_grid' holds {n_values} values; at most {MAX_C_VALUES} (each C value is one fit per split, "
            "and the search keeps every item's decision values at every C)"
        )


def _finite_positive(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(value)) and value > 0


def _as_array(values) -> np.ndarray | None:
    return None if values is None else np.asarray(values)


def _hit_max_iter(pipeline, X, y) -> float:
    """GridSearchCV scorer: 1.0 when the fitted LinearSVC stopped at its iteration limit, else 0.0."""
    svc = pipeline[-1]
    return float(np.max(svc.n_iter_) >= svc.max_iter)


def selection_scorer(metric: str, n_classes: int):
    """Scorer for the C search on integer-encoded labels: macro F1 over *all* classes, or accuracy."""
    if metric == "macro_f1":
        return make_scorer(f1_score, average="macro", labels=np.arange(n_classes), zero_division=0)
    if metric == "accuracy":
        return "accuracy"
    raise ConfigError(f"unknown selection metric {metric!r}; choose one of: {', '.join(SELECTION_METRICS)}")


class LinearSVM(ClassifierMixin, BaseEstimator):
    """Standardisation + linear SVM (liblinear's objective), C chosen by cross-validation on predefined folds.

    Parameters
    ----------
    solver : {"newton", "liblinear"}
        "newton" (default): :mod:`specfusion.models.svm_solver`, which minimises liblinear's objective exactly
        (to a gradient norm of 1e-7 of its start) for all classes at once and along the C grid with warm
        starts; the whole protocol took 12.5 CPU seconds on 1600 DenseNet121 feature vectors where
        liblinear took 826, same C (docs/performance.md). "liblinear": scikit-learn's
        ``LinearSVC`` in a ``GridSearchCV``, the reference; ``rowspace``, ``max_iter``, ``tol``, ``dual``
        and ``random_state`` apply to it only.
    c_grid : sequence of float, optional
        Candidate C values: 1 to :data:`MAX_C_VALUES` (100) finite values > 0. Default: :func:`log_c_grid`
        from 1e-9 to 1 with ``per_decade`` values per decade (the paper's range). A single value skips the
        search.
    per_decade : int
        Grid density when ``c_grid`` is None (1: 1e-9, 1e-8, ..., 1), at most :data:`MAX_PER_DECADE` (11:
        100 values).
    metric : {"macro_f1", "accuracy"}
        Criterion of the C search (the paper: macro F1; over all classes, a class missing from a
        validation fold counting as F1 0 as in DCASE 2018 task 5).
    classes : sequence of str, optional
        Class order of :attr:`classes_` and of the decision-value columns (default: sorted labels).
        Classes without training items get a decision value below every other class.
    standardize : bool
        Standardise features (zero mean, unit variance, fitted on the training data) before the SVM.
    rowspace : {"auto", True, False}
        Train the SVM on the items' coordinates in the span of the standardised training items (a
        :class:`~sklearn.decomposition.PCA` keeping every component) instead of on the raw features.
        A linear SVM's weight vector lies in that span and the items' dot products are unchanged, so
        liblinear runs the very same iterations and gives the same decision values, but each pass costs
        n instead of d per item (2.4x faster over C = 1e-4, 1e-2, 1 on 4096-d VGG16 features of 1200
        items, docs/classifiers.md). "auto": when features outnumber items and ``standardize`` is on
        (the PCA centres its input, which changes nothing only for standardised data).
    max_iter : int
        liblinear iteration limit. Non-converged fits are counted and logged, not raised.
    tol : float
        liblinear tolerance.
    dual : bool or "auto"
        liblinear formulation ("auto": dual when features outnumber items). The default, the dual with
        at most 1000 iterations (scikit-learn's ``LinearSVC`` defaults up to 1.4), is 2.7x faster over
        the paper's C grid than "auto" on 1024-d CNN features of 1200 items, where "auto" picks the
        primal whose fits at C >= 0.1 take minutes (docs/classifiers.md).
    class_weight : dict, "balanced" or None
    cv : int
        Number of stratified folds when :meth:`fit` gets no ``folds`` (not the paper's protocol).
    n_jobs : int, optional
        "liblinear": parallel grid-search processes. "newton": threads (-1: every core); the folds run
        in parallel, each with one BLAS thread, and the refit with one BLAS thread; None: one fold at a
        time, BLAS threads left as they are. Where else the fits may run is :meth:`fit`'s ``backend``
        (not a parameter: it changes where, never what, is computed, and is no part of the model).
    random_state : int
        Seed of liblinear's coordinate order (dual solver).

    Attributes
    ----------
    classes_ : ndarray
        The class labels, sorted (or in ``classes`` order), of the training labels' own dtype (strings,
        integers ...), so :meth:`predict` returns labels comparable with ``y``.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    n_iter_ : int
        liblinear iterations of the final fit (the maximum over its one-vs-rest problems).
    best_C_ : float
    best_score_ : float or None
        Mean CV score (fraction) of ``best_C_``; None when no search ran.
    cv_results_ : dict or None
        ``GridSearchCV.cv_results_`` of the search, or the same keys from the Newton search (None when
        no search ran).
    pipeline_ : sklearn.pipeline.Pipeline
        The pipeline refitted on all training data with ``best_C_`` ("newton": one fitted ``LinearSVC``
        step whose ``coef_`` / ``intercept_`` include the standardisation).
    n_not_converged_ : int
        Fits during :meth:`fit` that hit ``max_iter`` (problems, for "newton").
    cv_decisions_ : tuple or None
        "newton" search only: (digest of the data, out-of-fold decision values at ``best_C_`` from the
        search's fold models), which :func:`out_of_fold_decisions` reuses for the same data and folds.

    Examples
    --------
    >>> svm = LinearSVM(per_decade=1).fit(X_dev, y_dev, folds=folds_dev)   # doctest: +SKIP
    >>> svm.best_C_, svm.decision_function(X_test).shape                    # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        c_grid: Sequence[float] | None = None,
        per_decade: int = 1,
        metric: str = "macro_f1",
        classes: Sequence[str] | None = None,
        standardize: bool = True,
        rowspace="auto",
        max_iter: int = 1000,
        tol: float = 1e-4,
        dual=True,
        class_weight=None,
        cv: int = 4,
        n_jobs: int | None = None,
        random_state: int = 0,
        solver: str = "newton",
    ):
        self.c_grid = c_grid
        self.per_decade = per_decade
        self.metric = metric
        self.classes = classes
        self.standardize = standardize
        self.rowspace = rowspace
        self.max_iter = max_iter
        self.tol = tol
        self.dual = dual
        self.class_weight = class_weight
        self.cv = cv
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.solver = solver

    #: scikit-learn's parameter validation, checked at the start of :meth:`fit`.
    _parameter_constraints: dict = {
        "c_grid": ["array-like", None],
        "per_decade": [Interval(Integral, 1, MAX_PER_DECADE, closed="both")],
        "metric": [StrOptions(set(SELECTION_METRICS))],
        "classes": ["array-like", None],
        "standardize": ["boolean"],
        "rowspace": [StrOptions({"auto"}), "boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "dual": ["boolean", StrOptions({"auto"})],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "n_jobs": [Interval(Integral, None, -1, closed="right"), Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "solver": [StrOptions(set(SOLVERS))],
    }

    # -- input validation --------------------------------------------------------------------------
    def check_params(self) -> LinearSVM:
        """Check the parameters without fitting (:meth:`fit` does it first); returns ``self``, unchanged.

        The parameters against :attr:`_parameter_constraints`, then the C values (:func:`checked_c_grid`).
        Recipes are checked with it before any work starts.

        Raises
        ------
        ParameterError
            One line naming the parameter.
        """
        try:
            self._validate_params()
        except InvalidParameterError as err:
            raise ParameterError(str(err)) from None
        if self.c_grid is not None:
            checked_c_grid(self.c_grid)
        return self

    def _check_fit_data(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """``(X as float64 2-D, y as 1-D)`` via scikit-learn's checks; :class:`ConfigError` (a ValueError)."""
        try:
            X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
            check_classification_targets(y)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        return X, y

    def _check_predict_data(self, X) -> np.ndarray:
        try:
            return validate_data(self, X, dtype=np.float64, reset=False)
        except ValueError as err:
            raise ConfigError(str(err)) from err

    # -- building blocks ---------------------------------------------------------------------------
    def grid(self) -> np.ndarray:
        """The C values searched."""
        if self.c_grid is None:
            return log_c_grid(per_decade=self.per_decade)
        return checked_c_grid(self.c_grid)

    def uses_rowspace(self, n_items: int, n_features: int) -> bool:
        """Whether a fit on ``n_items`` x ``n_features`` data projects onto the items' span."""
        if self.rowspace not in ("auto", True, False):
            raise ConfigError(f"rowspace must be 'auto', True or False, got {self.rowspace!r}")
        if self.rowspace == "auto":
            return self.standardize and n_features > n_items
        return bool(self.rowspace)

    def make_pipeline(self, C: float = 1.0, *, rowspace: bool = False) -> Pipeline:
        """The unfitted pipeline (scaler, row-space PCA if ``rowspace``, LinearSVC) with complexity ``C``."""
        steps = [("scaler", StandardScaler())] if self.standardize else []
        if rowspace:
            steps.append(("rowspace", PCA(svd_solver="full")))
        svc = LinearSVC(
            C=C,
            dual=self.dual,
            max_iter=self.max_iter,
            tol=self.tol,
            class_weight=self.class_weight,
            random_state=self.random_state,
        )
        return Pipeline(steps + [("svc", svc)])

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Set :attr:`classes_` (the labels' own dtype: ``classes`` in order, else the sorted labels); codes."""
        if self.classes is None:
            self.classes_, codes = np.unique(y, return_inverse=True)
        else:
            self.classes_ = np.asarray(list(self.classes))
            lookup = {c: i for i, c in enumerate(self.classes_.tolist())}
            unknown = [v for v in np.unique(y).tolist() if v not in lookup]
            if unknown:
                raise ConfigError(f"label {unknown[0]!r} is not one of the classes")
            codes = np.array([lookup[v] for v in y.tolist()], dtype=np.int64)
        if len(self.classes_) < 2:
            raise ConfigError(f"a classifier needs at least two classes, got 1 class: {self.classes_[0]!r}")
        return np.asarray(codes, dtype=np.int64).ravel()

    # -- estimator API -----------------------------------------------------------------------------
    def fit(self, X, y, folds=None, *, backend: svm_solver.FitBackend | None = None,
            progress: svm_solver.Progress | None = None):  # fmt: skip
        """Choose C by cross-validation, then refit on all of ``X``.

        Parameters
        ----------
        X : array-like, shape (n, dim)
            Features of the development items (never test items).
        y : array-like, shape (n,)
            Their labels (strings or integers; at least two classes).
        folds : array-like of int, shape (n,), optional
            Predefined fold of every item (the dataset's development folds, e.g. 1..4); each fold is
            held out once. Without it, ``cv`` stratified folds are made (not the paper's protocol).
        backend : FitBackend, optional
            Where the independent fits run (:class:`~specfusion.models.svm_solver.FitBackend`, e.g.
            :class:`specfusion.distributed.svm.DaskFits`): "newton": one call per split of the C search
            and one for the refit; "liblinear": the grid search's joblib work, under
            ``backend.parallel_config()``. None: in this process (``n_jobs``). The fits, hence the
            results, are the same.
        progress : callable, optional
            ``progress(description)`` after each fit of the Newton search and its refit ("newton" only).

        Returns
        -------
        self

        Raises
        ------
        ParameterError
            An invalid parameter (a :class:`ConfigError` and scikit-learn's ``InvalidParameterError``).
        ConfigError
            Invalid data: not 2-D, empty, NaN/inf, labels continuous or of another length, one class
            (a ``ValueError``, as scikit-learn's estimators raise).
        """
        self.check_params()
        X, y = self._check_fit_data(X, y)
        codes = self._encode(y)
        grid = self.grid()
        self.n_not_converged_ = 0
        self.cv_results_, self.best_score_, self.cv_decisions_ = None, None, None
        if grid.size == 1:
            self.best_C_ = float(grid[0])
        elif self.solver == "newton":
            self._newton_search(X, codes, grid, _as_array(folds), backend=backend, progress=progress)
        else:
            self._liblinear_search(X, codes, grid, _as_array(folds), backend=backend)
        self.pipeline_ = self._fit_pipeline(X, codes, self.best_C_, backend=backend, progress=progress)
        if self.n_not_converged_:
            log.info(
                "%d liblinear fit(s) stopped at max_iter=%d before converging", self.n_not_converged_, self.max_iter
            )
        self.n_iter_ = int(np.max(self.pipeline_[-1].n_iter_))
        return self

    def _splitter(self, n_items: int, folds):
        """The C search's splits: the predefined ``folds``, else ``cv`` stratified folds."""
        if folds is None:
            return StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state)
        if len(folds) != n_items:
            raise ConfigError(f"{n_items} feature rows but {len(folds)} fold numbers")
        if len(np.unique(folds)) < 2:
            raise ConfigError(f"the C search needs at least two folds, got {sorted(set(folds.tolist()))}")
        return PredefinedSplit(folds)

    def _newton_search(self, X, codes, grid, folds, *, backend, progress) -> None:
        """The C search by :func:`~specfusion.models.svm_solver.newton_search`; keeps its out-of-fold decisions."""
        splitter = self._splitter(len(X), folds)
        results = svm_solver.newton_search(self, X, codes, grid, splitter, backend=backend, progress=progress)
        self.n_not_converged_ += results.pop("n_not_converged")
        oof = results.pop("oof_decisions")
        best = self._choose(results)
        # the search's fold models at the chosen C give the out-of-fold scores (out_of_fold_decisions)
        self.cv_decisions_ = (svm_solver.fingerprint(X, codes, folds), oof[best])

    def _liblinear_search(self, X, codes, grid, folds, *, backend) -> None:
        """The C search by ``GridSearchCV`` over liblinear fits, its joblib work on ``backend`` when given."""
        splitter = self._splitter(len(X), folds)
        search = GridSearchCV(
            self.make_pipeline(rowspace=self.uses_rowspace(*X.shape)),
            {"svc__C": list(grid)},
            scoring={"score": selection_scorer(self.metric, len(self.classes_)), "not_converged": _hit_max_iter},
            cv=splitter, refit=False, n_jobs=self.n_jobs, error_score="raise",
        )  # fmt: skip
        # Non-convergence is counted by the "not_converged" scorer, which also works in joblib
        # workers, where the parent cannot record warnings; the warnings themselves are silenced.
        with warnings.catch_warnings(), svm_solver.joblib_backend(backend):
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, codes)
        results = search.cv_results_
        self.n_not_converged_ += int(
            round(sum(results[f"split{k}_test_not_converged"].sum() for k in range(search.n_splits_)))
        )
        self._choose(results)

    def _choose(self, results: dict) -> int:
        """Keep the search's ``results`` and its best C (the smallest among ties); the best row's index."""
        self.cv_results_ = results
        # Ties share a rank; the grid is sorted, so argmin takes the smallest C among the best.
        best = int(np.argmin(results["rank_test_score"]))
        self.best_C_ = float(results["param_svc__C"][best])
        self.best_score_ = float(results["mean_test_score"][best])
        log.info("C search (%s): best C = %g, CV score %.4f", self.metric, self.best_C_, self.best_score_)
        return best

    def _fit_pipeline(self, X, codes, C, *, backend, progress) -> Pipeline:
        if self.solver == "newton":
            pipeline, not_converged = svm_solver.newton_refit(self, X, codes, C, backend=backend, progress=progress)
            self.n_not_converged_ = getattr(self, "n_not_converged_", 0) + not_converged
            return pipeline
        pipeline = self.make_pipeline(C, rowspace=self.uses_rowspace(*X.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(X, codes)
        self.n_not_converged_ = getattr(self, "n_not_converged_", 0) + int(_hit_max_iter(pipeline, X, codes))
        return pipeline

    def decision_function(self, X) -> np.ndarray:
        """Decision values, shape (n, n_classes), columns in :attr:`classes_` order (also for 2 classes)."""
        check_is_fitted(self, "pipeline_")
        X = self._check_predict_data(X)
        raw = self.pipeline_.decision_function(X)
        return svm_solver.class_decisions(raw, self.pipeline_[-1].classes_, len(self.classes_))

    def predict(self, X) -> np.ndarray:
        """Predicted labels, of the training labels' dtype."""
        check_is_fitted(self, "pipeline_")
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def cv_table(self) -> list[dict]:
        """The C search as rows ``{"C", "mean_score", "std_score", "rank"}`` (empty without a search)."""
        if self.cv_results_ is None:
            return []
        r = self.cv_results_
        return [
            {"C": float(c), "mean_score": float(m), "std_score": float(s), "rank": int(k)}
            for c, m, s, k in zip(r["param_svc__C"], r["mean_test_score"], r["std_test_score"], r["rank_test_score"])
        ]
