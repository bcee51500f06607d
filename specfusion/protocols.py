"""The paper's fold protocols: out-of-fold development scores and test scores of a base system.

Both protocols use the dataset's *predefined* development folds and write what fusion needs, a
:class:`~specfusion.predictions.Predictions`. Test items are only ever scored; their labels are copied into
the predictions for evaluation and never used for fitting or choosing anything.

SVM (:func:`svm_fold_protocol`, on feature vectors; the estimator is :class:`specfusion.classifiers.LinearSVM`):

1. **choose C** once by the 4-fold CV on the development partition (as the paper does);
2. **out-of-fold development scores**: for each development fold k, the pipeline with that C is fitted
   on the other development folds and gives decision values for fold k's items;
3. **test scores**: decision values of the pipeline refitted on the whole development partition.

In step 2 the C was chosen with fold k's labels among the CV folds (as the paper's "Devel" numbers are);
for strictly nested out-of-fold scores use ``c_selection="nested"``, which chooses C per outer fold by CV
over the remaining development folds only.

CRNN (:func:`crnn_fold_protocol`, on Mel-spectrograms; the estimator is :class:`specfusion.crnn.CRNNClassifier`):
one model per development fold, trained on the other folds; its probabilities for the held-out fold are
the development (out-of-fold) predictions, and the test predictions are the mean of the fold models'
probabilities (the paper's mean fusion). Spectrograms are computed once and cached on disk
(:mod:`specfusion.spectrogram_cache`); each fold's model is saved as a checkpoint and a re-run skips
finished folds. Fixed seeds give identical results on the same machine (and torch version).

Multi-channel segments (DCASE 2018 task 5): every channel is a training item; a segment's scores are
the mean of its channels' scores (the official baseline's rule), or the maximum, or kept per channel
(``combine="mean" | "max" | "none"``). The SVM's C search scores channel items.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import clone
from sklearn.utils.parallel import Parallel, delayed

from specfusion import svm_solver
from specfusion.classifiers import LinearSVM, encode_labels
from specfusion.crnn.estimator import NETWORK_VERSION, CRNNClassifier, _plain_json, model_identity
from specfusion.crnn.parallel import FoldJob, train_folds
from specfusion.crnn.variants import variant_defaults
from specfusion.errors import ConfigError, StoreError
from specfusion.hashing import text_digest
from specfusion.plots import plot_learning_curves
from specfusion.predictions import Predictions, predictions_from_items
from specfusion.spectrogram_cache import protocol_spec_params, spectrogram_set

if TYPE_CHECKING:
    from specfusion.spectrogram import MelSpecParams

log = logging.getLogger(__name__)

#: The learning-curve PNG :func:`crnn_fold_protocol` writes in its output folder.
LEARNING_CURVE = "learning_curve.png"


# ---------------------------------------------------------------------------------------------------
# the SVM's protocol
# ---------------------------------------------------------------------------------------------------
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
    estimator: LinearSVM, X, y, folds, *, nested: bool = False
) -> tuple[np.ndarray, dict[int, float]]:
    """Out-of-fold decision values on development data.

    For each fold k the estimator (a clone) is fitted on the items of the other folds and scores fold k's
    items. ``nested=False``: the clone keeps ``estimator``'s fitted ``best_C_`` (no search); ``nested=True``:
    C is searched again by CV over the other folds only.

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
    if nested:  # the inner searches already use estimator.n_jobs
        models = [_fit_without_fold(estimator, X, y, folds, k, nested=True) for k in fold_ids]
    else:
        models = Parallel(n_jobs=estimator.n_jobs)(
            delayed(_fit_without_fold)(estimator, X, y, folds, k, nested=False) for k in fold_ids
        )
    scores = np.zeros((len(X), len(estimator.classes_)))
    for k, model in zip(fold_ids, models):
        scores[folds == k] = model.decision_function(X[folds == k])
    return scores, {int(k): model.best_C_ for k, model in zip(fold_ids, models)}


