"""Decision-level fusion of base systems' predictions (Amiriparian et al. 2020, section 3.4, and beyond).

The members' per-class scores -- CRNN probabilities and SVM decision values, read from their
predictions files -- are combined by one of :data:`FUSION_METHODS`:

``"stacking-svm"``
    The paper's stacking: the score columns are concatenated into meta-features and a meta linear SVM
    (standardisation, C on the 1e-9...1 log grid chosen by the predefined development folds) is trained
    on them.
``"calibrated-mean"``
    Each member's scores become calibrated class probabilities by temperature scaling (one inverse
    temperature per member, fitted by log loss on development items), then the probabilities are
    averaged.
``"weighted"``
    A weighted log-linear pool of the calibrated members, ``softmax(sum_m w_m log p_m)``, its weights
    ``w_m >= 0`` learned on development items by greedy ensemble selection with replacement (Caruana
    et al. 2004), starting from the best member; a member that does not help gets weight 0
    (``search="logloss"``: weights minimising the log loss instead).
``"stacking-logreg"``
    A multinomial logistic-regression meta-learner on the members' calibrated log-probabilities, its
    regularisation chosen by CV over the predefined development folds.
``"auto"``
    Picks one of the four above by cross-validation over the development folds it is given (nested
    inside the outer folds, so its choice for fold k never saw fold k).

No test information reaches any choice, and the development numbers are honest: :func:`fuse` fits
every learned part of a fusion (temperatures, weights, meta-model and its regularisation, the method
of ``"auto"``) on the development folds other than k to score fold k's items (out-of-fold at the
fusion's own level), and on all development items to score the test items. The development rows of
the input are the base systems' out-of-fold scores; test rows are only ever scored.

:func:`stack` is the paper's protocol kept exactly as it was: its out-of-fold meta-scores use the C
chosen by the CV over all development folds (as the paper's Devel numbers do).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import PredefinedSplit, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.predictions import Predictions
from specfusion.models.svm import LinearSVM, encode_labels, selection_scorer
from specfusion.models.svm_protocol import FoldResult, svm_fold_protocol

log = logging.getLogger(__name__)

#: Valid values of a fusion's ``method`` (recipe key ``method`` in ``[[fusions]]``).
FUSION_METHODS = ("stacking-svm", "calibrated-mean", "weighted", "stacking-logreg", "auto")
#: Default candidates of ``"auto"``.
AUTO_CANDIDATES = ("calibrated-mean", "weighted", "stacking-logreg", "stacking-svm")
#: Regularisation grid of ``"stacking-logreg"`` (inverse strength C of the L2 penalty).
LOGREG_C_GRID = (1e-2, 1e-1, 1.0)
#: Probabilities are clipped here before their logarithm is taken.
PROBA_FLOOR = 1e-12


# -- inputs ------------------------------------------------------------------------------------------
def align_systems(systems: Sequence[Predictions], *, system_names: Sequence[str] | None = None) -> list[Predictions]:
    """The predictions of every system in the item order of the first, after checking they agree.

    Every system must cover the same items with the same folds, partitions, true labels and classes;
    otherwise a :class:`StoreError` names the first disagreeing system and item.
    """
    if not systems:
        raise ConfigError("fusion needs at least one system")
    names = system_names or [f"system {i + 1}" for i in range(len(systems))]
    reference = systems[0]
    aligned = [reference]
    for name, other in zip(names[1:], systems[1:]):
        if list(other.classes) != list(reference.classes):
            raise StoreError(
                f"{name}: classes differ from {names[0]}'s ({other.classes[:3]}... vs {reference.classes[:3]}...)"
            )
        if len(other) != len(reference):
            raise StoreError(f"{name}: {len(other)} items, {names[0]} has {len(reference)}")
        other = other.align(reference.names)
        for field in ("folds", "partitions", "labels"):
            differ = np.flatnonzero(np.asarray(getattr(other, field)) != np.asarray(getattr(reference, field)))
            if differ.size:
                i = differ[0]
                raise StoreError(
                    f"{name}: item {reference.names[i]!r} has {field[:-1]} {getattr(other, field)[i]!r}, {names[0]} has {getattr(reference, field)[i]!r}"
                )
        aligned.append(other)
    return aligned


def meta_features(systems: Sequence[Predictions]) -> np.ndarray:
    """Concatenate the systems' score columns: shape (n_items, sum of their class counts)."""
    return np.hstack([np.asarray(p.scores, dtype=np.float64) for p in systems])


