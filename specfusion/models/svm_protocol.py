"""The SVM's fold protocol: out-of-fold development scores and test scores of a feature system.

The protocol uses the dataset's *predefined* development folds and write what fusion needs, a
:class:`~specfusion.evaluation.predictions.Predictions`. Test items are only ever scored; their labels are copied into
the predictions for evaluation and never used for fitting or choosing anything.

SVM (:func:`svm_fold_protocol`, on feature vectors; the estimator is :class:`specfusion.models.svm.LinearSVM`):

1. **choose C** once by the 4-fold CV on the development partition (as the paper does);
2. **out-of-fold development scores**: for each development fold k, the pipeline with that C is fitted
   on the other development folds and gives decision values for fold k's items;
3. **test scores**: decision values of the pipeline refitted on the whole development partition.

In step 2 the C was chosen with fold k's labels among the CV folds (as the paper's "Devel" numbers are);
for strictly nested out-of-fold scores use ``c_selection="nested"``, which chooses C per outer fold by CV
over the remaining development folds only.

Multi-channel segments (DCASE 2018 task 5): every channel is a training item; a segment's scores are
the mean of its channels' scores (the official baseline's rule), or the maximum, or kept per channel
(``combine="mean" | "max" | "none"``). The C search scores channel items.

The CRNN's protocol is :mod:`specfusion.models.crnn.protocol`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from sklearn.base import clone
from sklearn.utils.parallel import Parallel, delayed

from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.predictions import Predictions, predictions_from_items
from specfusion.models import svm_solver
from specfusion.models.svm import LinearSVM, encode_labels
from specfusion.models.svm_solver import FitBackend, Progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FoldResult:
    """What :func:`svm_fold_protocol` returns.

    Attributes
    ----------
    predictions : Predictions
        Out-of-fold development scores and test scores (decision values).
    model : LinearSVM
        Fitted on the whole development partition (it scored the test items).
    best_C : float
        C chosen by the CV on the development partition.
    fold_C : dict of int to float
        C used for each fold's out-of-fold scores.
    """

    predictions: Predictions
    model: LinearSVM
    best_C: float
    fold_C: dict[int, float]


def out_of_fold_decisions(
    estimator: LinearSVM,
    X,
    y,
    folds,
    *,
    nested: bool = False,
    backend: FitBackend | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[int, float]]:
    """Out-of-fold decision values on development data.

    For each fold k the estimator (a clone) is fitted on the items of the other folds and scores fold k's
    items. ``nested=False``: the clone keeps ``estimator``'s fitted ``best_C_`` (no search); ``nested=True``:
    C is searched again by CV over the other folds only.

    ``backend`` (:class:`~specfusion.models.svm_solver.FitBackend`): where the fits run (nested: each
    search's splits and refit; otherwise the per-fold fits, through joblib under
    ``backend.parallel_config()``); None: here. ``progress(description)`` is called after each fit.

    Returns
    -------
    scores : ndarray, shape (n, n_classes)
    fold_C : dict of fold -> C used
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=object)
    folds = np.asarray(folds)
    fold_ids = np.unique(folds)
    reuse = getattr(estimator, "cv_decisions_", None)
    if not nested and reuse is not None and not np.isnan(reuse[1]).any():
        # the Newton search fitted exactly these models (same data, folds and C): reuse their scores
        codes = encode_labels(y, estimator.classes_)[1]
        if reuse[0] == svm_solver.fingerprint(X, codes, folds):
            return reuse[1].copy(), {int(k): estimator.best_C_ for k in fold_ids}
    if nested:  # the inner searches already use estimator.n_jobs (or the backend)
        models = [
            _fit_without_fold(estimator, X, y, folds, k, nested=True, backend=backend, progress=progress)
            for k in fold_ids
        ]
    else:
        models = _refit_without_folds(estimator, X, y, folds, fold_ids, backend=backend, progress=progress)
    scores = np.zeros((len(X), len(estimator.classes_)))
    for k, model in zip(fold_ids, models):
        scores[folds == k] = model.decision_function(X[folds == k])
    return scores, {int(k): model.best_C_ for k, model in zip(fold_ids, models)}


def _refit_without_folds(estimator: LinearSVM, X, y, folds, fold_ids, *, backend, progress) -> list[LinearSVM]:
    """:func:`_fit_without_fold` with ``best_C_`` for every fold, through joblib (``estimator.n_jobs``, ``backend``)."""
    with svm_solver.joblib_backend(backend):
        fits = Parallel(n_jobs=estimator.n_jobs, return_as="generator")(
            delayed(_fit_without_fold)(estimator, X, y, folds, k, nested=False) for k in fold_ids
        )
        models = []
        for k, model in zip(fold_ids, fits):  # reported here: the fits may run in other processes
            models.append(model)
            if progress is not None:
                progress(f"out-of-fold fit, fold {k}")
    return models