def _fit_without_fold(estimator: LinearSVM, X, y, folds, k, *, nested: bool) -> LinearSVM:
    """A clone of ``estimator`` fitted on all folds but ``k``: with its ``best_C_``, or searching C anew."""
    train = folds != k
    if nested:
        return clone(estimator).set_params(classes=list(estimator.classes_)).fit(X[train], y[train], folds=folds[train])
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
    progress: bool | str = False,
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
    progress : bool or str
        A progress bar counting the SVM fits (a string: its description).

    Returns
    -------
    FoldResult
    """
    if c_selection not in ("global", "nested"):
        raise ConfigError(f"c_selection must be 'global' or 'nested', got {c_selection!r}")
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
    template = estimator if estimator is not None else LinearSVM()
    if classes is not None:
        template = clone(template).set_params(classes=[str(c) for c in classes])
    with _fit_progress(progress):
        model = clone(template).fit(X[dev], labels[dev], folds=folds[dev])
        scores = np.zeros((len(X), len(model.classes_)))
        scores[dev], fold_C = out_of_fold_decisions(
            model, X[dev], labels[dev], folds[dev], nested=c_selection == "nested"
        )
    if (~dev).any():
        scores[~dev] = model.decision_function(X[~dev])
    params = {
        k: (list(map(float, v)) if k == "c_grid" and v is not None else v)
        for k, v in model.get_params().items()
        if k != "classes"
    }
    system = {
        "system": "linear_svm",
        **(config or {}),
        "svm": params,
        "c_selection": c_selection,
        "best_C": model.best_C_,
        "fold_C": {str(k): c for k, c in fold_C.items()},
        "cv_score": model.best_score_,
        "n_not_converged": model.n_not_converged_,
        "combine": combine if segments is not None else "none",
    }
    predictions = predictions_from_items(
        names=names, segments=segments, folds=folds, partitions=partitions, labels=labels, scores=scores,
        classes=list(model.classes_), kind="decision", config=system, combine=combine,
    )  # fmt: skip
    return FoldResult(predictions=predictions, model=model, best_C=model.best_C_, fold_C=fold_C)


@contextlib.contextmanager
def _fit_progress(progress: bool | str):
    """A tqdm bar advanced by every fit the Newton solver reports (:func:`specfusion.svm_solver.report_fits`)."""
    if not progress:
        yield
        return
    from tqdm.auto import tqdm

    with tqdm(desc=progress if isinstance(progress, str) else "SVM", unit="fit", leave=False) as bar:

        def advance(description: str) -> None:
            bar.set_postfix_str(description, refresh=False)
            bar.update(1)

        with svm_solver.report_fits(advance):
            yield


def svm_from_arrays(arrays, *, allow_incomplete: bool = False, **options) -> FoldResult:
    """:func:`svm_fold_protocol` on a feature store's arrays (``FeatureStore.open(path).arrays()``).

    Channel items (``channels >= 0``) are combined per segment (``names``); options go to
    :func:`svm_fold_protocol`. The dataset, metric and store configuration are recorded in the
    predictions' config.

    A store with pending or failed items is refused (:class:`~specfusion.errors.StoreError` with the
    counts) unless ``allow_incomplete=True``: scores on a subset are not comparable with scores on the
    whole dataset (docs/reliability.md). Then the predictions' config records ``n_pending`` and
    ``n_failed``; pass ``config={"coverage": ...}`` (:mod:`specfusion.coverage`) to list the items.
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


# ---------------------------------------------------------------------------------------------------
# the CRNN's protocol
# ---------------------------------------------------------------------------------------------------
def items_digest(uids: Sequence[str]) -> str:
    """SHA-256 of a set of item keys (order-free); checkpoints record their training items' digest."""
    return text_digest("\n".join(sorted(uids)))


def labelled_items_digest(uids: Sequence[str], labels: Sequence[str]) -> str:
    """SHA-256 of a set of (item key, label) pairs (order-free): changes when an item or a label does."""
    return text_digest("\n".join(sorted(f"{u}\t{lab}" for u, lab in zip(uids, labels))))


def rows_digest(array: np.ndarray, mask) -> str:
    """SHA-256 of the rows ``array[mask]`` (bytes, shape and dtype), hashed in blocks to bound memory."""
    rows = np.flatnonzero(mask)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape[1:]}{len(rows)}".encode())
    for start in range(0, len(rows), 512):
        digest.update(np.ascontiguousarray(array[rows[start : start + 512]]).tobytes())
    return digest.hexdigest()


def _identity_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (for the log line that says why)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({_short(a)} -> {_short(b)})")
    return out


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def _reusable_checkpoint(path: Path, identity: dict, *, device, num_threads) -> CRNNClassifier | None:
    """The model saved in ``path`` when its identity equals ``identity``; None (and a log line why) otherwise."""
    if not path.is_file():
        return None
    try:
        model = CRNNClassifier.load(path, device=device, num_threads=num_threads)
    except StoreError as err:
        log.warning("%s: retraining: the checkpoint cannot be used (%s)", path, err)
        return None
    saved = model.checkpoint_extra_.get("identity")
    if saved == identity:
        return model
    why = (
        _identity_diff(saved, identity)
        if isinstance(saved, dict)
        else ["the checkpoint records no identity (older specfusion)"]
    )
    log.warning("%s: retraining: the checkpoint was trained with other inputs: %s", path, "; ".join(why[:6]))
    return None


