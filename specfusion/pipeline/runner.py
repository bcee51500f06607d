"""Run a recipe end to end through the caches: features -> SVMs, CRNNs -> stacking fusions -> report.

Layout of a run folder::

    RUN_DIR/
      features/<system>-<hash>.h5          feature stores (resumable)
      crnn/<system>/fold<k>.pt, ...        CRNN fold checkpoints and the spectrogram cache (resumable)
      systems/<system>/predictions.csv     base systems' predictions (+ metrics.json, report.md, confusion PNGs)
      systems/<system>/model.sfm           the fitted system, to apply to new audio (docs/models.md)
      fusions/<fusion>/predictions.csv     stacking fusions (+ the same evaluation files, model.sfm)
      results.json, report.md, report.html, confusion_best.png

Every step is keyed by the hash of everything that changes its result, with effective defaults filled
in (:meth:`RecipeRunner.svm_key`, :meth:`RecipeRunner.crnn_key`, :meth:`RecipeRunner.fusion_key`; the
specfusion version too), recorded in its predictions file as ``cache_key``: a step whose output exists
with the same key is not run again, so a second run of a finished recipe does no work, and a killed
run resumes (feature stores and CRNN folds resume inside a step too, under their own keys). A step's
folder under ``systems/`` or ``fusions/`` is replaced as a whole when it is recomputed
(:mod:`specfusion.pipeline.outputs`).

Systems whose weights are not available here (not cached, downloading off) are reported as *skipped*
with the reason, and fusions go on without them, naming what is missing; any other error of a system
(an invalid option, a corrupt file ...) makes it *failed* with the reason. A system whose feature store
has failed items (audio that could not be used) is scored on the other items, and results.json and
the reports say "scored n of N items" and list the missing ones (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from specfusion import __version__
from specfusion.errors import SpecfusionError, StoreError, WeightsUnavailableError
from specfusion.features.weights import sha256_file
from specfusion.identity import text_digest
from specfusion.pipeline.recipes import FusionSpec, Recipe, SystemSpec, config_hash, slug, split_best

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
#: LinearSVM parameters that change how fast, not what, it computes (left out of cache keys).
SVM_RUNTIME_PARAMS = frozenset({"n_jobs"})
TIMINGS_FILE = "timings.tsv"


def _defaults(func, names) -> dict[str, Any]:
    """The default values of keywords ``names`` of ``func`` (effective defaults for cache keys)."""
    params = inspect.signature(func).parameters
    return {n: params[n].default for n in names if n in params}


@dataclasses.dataclass
class StepOutcome:
    """What happened to one system or fusion."""

    name: str
    kind: str  # "base" | "fusion"
    block: str
    status: str = "ok"  # "ok" | "skipped" | "failed"
    reason: str = ""
    devel: float | None = None
    test: float | None = None
    predictions: str | None = None
    cached: bool = False
    members: list[str] = dataclasses.field(default_factory=list)
    missing_members: list[str] = dataclasses.field(default_factory=list)
    paper: dict[str, Any] = dataclasses.field(default_factory=dict)
    coverage: dict[str, Any] | None = None  # {"n_items", "n_scored", "missing": [...]}, only when incomplete
    method: str = ""  # fusions: the fusion method ("auto": with the method it chose)
    weights: dict[str, float] | None = None  # fusions: each member's share, where the method has weights
    n_items: dict[str, int] | None = None  # labelled items scored per partition: {"devel": n, "test": m}

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cached"}


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_recipe` returns: the outcomes and how many steps did work."""

    outcomes: list[StepOutcome]
    executed: list[str]
    results_path: Path
    report_paths: tuple[Path, Path]
    timings: list[dict] = dataclasses.field(default_factory=list)