def member_logits(X, kinds: Sequence[str]) -> np.ndarray:
    """The members' scores as logits, shape (n_members, n_items, n_classes).

    ``X`` holds the members' score columns side by side (:func:`meta_features`); decision values are
    used as they are, probabilities (kind ``"proba"``) by their logarithm (clipped at 1e-12).
    """
    X = np.asarray(X, dtype=np.float64)
    n_members = len(kinds)
    if n_members < 1 or X.ndim != 2 or X.shape[1] % n_members:
        raise ConfigError(
            f"{X.shape[1] if X.ndim == 2 else X.shape} score columns cannot be split among {n_members} member(s)"
        )
    blocks = np.stack(np.split(X, n_members, axis=1))
    for m, kind in enumerate(kinds):
        if kind == "proba":
            blocks[m] = np.log(np.clip(blocks[m], PROBA_FLOOR, None))
    return blocks


# -- calibration -------------------------------------------------------------------------------------
def fit_temperature(logits, codes) -> float:
    """Inverse temperature ``beta`` minimising the mean log loss of ``softmax(beta * logits)``.

    Temperature scaling (Guo et al. 2017): a bounded scalar search (``scipy.optimize.minimize_scalar``)
    over ``log beta``. The logits are first divided by their standard deviation (a label-free scale),
    so that SVM decision values of any magnitude fall in the search range; the returned ``beta``
    applies to the raw logits. ``beta > 0``, so every calibrated probability increases with its score
    and no member's predictions change.
    """
    logits = np.asarray(logits, dtype=np.float64)
    codes = np.asarray(codes)
    scale = float(np.std(logits)) or 1.0
    z = logits / scale
    rows = np.arange(len(z))

    def loss(log_beta: float) -> float:
        return -float(np.mean(log_softmax(np.exp(log_beta) * z, axis=1)[rows, codes]))

    result = minimize_scalar(loss, bounds=(-10.0, 10.0), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x)) / scale


