"""Issue 15, state half: no stale cache reused, no silent subset scored, no leftovers, recipe errors up front.

Each test is a regression test of one case of docs/reliability.md; generated data or a few real ESC-50 clips.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from extraction_helpers import small_esc50

from specfusion.cli import main
from specfusion.data.datasets import DatasetTable, Item
from specfusion.errors import ConfigError, StoreError
from specfusion.features.store import FeatureStore
from specfusion.pipeline.recipes import load_recipe, parse_recipe

# ---------------------------------------------------------------------------------------------------
# 1. CRNN fold checkpoints: reused only when everything that determines them matches
# ---------------------------------------------------------------------------------------------------
TINY_CRNN = dict(
    variant="esc50", epochs=1, batch_size=16, filters=[4, 4, 4, 4], gru_units=8, gru_layers=1, num_threads=1
)


@pytest.fixture(scope="module")
def tiny_esc50(esc50_root):
    """3 classes x 4 clips per fold, folds 1-3 development, 3 clips of fold 4 as test: 39 real clips."""
    return small_esc50(esc50_root, 3)


def _stamps(out: Path) -> dict[int, int]:
    return {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2, 3)}


@pytest.fixture(scope="module")
def crnn_seed0(tiny_esc50, tmp_path_factory):
    from specfusion.models.crnn import crnn_fold_protocol

    out = tmp_path_factory.mktemp("crnn-state")
    result = crnn_fold_protocol(tiny_esc50, out_dir=out, seed=0, **TINY_CRNN)
    return out, result


def test_crnn_same_settings_reuse_the_fold_models(crnn_seed0, tiny_esc50):
    from specfusion.models.crnn import crnn_fold_protocol

    out, first = crnn_seed0
    stamps = _stamps(out)
    again = crnn_fold_protocol(tiny_esc50, out_dir=out, seed=0, **TINY_CRNN)
    assert _stamps(out) == stamps
    assert np.array_equal(again.predictions.scores, first.predictions.scores)


def test_crnn_other_seed_into_the_same_out_retrains(crnn_seed0, tiny_esc50, tmp_path, caplog):
    """seed 0 then seed 1 into one --out: every fold retrained, results equal a fresh seed-1 run."""
    import shutil

    from specfusion.models.crnn import crnn_fold_protocol

    out = tmp_path / "reused"
    shutil.copytree(crnn_seed0[0], out)
    stamps = _stamps(out)
    with caplog.at_level(logging.WARNING, logger="specfusion.models.crnn.protocol"):
        reused = crnn_fold_protocol(tiny_esc50, out_dir=out, seed=1, **TINY_CRNN)
    assert all(_stamps(out)[k] != stamps[k] for k in stamps)
    assert "retraining" in caplog.text and "seed" in caplog.text
    fresh = crnn_fold_protocol(tiny_esc50, out_dir=tmp_path / "fresh", seed=1, **TINY_CRNN)
    assert np.array_equal(reused.predictions.scores, fresh.predictions.scores)


def test_crnn_changed_label_retrains_only_the_folds_that_trained_on_it(crnn_seed0, tiny_esc50, tmp_path):
    import dataclasses
    import shutil

    from specfusion.models.crnn import crnn_fold_protocol

    out = tmp_path / "relabelled"
    shutil.copytree(crnn_seed0[0], out)
    stamps = _stamps(out)
    items = list(tiny_esc50.items)
    first_of_fold1 = next(i for i, it in enumerate(items) if it.fold == 1)
    other = next(c for c in tiny_esc50.classes if c != items[first_of_fold1].label)
    items[first_of_fold1] = dataclasses.replace(items[first_of_fold1], label=other)
    relabelled = dataclasses.replace(tiny_esc50, items=items)
    crnn_fold_protocol(relabelled, out_dir=out, seed=0, **TINY_CRNN)
    after = _stamps(out)
    assert after[1] == stamps[1]  # fold 1's model never saw the item
    assert after[2] != stamps[2] and after[3] != stamps[3]


def test_crnn_network_version_and_any_parameter_are_in_the_identity(crnn_seed0, tiny_esc50, monkeypatch, tmp_path):
    import shutil

    from specfusion.models import crnn
    from specfusion.models.crnn import RUNTIME_PARAMS, CRNNClassifier, model_identity

    model = CRNNClassifier()
    identity = model_identity(model)["params"]
    assert set(model.get_params()) - RUNTIME_PARAMS <= set(identity)  # new __init__ parameters are covered
    for key, value in (("dropout", 0.5), ("beta2", 0.99), ("recalibration_items", 16), ("classes", ["a"])):
        assert model_identity(CRNNClassifier(**{key: value})) != model_identity(model), key
    assert model_identity(CRNNClassifier(num_threads=2, device="cpu")) == model_identity(model)
    assert model_identity(CRNNClassifier(lr=0.001)) == model_identity(model)  # the esc50 default, spelled out
    out = tmp_path / "newcode"
    shutil.copytree(crnn_seed0[0], out)
    stamps = _stamps(out)
    monkeypatch.setattr(crnn.estimator, "NETWORK_VERSION", crnn.NETWORK_VERSION + 1)  # model_identity reads it there
    crnn.crnn_fold_protocol(tiny_esc50, out_dir=out, seed=0, **TINY_CRNN)
    assert all(_stamps(out)[k] != stamps[k] for k in stamps)


# ---------------------------------------------------------------------------------------------------
# runner cache keys: effective parameters, not what the recipe spelled
# ---------------------------------------------------------------------------------------------------
def _runner(table, tmp_path, text="[dataset]\nkind='csv'\n[[systems]]\nname='C'\nkind='crnn'\n"):
    from specfusion.pipeline.runner import RecipeRunner

    runner = RecipeRunner(parse_recipe(text), root=tmp_path, out_dir=tmp_path / "run")
    runner._table = table
    return runner


def test_runner_svm_key_covers_effective_linear_svm_parameters(tiny_esc50, tmp_path, monkeypatch):
    import specfusion
    from specfusion.models.svm import LinearSVM

    runner = _runner(tiny_esc50, tmp_path)
    features = {"extractor": "x", "extractor_config": {"a": 1}, "dataset": runner.dataset_key()}
    plain = runner.svm_key(features, LinearSVM(metric="macro_f1", n_jobs=-1))
    assert (
        runner.svm_key(features, LinearSVM(metric="macro_f1", max_iter=1000, n_jobs=1)) == plain
    )  # default spelled; threads
    assert runner.svm_key(features, LinearSVM(metric="macro_f1", max_iter=500)) != plain
    assert runner.svm_key(features, LinearSVM(metric="macro_f1", tol=1e-3)) != plain
    assert runner.svm_key({**features, "extractor_config": {"a": 2}}, LinearSVM(metric="macro_f1")) != plain
    monkeypatch.setattr(specfusion, "__version__", "99.0")
    assert runner.svm_key(features, LinearSVM(metric="macro_f1")) != plain


def test_runner_crnn_key_covers_effective_parameters(tiny_esc50, tmp_path, monkeypatch):
    import specfusion

    runner = _runner(tiny_esc50, tmp_path)
    plain = runner.crnn_key({})
    assert runner.crnn_key({"variant": "esc50", "lr": 0.001, "epochs": 100, "clip_db": -80, "num_threads": 1}) == plain
    for changed in ({"dropout": 0.5}, {"gru_units": 128}, {"variant": "dcase2017"}, {"clip_db": -60}, {"seed": 1}):
        assert runner.crnn_key(changed) != plain, changed
    monkeypatch.setattr(specfusion, "__version__", "99.0")
    assert runner.crnn_key({}) != plain


def test_runner_dataset_key_covers_the_short_clip_policy(tiny_esc50, tmp_path):
    pad = _runner(tiny_esc50, tmp_path).dataset_key()
    error = _runner(
        tiny_esc50, tmp_path, "[dataset]\nkind='csv'\nshort='error'\n[[systems]]\nname='C'\nkind='crnn'\n"
    ).dataset_key()
    assert pad != error


# ---------------------------------------------------------------------------------------------------
# 2 + 4. recipes: slug collisions, schema (unknown keys, wrong types), non-UTF-8
# ---------------------------------------------------------------------------------------------------
BASE = "[dataset]\nkind='esc50'\n"
LITE = "[[systems]]\nname='A'\nkind='deepspectrum'\nextractor='efficientnet_lite0'\n"
CRNN = "[[systems]]\nname='C'\nkind='crnn'\n"


def test_system_names_that_share_a_folder_are_refused():
    text = BASE + LITE.replace("'A'", "'Lite0 / A'") + LITE.replace("'A'", "'lite0 a'")
    with pytest.raises(ConfigError, match="'Lite0 / A' and 'lite0 a' would share the output folder systems/lite0-a"):
        parse_recipe(text)
    fusions = "[[fusions]]\nname='F + G'\nmembers=['A']\n[[fusions]]\nname='f g'\nmembers=['A']\n"
    with pytest.raises(ConfigError, match="'F \\+ G' and 'f g' would share the output folder fusions/f-g"):
        parse_recipe(BASE + LITE + fusions)


@pytest.mark.parametrize(
    "text, message",
    [
        # wrong types (the two that were split into characters)
        (BASE + LITE + "tags='img'\n", r"'tags' must be an array of strings, got string 'img'"),
        (
            BASE + LITE + "[[fusions]]\nname='f'\nmembers='tag:img'\n",
            r"'members' must be an array of strings, got string",
        ),
        (BASE + CRNN + "epochs='3'\n", r"'epochs' must be an integer, got string '3'"),
        (BASE + CRNN + "filters=8\n", r"'filters' must be an array .*got integer 8"),
        (BASE + LITE + "svm={max_iter='3'}\n", r"svm: 'max_iter' must be an integer, got string"),
        (BASE + LITE + "paper={devel='x'}\n", r"paper: 'devel' must be a number, got string"),
        (BASE + LITE + "[[fusions]]\nname='f'\nmembers=['A']\nbest=true\n", r"'best' must be an integer, got boolean"),
        ("title=3\n" + BASE + LITE, r"'title' must be a string, got integer"),
        (BASE + CRNN + "grid={lr=['x']}\n", r"'grid.lr' must be a number, got string"),
        # unknown keys at every level, with the closest valid key
        ("titel='x'\n" + BASE + LITE, r"top level: unknown key 'titel' \(did you mean 'title'\?\)"),
        (BASE + "opts={}\n" + LITE, r"\[dataset\]: unknown key 'opts' \(did you mean 'options'\?\)"),
        (
            BASE + "options={misssing='error'}\n" + LITE,
            r"\[dataset\] options .*unknown key 'misssing' \(did you mean 'missing'\?\)",
        ),
        (BASE + LITE + "colormp='viridis'\n", r"unknown key 'colormp' \(did you mean 'colormap'\?\)"),
        (BASE + LITE + "svm={max_iters=3}\n", r"svm: unknown key 'max_iters' \(did you mean 'max_iter'\?\)"),
        (BASE + CRNN + "epoch=3\n", r"unknown key 'epoch' \(did you mean 'epochs'\?\)"),
        (BASE + CRNN + "grid={lrr=[0.1]}\n", r"grid: unknown key 'lrr' \(did you mean 'lr'\?\)"),
        (BASE + LITE + "paper={dev=1.0}\n", r"paper: unknown key 'dev' \(did you mean 'devel'\?\)"),
        (
            BASE + LITE + "[[fusions]]\nname='f'\nmembers=['A']\nmethd='auto'\n",
            r"unknown key 'methd' \(did you mean 'method'\?\)",
        ),
        (BASE + LITE + "device='cpu'\n", r"unknown key 'device'"),
        (BASE + LITE + "spec_params={n_mel=64}\n", r"spec_params: unknown key 'n_mel' \(did you mean 'n_mels'\?\)"),
        (BASE + LITE + "spec_params={n_mels='64'}\n", r"spec_params: 'n_mels' must be an integer, got string"),
        # choices
        (
            BASE + LITE.replace("efficientnet_lite0", "efficientnet_lite9"),
            r"'extractor' must be one of .*got 'efficientnet_lite9'",
        ),
        (
            BASE + LITE + "[[fusions]]\nname='f'\nmembers=['A']\nmethod='stackin'\n",
            r"'method' must be one of .*did you mean 'stacking-svm'",
        ),
        (BASE + "short='trim'\n" + LITE, r"'short' must be one of pad, error, got 'trim'"),
        ("[dataset]\nkind='esc5'\n" + LITE, r"'kind' must be one of .*did you mean 'esc50'"),
    ],
)
def test_recipe_schema_errors_name_key_table_and_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(text)


def test_valid_new_keys_are_accepted():
    recipe = parse_recipe(
        BASE + "short='error'\n" + LITE + "svm={max_iter=500, c_grid=[0.1, 1]}\ncolormap='magma'\nbatch_size=8\n"
        + CRNN + "grid={dropout=[0.1, 0.3]}\nepochs=2\nclip_db=-60\nnum_threads=1\n"
        + "[[fusions]]\nname='F'\nmembers=['A', 'C*']\nmethod='stacking-svm'\n"
    )  # fmt: skip
    assert recipe.dataset_short == "error" and recipe.fusions[0].method == "stacking-svm"
    assert [s.name for s in recipe.systems] == ["A", "C (dropout=0.1)", "C (dropout=0.3)"]


def test_non_utf8_recipe_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes((BASE + LITE.replace("'A'", "'Caf\u00e9'")).encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml:4: not UTF-8 text \(byte 0xe9\)"):
        load_recipe(path)
    code = main(["run", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code in (1, 2) and "not UTF-8" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # detected before any work


def test_bad_recipe_option_stops_the_run_before_any_work(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + LITE + CRNN + "epochs='x'\n")
    code = main(["run", str(path), "--root", str(tmp_path), "--out", str(tmp_path / "run"), "-q"])
    assert code in (1, 2) and "'epochs' must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# 3. svm on an incomplete store; 5. outputs replaced as a whole
# ---------------------------------------------------------------------------------------------------
CLASSES = ["a", "b"]


def _store(
    path: Path, *, n: int = 40, test: int = 8, failed: tuple[int, ...] = (), pending: tuple[int, ...] = ()
) -> Path:
    """A generated store: two Gaussian classes, ``test`` test items, some items failed or left pending."""
    rng = np.random.default_rng(0)
    items = [
        Item(name=f"clip{i:02d}", path=Path(f"/nowhere/clip{i:02d}.wav"), label=CLASSES[i % 2],
             fold=0 if i >= n - test else 1 + i % 4, partition="test" if i >= n - test else "dev")
        for i in range(n)
    ]  # fmt: skip
    table = DatasetTable(name="toy", root=Path("/nowhere"), items=items, classes=CLASSES)
    X = rng.normal(size=(n, 6)).astype(np.float32) + np.array([[2.0 * (i % 2)] for i in range(n)], dtype=np.float32)
    uids = table.uids()
    done = [i for i in range(n) if i not in failed and i not in pending]
    with FeatureStore.create_or_resume(path, config={"extractor": "toy"}, dim=6, table=table) as store:
        store.append([uids[i] for i in done], X[done], failures={uids[i]: "unreadable audio (test)" for i in failed})
    return path


def test_svm_refuses_an_incomplete_store(tmp_path, capsys):
    store = _store(tmp_path / "s.h5", failed=(3,), pending=(5, 6))
    code = main(["svm", str(store), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert (
        code == 1
        and "incomplete: 37 of 40 items" in err
        and "2 pending, 1 failed" in err
        and "--allow-incomplete" in err
    )
    assert not (tmp_path / "out").exists()
    from specfusion.models.svm_protocol import svm_from_arrays

    with pytest.raises(StoreError, match="37 of 40 items.*allow_incomplete=True"):
        svm_from_arrays(FeatureStore.open(store).arrays())


def test_svm_allow_incomplete_says_so_in_every_output(tmp_path, capsys):
    store = _store(tmp_path / "s.h5", failed=(3,), pending=(5, 6))
    out = tmp_path / "out"
    assert main(["svm", str(store), "--out", str(out), "--allow-incomplete", "-q"]) == 0
    stdout = capsys.readouterr().out
    assert (
        "scored 37 of 40 items (3 missing)" in stdout
        and "clip03 (unreadable audio (test))" in stdout
        and "clip05" in stdout
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["coverage"]["n_scored"] == 37 and metrics["coverage"]["n_items"] == 40
    assert [m["item"] for m in metrics["coverage"]["missing"]] == ["clip03", "clip05", "clip06"]
    report = (out / "report.md").read_text()
    assert "Incomplete: scored 37 of 40 items" in report and "- clip05: pending" in report


def test_reused_svm_out_keeps_no_old_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["svm", str(_store(tmp_path / "with-test.h5")), "--out", str(out), "-q"]) == 0
    assert (out / "confusion_test.png").is_file()
    (out / "notes.txt").write_text("left over")
    assert main(["svm", str(_store(tmp_path / "no-test.h5", test=0)), "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "class_f1_devel.png", "confusion_devel.png", "metrics.json", "predictions.csv", "predictions.json", "report.md",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".out.*"))  # no temporary folders left


def test_replaced_folder_is_crash_safe(tmp_path):
    from specfusion.pipeline.outputs import recover, replaced_folder

    final = tmp_path / "step"
    with replaced_folder(final) as new:
        (new / "a.txt").write_text("1")
    with pytest.raises(RuntimeError), replaced_folder(final) as new:
        (new / "a.txt").write_text("2")
        raise RuntimeError("killed half-way")
    assert (final / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["step"]
    os.replace(final, tmp_path / ".step.old-123")  # killed between the two renames of a swap
    recover(final)
    assert (final / "a.txt").read_text() == "1"


def test_crnn_cli_replaces_its_final_outputs_but_keeps_checkpoints(tiny_esc50, tmp_path, capsys):
    csv = tmp_path / "tiny.csv"
    rows = ["path,label,fold,partition"] + [
        f"{i.path},{i.label},{i.fold if i.fold else ''},{i.partition}" for i in tiny_esc50
    ]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = [
        "crnn",
        "--dataset",
        "csv",
        "--root",
        str(csv),
        "--epochs",
        "1",
        "--filters",
        "4",
        "4",
        "4",
        "4",
        "--out",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    (out / "confusion_old.png").write_bytes(b"\x89PNG stale")
    stamps = _stamps(out)
    assert main(args) == 0
    assert not (out / "confusion_old.png").exists() and _stamps(out) == stamps
    assert (out / "confusion_test.png").is_file() and not list(out.glob(".outputs.new-*"))


# ---------------------------------------------------------------------------------------------------
# 7. report.md escapes raw HTML
# ---------------------------------------------------------------------------------------------------
EVIL = "<img src=x onerror=alert(1)>"


def test_run_report_markdown_escapes_html():
    from specfusion.evaluation.report import render_html, render_markdown

    results = {
        "dataset": "toy", "metric": "accuracy", "title": f"t {EVIL}",
        "systems": [{"name": f"S {EVIL}", "kind": "base", "block": EVIL, "status": "failed", "reason": f"bad {EVIL}", "devel": None, "test": None,
                     "coverage": {"n_items": 3, "n_scored": 2, "missing": [{"item": EVIL, "reason": EVIL}]}}],
    }  # fmt: skip
    details = {
        "system": EVIL,
        "partition": "test",
        "png": "confusion_best.png",
        "f1_png": "class_f1_best.png",
        "class_f1": {EVIL: 50.0},
    }
    for page in (render_markdown(results, details), render_html(results, details)):
        assert EVIL not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "scored 2 of 3 items" in render_markdown(results, None)


def test_system_report_markdown_escapes_html(tmp_path):
    from specfusion.evaluation.metrics import write_evaluation
    from specfusion.evaluation.predictions import Predictions

    classes = [EVIL, "b"]
    p = Predictions(names=["x", "y"], folds=[1, 2], partitions=["dev", "dev"], labels=classes, scores=[[1.0, 0.0], [0.0, 1.0]],
                    classes=classes, kind="decision")  # fmt: skip
    write_evaluation(tmp_path, p, name=f"sys {EVIL}")
    report = (tmp_path / "report.md").read_text()
    assert EVIL not in report and "&lt;img src=x onerror=alert(1)&gt;" in report


# ---------------------------------------------------------------------------------------------------
# 3 + 6. runner: a store with failed items is scored on the others and says so; skipped vs failed
# ---------------------------------------------------------------------------------------------------
RUN_RECIPE = """
title = "state checks"
[dataset]
kind = "csv"

