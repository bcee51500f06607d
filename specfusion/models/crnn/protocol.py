"""The CRNN's fold protocol (:func:`crnn_fold_protocol`, on Mel-spectrograms; the estimator is
:class:`specfusion.models.crnn.CRNNClassifier`): one model per development fold, trained on the other folds;
its probabilities for the held-out fold are the development (out-of-fold) predictions, and the test
predictions are the mean of the fold models' probabilities (the paper's mean fusion). Spectrograms are
computed once and cached on disk (:mod:`specfusion.models.crnn.spectrograms`); each fold's model is saved as
a checkpoint and a re-run skips finished folds. The folds still to train go to a back-end the caller passes
(:mod:`specfusion.models.crnn.parallel`; default: this process or local processes). Fixed seeds give
identical results on the same machine (and torch version), whatever the back-end.

Test items are only ever scored; their labels are copied into the predictions for evaluation and never
used for fitting or choosing anything. Multi-channel segments (DCASE 2018 task 5): every channel is a
training item; a segment's scores are the mean of its channels' scores, the maximum, or kept per channel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.plots import plot_learning_curves
from specfusion.identity import checkpoint_identity
from specfusion.models.crnn.estimator import NETWORK_VERSION, CRNNClassifier, model_identity
from specfusion.models.crnn.parallel import FoldBackend, FoldJob, LocalFolds, resolve_jobs
from specfusion.models.crnn.spectrograms import protocol_spec_params, spectrogram_set
from specfusion.models.crnn.variants import variant_defaults

if TYPE_CHECKING:
    from specfusion.data.datasets import DatasetTable
    from specfusion.evaluation.predictions import Predictions
    from specfusion.features.spectrogram import MelSpecParams
    from specfusion.models.crnn.spectrograms import SpectrogramSet

log = logging.getLogger(__name__)

#: The learning-curve PNG :func:`crnn_fold_protocol` writes in its output folder.
LEARNING_CURVE = "learning_curve.png"
#: How a segment's channel probabilities are combined (``combine``).
COMBINE = ("mean", "max", "none")


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


def _reusable_checkpoint(path: Path, identity: dict, *, estimator: type = CRNNClassifier, device, num_threads):
    """The model saved in ``path`` when its identity equals ``identity``; None (and a log line why) otherwise.

    ``estimator`` is the class whose ``load`` reads the checkpoint (:class:`CRNNClassifier`, or fine-tuning's).
    """
    if not path.is_file():
        return None
    try:
        model = estimator.load(path, device=device, num_threads=num_threads)
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
    backend: FoldBackend | None = None,
    **estimator_params,
):
    """Train one CRNN per development fold; out-of-fold and mean-fused test probabilities.

    The body only chains the steps, each a function of this module: the parameters and options, checked before any
    work (:func:`fold_template`, :func:`check_protocol_options`), the folds to run (:func:`resolve_folds`), the
    spectrograms (:func:`~specfusion.models.crnn.spectrograms.spectrogram_set`) and the items they leave
    out (:func:`usable_items`), the configuration (:func:`protocol_config`), the fold models, reused or
    trained (:func:`plan_folds`, :func:`train_jobs`), their scores (:func:`fold_scores`) and the written predictions and
    learning curve.

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
        Folds trained at once by the default back-end, each in its own process (joblib's loky backend,
        one torch and one BLAS thread each unless ``num_threads`` says otherwise): -1 one per core (within
        :func:`specfusion.threads.limit_threads`), at most the number of folds still to train; 1 (default)
        one after the other in this process. Not used with ``backend``. The results are bit-identical
        whatever the value.
    backend : FoldBackend, optional
        Where the folds still to train train (:mod:`specfusion.models.crnn.parallel`); default
        ``LocalFolds(n_jobs)``. On a Dask cluster: :class:`specfusion.distributed.crnn.DaskFolds` (the
        spectrograms are scattered to it once). The results are bit-identical whatever the back-end.
    **estimator_params
        Further :class:`CRNNClassifier` parameters (epochs, lr, batch_size, filters, seed, device, ...).

    Returns
    -------
    CRNNResult

    Raises
    ------
    ConfigError
        An invalid estimator parameter or option, before any work.
    StoreError
        The spectrogram cache or a fold checkpoint could not be written (a full disk ...); finished folds are kept.
    """
    from specfusion.features.spectrogram import non_default_params

    clip_db = float(variant_defaults(variant)["clip_db"] if clip_db is None else clip_db)
    params = protocol_spec_params(spec_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = fold_template(table, variant=variant, progress=progress, **estimator_params)
    check_protocol_options(combine=combine, n_jobs=n_jobs if backend is None else 1)
    run_folds = resolve_folds(table, folds)
    spectrograms = spectrogram_set(table, clip_db=clip_db, sr=sr, cache_dir=out_dir, progress=progress, short=short,
                                   spec_params=params)  # fmt: skip
    usable = usable_items(table, spectrograms)
    settings = {"clip_db": clip_db, "sr": sr, "spec_params": non_default_params(params)}
    config = protocol_config(usable, template, shape=spectrograms.S.shape, **settings)
    return fold_models(table, spectrograms, usable, run_folds, template=template, config=config, settings=settings,
                       out_dir=out_dir, backend=LocalFolds(n_jobs) if backend is None else backend, combine=combine,
                       progress=progress, title=f"CRNN {variant}")  # fmt: skip


def fold_models(
    table: DatasetTable,
    inputs: SpectrogramSet,
    usable: DatasetTable,
    run_folds: list[int],
    *,
    template,
    config: dict,
    settings: dict,
    out_dir: Path,
    backend: FoldBackend,
    combine: str,
    progress: bool,
    title: str,
) -> CRNNResult:
    """The fold protocol once its inputs exist: fold models reused or trained, their scores, predictions, curves.

    Shared by the CRNN (:func:`crnn_fold_protocol`) and fine-tuning
    (:func:`specfusion.models.finetune.protocol.finetune_fold_protocol`): ``template`` is the estimator every fold
    model copies (any class with the :class:`CRNNClassifier` interface: ``get_params``, ``model_identity``,
    ``fit(S, y, validation=)``, ``predict_proba``, ``save``/``load``, ``history_``); ``inputs`` its input arrays
    (:func:`~specfusion.models.crnn.spectrograms.spectrogram_set`) and ``usable`` the items they hold.
    ``settings`` enter every checkpoint's identity (:func:`plan_folds`), ``config`` every checkpoint and the
    predictions. The predictions and the learning curve (titled ``title``) are written to ``out_dir``.
    """
    from specfusion.evaluation.predictions import write_predictions

    reused, jobs = plan_folds(usable, inputs.S, run_folds, template=template, config=config, settings=settings,
                              out_dir=out_dir)  # fmt: skip
    trained = train_jobs(backend, jobs, inputs.S, usable.labels(), template=template, progress=progress)
    models = {k: trained[k] if k in trained else reused[k] for k in run_folds}
    scores, scored = fold_scores(usable, inputs.S, models)
    run_config = {**config, "folds_run": run_folds, "combine": combine if _has_channels(usable) else "none",
                  "left_out": left_out_record(inputs, len(table))}  # fmt: skip
    predictions = scored_predictions(usable, scores, scored, config=run_config, combine=combine)
    write_predictions(out_dir / "predictions.csv", predictions)
    histories = {k: model.history_ for k, model in models.items()}
    plot_learning_curves({f"fold {k}": h for k, h in histories.items()}, out_dir / LEARNING_CURVE,
                         metric=template.metric, title=title)  # fmt: skip
    checkpoints = {k: checkpoint_path(out_dir, k) for k in models}
    return CRNNResult(predictions=predictions, histories=histories, checkpoints=checkpoints, config=config,
                      failures=list(inputs.failures))  # fmt: skip


def fold_template(table: DatasetTable, *, variant: str, progress: bool, **estimator_params) -> CRNNClassifier:
    """The estimator every fold model copies, with the base seed; metric and classes default to the table's.

    Its parameters are checked here (:meth:`CRNNClassifier.resolved_params`), before any work.

    Raises
    ------
    ConfigError
        An invalid parameter (a :class:`~specfusion.models.svm.ParameterError` naming it) or parameters that do
        not fit together.
    """
    estimator_params.setdefault("metric", table.metric)
    estimator_params.setdefault("classes", list(table.classes))
    base_seed = estimator_params.pop("seed", 0)
    template = CRNNClassifier(variant=variant, progress=progress, seed=base_seed, **estimator_params)
    template.resolved_params()
    return template


def check_protocol_options(*, combine: str, n_jobs: int) -> None:
    """ConfigError, before any work, for a channel combination or ``n_jobs`` that would fail only after training."""
    if combine not in COMBINE:
        raise ConfigError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    resolve_jobs(n_jobs, 1)


def resolve_folds(table: DatasetTable, folds: Sequence[int] | None) -> list[int]:
    """The development folds to run: ``folds``, or all of them (ConfigError for fewer than two, or an unknown fold)."""
    dev = table.partitions() == "dev"
    dev_folds = sorted(set(table.folds()[dev].tolist()))
    if len(dev_folds) < 2:
        raise ConfigError(f"the CRNN protocol needs at least two development folds, found {dev_folds}")
    run_folds = dev_folds if folds is None else [int(k) for k in folds]
    unknown = set(run_folds) - set(dev_folds)
    if unknown:
        raise ConfigError(f"fold(s) {sorted(unknown)} are not development folds ({dev_folds})")
    return run_folds


def usable_items(table: DatasetTable, spectrograms: SpectrogramSet) -> DatasetTable:
    """The items that have a spectrogram (the rows of ``spectrograms.S``, in order); the others are left out."""
    if not spectrograms.failures:
        return table
    log.warning("CRNN: %d of %d item(s) left out (their audio cannot be used)", spectrograms.n_failed, len(table))
    return table.subset(spectrograms.rows)


def left_out_record(spectrograms: SpectrogramSet, n_items: int) -> dict:
    """The predictions' ``left_out`` entry: how many of ``n_items`` were left out, which and why."""
    return {"n": spectrograms.n_failed, "of": n_items,
            "items": [{"uid": u, "reason": r, "path": p} for u, r, p in spectrograms.failures]}  # fmt: skip


def protocol_config(table: DatasetTable, template: CRNNClassifier, *, shape, clip_db: float, sr, spec_params) -> dict:
    """The system configuration: dataset, spectrogram, the template's model parameters, code version, seed rule.

    ``spec_params`` (the non-default spectrogram parameters) is recorded only when there are any, so that the
    identity of checkpoints made with the paper's spectrogram stays valid.
    """
    config = {
        "system": "crnn",
        "dataset": table.name,
        "clip_db": clip_db,
        "spectrogram": {"n_mels": int(shape[1]), "frames": int(shape[2]), "sr": sr},
        "crnn": model_identity(template)["params"],
        "network_version": NETWORK_VERSION,
        "seed_rule": "fold k trains with seed + k",
        "classes": list(template.classes),
    }
    if spec_params:
        config["spectrogram"]["params"] = spec_params
    return config


def checkpoint_path(out_dir: Path, fold: int) -> Path:
    """Where fold ``fold``'s model is saved."""
    return out_dir / f"fold{fold}.pt"


def train_jobs(backend: FoldBackend, jobs: list[FoldJob], S, labels, *, template: CRNNClassifier, progress: bool):
    """The models of ``jobs`` by fold, trained by ``backend`` on the template's device and threads (none if no jobs)."""
    if not jobs:
        return {}
    return backend.train_folds(jobs, S, labels, progress=progress, device=template.device,
                               num_threads=template.num_threads)  # fmt: skip


def plan_folds(
    table: DatasetTable,
    S: np.ndarray,
    run_folds: list[int],
    *,
    template: CRNNClassifier,
    config: dict,
    settings: dict,
    out_dir: Path,
) -> tuple[dict[int, CRNNClassifier], list[FoldJob]]:
    """The finished models to reuse (by fold) and the jobs of the folds still to train.

    A fold's checkpoint is reused when its identity (:func:`specfusion.identity.checkpoint_identity`: model,
    fold, spectrogram settings, training items, labels and spectrograms) equals this run's. ``settings`` are
    the spectrogram settings in that identity (``clip_db``, ``sr``, ``spec_params``: the non-default ones);
    ``config`` goes into every checkpoint, with the fold and its seed.
    """
    dev = table.partitions() == "dev"
    item_folds = table.folds()
    uids = np.asarray(table.uids(), dtype=object)
    labels = table.labels()
    reused, jobs = {}, []
    for k in run_folds:
        train = dev & (item_folds != k)
        path = checkpoint_path(out_dir, k)
        fresh = type(template)(**{**template.get_params(), "seed": fold_seed(template.seed, k)})
        identity = checkpoint_identity(fresh.model_identity(), fold=k, spectrograms=S, train=train, uids=uids,
                                       labels=labels, **settings)  # fmt: skip
        model = _reusable_checkpoint(path, identity, estimator=type(template), device=template.device,
                                     num_threads=template.num_threads)  # fmt: skip
        if model is not None:
            log.info("fold %d: using the finished model in %s (same items, labels, parameters and code)", k, path)
            reused[k] = model
        else:
            held_out = dev & (item_folds == k)
            jobs.append(
                _fold_job(k, fresh, train=train, held_out=held_out, path=path, identity=identity, config=config)
            )
    return reused, jobs


def _fold_job(k: int, fresh: CRNNClassifier, *, train, held_out, path: Path, identity: dict, config: dict) -> FoldJob:
    """The job of fold ``k``: its estimator, rows, checkpoint path and what the checkpoint records."""
    extra = {"config": {**config, "fold": k, "seed": fresh.seed}, "identity": identity, "n_train": int(train.sum()),
             "train_items_sha256": identity["train_items_sha256"]}  # fmt: skip
    return FoldJob(fold=k, params=fresh.get_params(), train=np.flatnonzero(train), held_out=np.flatnonzero(held_out),
                   path=path, extra=extra, estimator=type(fresh))  # fmt: skip


def fold_scores(table: DatasetTable, S: np.ndarray, models: dict[int, CRNNClassifier]) -> tuple[np.ndarray, np.ndarray]:
    """Every item's class probabilities and whether it has any.

    A development item of fold *k* is scored by fold *k*'s model (out of fold); a test item by the mean of
    the fold models' probabilities (the paper's mean fusion), summed in the order of ``models``.

    Returns
    -------
    scores : ndarray, shape (n_items, n_classes)
    scored : ndarray of bool, shape (n_items,)
        False for the development items of folds not run.
    """
    dev = table.partitions() == "dev"
    item_folds = table.folds()
    test_index = np.flatnonzero(~dev)
    scores = np.zeros((len(table), len(table.classes)))
    scored = np.zeros(len(table), dtype=bool)
    test_sum = np.zeros((len(test_index), len(table.classes)))
    for k, model in models.items():
        held_out = dev & (item_folds == k)
        scores[held_out] = model.predict_proba(S[held_out])
        scored |= held_out
        if len(test_index):
            test_sum += model.predict_proba(S[test_index])
    if len(test_index):
        scores[test_index] = test_sum / len(models)
        scored[test_index] = True
    return scores, scored


def _has_channels(table: DatasetTable) -> bool:
    return any(i.channel is not None for i in table)


def scored_predictions(table: DatasetTable, scores, scored, *, config: dict, combine: str) -> Predictions:
    """The predictions of the scored items (channel items combined per segment with ``combine``)."""
    from specfusion.evaluation.predictions import predictions_from_items

    keep = np.flatnonzero(scored)
    sub = table.subset(keep)
    return predictions_from_items(
        names=sub.uids(), segments=[i.name for i in sub] if _has_channels(table) else None, folds=sub.folds(),
        partitions=sub.partitions(), labels=sub.labels(), scores=scores[keep], classes=list(table.classes),
        kind="proba", config=config, combine=combine,
    )  # fmt: skip
