"""Run a recipe end to end through the caches: features -> SVMs, CRNNs -> stacking fusions -> report.

Layout of a run folder::

    RUN_DIR/
      features/<system>-<hash>.h5          feature stores (resumable)
      systems/<system>/predictions.csv     base systems' predictions (+ metrics.json, confusion PNGs)
      systems/<system>/fold<k>.pt, ...     CRNN fold checkpoints and the spectrogram cache
      fusions/<fusion>/predictions.csv     fusions
      results.json, report.md, report.html, confusion_best.png

Every step is keyed by the hash of its configuration (recorded in its predictions file as
``cache_key``): a step whose output exists with the same key is not run again, so a second run of a
finished recipe does no work, and a killed run resumes (feature stores and CRNN folds resume inside a
step too). Systems that cannot run -- weights not available offline, an unknown extractor -- are
reported as skipped with the reason, and fusions go on without them, naming what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from specfusion import __version__
from specfusion.errors import ConfigError, SpecfusionError, StoreError, WeightsError
from specfusion.recipes import FusionSpec, Recipe, SystemSpec, config_hash, split_best
from specfusion.weights import sha256_file

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"


def slug(name: str) -> str:
    """A file-system friendly version of a system name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "system"


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
    method: str = ""  # fusions: the fusion method ("auto": with the method it chose)
    weights: dict[str, float] | None = None  # fusions: each member's share, where the method has weights

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "cached"}


@dataclasses.dataclass
class RunSummary:
    """What :func:`run_recipe` returns: the outcomes and how many steps did work."""

    outcomes: list[StepOutcome]
    executed: list[str]
    results_path: Path
    report_paths: tuple[Path, Path]


