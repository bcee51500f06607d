"""One step layer (specfusion.pipeline.steps): `specfusion svm` and the recipe runner score a feature store through
the same step, so on the same store they write the same predictions and the same fitted SVM."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from specfusion.cli import main
from specfusion.data.datasets import DatasetTable, Item
from specfusion.errors import StoreError
from specfusion.evaluation.predictions import read_predictions
from specfusion.features.store import FeatureStore
from specfusion.models.svm import LinearSVM
from specfusion.pipeline.recipes import parse_recipe, slug
from specfusion.pipeline.runner import run_recipe
from specfusion.pipeline.steps import CacheRecord, score_svm_system
from specfusion.pipeline.systems import MODEL_FILE

CLASSES = ("dog", "rooster", "rain")
PER_FOLD = 2  # clips per class and fold: 18 development items (ESC-50 folds 1-3), 6 test items (fold 4)
SYSTEM = "Lite0 / None"

RECIPE = f"""
title = "one system"
[dataset]
kind = "csv"

[[systems]]
name = "{SYSTEM}"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
batch_size = 4
"""

#: Predictions' configuration entries that name the system, not its scores: the runner records the recipe's
#: system (name, options) and its cache entry (key, version); the command records the store it read.
RUNNER_ONLY = {"system_name", "recipe_options", "cache_key", "specfusion_version", "model_saved"}
COMMAND_ONLY = {"store"}


@pytest.fixture(scope="module")
def subset_csv(esc50_root, tmp_path_factory) -> Path:
    """A user's CSV of a few real ESC-50 clips; ESC-50 fold 4 plays the test partition."""
    from specfusion.data.datasets import load_esc50

    chosen: dict[tuple, list] = {}
    for item in load_esc50(esc50_root):
        if item.label in CLASSES:
            chosen.setdefault((item.fold, item.label), []).append(item)
    rows = ["path,label,fold,partition"]
    rows += [f"{i.path},{i.label},{f},dev" for f in (1, 2, 3) for c in CLASSES for i in chosen[(f, c)][:PER_FOLD]]
    rows += [f"{i.path},{i.label},,test" for c in CLASSES for i in chosen[(4, c)][:PER_FOLD]]
    path = tmp_path_factory.mktemp("subset") / "subset.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def step_folders(subset_csv, tmp_path_factory) -> tuple[Path, Path]:
    """(the runner's folder of the one-system recipe, the folder of `specfusion svm` on the store the runner made)."""
    run = tmp_path_factory.mktemp("run")
    summary = run_recipe(parse_recipe(RECIPE), root=subset_csv, out_dir=run)
    assert [o.status for o in summary.outcomes] == ["ok"], summary.outcomes
    store = next((run / "features").glob(f"{slug(SYSTEM)}-*.h5"))
    command = tmp_path_factory.mktemp("command") / "svm"
    assert main(["svm", str(store), "--out", str(command), "-q"]) == 0
    return run / "systems" / slug(SYSTEM), command


def _model_file(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(``model.json``, the arrays) of ``folder``'s model file."""
    with zipfile.ZipFile(folder / MODEL_FILE) as archive:
        meta = json.loads(archive.read("model.json"))
        with np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False) as arrays:
            return meta, {k: arrays[k] for k in arrays.files}


def test_the_svm_command_and_the_runner_write_the_same_predictions(step_folders):
    runner, command = (read_predictions(folder / "predictions.csv") for folder in step_folders)
    assert len(runner) == 3 * 4 * PER_FOLD
    for column in ("names", "labels", "folds", "partitions", "scores"):
        np.testing.assert_array_equal(getattr(runner, column), getattr(command, column), err_msg=column)
    assert (runner.classes, runner.kind) == (command.classes, command.kind)
    assert set(runner.config) - set(command.config) == RUNNER_ONLY
    assert set(command.config) - set(runner.config) == COMMAND_ONLY
    shared = set(runner.config) & set(command.config)  # the SVM's parameters, C, features, coverage ...
    assert {k: runner.config[k] for k in shared} == {k: command.config[k] for k in shared}