def write_timings(out_dir: Path, timings: list[dict]) -> Path:
    """``timings.tsv`` (step, kind, seconds, cached, status) and ``timings.json`` in the run folder."""
    lines = ["step\tkind\tseconds\tcached\tstatus"]
    lines += [
        f"{t['step']}\t{t['kind']}\t{t['seconds']:.1f}\t{str(t['cached']).lower()}\t{t['status']}" for t in timings
    ]
    (out_dir / TIMINGS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    return out_dir / TIMINGS_FILE


def format_timings(timings: list[dict]) -> str:
    """One line per step: seconds, and whether it came from the cache."""
    width = max([len(t["step"]) for t in timings] + [4])
    rows = [f"{t['step']:<{width}}  {t['seconds']:8.1f} s  {'cached' if t['cached'] else t['status']}" for t in timings]
    return "\n".join(rows + [f"{'total':<{width}}  {sum(t['seconds'] for t in timings):8.1f} s"])


class RecipeRunner:
    """Runs one :class:`~specfusion.pipeline.recipes.Recipe` on one dataset into one run folder.

    Parameters
    ----------
    recipe : Recipe
    root : path-like
        Dataset root (for a ``csv`` dataset: the CSV file).
    out_dir : path-like
        Run folder.
    progress : bool
        One overall progress bar plus per-step bars.
    device : str, optional
        Torch device for extraction and CRNN training (default: a GPU when torch sees one).
    """

    def __init__(self, recipe: Recipe, *, root, out_dir, progress: bool = False, device: str | None = None):
        self.recipe = recipe
        self.root = Path(root)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.device = device
        self.executed: list[str] = []
        self._table = None
        self._dask = None  # the Dask client of a run with [run] dask (distributed.session)

    # -- helpers -------------------------------------------------------------------------------------
    @property
    def table(self):
        if self._table is None:
            from specfusion.data.datasets import load_dataset

            self._table = load_dataset(self.recipe.dataset_kind, self.root, **self.recipe.dataset_options)
        return self._table

    def dataset_key(self) -> dict[str, Any]:
        """What identifies the dataset in cache keys: kind, options and the items with their folds."""
        table = self.table
        items = text_digest("\n".join(f"{i.uid}\t{i.label}\t{i.fold}\t{i.partition}" for i in table))
        return {
            "kind": self.recipe.dataset_kind,
            "options": self.recipe.dataset_options,
            "items": items,
            "short": self.recipe.dataset_short,
        }

    def _cached_outcome(self, outcome: StepOutcome, path: Path, key: str) -> bool:
        """Fill ``outcome`` from an existing predictions file with cache key ``key``."""
        from specfusion.evaluation.metrics import evaluate_predictions
        from specfusion.evaluation.predictions import read_predictions

        if not path.is_file():
            return False
        try:
            predictions = read_predictions(path)
        except StoreError as err:
            log.warning("ignoring unreadable cached predictions %s (%s)", path, err)
            return False
        if predictions.config.get("cache_key") != key:
            return False
        metrics = evaluate_predictions(predictions, metric=self.table.metric)
        outcome.devel, outcome.test = metrics["devel"], metrics["test"]
        outcome.n_items = _item_counts(metrics)
        outcome.predictions = str(path.relative_to(self.out_dir))
        outcome.coverage = _incomplete(predictions.config.get("coverage"))
        outcome.cached = True
        return True

    def _finish(
        self,
        outcome: StepOutcome,
        predictions,
        path: Path,
        key: str,
        *,
        reasons: dict[str, str] | None = None,
        attachments: tuple[Path, ...] = (),
    ) -> None:
        """Record the cache key and coverage, write predictions + evaluation (the folder replaced whole), fill ``outcome``.

        ``attachments`` (e.g. the CRNN's learning curve) are copied into the step's folder when they exist.
        """
        from specfusion.evaluation.coverage import predictions_coverage
        from specfusion.evaluation.metrics import write_evaluation
        from specfusion.evaluation.predictions import write_predictions
        from specfusion.pipeline.outputs import replaced_folder

        coverage = predictions_coverage(self.table, predictions.names, reasons)
        predictions.config["cache_key"] = key
        predictions.config["specfusion_version"] = __version__
        predictions.config["coverage"] = coverage.as_dict()
        if not coverage.complete:
            log.warning("%s: %s; missing: %s", outcome.name, coverage.headline(), coverage.short_list())
        with replaced_folder(path.parent) as new:
            metrics = write_evaluation(new, predictions, metric=self.table.metric, name=outcome.name)
            for attachment in attachments:
                if attachment.is_file():
                    shutil.copy2(attachment, new / attachment.name)
            write_predictions(new / path.name, predictions)
        outcome.devel, outcome.test = metrics["devel"], metrics["test"]
        outcome.n_items = _item_counts(metrics)
        outcome.predictions = str(path.relative_to(self.out_dir))
        outcome.coverage = _incomplete(coverage.as_dict())
        self.executed.append(outcome.name)

    # -- base systems --------------------------------------------------------------------------------
    def run_system(self, spec: SystemSpec) -> StepOutcome:
        outcome = StepOutcome(name=spec.name, kind="base", block=spec.block, paper=dataclasses.asdict(spec.paper))
        try:
            if spec.kind == "crnn":
                self._run_crnn(spec, outcome)
            else:
                self._run_features_svm(spec, outcome)
        except WeightsUnavailableError as err:  # an optional resource is missing: the only "skipped"
            outcome.status, outcome.reason = "skipped", str(err)
            log.warning("%s: skipped: %s", spec.name, err)
        except SpecfusionError as err:
            outcome.status, outcome.reason = "failed", str(err)
            log.error("%s: failed: %s", spec.name, err)
        return outcome

    def svm_key(self, feature_config: dict[str, Any], estimator) -> str:
        """Cache key of a feature system's SVM step: features, effective LinearSVM and protocol parameters, version."""
        from specfusion.models.svm_protocol import svm_fold_protocol

        params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in SVM_RUNTIME_PARAMS}
        protocol = _defaults(svm_fold_protocol, ("c_selection", "combine"))
        return config_hash({**feature_config, "svm": params, "protocol": protocol, "specfusion_version": __version__})

    def _run_features_svm(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.evaluation.coverage import refuse_incomplete, store_coverage
        from specfusion.features.extraction import extract
        from specfusion.features.extractors import get_extractor
        from specfusion.features.runtimes import release_runtimes
        from specfusion.features.store import FeatureStore
        from specfusion.memory import release_freed_memory
        from specfusion.models.svm import LinearSVM
        from specfusion.models.svm_protocol import svm_from_arrays
        from specfusion.pipeline.systems import svm_system_bytes

        options = dict(spec.options)
        name = options.pop("extractor")
        engine = {k: options.pop(k) for k in ("batch_size", "workers") if k in options}
        svm_options = options.pop("svm", {})
        extractor = get_extractor(name, device=self.device, **options)  # WeightsUnavailableError -> skipped
        # The paper chooses C by macro F1 on every dataset (section 3.3); the C search fits
        # 4 folds x 10 C values: spread them over all cores.
        estimator = LinearSVM(**{"metric": "macro_f1", "n_jobs": -1, **svm_options})
        feature_config = {"extractor": name, "extractor_config": extractor.config(), "dataset": self.dataset_key()}
        key = self.svm_key(feature_config, estimator)
        path = self.out_dir / "systems" / slug(spec.name) / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        store_path = self.out_dir / "features" / f"{slug(spec.name)}-{config_hash(feature_config)}.h5"
        if self.recipe.dask:  # [run] dask: the same store, extracted on a Dask cluster (docs/distributed.md)
            from specfusion.distributed.extraction import extract_distributed

            dask = self._dask_target()
            extract_distributed(self.table, name, store_path, options={"device": self.device, **options}, dask=dask,
                                progress=self.progress, **engine, short=self.recipe.dataset_short)  # fmt: skip
        else:
            extract(
                self.table, extractor, store_path, progress=self.progress, short=self.recipe.dataset_short, **engine
            )
        release_runtimes(extractor)  # the C search below needs the extractor's configuration, not its network
        release_freed_memory()
        store = FeatureStore.open(store_path)
        coverage = store_coverage(store)
        pending = [m for m in coverage.missing if m["reason"].startswith("pending")]
        if pending:  # extract() returned, so this is not an interrupted run: never score it silently
            refuse_incomplete(coverage, what=str(store_path), hint="Run the recipe again to finish the extraction.")
        # failed items (audio that cannot be used) are recorded with their reasons: score the others, and say so
        result = svm_from_arrays(
            store.arrays(), estimator=estimator, allow_incomplete=True,
            config={"system_name": spec.name, "recipe_options": spec.options}, progress=self.progress and f"SVM {spec.name[:30]}",
        )  # fmt: skip
        with _model_file(lambda: svm_system_bytes(result.model, extractor, extractor_options=options, short=self.recipe.dataset_short,
                                                  batch_size=store.chunk_size, name=spec.name)) as model:  # fmt: skip
            self._finish(
                outcome,
                result.predictions,
                path,
                key,
                reasons={m["item"]: m["reason"] for m in coverage.missing},
                attachments=model,
            )

    def _dask_target(self):
        """The run's Dask client (inside :meth:`run`), else the recipe's ``[run] dask`` address (None: no Dask)."""
        return self._dask if self._dask is not None else self.recipe.dask

    def crnn_key(self, options: dict[str, Any]) -> str:
        """Cache key of a CRNN step: effective estimator parameters and fold-protocol options, dataset, version."""
        from specfusion.features.spectrogram import mel_params, non_default_params
        from specfusion.models.crnn import CRNNClassifier, model_identity, variant_defaults
        from specfusion.models.crnn.protocol import crnn_fold_protocol

        options = dict(options)
        protocol = _defaults(crnn_fold_protocol, ("variant", "clip_db", "sr", "combine", "folds"))
        protocol.update({k: options.pop(k) for k in list(protocol) if k in options})
        clip_db = protocol["clip_db"]
        protocol["clip_db"] = float(
            variant_defaults(protocol["variant"])["clip_db"] if clip_db is None else clip_db
        )  # -80 == -80.0
        options.pop("n_jobs", None)  # where the folds train (processes), never what they learn
        spectrogram = non_default_params(mel_params(options.pop("spec_params", None)))
        if spectrogram:  # only then: keys of recipes with the paper's spectrogram stay valid
            protocol["spec_params"] = spectrogram
        options.setdefault("metric", self.table.metric)
        options.setdefault("classes", list(self.table.classes))
        identity = model_identity(CRNNClassifier(variant=protocol["variant"], **options))
        return config_hash({"crnn": identity, "protocol": protocol, "dataset": self.dataset_key(), "metric": self.table.metric,
                            "specfusion_version": __version__})  # fmt: skip

    def _run_crnn(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.models.crnn.parallel import default_jobs
        from specfusion.models.crnn.protocol import LEARNING_CURVE, crnn_fold_protocol
        from specfusion.pipeline.systems import crnn_result_bytes

        options = dict(spec.options)
        key = self.crnn_key(options)
        # one thread: on a shared 2-core machine two threads train several times slower (docs/crnn.md)
        options.setdefault("num_threads", 1)
        # on the CPU the folds in parallel, one process per core (bit-identical to one after the other)
        options.setdefault("n_jobs", default_jobs(self.device))
        path = self.out_dir / "systems" / slug(spec.name) / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        work = self.out_dir / "crnn" / slug(spec.name)
        result = crnn_fold_protocol(
            self.table, out_dir=work, progress=self.progress, device=self.device, short=self.recipe.dataset_short,
            dask=self._dask_target(), **options,
        )  # fmt: skip
        result.predictions.config["system_name"] = spec.name
        with _model_file(
            lambda: crnn_result_bytes(result, self.table, short=self.recipe.dataset_short, name=spec.name)
        ) as model:
            self._finish(outcome, result.predictions, path, key, attachments=(work / LEARNING_CURVE, *model))

    # -- fusions -------------------------------------------------------------------------------------
    def resolve_members(
        self, fusion: FusionSpec, outcomes: dict[str, StepOutcome]
    ) -> tuple[list[StepOutcome], list[str]]:
        """(available members, names of members that were skipped/failed), applying ``best`` selectors."""
        chosen: list[StepOutcome] = []
        missing: list[str] = []
        for selector in fusion.members:
            best, plain = split_best(selector)
            matched = [outcomes[s.name] for s in self.recipe.select((plain,))]
            ok = [o for o in matched if o.status == "ok"]
            missing += [o.name for o in matched if o.status != "ok"]
            if best is not None:
                ok = sorted(ok, key=lambda o: -(o.devel or 0.0))[:best]
            chosen += [o for o in ok if o not in chosen]
        if fusion.best is not None:
            chosen = sorted(chosen, key=lambda o: -(o.devel or 0.0))[: fusion.best]
        order = {s.name: i for i, s in enumerate(self.recipe.systems)}
        chosen.sort(key=lambda o: order[o.name])
        return chosen, sorted(set(missing), key=lambda n: order[n])

    def fusion_key(self, fusion: FusionSpec, members: list[str], paths: list[Path]) -> str:
        """Cache key of a fusion: its method with every effective parameter, the members' predictions, version."""
        from specfusion.fusion.methods import method_config

        return config_hash({
            "fusion": members, "method": method_config(fusion.method, metric=self.table.metric),
            "inputs": [sha256_file(p) for p in paths], "specfusion_version": __version__,
        })  # fmt: skip

    def run_fusion(self, fusion: FusionSpec, outcomes: dict[str, StepOutcome]) -> StepOutcome:
        from specfusion.evaluation.predictions import read_predictions
        from specfusion.fusion.methods import fuse
        from specfusion.pipeline.systems import fusion_result_bytes

        outcome = StepOutcome(
            name=fusion.name,
            kind="fusion",
            block=fusion.block,
            paper=dataclasses.asdict(fusion.paper),
            method=fusion.method,
        )
        members, missing = self.resolve_members(fusion, outcomes)
        outcome.members = [m.name for m in members]
        outcome.missing_members = missing
        if not members:
            outcome.status, outcome.reason = "skipped", "none of its members could run"
            return outcome
        if len(members) == 1:  # fusing one system only re-scales it: not a fusion worth a row
            outcome.status, outcome.reason = (
                "skipped",
                f"only one of its members could run ({members[0].name}); a fusion needs two",
            )
            return outcome
        paths = [self.out_dir / m.predictions for m in members]
        # every choice the fusion makes is by the dataset's metric; the meta-SVM searches C by macro F1 (the paper)
        key = self.fusion_key(fusion, outcome.members, paths)
        path = self.out_dir / "fusions" / slug(fusion.name) / PREDICTIONS_FILE
        if not self._cached_outcome(outcome, path, key):
            try:
                inputs = _common_items([read_predictions(p) for p in paths], outcome.members)
                # the meta-SVM's C search fits folds x C values: spread them over all cores
                options = {"n_jobs": -1} if fusion.method == "stacking-svm" else {}
                result = fuse(
                    inputs, method=fusion.method, system_names=outcome.members, metric=self.table.metric, **options
                )
            except SpecfusionError as err:
                outcome.status, outcome.reason = "failed", str(err)
                log.error("%s: failed: %s", fusion.name, err)
                return outcome
            result.predictions.config["system_name"] = fusion.name
            with _model_file(lambda: fusion_result_bytes(result, paths, outcome.members, name=fusion.name)) as model:
                self._finish(outcome, result.predictions, path, key, attachments=model)
        config = read_predictions(path).config
        if config.get("chosen_method") and config["chosen_method"] != fusion.method:
            outcome.method = f"{fusion.method} ({config['chosen_method']})"
        outcome.weights = config.get("weights")
        return outcome

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        from specfusion.evaluation.report import render_report, write_results
        from specfusion.memory import release_freed_memory

        self.out_dir.mkdir(parents=True, exist_ok=True)
        table = self.table
        steps = len(self.recipe.systems) + len(self.recipe.fusions)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"run {self.recipe.title[:40]}", unit="step", position=0)
        outcomes: dict[str, StepOutcome] = {}
        timings: list[dict] = []

        def timed(name: str, kind: str, step):
            start = time.perf_counter()
            outcome = step()
            release_freed_memory()  # the next step's peak should not stand on this one's freed heap
            timings.append(
                {
                    "step": name,
                    "kind": kind,
                    "seconds": round(time.perf_counter() - start, 3),
                    "cached": outcome.cached,
                    "status": outcome.status,
                }
            )
            return outcome

        cluster = contextlib.ExitStack()
        try:
            if self.recipe.dask:  # one Dask client for the extraction shards, the SVM fits and the CRNN folds
                from specfusion.distributed.extraction import session

                self._dask = cluster.enter_context(session(self.recipe.dask))
            for spec in self.recipe.systems:
                if bar is not None:
                    bar.set_postfix_str(spec.name)
                outcomes[spec.name] = timed(spec.name, spec.kind, lambda: self.run_system(spec))  # noqa: B023 (called at once)
                if bar is not None:
                    bar.update(1)
            for fusion in self.recipe.fusions:
                if bar is not None:
                    bar.set_postfix_str(fusion.name)
                outcomes[fusion.name] = timed(fusion.name, "fusion", lambda: self.run_fusion(fusion, outcomes))  # noqa: B023 (called at once)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            cluster.close()
            self._dask = None
        ordered = list(outcomes.values())
        start = time.perf_counter()
        results_path = write_results(
            self.out_dir,
            dataset=table.name,
            metric=table.metric,
            title=self.recipe.title,
            systems=[o.as_dict() for o in ordered],
        )
        report_paths = render_report(self.out_dir)
        timings.append(
            {
                "step": "report",
                "kind": "report",
                "seconds": round(time.perf_counter() - start, 3),
                "cached": False,
                "status": "ok",
            }
        )
        write_timings(self.out_dir, timings)
        return RunSummary(
            outcomes=ordered,
            executed=list(self.executed),
            results_path=results_path,
            report_paths=report_paths,
            timings=timings,
        )


@contextlib.contextmanager
def _model_file(make):
    """``(path,)`` of a temporary ``model.sfm`` holding ``make()``'s bytes (:mod:`specfusion.pipeline.systems`), to attach to a
    step's folder; ``()`` with a warning when the model cannot be saved (the step's results still are)."""
    from specfusion.pipeline.systems import MODEL_FILE

    try:
        data = make()
    except Exception as err:  # noqa: BLE001 -- a model that cannot be saved must not lose the step's results
        log.warning(
            "no %s saved: %s", MODEL_FILE, err if isinstance(err, SpecfusionError) else f"{type(err).__name__}: {err}"
        )
        yield ()
        return
    with tempfile.TemporaryDirectory(prefix=".model-") as tmp:
        path = Path(tmp) / MODEL_FILE
        path.write_bytes(data)
        yield (path,)


def _item_counts(metrics: dict) -> dict[str, int]:
    """Labelled items scored per partition, from :func:`~specfusion.evaluation.metrics.evaluate_predictions`' result."""
    return {name: int(part["n_items"]) for name, part in metrics["partitions"].items()}


def _incomplete(coverage: dict | None) -> dict | None:
    """``coverage`` when it says items are missing, else None (complete results carry no coverage note)."""
    return coverage if coverage and coverage.get("n_scored") != coverage.get("n_items") else None


def _common_items(systems: list, names: list[str]) -> list:
    """The members' predictions restricted to the items every member scores (logged when some are dropped)."""
    import numpy as np

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


def run_recipe(recipe: Recipe, *, root, out_dir, progress: bool = False, device: str | None = None) -> RunSummary:
    """Run ``recipe`` on the dataset at ``root`` into ``out_dir``; see :class:`RecipeRunner`."""
    return RecipeRunner(recipe, root=root, out_dir=out_dir, progress=progress, device=device).run()