class RecipeRunner:
    """Runs one :class:`~specfusion.recipes.Recipe` on one dataset into one run folder.

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

    # -- helpers -------------------------------------------------------------------------------------
    @property
    def table(self):
        if self._table is None:
            from specfusion.datasets import load_dataset

            self._table = load_dataset(self.recipe.dataset_kind, self.root, **self.recipe.dataset_options)
        return self._table

    def dataset_key(self) -> dict[str, Any]:
        """What identifies the dataset in cache keys: kind, options and the items with their folds."""
        table = self.table
        items = hashlib.sha256("\n".join(f"{i.uid}\t{i.label}\t{i.fold}\t{i.partition}" for i in table).encode()).hexdigest()
        return {"kind": self.recipe.dataset_kind, "options": self.recipe.dataset_options, "items": items}

    def _cached_outcome(self, outcome: StepOutcome, path: Path, key: str) -> bool:
        """Fill ``outcome`` from an existing predictions file with cache key ``key``."""
        from specfusion.evaluation import evaluate_predictions
        from specfusion.predictions import read_predictions

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
        outcome.predictions = str(path.relative_to(self.out_dir))
        outcome.cached = True
        return True

    def _finish(self, outcome: StepOutcome, predictions, path: Path, key: str) -> None:
        """Record the cache key, write predictions + per-system evaluation, fill ``outcome``."""
        from specfusion.evaluation import write_evaluation
        from specfusion.predictions import write_predictions

        predictions.config["cache_key"] = key
        predictions.config["specfusion_version"] = __version__
        metrics = write_evaluation(path.parent, predictions, metric=self.table.metric, name=outcome.name)
        write_predictions(path, predictions)  # last: its presence marks the step as done
        outcome.devel, outcome.test = metrics["devel"], metrics["test"]
        outcome.predictions = str(path.relative_to(self.out_dir))
        self.executed.append(outcome.name)

    # -- base systems --------------------------------------------------------------------------------
    def run_system(self, spec: SystemSpec) -> StepOutcome:
        outcome = StepOutcome(name=spec.name, kind="base", block=spec.block, paper=dataclasses.asdict(spec.paper))
        try:
            if spec.kind == "crnn":
                self._run_crnn(spec, outcome)
            else:
                self._run_features_svm(spec, outcome)
        except (WeightsError, ConfigError) as err:
            outcome.status, outcome.reason = "skipped", str(err)
            log.warning("%s: skipped: %s", spec.name, err)
        except SpecfusionError as err:
            outcome.status, outcome.reason = "failed", str(err)
            log.error("%s: failed: %s", spec.name, err)
        return outcome

    def _run_features_svm(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.classifiers import LinearSVM, svm_from_arrays
        from specfusion.extraction import extract
        from specfusion.extractors import get_extractor
        from specfusion.store import FeatureStore

        options = dict(spec.options)
        name = options.pop("extractor")
        engine = {k: options.pop(k) for k in ("batch_size", "workers") if k in options}
        svm_options = options.pop("svm", {})
        extractor = get_extractor(name, device=self.device, **options)  # WeightsError -> skipped
        feature_config = {"extractor": name, "extractor_config": extractor.config(), "dataset": self.dataset_key()}
        key = config_hash({**feature_config, "svm": svm_options})
        path = self.out_dir / "systems" / slug(spec.name) / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        store_path = self.out_dir / "features" / f"{slug(spec.name)}-{config_hash(feature_config)}.h5"
        extract(self.table, extractor, store_path, progress=self.progress, **engine)
        arrays = FeatureStore.open(store_path).arrays()
        # The paper chooses C by macro F1 on every dataset (section 3.3); the C search fits
        # 4 folds x 10 C values: spread them over all cores.
        estimator = LinearSVM(**{"metric": "macro_f1", "n_jobs": -1, **svm_options})
        result = svm_from_arrays(arrays, estimator=estimator, config={"system_name": spec.name, "recipe_options": spec.options})
        self._finish(outcome, result.predictions, path, key)

    def _run_crnn(self, spec: SystemSpec, outcome: StepOutcome) -> None:
        from specfusion.crnn import crnn_fold_protocol

        options = dict(spec.options)
        key = config_hash({"crnn": options, "dataset": self.dataset_key(), "metric": self.table.metric})
        # one thread: on a shared 2-core machine two threads train several times slower (docs/crnn.md)
        options.setdefault("num_threads", 1)
        folder = self.out_dir / "systems" / slug(spec.name)
        path = folder / PREDICTIONS_FILE
        if self._cached_outcome(outcome, path, key):
            return
        result = crnn_fold_protocol(self.table, out_dir=folder / "crnn", progress=self.progress, device=self.device, **options)
        result.predictions.config["system_name"] = spec.name
        self._finish(outcome, result.predictions, path, key)

    # -- fusions -------------------------------------------------------------------------------------
    def resolve_members(self, fusion: FusionSpec, outcomes: dict[str, StepOutcome]) -> tuple[list[StepOutcome], list[str]]:
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

    def run_fusion(self, fusion: FusionSpec, outcomes: dict[str, StepOutcome]) -> StepOutcome:
        from specfusion.fusion import fuse, method_config
        from specfusion.predictions import read_predictions

        outcome = StepOutcome(name=fusion.name, kind="fusion", block=fusion.block, paper=dataclasses.asdict(fusion.paper), method=fusion.method)
        members, missing = self.resolve_members(fusion, outcomes)
        outcome.members = [m.name for m in members]
        outcome.missing_members = missing
        if not members:
            outcome.status, outcome.reason = "skipped", "none of its members could run"
            return outcome
        paths = [self.out_dir / m.predictions for m in members]
        # every choice the fusion makes is by the dataset's metric; the meta-SVM searches C by macro F1 (the paper)
        metric = self.table.metric
        key = config_hash({"fusion": outcome.members, "inputs": [sha256_file(p) for p in paths], "method": method_config(fusion.method, metric=metric)})
        path = self.out_dir / "fusions" / slug(fusion.name) / PREDICTIONS_FILE
        if not self._cached_outcome(outcome, path, key):
            try:
                # the meta-SVM's C search fits folds x C values: spread them over all cores
                options = {"n_jobs": -1} if fusion.method == "stacking-svm" else {}
                result = fuse([read_predictions(p) for p in paths], method=fusion.method, system_names=outcome.members, metric=metric, **options)
            except SpecfusionError as err:
                outcome.status, outcome.reason = "failed", str(err)
                return outcome
            result.predictions.config["system_name"] = fusion.name
            self._finish(outcome, result.predictions, path, key)
        config = read_predictions(path).config
        if config.get("chosen_method") and config["chosen_method"] != fusion.method:
            outcome.method = f"{fusion.method} ({config['chosen_method']})"
        outcome.weights = config.get("weights")
        return outcome

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        from specfusion.report import render_report, write_results

        self.out_dir.mkdir(parents=True, exist_ok=True)
        table = self.table
        steps = len(self.recipe.systems) + len(self.recipe.fusions)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"run {self.recipe.title[:40]}", unit="step", position=0)
        outcomes: dict[str, StepOutcome] = {}
        try:
            for spec in self.recipe.systems:
                if bar is not None:
                    bar.set_postfix_str(spec.name)
                outcomes[spec.name] = self.run_system(spec)
                if bar is not None:
                    bar.update(1)
            for fusion in self.recipe.fusions:
                if bar is not None:
                    bar.set_postfix_str(fusion.name)
                outcomes[fusion.name] = self.run_fusion(fusion, outcomes)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        ordered = list(outcomes.values())
        results_path = write_results(
            self.out_dir, dataset=table.name, metric=table.metric, title=self.recipe.title, systems=[o.as_dict() for o in ordered]
        )
        report_paths = render_report(self.out_dir)
        return RunSummary(outcomes=ordered, executed=list(self.executed), results_path=results_path, report_paths=report_paths)


def run_recipe(recipe: Recipe, *, root, out_dir, progress: bool = False, device: str | None = None) -> RunSummary:
    """Run ``recipe`` on the dataset at ``root`` into ``out_dir``; see :class:`RecipeRunner`."""
    return RecipeRunner(recipe, root=root, out_dir=out_dir, progress=progress, device=device).run()