[[systems]]
name = "Lite0 <untrained>"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
batch_size = 8

[[systems]]
name = "Lite0 <untrained> seed 1"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
seed = 1
batch_size = 8

[[systems]]
name = "Lite0 bad colormap"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
colormap = "no-such-map"

[[systems]]
name = "VGG16 / ImageNet"
kind = "deepspectrum"
extractor = "vgg16"
weights = "imagenet"

[[fusions]]
name = "Fusion"
members = ["Lite0*"]
"""


@pytest.fixture(scope="module")
def run_with_a_broken_file(tiny_esc50, tmp_path_factory):
    from specfusion.pipeline.runner import run_recipe

    folder = tmp_path_factory.mktemp("broken-run")
    broken = folder / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    seen: dict = {}
    small = [
        i for i in tiny_esc50 if seen.setdefault((i.label, i.fold), []).append(i) or len(seen[(i.label, i.fold)]) <= 2
    ]
    rows = ["path,label,fold,partition"] + [
        f"{i.path},{i.label},{i.fold if i.fold else ''},{i.partition}" for i in small
    ]
    rows.append(f"{broken},{tiny_esc50.classes[0]},1,dev")  # 21 real clips + 1 broken file
    csv = folder / "data.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = folder / "run"
    summary = run_recipe(parse_recipe(RUN_RECIPE), root=csv, out_dir=out)
    return out, summary


def test_runner_scores_a_store_with_failed_items_and_says_so(run_with_a_broken_file):
    out, summary = run_with_a_broken_file
    results = json.loads((out / "results.json").read_text())
    by_name = {s["name"]: s for s in results["systems"]}
    lite = by_name["Lite0 <untrained>"]
    assert lite["status"] == "ok" and lite["coverage"]["n_scored"] == 21 and lite["coverage"]["n_items"] == 22
    assert [Path(m["item"]).name for m in lite["coverage"]["missing"]] == ["broken"]
    assert by_name["Fusion"]["coverage"]["n_scored"] == 21
    for page in ((out / "report.md").read_text(), (out / "report.html").read_text()):
        assert "scored 21 of 22 items" in page and "broken" in page and "Items not scored" in page
    system_report = (out / "systems" / "lite0-untrained" / "report.md").read_text()
    assert "Incomplete: scored 21 of 22 items" in system_report
    assert json.loads((out / "systems" / "lite0-untrained" / "metrics.json").read_text())["coverage"]["n_scored"] == 21


def test_runner_only_unavailable_weights_are_skipped(run_with_a_broken_file):
    out, _ = run_with_a_broken_file
    by_name = {s["name"]: s for s in json.loads((out / "results.json").read_text())["systems"]}
    assert by_name["VGG16 / ImageNet"]["status"] == "skipped"
    bad = by_name["Lite0 bad colormap"]
    assert bad["status"] == "failed" and "no-such-map" in bad["reason"]
    assert by_name["Fusion"]["missing_members"] == ["Lite0 bad colormap"] and by_name["Fusion"]["status"] == "ok"
    assert "failed: " in (out / "report.md").read_text()


def test_runner_step_folders_are_replaced_whole(run_with_a_broken_file, tiny_esc50):
    from specfusion.pipeline.runner import run_recipe

    out, _ = run_with_a_broken_file
    folder = out / "fusions" / "fusion"
    (folder / "stale.png").write_bytes(b"old")
    (folder / "predictions.json").write_text(
        (folder / "predictions.json").read_text().replace('"cache_key"', '"old_key"')
    )
    again = run_recipe(parse_recipe(RUN_RECIPE), root=Path(str(out.parent / "data.csv")), out_dir=out)
    assert again.executed == ["Fusion"] and not (folder / "stale.png").exists()
    assert not list(folder.parent.glob(".fusion.*"))


# ---------------------------------------------------------------------------------------------------
# 1. the other caches: spectrogram cache, feature-store key (extractor config)
# ---------------------------------------------------------------------------------------------------
def test_spectrogram_cache_is_not_reused_when_a_file_is_replaced_in_place(tiny_esc50, tmp_path):
    import shutil

    from specfusion.models.crnn.spectrograms import compute_spectrograms

    clips = [tmp_path / f"c{i}.wav" for i in range(3)]
    for clip, item in zip(clips, list(tiny_esc50)[:3]):
        shutil.copy(item.path, clip)
    items = [Item(name=c.stem, path=c, label="a", fold=1 + i, partition="dev") for i, c in enumerate(clips)]
    table = DatasetTable(name="t", root=tmp_path, items=items, classes=["a"])
    first = compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path / "cache")
    shutil.copy(list(tiny_esc50)[5].path, clips[0])  # same path, other audio
    os.utime(clips[0], ns=(1, 1))
    second = compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path / "cache")
    assert not np.array_equal(first[0], second[0]) and np.array_equal(first[1:], second[1:])


def test_feature_store_key_covers_every_extractor_option():
    """extractor.config() is the store's key: each option that changes the features changes it."""
    from specfusion.features.extractors import get_extractor

    base = get_extractor("efficientnet_lite0", weights="none", device="cpu").config()
    for option, value in (
        ("seed", 1),
        ("colormap", "magma"),
        ("clip_db", -60.0),
        ("sample_rate", 22050),
        ("spec_params", {"n_mels": 64}),
    ):
        changed = get_extractor("efficientnet_lite0", weights="none", device="cpu", **{option: value}).config()
        assert changed != base, option
    assert get_extractor("efficientnet_lite0", weights="none", device="cpu", channels_last=False).config() == base