class _MemberFusion(ClassifierMixin, BaseEstimator):
    """Common part of the calibrated fusions: label encoding and per-member temperature scaling.

    ``fit(X, y, folds=None)`` takes the members' score columns side by side (:func:`meta_features`);
    :meth:`decision_function` returns the fusion's log-probabilities, :meth:`predict_proba` their
    exponential.
    """

    def _setup(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        self.classes_, codes = encode_labels(y, self.classes)
        Z = member_logits(X, self.kinds)
        if Z.shape[2] != len(self.classes_):
            raise ConfigError(f"{Z.shape[2]} score columns per member but {len(self.classes_)} classes")
        missing = sorted(set(range(len(self.classes_))) - set(codes.tolist()))
        if missing:
            raise ConfigError(f"class {self.classes_[missing[0]]!r} has no development item to calibrate on")
        self.temperatures_ = np.array([fit_temperature(z, codes) for z in Z])
        self.n_features_in_ = X.shape[1] if hasattr(X, "shape") else np.asarray(X).shape[1]
        return self._calibrated(Z), codes

    def _calibrated(self, Z) -> np.ndarray:
        """Calibrated log-probabilities of every member, shape (n_members, n, n_classes)."""
        return log_softmax(self.temperatures_[:, None, None] * Z, axis=2)

    def calibrated_log_proba(self, X) -> np.ndarray:
        """The members' calibrated log-probabilities, shape (n_members, n, n_classes)."""
        return self._calibrated(member_logits(X, self.kinds))

    def predict_proba(self, X) -> np.ndarray:
        return np.exp(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]


class CalibratedMean(_MemberFusion):
    """Mean of the members' temperature-scaled class probabilities.

    Parameters
    ----------
    kinds : sequence of {"decision", "proba"}
        Kind of every member's scores, in column order.
    classes : sequence of str, optional
        Class order (default: sorted labels).
    """

    def __init__(self, kinds: Sequence[str] = ("decision",), classes: Sequence[str] | None = None):
        self.kinds = kinds
        self.classes = classes

    def fit(self, X, y, folds=None):
        self._setup(X, y)
        self.weights_ = np.full(len(self.kinds), 1.0 / len(self.kinds))
        return self

    def decision_function(self, X) -> np.ndarray:
        return np.log(np.mean(np.exp(self.calibrated_log_proba(X)), axis=0))


def _selection_score(metric: str, codes, pooled) -> float:
    """``metric`` of the arg-max of ``pooled`` log-probabilities against ``codes`` (fraction)."""
    predicted = np.argmax(pooled, axis=1)
    if metric == "macro_f1":
        return float(f1_score(codes, predicted, average="macro", labels=np.arange(pooled.shape[1]), zero_division=0))
    return float(np.mean(predicted == codes))


def greedy_selection(L, codes, *, metric: str = "accuracy", n_steps: int = 25) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004) over calibrated members.

    The pool of a bag of members is the mean of their calibrated log-probabilities (a normalised
    log-linear pool). The bag starts with the best single member; each step adds (with replacement) the
    member that makes the best pool, judged by ``metric`` and then by log likelihood; the best bag seen
    in ``n_steps`` steps wins. Returns every member's share of that bag (members never picked: 0).
    """
    L = np.asarray(L, dtype=np.float64)
    n_members = len(L)
    rows = np.arange(L.shape[1])
    eye = np.eye(n_members)

    def criterion(counts) -> tuple[float, float]:
        pooled = log_softmax(np.tensordot(counts / counts.sum(), L, axes=1), axis=1)
        return _selection_score(metric, codes, pooled), float(np.mean(pooled[rows, codes]))

    counts = eye[max(range(n_members), key=lambda m: criterion(eye[m]))]
    best, best_counts = criterion(counts), counts.copy()
    for _ in range(n_steps if n_members > 1 else 0):
        score, m = max((criterion(counts + eye[m]), m) for m in range(n_members))
        counts = counts + eye[m]
        if score > best:
            best, best_counts = score, counts.copy()
    return best_counts / best_counts.sum()


def _pool_loss(w, L, onehot, l2):
    """Mean log loss of ``log_softmax(sum_m w_m L_m)`` + ``l2/2 |w|^2``, and its gradient."""
    pooled = log_softmax(np.tensordot(w, L, axes=1), axis=1)
    loss = -np.mean(np.sum(onehot * pooled, axis=1)) + 0.5 * l2 * w @ w
    residual = np.exp(pooled) - onehot
    grad = np.einsum("mnk,nk->m", L, residual) / L.shape[1] + l2 * w
    return loss, grad


class WeightedFusion(_MemberFusion):
    """Weighted log-linear pool of the calibrated members: ``log_softmax(sum_m w_m log p_m)``, ``w_m >= 0``.

    ``search="greedy"`` (default): the weights are the shares of an ensemble selection with replacement
    (:func:`greedy_selection`, Caruana et al. 2004) by ``metric`` on the training items, starting from the
    best single member; a member never picked gets weight 0. ``search="logloss"``: the weights minimise
    the mean log loss plus ``l2 / 2 * |w|^2`` (L-BFGS-B with bounds; their sum then also acts as a common
    inverse temperature). With one member the weight is 1 and the output is that member's calibrated
    log-probabilities.

    Parameters
    ----------
    kinds, classes
        As for :class:`CalibratedMean`.
    search : {"greedy", "logloss"}
    metric : {"macro_f1", "accuracy"}
        Criterion of the greedy selection.
    n_steps : int
        Steps of the greedy selection.
    l2 : float
        Penalty on the weights of ``search="logloss"``.

    Attributes
    ----------
    coef_ : ndarray, shape (n_members,)
        The fitted weights.
    weights_ : ndarray, shape (n_members,)
        ``coef_`` normalised to sum 1 (each member's share).
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("decision",),
        classes: Sequence[str] | None = None,
        search: str = "greedy",
        metric: str = "macro_f1",
        n_steps: int = 25,
        l2: float = 1e-3,
    ):
        self.kinds = kinds
        self.classes = classes
        self.search = search
        self.metric = metric
        self.n_steps = n_steps
        self.l2 = l2

    def fit(self, X, y, folds=None):
        if self.search not in ("greedy", "logloss"):
            raise ConfigError(f"search must be 'greedy' or 'logloss', got {self.search!r}")
        L, codes = self._setup(X, y)
        if len(L) == 1:
            self.coef_ = np.ones(1)
        elif self.search == "greedy":
            self.coef_ = greedy_selection(L, codes, metric=self.metric, n_steps=self.n_steps)
        else:
            onehot = np.eye(L.shape[2])[codes]
            start = np.full(len(L), 1.0 / len(L))
            result = minimize(
                _pool_loss, start, args=(L, onehot, self.l2), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * len(L)
            )
            self.coef_ = np.asarray(result.x, dtype=np.float64)
            if not self.coef_.any():  # every member useless: fall back to equal weights
                self.coef_ = start
        self.weights_ = self.coef_ / self.coef_.sum()
        return self

    def decision_function(self, X) -> np.ndarray:
        return log_softmax(np.tensordot(self.coef_, self.calibrated_log_proba(X), axes=1), axis=1)


