"""Recipe and SVM limits: bounded C grids, finite numbers only, SVM parameters refused at parse time in one line.

Every refusal is one :class:`ConfigError` line naming the key and its table; the CLI prints it and exits 1 or 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from specfusion.cli import main
from specfusion.data.datasets import DatasetTable, Item
from specfusion.errors import ConfigError
from specfusion.features.store import FeatureStore
from specfusion.models import svm_protocol
from specfusion.models.svm import MAX_C_VALUES, MAX_PER_DECADE, LinearSVM, ParameterError, log_c_grid
from specfusion.models.svm_protocol import svm_fold_protocol
from specfusion.pipeline.recipes import parse_recipe

BASE = "[dataset]\nkind='esc50'\n"
LITE = "[[systems]]\nname='A'\nkind='deepspectrum'\nextractor='efficientnet_lite0'\n"
CRNN = "[[systems]]\nname='C'\nkind='crnn'\n"
SYSTEM = "recipe: systems\\[1\\] \\(A\\)"


def blobs(n: int = 48, seed: int = 0):
    """Two Gaussian classes in 4 dimensions, 4 folds."""
    rng = np.random.default_rng(seed)
    y = np.array(["a", "b"] * (n // 2), dtype=object)
    X = rng.normal(size=(n, 4)) + 2.0 * (y == "b")[:, None]
    return X, y, np.arange(n) // 2 % 4 + 1


# ---------------------------------------------------------------------------------------------------
# 1. huge C grids: bounded in the recipe schema and in LinearSVM
# ---------------------------------------------------------------------------------------------------
def test_the_grid_bounds_are_consistent():
    assert len(log_c_grid(per_decade=MAX_PER_DECADE)) <= MAX_C_VALUES < 9 * (MAX_PER_DECADE + 1) + 1
    with pytest.raises(ConfigError, match=f"per_decade={MAX_PER_DECADE + 1} makes .* at most {MAX_C_VALUES}"):
        log_c_grid(per_decade=MAX_PER_DECADE + 1)
    with pytest.raises(ConfigError, match="per_decade=1000000000000 makes"):
        log_c_grid(per_decade=10**12)  # refused before anything is allocated


def test_a_huge_c_grid_in_a_recipe_is_refused_at_parse_time_and_quickly():
    values = ", ".join(repr(float(c)) for c in np.logspace(-9, 0, 200_000))
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"{SYSTEM}: svm: 'c_grid' holds 200000 values; at most {MAX_C_VALUES}"):
        parse_recipe(BASE + LITE + f"svm={{c_grid=[{values}]}}\n")
    assert time.perf_counter() - started < 30  # the TOML parse itself takes most of it


@pytest.mark.parametrize("per_decade", [100_000, MAX_PER_DECADE + 1])
def test_a_huge_per_decade_in_a_recipe_is_refused_at_parse_time(per_decade):
    with pytest.raises(ConfigError, match=f"{SYSTEM}: svm: .*'per_decade'.*range \\[1, {MAX_PER_DECADE}\\]"):
        parse_recipe(BASE + LITE + f"svm={{per_decade={per_decade}}}\n")


def test_the_largest_grids_are_accepted():
    values = ", ".join(repr(float(c)) for c in np.logspace(-9, 0, MAX_C_VALUES))
    parse_recipe(BASE + LITE + f"svm={{c_grid=[{values}]}}\n")
    parse_recipe(BASE + LITE + f"svm={{per_decade={MAX_PER_DECADE}}}\n")


@pytest.mark.parametrize(
    "params, match",
    [
        ({"c_grid": np.logspace(-9, 0, 10**6)}, f"'c_grid' holds 1000000 values; at most {MAX_C_VALUES}"),
        ({"per_decade": 100_000}, f"'per_decade' parameter .* range \\[1, {MAX_PER_DECADE}\\]"),
        ({"c_grid": [0.1, float("nan")]}, "'c_grid' must hold finite C values > 0, got nan"),
        ({"c_grid": [float("inf")]}, "'c_grid' must hold finite C values > 0, got inf"),
        ({"c_grid": [1.0, 0.0]}, "'c_grid' must hold finite C values > 0, got 0.0"),
        ({"c_grid": []}, "'c_grid' holds no values"),
        ({"c_grid": ["x"]}, "'c_grid' must hold finite C values > 0, got 'x'"),
        ({"solver": "sag"}, "'solver' parameter"),
        ({"n_jobs": 0}, "'n_jobs' parameter"),
        ({"tol": float("nan")}, "'tol' parameter"),
        ({"tol": float("inf")}, "'tol' parameter"),
    ],
)
def test_linear_svm_refuses_invalid_grids_and_parameters_before_any_fit(params, match):
    X, y, folds = blobs()
    started = time.perf_counter()
    with pytest.raises(ParameterError, match=match) as info:
        LinearSVM(**params).fit(X, y, folds=folds)
    assert time.perf_counter() - started < 10
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(ParameterError, match=match):
        LinearSVM(**params).check_params()


def test_check_params_returns_the_estimator_and_changes_nothing():
    svm = LinearSVM(c_grid=[1.0, 0.01])
    assert svm.check_params() is svm and svm.c_grid == [1.0, 0.01] and not hasattr(svm, "best_C_")
    assert list(svm.grid()) == [0.01, 1.0]


class RecordingBar:
    """Stands in for tqdm: records the total it was given and how far it went."""

    bars: list[RecordingBar] = []

    def __init__(self, *, total=None, **kwargs):
        self.total, self.n = total, 0
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix_str(self, *args, **kwargs):
        pass

    def update(self, n: int = 1):
        self.n += n


def task(n_dev: int = 64, n_test: int = 16):
    X, y, folds = blobs(n_dev + n_test, seed=1)
    folds = np.where(np.arange(len(X)) < n_dev, folds, 0)
    partitions = np.where(folds > 0, "dev", "test")
    return (X, y, folds, partitions), [f"item{i}" for i in range(len(X))]


@pytest.mark.parametrize(
    "options, total",
    [
        ({"estimator": LinearSVM(c_grid=[1e-2, 1.0])}, 4 + 1),  # 4 splits, the refit; out-of-fold scores reused
        ({"estimator": LinearSVM(c_grid=[1e-2, 1.0]), "c_selection": "nested"}, 4 + 1 + 4 * (3 + 1)),
        ({"estimator": LinearSVM(c_grid=[1e-2])}, 1 + 4),  # no search: the refit, 4 out-of-fold fits
        ({"estimator": LinearSVM(c_grid=[1e-2, 1.0], solver="liblinear")}, 4),  # only the out-of-fold fits
        ({"estimator": LinearSVM(per_decade=2)}, 4 + 1),
    ],
)
def test_the_svm_progress_bar_shows_the_total_number_of_fits(monkeypatch, options, total):
    monkeypatch.setattr("tqdm.auto.tqdm", RecordingBar)
    RecordingBar.bars.clear()
    (X, y, folds, partitions), names = task()
    svm_fold_protocol(X, y, folds, partitions, names=names, progress="SVM", **options)
    (bar,) = RecordingBar.bars
    assert bar.total == total and bar.n == total


def test_planned_fits_refuses_what_fit_refuses():
    with pytest.raises(ParameterError, match="'per_decade'"):
        svm_protocol.planned_fits(LinearSVM(per_decade=10**5), np.arange(8) % 4 + 1, nested=False)


def _store(path: Path) -> Path:
    """A complete generated store: two classes, 4 development folds, 8 test items."""
    X, y, folds = blobs(40, seed=2)
    items = [Item(name=f"clip{i:02d}", path=Path(f"/nowhere/clip{i:02d}.wav"), label=str(y[i]),
                  fold=0 if i >= 32 else int(folds[i]), partition="test" if i >= 32 else "dev")
             for i in range(40)]  # fmt: skip
    table = DatasetTable(name="toy", root=Path("/nowhere"), items=items, classes=["a", "b"])
    with FeatureStore.create_or_resume(path, config={"extractor": "toy"}, dim=4, table=table) as store:
        store.append(table.uids(), X.astype(np.float32))
    return path


def test_svm_cli_refuses_a_huge_per_decade_in_one_line(tmp_path, capsys):
    store = _store(tmp_path / "toy.h5")
    code = main(["svm", str(store), "--out", str(tmp_path / "out"), "--per-decade", "100000", "-q"])
    err = capsys.readouterr().err
    assert code in (1, 2) and "'per_decade'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# 2. non-finite numbers anywhere in a recipe
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        (BASE + CRNN + "lr=nan\n", r"recipe: systems\[1\] \(C\): 'lr' must be a finite number, got nan"),
        (BASE + LITE + CRNN + "lr=-inf\n", r"recipe: systems\[2\] \(C\): 'lr' must be a finite number, got -inf"),
        (BASE + LITE + "paper={devel=nan}\n", rf"{SYSTEM}: paper: 'devel' must be a finite number, got nan"),
        (BASE + LITE + "paper={test=inf}\n", rf"{SYSTEM}: paper: 'test' must be a finite number, got inf"),
        (BASE + LITE + "svm={tol=inf}\n", rf"{SYSTEM}: svm: 'tol' must be a finite number, got inf"),
        (
            BASE + LITE + "svm={c_grid=[0.1, inf]}\n",
            rf"{SYSTEM}: svm: 'c_grid' must hold finite numbers only, got inf at c_grid\[2\]",
        ),
        (
            BASE + CRNN + "grid={lr=[0.1, nan]}\n",
            r"systems\[1\] \(C\): grid: 'lr' must hold finite numbers only, got nan at lr\[2\]",
        ),
        (
            BASE + LITE + "spec_params={fmax=inf}\n",
            rf"{SYSTEM}: spec_params: 'fmax' must be a finite number, got inf",
        ),
        (
            BASE + LITE + "[[fusions]]\nname='F'\nmembers=['A']\npaper={devel=nan}\n",
            r"recipe: fusions\[1\] \(F\): paper: 'devel' must be a finite number, got nan",
        ),
        (
            "[dataset]\nkind='csv'\noptions={x=nan}\n" + LITE,
            r"recipe: \[dataset\]: options: 'x' must be a finite number, got nan",
        ),
        ("x=nan\n" + BASE + LITE, r"recipe: top level: 'x' must be a finite number, got nan"),
    ],
)
def test_non_finite_numbers_are_refused_naming_key_and_table(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(text)


def test_a_nan_in_a_recipe_stops_the_run_in_one_line(tmp_path, capsys):
    path = tmp_path / "nan.toml"
    path.write_text(BASE + LITE + CRNN + "lr = nan\n")
    code = main(["run", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code in (1, 2) and "systems[2] (C): 'lr' must be a finite number, got nan" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# 3. the other SVM parameters, at parse time
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "svm, key",
    [
        ("c_grid=[-1.0]", "c_grid"),
        ("c_grid=[0.1, 0]", "c_grid"),
        ("c_grid=[]", "c_grid"),
        ("per_decade=0", "per_decade"),
        ("max_iter=0", "max_iter"),
        ("tol=0", "tol"),
        ("tol=-1e-4", "tol"),
        ("cv=1", "cv"),
        ("n_jobs=0", "n_jobs"),
        ("metric='f1'", "metric"),
        ("solver='sag'", "solver"),
        ("rowspace='yes'", "rowspace"),
        ("dual='primal'", "dual"),
        ("class_weight='even'", "class_weight"),
        ("random_state=-1", "random_state"),
    ],
)
def test_invalid_svm_parameters_are_refused_at_parse_time(svm, key):
    with pytest.raises(ConfigError, match=f"{SYSTEM}: svm: .*'{key}'") as info:
        parse_recipe(BASE + LITE + f"svm={{{svm}}}\n")
    assert "\n" not in str(info.value)


def test_svm_tables_in_a_grid_are_checked_too():
    with pytest.raises(ConfigError, match=rf"{SYSTEM}: grid.svm\[2\]: .*'max_iter'"):
        parse_recipe(BASE + LITE + "grid={svm=[{max_iter=10}, {max_iter=0}]}\n")
    with pytest.raises(ConfigError, match=rf"{SYSTEM}: grid.svm\[1\]: unknown key 'max_iters'"):
        parse_recipe(BASE + LITE + "grid={svm=[{max_iters=10}]}\n")
    recipe = parse_recipe(BASE + LITE + "grid={svm=[{max_iter=10}, {c_grid=[0.1, 1.0]}]}\n")
    assert [s.options["svm"] for s in recipe.systems] == [{"max_iter": 10}, {"c_grid": [0.1, 1.0]}]


def test_valid_svm_tables_are_kept_as_written():
    recipe = parse_recipe(BASE + LITE + "svm={per_decade=2, max_iter=500, tol=1e-3, n_jobs=-1, c_grid=[1, 0.1]}\n")
    assert recipe.systems[0].options["svm"] == {"per_decade": 2, "max_iter": 500, "tol": 1e-3, "n_jobs": -1,
                                                "c_grid": [1, 0.1]}  # fmt: skip