def _fit_without_fold(estimator: LinearSVM, X, y, folds, k, *, nested: bool, backend=None, progress=None) -> LinearSVM:
    """A clone of ``estimator`` fitted on all folds but ``k``: with its ``best_C_``, or searching C anew."""
    train = folds != k
    if nested:
        return (
            clone(estimator)
            .set_params(classes=list(estimator.classes_))
            .fit(X[train], y[train], folds=folds[train], backend=backend, progress=progress)
        )
    model = clone(estimator).set_params(classes=list(estimator.classes_), c_grid=[estimator.best_C_])
    return model.fit(X[train], y[train])


def svm_fold_protocol(
    X,
    labels,
    folds,
    partitions,
    *,
    names: Sequence[str],
    segments: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    estimator: LinearSVM | None = None,
    c_selection: str = "global",
    combine: str = "mean",
    config: dict | None = None,
    backend: FitBackend | None = None,
    progress: bool | str | Progress = False,
) -> FoldResult:
    """The paper's SVM protocol: out-of-fold development scores and test scores, as Predictions.

    Parameters
    ----------
    X : array-like, shape (n, dim)
        Features of development and test items.
    labels : array-like of str
        True labels (those of test items are not used, only copied to the predictions).
    folds : array-like of int
        Development fold 1..K; 0 for test items.
    partitions : array-like of {"dev", "test"}
    names : sequence of str
        Unique item keys (channel items: ``"<segment>@ch<c>"``).
    segments : sequence of str, optional
        The segment of every item, for multi-channel data; None when items are segments.
    classes : sequence of str, optional
        Class order (default: sorted development labels).
    estimator : LinearSVM, optional
        Unfitted template (default ``LinearSVM()``: paper grid, macro F1).
    c_selection : {"global", "nested"}
        C for the out-of-fold scores: the one chosen by the CV over all development folds (the paper),
        or chosen anew per outer fold by CV over the other development folds.
    combine : {"mean", "max", "none"}
        How a segment's channel scores become its scores.
    config : dict, optional
        System configuration stored in the predictions (the estimator's parameters are added).
    backend : FitBackend, optional
        Where the SVM fits run (:class:`~specfusion.models.svm_solver.FitBackend`, e.g.
        :class:`specfusion.distributed.svm.DaskFits` for a Dask cluster); None: in this process. The
        fits, hence the results, are the same.
    progress : bool, str or callable
        A progress bar counting the SVM fits (a string: its description), or a callable called with a
        description after every fit.

    Returns
    -------
    FoldResult
    """
    if c_selection not in ("global", "nested"):
        raise ConfigError(f"c_selection must be 'global' or 'nested', got {c_selection!r}")
    template = (estimator if estimator is not None else LinearSVM()).check_params()
    X, labels, folds, partitions = _checked_inputs(X, labels, folds, partitions)
    dev = partitions == "dev"
    if classes is not None:
        template = clone(template).set_params(classes=[str(c) for c in classes])
    total = planned_fits(template, folds[dev], nested=c_selection == "nested")
    with _fit_progress(progress, total=total) as report:
        model = clone(template).fit(X[dev], labels[dev], folds=folds[dev], backend=backend, progress=report)
        scores = np.zeros((len(X), len(model.classes_)))
        scores[dev], fold_C = out_of_fold_decisions(
            model, X[dev], labels[dev], folds[dev], nested=c_selection == "nested", backend=backend, progress=report
        )
    if (~dev).any():
        scores[~dev] = model.decision_function(X[~dev])
    system = _system_config(model, fold_C, config=config, c_selection=c_selection,
                            combine=combine if segments is not None else "none")  # fmt: skip
    predictions = predictions_from_items(
        names=names, segments=segments, folds=folds, partitions=partitions, labels=labels, scores=scores,
        classes=list(model.classes_), kind="decision", config=system, combine=combine,
    )  # fmt: skip
    return FoldResult(predictions=predictions, model=model, best_C=model.best_C_, fold_C=fold_C)


def _checked_inputs(X, labels, folds, partitions) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The protocol's inputs as arrays; ConfigError without development items or with unlabelled ones."""
    X = np.asarray(X, dtype=np.float64)
    # labels as text, as the predictions file stores them (integer labels 0, 1, ... become "0", "1", ...)
    labels = np.asarray(["" if v is None else str(v) for v in labels], dtype=object)
    folds = np.asarray(folds, dtype=np.int64)
    partitions = np.asarray(partitions, dtype=object)
    dev = partitions == "dev"
    if not dev.any():
        raise ConfigError("no development items: the SVM protocol needs a development partition with folds")
    if (labels[dev] == "").any():
        raise ConfigError(f"{int((labels[dev] == '').sum())} development item(s) have no label")
    return X, labels, folds, partitions