class LogRegStacking(_MemberFusion):
    """Multinomial logistic regression on the members' calibrated log-probabilities.

    The features (standardised) are the members' temperature-scaled log-probabilities side by side;
    the L2 regularisation C is chosen from ``c_grid`` by CV over the predefined ``folds`` given to
    :meth:`fit` (``LogisticRegressionCV``; 3 stratified folds of the training items when fewer than
    two folds are given, as :class:`~specfusion.models.svm.LinearSVM` does then).

    Parameters
    ----------
    kinds, classes
        As for :class:`CalibratedMean`.
    c_grid : sequence of float
    metric : {"macro_f1", "accuracy"}
        Criterion of the C search.
    max_iter, tol : int, float
        L-BFGS iteration limit and tolerance (loose: the fit's cost grows with n_members x n_classes^2
        coefficients x items, and the tolerance changes no prediction that matters).
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("decision",),
        classes: Sequence[str] | None = None,
        c_grid: Sequence[float] = LOGREG_C_GRID,
        metric: str = "macro_f1",
        max_iter: int = 100,
        tol: float = 1e-3,
    ):
        self.kinds = kinds
        self.classes = classes
        self.c_grid = c_grid
        self.metric = metric
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, X, y, folds=None):
        L, codes = self._setup(X, y)
        features = np.hstack(list(L))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if len(self.c_grid) > 1:
                cv = (
                    PredefinedSplit(np.asarray(folds))
                    if _cv_folds(folds) is not None
                    else StratifiedKFold(3, shuffle=True, random_state=0)
                )
                search = LogisticRegressionCV(
                    Cs=list(self.c_grid), cv=cv, l1_ratios=(0.0,),
                    scoring=_logistic_cv_scorer(self.metric, len(self.classes_)), max_iter=self.max_iter, tol=self.tol,
                    use_legacy_attributes=False,
                )  # fmt: skip
                self.model_ = make_pipeline(StandardScaler(), search).fit(features, codes)
                self.C_ = float(search.C_)
            else:
                self.C_ = float(self.c_grid[0])
                self.model_ = make_pipeline(
                    StandardScaler(), LogisticRegression(C=self.C_, max_iter=self.max_iter, tol=self.tol)
                ).fit(features, codes)
        return self

    def decision_function(self, X) -> np.ndarray:
        features = np.hstack(list(self.calibrated_log_proba(X)))
        return self.model_.predict_log_proba(features)


def _logistic_cv_scorer(metric: str, n_classes: int):
    """:func:`selection_scorer` for ``LogisticRegressionCV``, which (scikit-learn 1.9) rebuilds a scorer that
    takes ``labels`` with ``labels=`` its classes and fails when the scorer already has them."""
    if metric == "macro_f1":
        return make_scorer(f1_score, average="macro", zero_division=0)
    return selection_scorer(metric, n_classes)


class _CalibratedSVM(_MemberFusion):
    """The paper's meta linear SVM, its decision values turned into log-probabilities (for ``"auto"``).

    The temperature of the decision values is fitted on the training items' own decision values; it
    changes no prediction, only puts the output on the scale of the other methods'.
    """

    def __init__(
        self, kinds: Sequence[str] = ("decision",), classes: Sequence[str] | None = None, svm: LinearSVM | None = None
    ):
        self.kinds = kinds
        self.classes = classes
        self.svm = svm

    def fit(self, X, y, folds=None):
        self.classes_, codes = encode_labels(y, self.classes)
        template = self.svm if self.svm is not None else LinearSVM(metric="macro_f1")
        self.model_ = clone(template).set_params(classes=list(self.classes_)).fit(X, y, folds=_cv_folds(folds))
        self.temperature_ = fit_temperature(self.model_.decision_function(X), codes)
        return self

    def decision_function(self, X) -> np.ndarray:
        return log_softmax(self.temperature_ * self.model_.decision_function(X), axis=1)


def _cv_folds(folds):
    """``folds`` when they hold at least two folds to choose by, else None (the estimator's own CV)."""
    return folds if folds is not None and len(np.unique(folds)) >= 2 else None


def out_of_fold(estimator, X, y, folds) -> np.ndarray:
    """Scores of every item from a clone of ``estimator`` fitted on the other folds' items.

    Each clone gets the remaining items' folds too, so any choice it makes by CV (C, method) uses
    those folds only: the scores are out-of-fold at every level.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=object)
    folds = np.asarray(folds)
    out = None
    for k in np.unique(folds):
        train = folds != k
        model = clone(estimator).fit(X[train], y[train], folds=_cv_folds(folds[train]))
        scores = model.decision_function(X[folds == k])
        if out is None:
            out = np.zeros((len(X), scores.shape[1]))
        out[folds == k] = scores
    return out


class AutoFusion(_MemberFusion):
    """Chooses among fusion methods by cross-validation over the predefined folds it is given.

    For every candidate, out-of-fold scores over the given folds (:func:`out_of_fold`) are scored with
    ``metric`` as a Devel number is (:func:`specfusion.evaluation.metrics.devel_score`); the best candidate (the
    earlier in ``candidates`` on ties) is refitted on all items. With fewer than two folds the first
    candidate is taken.

    Parameters
    ----------
    kinds, classes
        As for :class:`CalibratedMean`.
    candidates : sequence of str
        Methods to choose from (any of :data:`FUSION_METHODS` but ``"auto"``).
    metric : {"macro_f1", "accuracy"}
        Criterion of the choice (and of the logistic regression's C search).
    svm : LinearSVM, optional
        Template of ``"stacking-svm"``'s meta-SVM (default: the paper's grid, macro F1).
    c_grid : sequence of float
        C grid of ``"stacking-logreg"``.

    Attributes
    ----------
    method_ : str
        The chosen method.
    scores_ : dict of str to float
        Cross-validation score of every candidate (fraction).
    estimator_ : estimator
        The chosen method refitted on all training items.
    """

    def __init__(
        self,
        kinds: Sequence[str] = ("decision",),
        classes: Sequence[str] | None = None,
        candidates: Sequence[str] = AUTO_CANDIDATES,
        metric: str = "macro_f1",
        svm: LinearSVM | None = None,
        c_grid: Sequence[float] = LOGREG_C_GRID,
    ):
        self.kinds = kinds
        self.classes = classes
        self.candidates = candidates
        self.metric = metric
        self.svm = svm
        self.c_grid = c_grid

    def fit(self, X, y, folds=None):
        from specfusion.evaluation.metrics import devel_score

        self.classes_, _ = encode_labels(y, self.classes)
        bad = [c for c in self.candidates if c not in FUSION_METHODS or c == "auto"]
        if bad or not self.candidates:
            raise ConfigError(
                f"auto fusion candidates must be among {', '.join(FUSION_METHODS[:-1])}, got {list(self.candidates)}"
            )
        y = np.asarray(y, dtype=object)
        self.scores_ = {}
        if folds is not None and len(np.unique(folds)) >= 2:
            for name in self.candidates:
                candidate = self._candidate(name)
                scores = out_of_fold(candidate, X, y, folds)
                self.scores_[name] = devel_score(
                    self.metric, y, self.classes_[np.argmax(scores, axis=1)], folds, classes=list(self.classes_)
                )
            self.method_ = max(self.candidates, key=lambda c: (self.scores_[c], -list(self.candidates).index(c)))
            log.info("auto fusion: %s -> %s", ", ".join(f"{c} {v:.4f}" for c, v in self.scores_.items()), self.method_)
        else:
            self.method_ = self.candidates[0]
        self.estimator_ = self._candidate(self.method_).fit(X, y, folds=folds)
        return self

    def _candidate(self, name: str):
        classes = list(self.classes_)
        if name == "stacking-svm":
            return _CalibratedSVM(kinds=self.kinds, classes=classes, svm=self.svm)
        options = {"c_grid": self.c_grid} if name == "stacking-logreg" else {}
        return make_estimator(name, kinds=self.kinds, classes=classes, metric=self.metric, **options)

    def decision_function(self, X) -> np.ndarray:
        return self.estimator_.decision_function(X)


def make_estimator(
    method: str, *, kinds: Sequence[str], classes: Sequence[str] | None = None, metric: str = "macro_f1", **options
):
    """The unfitted estimator of a fusion ``method`` (one of :data:`FUSION_METHODS`).

    ``"stacking-svm"`` gives :class:`~specfusion.models.svm.LinearSVM` (``options`` are its
    parameters, e.g. ``n_jobs``); the others give the classes of this module (``options`` are their
    parameters, e.g. ``l2`` of ``"weighted"``, ``c_grid`` of ``"stacking-logreg"``, ``candidates`` of
    ``"auto"``).
    """
    if method not in FUSION_METHODS:
        raise ConfigError(f"unknown fusion method {method!r}; choose one of: {', '.join(FUSION_METHODS)}")
    if method == "stacking-svm":
        return LinearSVM(**{"metric": "macro_f1", **options, "classes": None if classes is None else list(classes)})
    cls = {
        "calibrated-mean": CalibratedMean,
        "weighted": WeightedFusion,
        "stacking-logreg": LogRegStacking,
        "auto": AutoFusion,
    }[method]
    params = {"kinds": tuple(kinds), "classes": None if classes is None else list(classes), **options}
    if "metric" in cls().get_params():
        params.setdefault("metric", metric)
    return cls(**params)


def method_config(method: str, *, metric: str = "macro_f1", **options) -> dict[str, Any]:
    """The method with every effective parameter (defaults included): what a fusion's cache key needs."""
    estimator = make_estimator(method, kinds=("decision",), metric=metric, **options)
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in ("kinds", "classes", "n_jobs")}
    if isinstance(params.get("svm"), LinearSVM):
        params["svm"] = {k: v for k, v in params["svm"].get_params().items() if k not in ("classes", "n_jobs")}
    return {"method": method, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}}