@dataclasses.dataclass
class CRNNResult:
    """What :func:`crnn_fold_protocol` returns.

    Attributes
    ----------
    predictions : Predictions
        Out-of-fold development probabilities and mean-fused test probabilities.
    histories : dict of int to list of dict
        Per development fold, the training history (loss, validation metric per epoch).
    checkpoints : dict of int to Path
    config : dict
        The system configuration (also in the predictions).
    failures : list of (uid, reason, path)
        Items left out because their audio could not be used (also in the predictions' configuration
        under ``left_out``).
    """

    predictions: object
    histories: dict
    checkpoints: dict
    config: dict
    failures: list = dataclasses.field(default_factory=list)


def fold_seed(base_seed: int, fold: int) -> int:
    """The seed of fold ``fold``'s model in :func:`crnn_fold_protocol`: ``base_seed + fold``."""
    return int(base_seed) + int(fold)


def crnn_fold_protocol(
    table,
    *,
    out_dir,
    variant: str = "esc50",
    clip_db: float | None = None,
    sr: int | None = None,
    combine: str = "mean",
    folds: Sequence[int] | None = None,
    progress: bool = False,
    short: str = "pad",
    spec_params: MelSpecParams | dict | None = None,
    n_jobs: int = 1,
    dask=None,
    **estimator_params,
):
    """Train one CRNN per development fold; out-of-fold and mean-fused test probabilities.

    Parameters
    ----------
    table : DatasetTable
        Development items with folds 1..K (test items, fold 0, are only predicted).
    out_dir : path-like
        Spectrogram cache, ``fold<k>.pt`` checkpoints, ``predictions.csv`` and the learning curve
        (``learning_curve.png``, every fold's history) go here. A fold whose
        checkpoint exists (with the same configuration) is not trained again.
    variant : {"esc50", "dcase2017", "dcase2018"}
    clip_db : float, optional
        Spectrogram clipping; default the variant's (-80 dB; -60 dB for dcase2018).
    sr : int, optional
        Sample rate (default: the first file's).
    combine : {"mean", "max", "none"}
        How a segment's channel probabilities are combined (channel items only).
    folds : sequence of int, optional
        Run only these development folds (then only their items get development predictions and the
        test predictions average these folds' models) -- for quick checks.
    progress : bool
        Progress bars (spectrograms, folds, epochs).
    short : {"pad", "error"}
        Clips shorter than one spectrogram window (0.32 s): zero-padded to one window, or left out.
        Items whose audio cannot be used are left out of training and scoring (never the whole run);
        the result's ``failures`` and the predictions' ``left_out`` entry list them.
    spec_params : MelSpecParams or dict, optional
        Spectrogram window, hop, n_mels, fmin, fmax (default: the paper's); the clipping is ``clip_db``.
        Recorded in the checkpoints' identity and the predictions' config when not the defaults.
    n_jobs : int
        Folds trained at once, each in its own process (joblib's loky backend, one torch and one BLAS
        thread each unless ``num_threads`` says otherwise): -1 one per core (within
        :func:`specfusion.threads.limit_threads`), at most the number of folds still to train; 1 (default)
        one after the other in this process. The results are bit-identical whatever the value.
    dask : str or distributed.Client, optional
        Train the folds as tasks on this Dask cluster instead (an address as
        :func:`specfusion.distributed.connect` takes, e.g. ``"local:2"``, or a client); the spectrograms
        are scattered to it once. See :mod:`specfusion.crnn.parallel`.
    **estimator_params
        Further :class:`CRNNClassifier` parameters (epochs, lr, batch_size, filters, seed, device, ...).

    Returns
    -------
    CRNNResult
    """
    from specfusion.predictions import predictions_from_items, write_predictions
    from specfusion.spectrogram import non_default_params

    defaults = variant_defaults(variant)
    clip_db = float(defaults["clip_db"] if clip_db is None else clip_db)
    params = protocol_spec_params(spec_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    estimator_params.setdefault("metric", table.metric)
    estimator_params.setdefault("classes", list(table.classes))
    base_seed = int(estimator_params.pop("seed", 0))
    template = CRNNClassifier(variant=variant, progress=progress, seed=base_seed, **estimator_params)
    partitions = table.partitions()
    dev = partitions == "dev"
    dev_folds = sorted(set(table.folds()[dev].tolist()))
    if len(dev_folds) < 2:
        raise ConfigError(f"the CRNN protocol needs at least two development folds, found {dev_folds}")
    run_folds = dev_folds if folds is None else [int(k) for k in folds]
    unknown = set(run_folds) - set(dev_folds)
    if unknown:
        raise ConfigError(f"fold(s) {sorted(unknown)} are not development folds ({dev_folds})")
    spectrograms = spectrogram_set(table, clip_db=clip_db, sr=sr, cache_dir=out_dir, progress=progress, short=short,
                                   spec_params=params)  # fmt: skip
    S, n_table = spectrograms.S, len(table)
    if spectrograms.failures:
        table = table.subset(spectrograms.rows)
        partitions = table.partitions()
        dev = partitions == "dev"
        log.warning("CRNN: %d of %d item(s) left out (their audio cannot be used)", spectrograms.n_failed, n_table)
    left_out = {"n": spectrograms.n_failed, "of": n_table,
                "items": [{"uid": u, "reason": r, "path": p} for u, r, p in spectrograms.failures]}  # fmt: skip
    labels = table.labels()
    item_folds = table.folds()
    config = {
        "system": "crnn",
        "dataset": table.name,
        "clip_db": clip_db,
        "spectrogram": {"n_mels": int(S.shape[1]), "frames": int(S.shape[2]), "sr": sr},
        "crnn": model_identity(template)["params"],
        "network_version": NETWORK_VERSION,
        "seed_rule": "fold k trains with seed + k",
        "classes": list(template.classes),
    }
    changed = non_default_params(params)
    if changed:  # only then, so that the identity of checkpoints made with the paper's spectrogram stays valid
        config["spectrogram"]["params"] = changed
    test_index = np.flatnonzero(~dev)
    scores = np.zeros((len(table), len(table.classes)))
    have = np.zeros(len(table), dtype=bool)
    test_sum = np.zeros((len(test_index), len(table.classes)))
    histories, checkpoints, models, jobs = {}, {}, {}, []
    uids = np.asarray(table.uids(), dtype=object)
    for k in run_folds:
        held_out = dev & (item_folds == k)
        train = dev & (item_folds != k)
        path = out_dir / f"fold{k}.pt"
        fold_config = {**config, "fold": k, "seed": fold_seed(base_seed, k)}
        fresh = CRNNClassifier(**{**template.get_params(), "seed": fold_seed(base_seed, k)})
        identity = _plain_json({
            **model_identity(fresh), "fold": k, "clip_db": clip_db, "sr": sr,
            "spectrogram_shape": list(S.shape[1:]), "train_spectrograms_sha256": rows_digest(S, train),
            **({"spec_params": changed} if changed else {}),
            "train_items_sha256": items_digest(uids[train]),
            "train_labels_sha256": labelled_items_digest(uids[train], labels[train]),
        })  # fmt: skip
        model = _reusable_checkpoint(path, identity, device=template.device, num_threads=template.num_threads)
        if model is not None:
            log.info("fold %d: using the finished model in %s (same items, labels, parameters and code)", k, path)
            models[k] = model
        else:
            extra = {"config": fold_config, "identity": identity, "n_train": int(train.sum()),
                     "train_items_sha256": identity["train_items_sha256"]}  # fmt: skip
            jobs.append(FoldJob(fold=k, params=fresh.get_params(), train=np.flatnonzero(train),
                                held_out=np.flatnonzero(held_out), path=path, extra=extra))  # fmt: skip
    models.update(train_folds(jobs, S, labels, n_jobs=n_jobs, dask=dask, progress=progress, device=template.device,
                              num_threads=template.num_threads))  # fmt: skip
    for k in run_folds:
        held_out = dev & (item_folds == k)
        model = models[k]
        histories[k] = model.history_
        checkpoints[k] = out_dir / f"fold{k}.pt"
        scores[held_out] = model.predict_proba(S[held_out])
        have |= held_out
        if len(test_index):
            test_sum += model.predict_proba(S[test_index])
    if len(test_index):
        scores[test_index] = test_sum / len(run_folds)
        have[test_index] = True
    channels = [i.channel for i in table]
    has_channels = any(c is not None for c in channels)
    keep = np.flatnonzero(have)
    sub = table.subset(keep)
    predictions = predictions_from_items(
        names=sub.uids(), segments=[i.name for i in sub] if has_channels else None, folds=sub.folds(),
        partitions=sub.partitions(), labels=sub.labels(), scores=scores[keep], classes=list(table.classes),
        kind="proba", config={**config, "folds_run": run_folds, "combine": combine if has_channels else "none", "left_out": left_out},
        combine=combine,
    )  # fmt: skip
    write_predictions(out_dir / "predictions.csv", predictions)
    plot_learning_curves(
        {f"fold {k}": h for k, h in histories.items()},
        out_dir / LEARNING_CURVE,
        metric=template.metric,
        title=f"CRNN {variant}",
    )
    return CRNNResult(predictions=predictions, histories=histories, checkpoints=checkpoints, config=config,
                      failures=list(spectrograms.failures))  # fmt: skip
