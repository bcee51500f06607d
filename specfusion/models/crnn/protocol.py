"""The CRNN's fold protocol (:func:`crnn_fold_protocol`, on Mel-spectrograms; the estimator is
:class:`specfusion.models.crnn.CRNNClassifier`): one model per development fold, trained on the other folds; its probabilities for the held-out fold are
the development (out-of-fold) predictions, and the test predictions are the mean of the fold models'
probabilities (the paper's mean fusion). Spectrograms are computed once and cached on disk
(:mod:`specfusion.models.crnn.spectrograms`); each fold's model is saved as a checkpoint and a re-run skips
finished folds. Fixed seeds give identical results on the same machine (and torch version).

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
from specfusion.identity import items_digest, labelled_items_digest, rows_digest
from specfusion.models.crnn.estimator import NETWORK_VERSION, CRNNClassifier, _plain_json, model_identity
from specfusion.models.crnn.parallel import FoldJob, train_folds
from specfusion.models.crnn.spectrograms import protocol_spec_params, spectrogram_set
from specfusion.models.crnn.variants import variant_defaults

if TYPE_CHECKING:
    from specfusion.features.spectrogram import MelSpecParams

log = logging.getLogger(__name__)

#: The learning-curve PNG :func:`crnn_fold_protocol` writes in its output folder.
LEARNING_CURVE = "learning_curve.png"


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
        :func:`specfusion.distributed.extraction.connect` takes, e.g. ``"local:2"``, or a client); the spectrograms
        are scattered to it once. See :mod:`specfusion.models.crnn.parallel`.
    **estimator_params
        Further :class:`CRNNClassifier` parameters (epochs, lr, batch_size, filters, seed, device, ...).

    Returns
    -------
    CRNNResult
    """
    from specfusion.evaluation.predictions import predictions_from_items, write_predictions
    from specfusion.features.spectrogram import non_default_params

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