# -- the protocol ------------------------------------------------------------------------------------
@dataclasses.dataclass
class FusionResult:
    """What :func:`fuse` returns.

    Attributes
    ----------
    predictions : Predictions
        Out-of-fold development scores and test scores of the fusion.
    method : str
        The method asked for.
    chosen : str
        The method that scored the test items (``"auto"``: the one it picked on all development folds).
    model : estimator
        Fitted on all development items (it scored the test items).
    weights : dict of str to float or None
        Each member's share (summing to 1) where the chosen method has weights.
    fold_choices : dict of int to str
        ``"auto"``: the method picked without each development fold (for that fold's scores).
    """

    predictions: Predictions
    method: str
    chosen: str
    model: Any
    weights: dict[str, float] | None
    fold_choices: dict[int, str]


def _weights_of(model, names) -> dict[str, float] | None:
    model = getattr(model, "estimator_", model)
    if isinstance(model, WeightedFusion):
        return {name: float(w) for name, w in zip(names, model.weights_)}
    return None


def _details(model) -> dict[str, Any]:
    """Fitted parameters worth recording: temperatures, C, auto's candidate scores."""
    out: dict[str, Any] = {}
    if isinstance(model, AutoFusion):
        out["auto_scores"] = dict(model.scores_)
        out["chosen"] = model.method_
        model = model.estimator_
    if hasattr(model, "temperatures_"):
        out["temperatures"] = [float(t) for t in model.temperatures_]
    if hasattr(model, "coef_") and isinstance(model, WeightedFusion):
        out["coef"] = [float(c) for c in model.coef_]
    for attr in ("C_", "best_C_"):
        if hasattr(model, attr):
            out["C"] = float(getattr(model, attr))
    if hasattr(model, "model_") and hasattr(model.model_, "best_C_"):
        out["C"] = float(model.model_.best_C_)
    return out