def _system_config(model: LinearSVM, fold_C: dict, *, config: dict | None, c_selection: str, combine: str) -> dict:
    """What the predictions record of the fitted system: the caller's config, the SVM's parameters and Cs."""
    params = {
        k: (list(map(float, v)) if k == "c_grid" and v is not None else v)
        for k, v in model.get_params().items()
        if k != "classes"
    }
    return {
        "system": "linear_svm",
        **(config or {}),
        "svm": params,
        "c_selection": c_selection,
        "best_C": model.best_C_,
        "fold_C": {str(k): c for k, c in fold_C.items()},
        "cv_score": model.best_score_,
        "n_not_converged": model.n_not_converged_,
        "combine": combine,
    }


def planned_fits(estimator: LinearSVM, folds, *, nested: bool) -> int:
    """How many fits :func:`svm_fold_protocol` reports to its progress callback (the total of its bar).

    "newton": one per split of a C search (each covers the whole C path) and one per refit; "liblinear"
    reports none of its search. Global C: the out-of-fold scores come from the search's fold models
    ("newton" with a search), else from one fit per fold. Nested: a search over the other folds and a refit
    per fold. :class:`~specfusion.models.svm.ParameterError` for an invalid estimator, as ``fit`` gives.
    """
    n_folds = len(np.unique(folds))
    search = len(estimator.check_params().grid()) > 1
    newton = estimator.solver == "newton"

    def fit(n_splits: int) -> int:
        return ((n_splits if search else 0) + 1) if newton else 0

    if nested:
        return fit(n_folds) + n_folds * fit(n_folds - 1)
    return fit(n_folds) + (0 if newton and search else n_folds)


@contextlib.contextmanager
def _fit_progress(progress: bool | str | Progress, *, total: int):
    """The progress callback of the SVM fits: ``progress`` itself, None, or one advancing a bar of ``total`` fits."""
    if callable(progress) or not progress:
        yield progress or None
        return
    from tqdm.auto import tqdm

    desc = progress if isinstance(progress, str) else "SVM"
    with tqdm(desc=desc, total=total or None, unit="fit", leave=False) as bar:

        def advance(description: str) -> None:
            bar.set_postfix_str(description, refresh=False)
            bar.update(1)

        yield advance


def svm_from_arrays(arrays, *, allow_incomplete: bool = False, **options) -> FoldResult:
    """:func:`svm_fold_protocol` on a feature store's arrays (``FeatureStore.open(path).arrays()``).

    Channel items (``channels >= 0``) are combined per segment (``names``); options go to
    :func:`svm_fold_protocol` (``estimator``, ``backend``, ``progress`` ...). The dataset, metric and store configuration are recorded in the
    predictions' config.

    A store with pending or failed items is refused (:class:`~specfusion.errors.StoreError` with the
    counts) unless ``allow_incomplete=True``: scores on a subset are not comparable with scores on the
    whole dataset (docs/reliability.md). Then the predictions' config records ``n_pending`` and
    ``n_failed``; pass ``config={"coverage": ...}`` (:mod:`specfusion.evaluation.coverage`) to list the items.
    """
    n_pending, n_failed = int(getattr(arrays, "n_pending", 0)), int(getattr(arrays, "n_failed", 0))
    if (n_pending or n_failed) and not allow_incomplete:
        raise StoreError(
            f"the feature store is incomplete: {len(arrays)} of {len(arrays) + n_pending + n_failed} items have features "
            f"({n_pending} pending, {n_failed} failed); finish the extraction, or pass allow_incomplete=True "
            "to score the items that have features",
            parameters={"allow_incomplete": True},
        )
    channels = np.asarray(arrays.channels)
    has_channels = bool((channels >= 0).any())
    config = {
        "dataset": getattr(arrays, "dataset", None),
        "dataset_metric": getattr(arrays, "metric", None),
        "features": getattr(arrays, "config", {}),
        **({"n_pending": n_pending, "n_failed": n_failed} if n_pending or n_failed else {}),
        **options.pop("config", {}),
    }
    return svm_fold_protocol(
        arrays.X, arrays.labels, arrays.folds, arrays.partitions,
        names=[str(u) for u in arrays.uids], segments=[str(n) for n in arrays.names] if has_channels else None,
        classes=list(arrays.classes), config=config, **options,
    )  # fmt: skip