def test_the_svm_command_and_the_runner_save_the_same_fitted_svm(step_folders):
    (runner_meta, runner_arrays), (command_meta, command_arrays) = (_model_file(f) for f in step_folders)
    assert runner_arrays.keys() == command_arrays.keys() and runner_arrays
    for key, values in runner_arrays.items():
        np.testing.assert_array_equal(values, command_arrays[key], err_msg=key)
    runner_system, command_system = runner_meta["system"], command_meta["system"]
    # What legitimately differs: the system's name (the recipe's; the command names it after the store's
    # extractor) and how the extractor's options are spelled (the recipe's; the command rebuilds them from the
    # store's configuration). The extractor they make is the same (its configuration), and so is the rest.
    assert (runner_system.pop("name"), command_system.pop("name")) == (SYSTEM, "efficientnet_lite0")
    assert runner_system["extractor"].pop("options") == {"weights": "none"}
    assert command_system["extractor"].pop("options")["weights"] == "none"
    assert runner_system == command_system
    assert runner_meta["arrays_sha256"] == command_meta["arrays_sha256"]


def test_only_the_command_reports_the_c_search_in_its_metrics(step_folders):
    runner, command = (json.loads((folder / "metrics.json").read_text()) for folder in step_folders)
    assert set(command) - set(runner) == {"best_C", "fold_C", "c_search"}
    assert (runner["devel"], runner["test"]) == (command["devel"], command["test"])
    assert command["best_C"] == runner["config"]["best_C"]


# ---------------------------------------------------------------------------------------------------
# the step on a generated store: what it refuses, what a cache record adds
# ---------------------------------------------------------------------------------------------------
def _generated_store(path: Path, *, failed=(), pending=(), n: int = 24) -> tuple[Path, DatasetTable]:
    """Two Gaussian classes in 4 development folds and 8 test items, some items failed or left pending."""
    rng = np.random.default_rng(0)
    items = [
        Item(name=f"clip{i:02d}", path=Path(f"/nowhere/clip{i:02d}.wav"), label="ab"[i % 2],
             fold=0 if i >= n - 8 else 1 + i % 4, partition="test" if i >= n - 8 else "dev")
        for i in range(n)
    ]  # fmt: skip
    table = DatasetTable(name="toy", root=Path("/nowhere"), items=items, classes=["a", "b"])
    X = rng.normal(size=(n, 4)).astype(np.float32) + 2.0 * (np.arange(n) % 2)[:, None].astype(np.float32)
    done = [i for i in range(n) if i not in failed and i not in pending]
    uids = table.uids()
    with FeatureStore.create_or_resume(path, config={"extractor": "toy"}, dim=4, table=table) as store:
        store.append([uids[i] for i in done], X[done], failures={uids[i]: "unreadable audio (test)" for i in failed})
    return path, table


def test_a_cache_record_adds_the_key_and_the_coverage_of_the_dataset(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="specfusion.pipeline.steps")  # whatever an earlier command set
    store, table = _generated_store(tmp_path / "s.h5", failed=(3,))
    step = score_svm_system(store, tmp_path / "out", estimator=LinearSVM(c_grid=[0.1, 1.0]), name="toy",
                            allow_failed=True, cache=CacheRecord(key="k", table=table), protocol_details=False)  # fmt: skip
    config = step.predictions.config  # in the order metrics.json keeps: recorded after the fit
    assert list(config)[-4:] == ["cache_key", "specfusion_version", "coverage", "model_saved"]
    # no model could be saved, and the record says so: the runner takes it from its cache without one
    assert config["cache_key"] == "k" and config["model_saved"] is False
    assert read_predictions(step.predictions_path).config == config
    assert config["coverage"]["missing"] == [{"item": "clip03", "reason": "unreadable audio (test)"}]
    assert "best_C" not in step.metrics and len(step.predictions) == 23
    # no extractor rebuilds a "toy" store: the step keeps its results and says why there is no model file
    assert not step.model_saved and not (tmp_path / "out" / MODEL_FILE).exists()
    assert "no model.sfm saved" in caplog.text


def test_failed_items_may_be_allowed_but_an_unfinished_extraction_never(tmp_path):
    store, _ = _generated_store(tmp_path / "s.h5", failed=(3,), pending=(5,))
    with pytest.raises(StoreError, match="1 pending, 1 failed.*Run it again"):
        score_svm_system(store, tmp_path / "out", estimator=LinearSVM(), name="toy", allow_failed=True,
                         refusal_hint="Run it again.")  # fmt: skip
    assert not (tmp_path / "out").exists()
    step = score_svm_system(
        store, tmp_path / "out", estimator=LinearSVM(c_grid=[1.0]), name="toy", allow_incomplete=True
    )
    assert step.predictions.config["coverage"]["n_scored"] == 22 and "best_C" in step.metrics
