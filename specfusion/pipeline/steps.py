"""The pipeline's steps, each written once: extract a store, score an SVM system, train a CRNN system, fuse.

A step takes its inputs and writes one folder: ``predictions.csv`` (and ``predictions.json``), the
evaluation files (``metrics.json``, ``report.md``, confusion and per-class F1 charts;
:func:`specfusion.evaluation.metrics.write_evaluation`), ``model.sfm`` (the fitted system, docs/models.md)
and, for a CRNN, its learning curve. It returns a :class:`StepResult`.

``specfusion svm`` and ``specfusion crnn`` parse their arguments and call a step; the recipe runner
(:mod:`specfusion.pipeline.runner`) calls the same steps inside its cache: it skips a step whose
predictions carry the step's cache key, and otherwise passes a :class:`CacheRecord`, which the step
writes into the predictions. A model that cannot be saved (say, an extractor that its configuration
cannot rebuild) is left out with a warning: the step's results are kept.

Examples
--------
>>> from specfusion.models.svm import LinearSVM                                    # doctest: +SKIP
>>> step = score_svm_system("features/esc50-lite0.h5", "runs/svm", estimator=LinearSVM(), name="Lite0")
>>> step.metrics["devel"], step.model_saved                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from specfusion.data.datasets import DatasetTable
    from specfusion.evaluation.predictions import Predictions
    from specfusion.features.extraction import ExtractionResult
    from specfusion.features.extractors import Extractor
    from specfusion.models.svm import LinearSVM

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
#: What a step writes beside its predictions, replaced as a set where its folder also holds a CRNN's
#: checkpoints and spectrogram cache (those stay).
STEP_OUTPUTS = ("metrics.json", "report.md", "confusion_*.png", "class_f1_*.png", "model.sfm")
#: What the refusal of an incomplete feature store suggests, unless the caller knows better.
FINISH_EXTRACTION = "Finish the extraction, or pass allow_incomplete=True."


@dataclasses.dataclass(frozen=True)
class CacheRecord:
    """What the recipe runner records in a step's predictions, for a later run that reuses them.

    Parameters
    ----------
    key : str
        The step's cache key (recorded with the specfusion version).
    table : DatasetTable
        The run's dataset: the predictions record which of its items they score (``coverage``,
        docs/reliability.md), which a reuse reports again.
    """

    key: str
    table: DatasetTable


@dataclasses.dataclass
class StepResult:
    """What a step wrote into its folder ``out_dir``.

    Attributes
    ----------
    out_dir : Path
    predictions : Predictions
        As written to ``out_dir / "predictions.csv"``.
    metrics : dict
        As written to ``out_dir / "metrics.json"``.
    model_saved : bool
        Whether ``model.sfm`` was written.
    fit : object
        The protocol's own result: :class:`~specfusion.models.svm_protocol.FoldResult`,
        :class:`~specfusion.models.crnn.protocol.CRNNResult` or :class:`~specfusion.fusion.methods.FusionResult`.
    """

    out_dir: Path
    predictions: Predictions
    metrics: dict[str, Any]
    model_saved: bool
    fit: Any

    @property
    def predictions_path(self) -> Path:
        """``out_dir / "predictions.csv"``."""
        return self.out_dir / PREDICTIONS_FILE


# -- the steps ------------------------------------------------------------------------------------------
def extract_store(
    table: DatasetTable,
    extractor_name: str,
    store_path,
    *,
    options: Mapping[str, Any] | None = None,
    extractor: Extractor | None = None,
    dask=None,
    progress: bool = False,
    short: str = "pad",
    **engine,
) -> ExtractionResult:
    """Extract the features of every item of ``table`` into the store at ``store_path`` (created or resumed).

    Parameters
    ----------
    table : DatasetTable
    extractor_name : str
        Registered extractor name.
    store_path : path-like
    options : mapping, optional
        The extractor's keyword options (``get_extractor(extractor_name, **options)``).
    extractor : Extractor, optional
        The extractor built from them, when the caller has it already; its network is released at the
        end (its configuration, which a model file records, stays).
    dask : str or distributed.Client, optional
        Extract on this Dask cluster (docs/distributed.md); the store is written here and is the same.
    progress : bool
    short : {"pad", "error"}
        The short-clip policy (:func:`specfusion.features.extraction.extract`).
    **engine
        Further options of :func:`~specfusion.features.extraction.extract` (``batch_size``, ``workers`` ...).

    Returns
    -------
    ExtractionResult
    """
    from specfusion.features.runtimes import release_runtimes
    from specfusion.memory import release_freed_memory

    result = _extract(table, extractor_name, store_path, options=dict(options or {}), extractor=extractor, dask=dask,
                      progress=progress, short=short, **engine)  # fmt: skip
    if extractor is not None:
        release_runtimes(extractor)
    release_freed_memory()  # the next step's peak should not stand on the network's freed heap
    return result


def score_svm_system(
    store_path,
    out_dir,
    *,
    estimator: LinearSVM,
    name: str,
    extractor: Extractor | None = None,
    extractor_options: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    allow_incomplete: bool = False,
    allow_failed: bool = False,
    refusal_hint: str = FINISH_EXTRACTION,
    config: Mapping[str, Any] | None = None,
    cache: CacheRecord | None = None,
    protocol_details: bool = True,
    progress: bool | str = False,
    dask=None,
    **protocol,
) -> StepResult:
    """The paper's linear SVM on a feature store: out-of-fold development and test scores, evaluation, model file.

    Parameters
    ----------
    store_path : path-like
        Feature store (:func:`extract_store`, ``specfusion extract``).
    out_dir : path-like
        The step's folder, replaced as a whole (:mod:`specfusion.pipeline.outputs`).
    estimator : LinearSVM
        Unfitted template: C grid, search metric, solver, threads.
    name : str
        The system's name in the evaluation files.
    extractor, extractor_options : Extractor and mapping, optional
        The extractor that made the store and the options that rebuild it, for ``model.sfm``; default:
        rebuilt from the store's configuration (:func:`~specfusion.pipeline.systems.extractor_from_store_config`).
    model_name : str, optional
        The system's name in ``model.sfm`` (default: the store's extractor name).
    allow_incomplete : bool
        Score a store with pending or failed items on the items that have features (refused by default).
    allow_failed : bool
        Score a store whose missing items all failed (audio that cannot be used); pending items, an
        unfinished extraction, are still refused.
    refusal_hint : str
        What the refusal of an incomplete store tells the user to do.
    config : mapping, optional
        Recorded in the predictions' configuration, with the store's coverage unless ``cache`` is given
        (then the coverage counted against the run's dataset is recorded instead).
    cache : CacheRecord, optional
        The recipe runner's record.
    protocol_details : bool
        Add the chosen C, the per-fold C and the C search's table to ``metrics.json``.
    progress : bool or str
        A progress bar counting the SVM fits (a string: its description).
    dask : str or distributed.Client, optional
        Run the C search's fits and the refit on this Dask cluster (docs/distributed.md); the result is the same.
    **protocol
        Options of :func:`~specfusion.models.svm_protocol.svm_fold_protocol` (``c_selection``, ``combine``).

    Returns
    -------
    StepResult
        ``fit`` is the :class:`~specfusion.models.svm_protocol.FoldResult`.

    Raises
    ------
    StoreError
        The store is incomplete and that is not allowed.
    """
    from specfusion.evaluation.coverage import store_coverage
    from specfusion.features.store import FeatureStore
    from specfusion.models.svm_protocol import svm_from_arrays

    store = FeatureStore.open(store_path)
    coverage = store_coverage(store)
    _refuse_unscorable(coverage, store_path, allow_incomplete=allow_incomplete, allow_failed=allow_failed,
                       hint=refusal_hint)  # fmt: skip
    arrays = store.arrays()
    recorded = dict(config or {})
    if cache is None:  # else the coverage counted against the run's dataset is recorded after the fit
        recorded["coverage"] = coverage.as_dict()
    with _svm_backend(dask) as backend:  # the coverage was checked above: score the items that have features
        fit = svm_from_arrays(arrays, estimator=estimator, allow_incomplete=True, config=recorded, progress=progress,
                              backend=backend, **protocol)  # fmt: skip
    channels = _channel_policy(arrays, fit.predictions)
    model = _model_bytes(lambda: _svm_model_bytes(store, fit.model, extractor, extractor_options, model_name, channels))
    details = _svm_details(fit) if protocol_details else None
    _record_cache(fit.predictions, cache, name, reasons={m["item"]: m["reason"] for m in coverage.missing},
                  model_saved=model is not None)  # fmt: skip
    metrics = _write_outputs(out_dir, fit.predictions, metric=arrays.metric or "accuracy", name=name, model=model,
                             extra=details)  # fmt: skip
    return StepResult(Path(out_dir), fit.predictions, metrics, model is not None, fit)


def train_crnn_system(
    table: DatasetTable,
    out_dir,
    *,
    name: str,
    work_dir=None,
    short: str = "pad",
    config: Mapping[str, Any] | None = None,
    cache: CacheRecord | None = None,
    protocol_details: bool = True,
    progress: bool = False,
    dask=None,
    **options,
) -> StepResult:
    """The paper's CRNN, one model per development fold: out-of-fold and test probabilities, evaluation, model file.

    Parameters
    ----------
    table : DatasetTable
    out_dir : path-like
        The step's folder.
    name : str
        The system's name in the evaluation files and ``model.sfm``.
    work_dir : path-like, optional
        The fold checkpoints, the spectrogram cache and the learning curve (resumable); default
        ``out_dir`` itself, whose outputs are then replaced as a set while those stay. Otherwise
        ``out_dir`` is replaced as a whole, with a copy of the learning curve.
    short : {"pad", "error"}
        The short-clip policy of the spectrograms.
    config : mapping, optional
        Added to the predictions' configuration.
    cache : CacheRecord, optional
        The recipe runner's record.
    protocol_details : bool
        Add every fold's training history and the items left out (unusable audio) to ``metrics.json``.
    progress : bool
    dask : str or distributed.Client, optional
        Train the folds on this Dask cluster (docs/distributed.md); the result is the same.
    **options
        Options of :func:`~specfusion.models.crnn.protocol.crnn_fold_protocol` and the estimator's parameters
        (variant, epochs, device, n_jobs ...).

    Returns
    -------
    StepResult
        ``fit`` is the :class:`~specfusion.models.crnn.protocol.CRNNResult`.
    """
    from specfusion.models.crnn.protocol import crnn_fold_protocol
    from specfusion.pipeline.systems import crnn_result_bytes

    return _fold_models_step(crnn_fold_protocol, crnn_result_bytes, table, out_dir, name=name, work_dir=work_dir,
                             short=short, config=config, cache=cache, protocol_details=protocol_details,
                             progress=progress, dask=dask, **options)  # fmt: skip


def train_finetune_system(
    table: DatasetTable,
    out_dir,
    *,
    name: str,
    work_dir=None,
    short: str = "pad",
    config: Mapping[str, Any] | None = None,
    cache: CacheRecord | None = None,
    protocol_details: bool = True,
    progress: bool = False,
    dask=None,
    **options,
) -> StepResult:
    """A pretrained network fine-tuned per development fold: out-of-fold and test probabilities, evaluation, model file.

    The CRNN step's machinery (:func:`train_crnn_system`: the same folder layout, checkpoints, resume, back-ends)
    with :func:`~specfusion.models.finetune.protocol.finetune_fold_protocol`.

    Parameters
    ----------
    table, out_dir, name, work_dir, short, config, cache, protocol_details, progress, dask
        As :func:`train_crnn_system`.
    **options
        Options of :func:`~specfusion.models.finetune.protocol.finetune_fold_protocol` and the estimator's
        parameters (network, freeze, epochs, device, n_jobs ...).

    Returns
    -------
    StepResult
        ``fit`` is the protocol's :class:`~specfusion.models.crnn.protocol.CRNNResult`.
    """
    from specfusion.models.finetune.protocol import finetune_fold_protocol
    from specfusion.pipeline.finetune_files import finetune_result_bytes

    return _fold_models_step(finetune_fold_protocol, finetune_result_bytes, table, out_dir, name=name,
                             work_dir=work_dir, short=short, config=config, cache=cache,
                             protocol_details=protocol_details, progress=progress, dask=dask, **options)  # fmt: skip


def _fold_models_step(protocol, result_bytes, table, out_dir, *, name: str, work_dir, short: str, config, cache,
                      protocol_details: bool, progress: bool, dask, **options) -> StepResult:  # fmt: skip
    """A fold-models step (CRNN, fine-tuning): ``protocol`` into ``work_dir``, its model file by ``result_bytes``."""
    from specfusion.models.crnn.protocol import LEARNING_CURVE

    out_dir = Path(out_dir)
    work_dir = out_dir if work_dir is None else Path(work_dir)
    fit = _crnn_folds(table, work_dir, dask=dask, progress=progress, short=short, protocol=protocol, **options)
    fit.predictions.config.update(config or {})
    model = _model_bytes(lambda: result_bytes(fit, table, short=short, name=name))
    details = _crnn_details(fit, table) if protocol_details else None
    _record_cache(fit.predictions, cache, name, model_saved=model is not None)
    shared = work_dir == out_dir
    metrics = _write_outputs(out_dir, fit.predictions, metric=table.metric, name=name, model=model, extra=details,
                             keep_others=shared,
                             attachments=() if shared else (work_dir / LEARNING_CURVE,))  # fmt: skip
    return StepResult(out_dir, fit.predictions, metrics, model is not None, fit)


def fuse_systems(
    member_predictions: Sequence,
    out_dir,
    *,
    member_names: Sequence[str],
    name: str,
    method: str,
    metric: str,
    config: Mapping[str, Any] | None = None,
    cache: CacheRecord | None = None,
    **options,
) -> StepResult:
    """Fuse base systems' predictions files with ``method``: fused predictions, evaluation, model file.

    Parameters
    ----------
    member_predictions : sequence of path-like
        The members' ``predictions.csv``; each member's ``model.sfm`` beside it is nested in the fusion's.
    out_dir : path-like
        The step's folder, replaced as a whole.
    member_names : sequence of str
    name : str
        The fusion's name in the evaluation files and ``model.sfm``.
    method : str
        :func:`specfusion.fusion.methods.fuse`'s method.
    metric : str
        The dataset's metric: every choice the fusion makes, and its evaluation.
    config : mapping, optional
        Added to the predictions' configuration.
    cache : CacheRecord, optional
        The recipe runner's record.
    **options
        Further options of :func:`~specfusion.fusion.methods.fuse` (``n_jobs`` ...).

    Returns
    -------
    StepResult
        ``fit`` is the :class:`~specfusion.fusion.methods.FusionResult`.

    Raises
    ------
    StoreError
        The members have no scored item in common.
    """
    from specfusion.evaluation.predictions import read_predictions
    from specfusion.fusion.methods import fuse
    from specfusion.pipeline.systems import fusion_result_bytes

    paths = [Path(p) for p in member_predictions]
    names = list(member_names)
    inputs = _common_items([read_predictions(p) for p in paths], names)
    fit = fuse(inputs, method=method, system_names=names, metric=metric, **options)
    fit.predictions.config.update(config or {})
    model = _model_bytes(lambda: fusion_result_bytes(fit, paths, names, name=name))
    _record_cache(fit.predictions, cache, name, model_saved=model is not None)
    metrics = _write_outputs(out_dir, fit.predictions, metric=metric, name=name, model=model)
    return StepResult(Path(out_dir), fit.predictions, metrics, model is not None, fit)


# -- where the work runs: this process, or a Dask cluster (docs/distributed.md) --------------------------
def _extract(table, extractor_name: str, store_path, *, options: dict, extractor, dask, **engine):
    """:func:`~specfusion.features.extraction.extract` here, or its Dask twin where each worker builds the extractor."""
    if dask is not None:
        from specfusion.distributed.extraction import extract_distributed

        return extract_distributed(table, extractor_name, store_path, options=options, dask=dask, **engine)
    from specfusion.features.extraction import extract
    from specfusion.features.extractors import get_extractor

    return extract(table, extractor or get_extractor(extractor_name, **options), store_path, **engine)


@contextlib.contextmanager
def _svm_backend(dask) -> Iterator:
    """The fit backend of the ``LinearSVM`` fits: on the Dask cluster ``dask`` (an address or a client), else None (here)."""
    if dask is None:
        yield None
        return
    from specfusion.distributed.client import session
    from specfusion.distributed.svm import DaskFits

    with session(dask) as client:
        yield DaskFits(client)


def _crnn_folds(table, work_dir: Path, *, dask, protocol=None, **options):
    """``protocol`` (default :func:`~specfusion.models.crnn.protocol.crnn_fold_protocol`) into ``work_dir``, its folds
    on ``dask`` if given."""
    if protocol is None:
        from specfusion.models.crnn.protocol import crnn_fold_protocol as protocol
    if dask is None:
        return protocol(table, out_dir=work_dir, **options)
    from specfusion.distributed.crnn import DaskFolds

    return protocol(table, out_dir=work_dir, backend=DaskFolds(dask), **options)


# -- helpers -----------------------------------------------------------------------------------------------
def _refuse_unscorable(coverage, store_path, *, allow_incomplete: bool, allow_failed: bool, hint: str) -> None:
    """StoreError when the store misses items that may not be left out: any, or with ``allow_failed`` pending ones."""
    from specfusion.evaluation.coverage import refuse_incomplete

    pending = any(m["reason"].startswith("pending") for m in coverage.missing)
    if allow_incomplete or (allow_failed and not pending):
        return
    refuse_incomplete(coverage, what=str(store_path), hint=hint)


def _channel_policy(arrays, predictions) -> dict:
    """``channels="each"`` and the protocol's ``combine`` for a store of channel items (DCASE 2018 task 5), so that
    the model file scores a file per channel as the run did; empty (down-mixed files) otherwise."""
    import numpy as np

    if not (np.asarray(arrays.channels) >= 0).any():
        return {}
    return {"channels": "each", "combine": predictions.config.get("combine", "mean")}


def _svm_model_bytes(store, svm, extractor, extractor_options, model_name, channels: dict) -> bytes:
    """``model.sfm`` of an SVM fitted on ``store``'s features, with the extractor given or rebuilt from the store;
    ``channels``: :func:`_channel_policy`."""
    from specfusion.pipeline.systems import extractor_from_store_config, svm_system_bytes

    config = store.config
    if extractor is None:
        extractor, extractor_options = extractor_from_store_config(config, device="cpu")
    name = str(config.get("extractor", "")) if model_name is None else model_name
    return svm_system_bytes(svm, extractor, extractor_options=dict(extractor_options or {}),
                            short=config.get("short", "pad"), batch_size=store.chunk_size, name=name,
                            **channels)  # fmt: skip


def _svm_details(fit) -> dict:
    """``metrics.json``'s account of the C search: the chosen C, each fold's C, the search's table."""
    return {
        "best_C": fit.best_C,
        "fold_C": {str(k): c for k, c in fit.fold_C.items()},
        "c_search": fit.model.cv_table(),
    }


def _crnn_details(fit, table) -> dict:
    """``metrics.json``'s account of the CRNN's training: every fold's history, the items left out."""
    left_out = fit.predictions.config.get("left_out", {"n": 0, "of": len(table), "items": []})
    return {"histories": {str(k): h for k, h in fit.histories.items()}, "left_out": left_out}


def _model_bytes(make: Callable[[], bytes]) -> bytes | None:
    """``make()``'s model-file bytes, or None with a warning when the model cannot be saved."""
    from specfusion.errors import SpecfusionError
    from specfusion.pipeline.systems import MODEL_FILE

    try:
        return make()
    except Exception as err:  # noqa: BLE001 -- a model that cannot be saved must not lose the step's results
        reason = err if isinstance(err, SpecfusionError) else f"{type(err).__name__}: {err}"
        log.warning("no %s saved: %s", MODEL_FILE, reason)
        return None


def _record_cache(predictions, cache: CacheRecord | None, name: str, reasons: dict[str, str] | None = None,
                  *, model_saved: bool | None = None) -> None:  # fmt: skip
    """Write ``cache``'s key, the specfusion version and the coverage of its dataset into the predictions' configuration.

    ``reasons`` maps items to why they have no prediction (default "no prediction"); missing items are
    logged as a warning too. ``model_saved`` (recorded when given): whether the step wrote ``model.sfm``, so
    that the runner takes a step without one from its cache only when no model could be saved
    (:meth:`~specfusion.pipeline.runner.RecipeRunner` runs it again otherwise, to save one).
    """
    from specfusion import __version__  # read now: the version the cache keys carry (specfusion.identity)
    from specfusion.evaluation.coverage import predictions_coverage

    if cache is None:
        return
    coverage = predictions_coverage(cache.table, predictions.names, reasons)
    predictions.config["cache_key"] = cache.key
    predictions.config["specfusion_version"] = __version__
    predictions.config["coverage"] = coverage.as_dict()
    if model_saved is not None:
        predictions.config["model_saved"] = bool(model_saved)
    if not coverage.complete:
        log.warning("%s: %s; missing: %s", name, coverage.headline(), coverage.short_list())


def _write_outputs(
    out_dir,
    predictions,
    *,
    metric: str,
    name: str,
    model: bytes | None,
    extra: dict | None = None,
    attachments: tuple[Path, ...] = (),
    keep_others: bool = False,
) -> dict:
    """Write a step's folder: predictions, evaluation, ``model.sfm`` and ``attachments`` (where they exist).

    The folder is replaced as a whole, or with ``keep_others`` only its :data:`STEP_OUTPUTS` and
    predictions (a CRNN's checkpoints beside them stay). Returns the metrics.
    """
    from specfusion.evaluation.metrics import write_evaluation
    from specfusion.evaluation.predictions import write_predictions
    from specfusion.pipeline.systems import MODEL_FILE

    with _new_outputs(Path(out_dir), keep_others=keep_others) as new:
        metrics = write_evaluation(new, predictions, metric=metric, name=name, extra=extra)
        for attachment in attachments:
            if attachment.is_file():
                shutil.copy2(attachment, new / attachment.name)
        if model is not None:
            (new / MODEL_FILE).write_bytes(model)
        write_predictions(new / PREDICTIONS_FILE, predictions)
    return metrics


@contextlib.contextmanager
def _new_outputs(out_dir: Path, *, keep_others: bool) -> Iterator[Path]:
    """An empty folder whose files replace ``out_dir``'s on success: all of them, or with ``keep_others`` the
    :data:`STEP_OUTPUTS` (an output this run does not write is removed, never left from an earlier run)."""
    from specfusion.pipeline.outputs import replace_files, replaced_folder

    if not keep_others:
        with replaced_folder(out_dir) as new:
            yield new
        return
    new = Path(tempfile.mkdtemp(prefix=".outputs.new-", dir=out_dir))
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    replace_files(out_dir, new, STEP_OUTPUTS)


def _common_items(systems: list, names: list[str]) -> list:
    """The members' predictions restricted to the items every member scores (logged when some are dropped)."""
    import numpy as np

    from specfusion.errors import StoreError

    common = set(systems[0].names.tolist())
    for p in systems[1:]:
        common &= set(p.names.tolist())
    if not common:
        raise StoreError(f"the members {', '.join(names)} have no scored item in common")
    trimmed = []
    for name, p in zip(names, systems):
        if len(p) != len(common):
            log.warning("fusion: %s scores %d items, only %d are scored by every member", name, len(p), len(common))
        trimmed.append(p.subset(np.array([n in common for n in p.names.tolist()], dtype=bool)))
    return trimmed