def fuse(
    systems: Sequence[Predictions],
    *,
    method: str = "stacking-svm",
    system_names: Sequence[str] | None = None,
    metric: str = "macro_f1",
    config: dict | None = None,
    backend=None,
    **options,
) -> FusionResult:
    """Fuse base systems' predictions with ``method``; honest (nested) out-of-fold development scores.

    Parameters
    ----------
    systems : sequence of Predictions
        Base systems' predictions (out-of-fold development scores + test scores), same items.
    method : str
        One of :data:`FUSION_METHODS`.
    system_names : sequence of str, optional
        Names for messages, the weights and the fusion's configuration.
    metric : {"macro_f1", "accuracy"}
        Criterion of every choice made by CV (C of the logistic regression, ``"auto"``'s method). The
        meta-SVM of ``"stacking-svm"`` chooses its C by macro F1 (the paper) unless ``options`` say
        otherwise.
    config : dict, optional
        Extra configuration to record.
    backend : FitBackend, optional
        ``"stacking-svm"`` only: where the meta-SVM's fits run
        (:class:`~specfusion.models.svm_solver.FitBackend`, e.g. :class:`specfusion.distributed.svm.DaskFits`);
        None: here. The result is the same.
    **options
        Parameters of the method's estimator (:func:`make_estimator`), e.g. ``n_jobs`` for the
        meta-SVM, ``candidates`` for ``"auto"``.

    Returns
    -------
    FusionResult
        For development items, the scores of fold k come from the fusion fitted on the other folds
        (every choice included); test items are scored by the fusion fitted on all development items.
        ``"stacking-svm"`` gives decision values, the other methods class probabilities.
    """
    names = list(system_names) if system_names is not None else [f"system {i + 1}" for i in range(len(systems))]
    aligned = align_systems(systems, system_names=names)
    reference = aligned[0]
    X = meta_features(aligned)
    kinds = [p.kind for p in aligned]
    dev = reference.partitions == "dev"
    if not dev.any():
        raise ConfigError("no development items: fusion needs a development partition with folds")
    if (reference.labels[dev] == "").any():
        raise ConfigError(f"{int((reference.labels[dev] == '').sum())} development item(s) have no label")
    if backend is not None and method != "stacking-svm":
        raise ConfigError(f"a fit backend applies to the stacking-svm fusion only, not to {method!r}")
    fit_on = {} if backend is None else {"backend": backend}
    estimator = make_estimator(method, kinds=kinds, classes=reference.classes, metric=metric, **options)
    labels, folds = reference.labels[dev], reference.folds[dev]
    model = clone(estimator).fit(X[dev], labels, folds=_cv_folds(folds), **fit_on)
    scores = np.zeros((len(reference), len(reference.classes)))
    fold_choices: dict[int, str] = {}
    fold_ids = np.unique(folds)
    dev_scores = np.zeros((int(dev.sum()), len(reference.classes)))
    for k in fold_ids:
        inner = clone(estimator).fit(
            X[dev][folds != k], labels[folds != k], folds=_cv_folds(folds[folds != k]), **fit_on
        )
        dev_scores[folds == k] = inner.decision_function(X[dev][folds == k])
        if isinstance(inner, AutoFusion):
            fold_choices[int(k)] = inner.method_
    scores[dev] = dev_scores
    if (~dev).any():
        scores[~dev] = model.decision_function(X[~dev])
    kind = "decision"
    if method != "stacking-svm":
        scores, kind = np.exp(scores), "proba"
    chosen = model.method_ if isinstance(model, AutoFusion) else method
    weights = _weights_of(model, names)
    fusion_config = {
        "system": "fusion",
        "method": method,
        "chosen_method": chosen,
        "method_config": method_config(method, metric=metric, **{k: v for k, v in options.items() if k != "n_jobs"}),
        "members": names,
        "member_kinds": kinds,
        "member_configs": [p.config for p in aligned],
        "weights": weights,
        "fold_choices": {str(k): v for k, v in fold_choices.items()},
        "fitted": _details(model),
        **(config or {}),
    }
    predictions = Predictions(
        names=reference.names, folds=reference.folds, partitions=reference.partitions, labels=reference.labels,
        scores=scores, classes=list(reference.classes), kind=kind, config=fusion_config,
    )  # fmt: skip
    return FusionResult(
        predictions=predictions, method=method, chosen=chosen, model=model, weights=weights, fold_choices=fold_choices
    )


