"""Run a recipe end to end through the caches: features -> SVMs, CRNNs -> stacking fusions -> report.

Layout of a run folder::

    RUN_DIR/
      features/<system>-<hash>.h5          feature stores (resumable)
      crnn/<system>/fold<k>.pt, ...        CRNN fold checkpoints and the spectrogram cache (resumable)
      finetune/<system>/fold<k>.pt, ...    fine-tuned fold checkpoints and the input cache (resumable)
      systems/<system>/predictions.csv     base systems' predictions (+ metrics.json, report.md, confusion PNGs)
      systems/<system>/model.sfm           the fitted system, to apply to new audio (docs/models.md)
      fusions/<fusion>/predictions.csv     stacking fusions (+ the same evaluation files, model.sfm)
      results.json, report.md, report.html, confusion_best.png, audio.csv (every item's audio file)
      systems/<system>/report.html, fusions/<fusion>/report.html   each system's own page

Each step is one function of :mod:`specfusion.pipeline.steps`, the same that ``specfusion svm`` and
``specfusion crnn`` call; the runner adds the cache around it.

Every step is keyed by the hash of everything that changes its result, with effective defaults filled
in (:meth:`RecipeRunner.svm_key`, :meth:`RecipeRunner.crnn_key`, :meth:`RecipeRunner.fusion_key`, built by
:mod:`specfusion.identity`; the specfusion version too), recorded in its predictions file as ``cache_key``: a step whose output exists
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
import time
from pathlib import Path
from typing import Any

from specfusion import identity
from specfusion.errors import SpecfusionError, StoreError, WeightsUnavailableError
from specfusion.pipeline.recipes import FusionSpec, Recipe, SystemSpec, slug, split_best
from specfusion.pipeline.steps import (
    PREDICTIONS_FILE,
    CacheRecord,
    StepResult,
    extract_store,
    fuse_systems,
    score_svm_system,
    train_crnn_system,
)

log = logging.getLogger(__name__)

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
        recipe = self.recipe
        return identity.dataset_identity(
            self.table, kind=recipe.dataset_kind, options=recipe.dataset_options, short=recipe.dataset_short
        )

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
        if not _model_kept(path, predictions.config):
            return False
        metrics = evaluate_predictions(predictions, metric=self.table.metric)
        self._fill_outcome(outcome, metrics, path, predictions.config.get("coverage"))
        outcome.cached = True
        return True

    def _fill_outcome(self, outcome: StepOutcome, metrics: dict, path: Path, coverage: dict | None) -> None:
        """``outcome``'s scores, item counts, predictions file and coverage note from a step's metrics."""
        outcome.devel, outcome.test = metrics["devel"], metrics["test"]
        outcome.n_items = _item_counts(metrics)
        outcome.predictions = str(path.relative_to(self.out_dir))
        outcome.coverage = _incomplete(coverage)

    def _ran(self, outcome: StepOutcome, step: StepResult) -> None:
        """Fill ``outcome`` from a step just run (:mod:`specfusion.pipeline.steps`) and count it as executed."""
        self._fill_outcome(outcome, step.metrics, step.predictions_path, step.predictions.config.get("coverage"))
        self.executed.append(outcome.name)

    def _cache_record(self, key: str) -> CacheRecord:
        """What a step records for the cache: ``key``, and the coverage of this run's dataset."""
        return CacheRecord(key=key, table=self.table)

    # -- base systems --------------------------------------------------------------------------------
    def run_system(self, spec: SystemSpec) -> StepOutcome:
        outcome = StepOutcome(name=spec.name, kind="base", block=spec.block, paper=dataclasses.asdict(spec.paper))
        try:
            if spec.kind == "crnn":
                self._run_crnn(spec, outcome)
            elif spec.kind == "finetune":
                self._run_finetune(spec, outcome)
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
        return identity.svm_step_key(feature_config, params, protocol)

    def _run_features_svm(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.features.extractors import get_extractor
        from specfusion.models.svm import LinearSVM

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
        store_path = self.out_dir / "features" / f"{slug(spec.name)}-{identity.store_file_key(feature_config)}.h5"
        extract_store(
            self.table, name, store_path, options={"device": self.device, **options}, extractor=extractor,
            dask=self._dask_target() if self.recipe.dask else None,  # [run] dask: the same store (docs/distributed.md)
            progress=self.progress, short=self.recipe.dataset_short, **engine,
        )  # fmt: skip
        # extract_store returned, so pending items are no interrupted run: never score them silently; failed items
        # (audio that cannot be used) are recorded with their reasons: score the others, and say so.
        # The SVM fits run on the run's Dask session when there is one (run()).
        step = score_svm_system(
            store_path, path.parent, estimator=estimator, name=spec.name, extractor=extractor, extractor_options=options,
            model_name=spec.name, allow_failed=True, refusal_hint="Run the recipe again to finish the extraction.",
            config={"system_name": spec.name, "recipe_options": spec.options}, cache=self._cache_record(key),
            protocol_details=False, progress=self.progress and f"SVM {spec.name[:30]}", dask=self._dask,
        )  # fmt: skip
        self._ran(outcome, step)

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
        model = model_identity(CRNNClassifier(variant=protocol["variant"], **options))
        return identity.crnn_step_key(model, protocol, self.dataset_key(), self.table.metric)

    def _run_crnn(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.models.crnn.parallel import default_jobs

        options = dict(spec.options)
        key = self.crnn_key(options)
        # one thread: on a shared 2-core machine two threads train several times slower (docs/crnn.md)
        options.setdefault("num_threads", 1)
        # on the CPU the folds in parallel, one process per core (bit-identical to one after the other)
        options.setdefault("n_jobs", default_jobs(self.device))
        path = self.out_dir / "systems" / slug(spec.name) / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        step = train_crnn_system(
            self.table, path.parent, name=spec.name, work_dir=self.out_dir / "crnn" / slug(spec.name),
            short=self.recipe.dataset_short, config={"system_name": spec.name}, cache=self._cache_record(key),
            protocol_details=False, progress=self.progress, dask=self._dask_target(), device=self.device, **options,
        )  # fmt: skip
        self._ran(outcome, step)

    def finetune_key(self, options: dict[str, Any]) -> str:
        """Cache key of a fine-tuning step: the model's identity (effective parameters, pretrained weights), the
        fold-protocol options, dataset, version."""
        from specfusion.models.finetune import FineTuneClassifier, finetune_fold_protocol
        from specfusion.models.finetune.inputs import default_inputs

        options = dict(options)
        protocol = _defaults(finetune_fold_protocol, ("network", "inputs", "sr", "combine", "folds"))
        protocol.update({k: options.pop(k) for k in list(protocol) if k in options})
        protocol["inputs"] = protocol["inputs"] or default_inputs(protocol["network"])
        options.pop("n_jobs", None)  # where the folds train, never what they learn
        options.setdefault("metric", self.table.metric)
        options.setdefault("classes", list(self.table.classes))
        model = FineTuneClassifier(network=protocol["network"], **options).model_identity()
        return identity.finetune_step_key(model, protocol, self.dataset_key(), self.table.metric)

    def _run_finetune(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.models.crnn.parallel import default_jobs
        from specfusion.pipeline.steps import train_finetune_system

        options = dict(spec.options)
        key = self.finetune_key(options)
        options.setdefault("num_threads", 1)
        options.setdefault("n_jobs", default_jobs(self.device))
        path = self.out_dir / "systems" / slug(spec.name) / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        step = train_finetune_system(
            self.table, path.parent, name=spec.name, work_dir=self.out_dir / "finetune" / slug(spec.name),
            short=self.recipe.dataset_short, config={"system_name": spec.name}, cache=self._cache_record(key),
            protocol_details=False, progress=self.progress, dask=self._dask_target(), device=self.device, **options,
        )  # fmt: skip
        self._ran(outcome, step)

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

        method = method_config(fusion.method, metric=self.table.metric)
        return identity.fusion_step_key(members, method, [identity.file_digest(p) for p in paths])

    def run_fusion(self, fusion: FusionSpec, outcomes: dict[str, StepOutcome]) -> StepOutcome:
        from specfusion.evaluation.predictions import read_predictions

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
            # the meta-SVM's C search fits folds x C values: spread them over all cores
            options = {"n_jobs": -1} if fusion.method == "stacking-svm" else {}
            if fusion.method == "stacking-svm" and self._dask is not None:  # its fits on the run's Dask session
                from specfusion.distributed.svm import DaskFits

                options["backend"] = DaskFits(self._dask)
            try:
                step = fuse_systems(
                    paths, path.parent, member_names=outcome.members, name=fusion.name, method=fusion.method,
                    metric=self.table.metric, config={"system_name": fusion.name}, cache=self._cache_record(key),
                    **options,
                )  # fmt: skip
            except SpecfusionError as err:
                outcome.status, outcome.reason = "failed", str(err)
                log.error("%s: failed: %s", fusion.name, err)
                return outcome
            self._ran(outcome, step)
        config = read_predictions(path).config
        if config.get("chosen_method") and config["chosen_method"] != fusion.method:
            outcome.method = f"{fusion.method} ({config['chosen_method']})"
        outcome.weights = config.get("weights")
        return outcome

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run every system, then every fusion (each through its cache), then write results.json and the reports."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        timings: list[dict] = []
        with _progress_bar(self.progress, len(self.recipe.systems) + len(self.recipe.fusions),
                           f"run {self.recipe.title[:40]}") as bar, self._dask_session():  # fmt: skip
            outcomes = self._run_steps(bar, timings)
        ordered = list(outcomes.values())
        start = time.perf_counter()
        results_path, report_paths = self._write_reports(ordered)
        timings.append({"step": "report", "kind": "report", "seconds": round(time.perf_counter() - start, 3),
                        "cached": False, "status": "ok"})  # fmt: skip
        write_timings(self.out_dir, timings)
        return RunSummary(outcomes=ordered, executed=list(self.executed), results_path=results_path,
                          report_paths=report_paths, timings=timings)  # fmt: skip

    def _run_steps(self, bar, timings: list[dict]) -> dict[str, StepOutcome]:
        """Every system, then every fusion (which reads the systems' outcomes), each timed into ``timings``."""
        outcomes: dict[str, StepOutcome] = {}
        steps = [(s.name, s.kind, lambda s=s: self.run_system(s)) for s in self.recipe.systems]
        steps += [(f.name, "fusion", lambda f=f: self.run_fusion(f, outcomes)) for f in self.recipe.fusions]
        for name, kind, step in steps:
            if bar is not None:
                bar.set_postfix_str(name)
            outcomes[name] = _timed(name, kind, step, timings)
            if bar is not None:
                bar.update(1)
        return outcomes

    @contextlib.contextmanager
    def _dask_session(self):
        """With ``[run] dask``: one Dask client for the run's extraction shards, SVM fits and CRNN folds."""
        if not self.recipe.dask:
            yield
            return
        from specfusion.distributed.client import session

        try:
            with session(self.recipe.dask) as client:
                self._dask = client
                yield
        finally:
            self._dask = None

    def _write_reports(self, ordered: list[StepOutcome]) -> tuple[Path, tuple[Path, Path]]:
        """results.json and the reports rendered from it."""
        from specfusion.evaluation.report import render_report, write_audio_index, write_results

        table = self.table
        results_path = write_results(self.out_dir, dataset=table.name, metric=table.metric, title=self.recipe.title,
                                     systems=[o.as_dict() for o in ordered])  # fmt: skip
        write_audio_index(self.out_dir, table)  # the report's players link to the items' files
        return results_path, render_report(self.out_dir)


def _timed(name: str, kind: str, step, timings: list[dict]) -> StepOutcome:
    """Run ``step()``, free its heap, and append its time and status to ``timings``."""
    from specfusion.memory import release_freed_memory

    start = time.perf_counter()
    outcome = step()
    release_freed_memory()  # the next step's peak should not stand on this one's freed heap
    timings.append({"step": name, "kind": kind, "seconds": round(time.perf_counter() - start, 3),
                    "cached": outcome.cached, "status": outcome.status})  # fmt: skip
    return outcome


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar over the run's steps, or None when progress is off."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", position=0)
    try:
        yield bar
    finally:
        bar.close()


def _model_kept(path: Path, config: dict) -> bool:
    """Whether a step's cached folder has its ``model.sfm``, or the step recorded that none could be saved.

    A folder cached without one (a run made before model files existed, or a model file removed since) is run
    again, so that every system of a finished run has its model file; its predictions come out the same.
    """
    from specfusion.pipeline.systems import MODEL_FILE

    if (path.parent / MODEL_FILE).is_file() or config.get("model_saved") is False:
        return True
    log.info("%s: no %s beside the cached predictions; running the step again to save it", path.parent, MODEL_FILE)
    return False


def _item_counts(metrics: dict) -> dict[str, int]:
    """Labelled items scored per partition, from :func:`~specfusion.evaluation.metrics.evaluate_predictions`' result."""
    return {name: int(part["n_items"]) for name, part in metrics["partitions"].items()}


def _incomplete(coverage: dict | None) -> dict | None:
    """``coverage`` when it says items are missing, else None (complete results carry no coverage note)."""
    return coverage if coverage and coverage.get("n_scored") != coverage.get("n_items") else None


def run_recipe(recipe: Recipe, *, root, out_dir, progress: bool = False, device: str | None = None) -> RunSummary:
    """Run ``recipe`` on the dataset at ``root`` into ``out_dir``; see :class:`RecipeRunner`."""
    return RecipeRunner(recipe, root=root, out_dir=out_dir, progress=progress, device=device).run()