def stack(
    systems: Sequence[Predictions],
    *,
    system_names: Sequence[str] | None = None,
    metric: str = "macro_f1",
    per_decade: int = 1,
    estimator: LinearSVM | None = None,
    config: dict | None = None,
    progress: bool | str = False,
) -> FoldResult:
    """Stacking fusion of base systems' predictions with a meta linear SVM, the paper's protocol exactly.

    The out-of-fold meta-scores use the C chosen by the CV over all development folds, as the paper's
    Devel numbers do; ``fuse(..., method="stacking-svm")`` is the same meta-model with C chosen
    without the scored fold.

    Parameters
    ----------
    systems : sequence of Predictions
        Base systems' predictions (out-of-fold development scores + test scores), same items.
    system_names : sequence of str, optional
        Names for messages and the fusion's configuration.
    metric : {"macro_f1", "accuracy"}
        Criterion of the C search (the paper optimises macro F1).
    per_decade : int
        C grid density on 1e-9...1.
    estimator : LinearSVM, optional
        Meta-classifier template (overrides ``metric`` and ``per_decade``).
    config : dict, optional
        Extra configuration to record.
    progress : bool or str
        A progress bar of the meta-SVM's fits (a string: its description).

    Returns
    -------
    FoldResult
        ``predictions`` holds the fusion's out-of-fold development and test decision values.
    """
    names = list(system_names) if system_names is not None else [f"system {i + 1}" for i in range(len(systems))]
    aligned = align_systems(systems, system_names=names)
    reference = aligned[0]
    X = meta_features(aligned)
    template = estimator if estimator is not None else LinearSVM(metric=metric, per_decade=per_decade)
    fusion_config = {
        "system": "stacking",
        "members": names,
        "member_kinds": [p.kind for p in aligned],
        "member_configs": [p.config for p in aligned],
        **(config or {}),
    }
    return svm_fold_protocol(
        X, reference.labels, reference.folds, reference.partitions,
        names=list(reference.names), classes=list(reference.classes), estimator=template, config=fusion_config, progress=progress,
    )  # fmt: skip
