"""A tiny recipe on a real ESC-50 subset, end to end: results, reports, caching, skipped systems."""

import json

import pytest

from specfusion.cli import main
from specfusion.evaluation.report import read_results
from specfusion.pipeline.recipes import parse_recipe
from specfusion.pipeline.runner import run_recipe

CLASSES = ("dog", "rooster", "rain", "sea_waves")

TINY_RECIPE = """
title = "tiny ESC-50 subset"
[dataset]
kind = "csv"

[[systems]]
name = "Lite0 / ImageNet"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "imagenet"
batch_size = 16
tags = ["deepspectrum", "imagenet"]

[[systems]]
name = "Lite0 / None"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "none"
batch_size = 16
tags = ["deepspectrum", "untrained"]

[[systems]]
name = "VGG16 / ImageNet"
kind = "deepspectrum"
extractor = "vgg16"
weights = "imagenet"
tags = ["deepspectrum", "imagenet"]
paper = { devel = 63.0, test = 64.8 }

[[systems]]
name = "CRNN"
kind = "crnn"
variant = "esc50"
epochs = 3
filters = [8, 8, 16, 16]
tags = ["crnn"]

[[fusions]]
name = "ImageNet DEEP SPECTRUM"
members = ["tag:imagenet"]

[[fusions]]
name = "All DEEP SPECTRUM"
members = ["tag:deepspectrum"]

[[fusions]]
name = "CRNN + DEEP SPECTRUM"
members = ["tag:crnn", "tag:deepspectrum"]
method = "weighted"
"""


@pytest.fixture(scope="module")
def subset_csv(esc50_root, tmp_path_factory):
    """4 ESC-50 classes x 32 clips as a user's CSV; ESC-50 fold 4 plays the test partition."""
    from specfusion.data.datasets import load_esc50

    table = load_esc50(esc50_root)
    rows = ["path,label,fold,partition"]
    for item in table:
        if item.label in CLASSES:
            partition = "test" if item.fold == 4 else "dev"
            rows.append(f"{item.path},{item.label},{item.fold if partition == 'dev' else ''},{partition}")
    path = tmp_path_factory.mktemp("subset") / "subset.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def finished_run(subset_csv, tmp_path_factory):
    import os

    saved = os.environ.get("SPECFUSION_HOME")
    os.environ["SPECFUSION_HOME"] = str(tmp_path_factory.mktemp("home"))  # no cached ImageNet VGG16
    try:
        out = tmp_path_factory.mktemp("run")
        recipe = parse_recipe(TINY_RECIPE)
        first = run_recipe(recipe, root=subset_csv, out_dir=out)
        yield recipe, out, first
    finally:
        if saved is None:
            os.environ.pop("SPECFUSION_HOME", None)
        else:
            os.environ["SPECFUSION_HOME"] = saved


def test_tiny_recipe_runs_end_to_end(finished_run):
    _, out, first = finished_run
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "csv" and results["metric"] == "accuracy"
    by_name = {s["name"]: s for s in results["systems"]}
    assert list(by_name) == [
        "Lite0 / ImageNet",
        "Lite0 / None",
        "VGG16 / ImageNet",
        "CRNN",
        "ImageNet DEEP SPECTRUM",
        "All DEEP SPECTRUM",
        "CRNN + DEEP SPECTRUM",
    ]
    for name in ("Lite0 / ImageNet", "Lite0 / None", "CRNN", "All DEEP SPECTRUM", "CRNN + DEEP SPECTRUM"):
        system = by_name[name]
        assert system["status"] == "ok", system
        assert 0 <= system["devel"] <= 100 and 0 <= system["test"] <= 100
        assert (out / system["predictions"]).is_file()
    assert by_name["Lite0 / ImageNet"]["kind"] == "base" and by_name["CRNN + DEEP SPECTRUM"]["kind"] == "fusion"
    # real ImageNet features separate 4 ESC-50 classes far above chance (25 %)
    assert by_name["Lite0 / ImageNet"]["devel"] > 60
    assert by_name["CRNN + DEEP SPECTRUM"]["members"] == ["Lite0 / ImageNet", "Lite0 / None", "CRNN"]
    assert (
        by_name["CRNN + DEEP SPECTRUM"]["method"] == "weighted"
        and by_name["All DEEP SPECTRUM"]["method"] == "stacking-svm"
    )
    assert set(by_name["CRNN + DEEP SPECTRUM"]["weights"]) == {"Lite0 / ImageNet", "Lite0 / None", "CRNN"}
    assert by_name["All DEEP SPECTRUM"]["members"] == ["Lite0 / ImageNet", "Lite0 / None"]
    assert sorted(first.executed) == sorted(
        ["Lite0 / ImageNet", "Lite0 / None", "CRNN", "All DEEP SPECTRUM", "CRNN + DEEP SPECTRUM"]
    )
    # per partition, the labelled items each row scored (ESC-50 folds 1-3 of 4 classes = 96 dev, fold 4 = 32 test)
    assert by_name["Lite0 / ImageNet"]["n_items"] == {"devel": 96, "test": 32}


def test_unavailable_weights_are_reported_as_skipped(finished_run):
    _, out, _ = finished_run
    results = read_results(out)
    vgg = next(s for s in results["systems"] if s["name"] == "VGG16 / ImageNet")
    assert vgg["status"] == "skipped" and vgg["devel"] is None
    assert "vgg16-397923af.pth" in vgg["reason"] and "weights_path=FILE" in vgg["reason"]
    fusion = next(s for s in results["systems"] if s["name"] == "ImageNet DEEP SPECTRUM")
    assert fusion["missing_members"] == ["VGG16 / ImageNet"] and fusion["members"] == ["Lite0 / ImageNet"]
    # one member left: a "fusion" of one system is not run, and says why
    assert fusion["status"] == "skipped" and "only one of its members could run (Lite0 / ImageNet)" in fusion["reason"]
    assert fusion["devel"] is None and fusion["predictions"] is None
    report = (out / "report.md").read_text()
    assert "skipped:" in report and "vgg16-397923af.pth" in report and "without VGG16 / ImageNet (skipped)" in report


def test_reports_are_written_with_the_confusion_matrix(finished_run):
    _, out, _ = finished_run
    report = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert (
        "| block | system | method | Devel Acc [%] | Test Acc [%] | paper Devel | paper Test | items (devel / test) | note |"
        in report
    )
    assert "| 96 / 32 |" in report and "<td class=n>96 / 32</td>" in page
    assert "| CRNN + DEEP SPECTRUM | weighted |" in report and "weights: " in report
    assert all(f"{m} 0." in report or f"{m} 1.00" in report for m in ("Lite0 / ImageNet", "Lite0 / None", "CRNN"))
    assert "63.0" in report and "64.8" in report  # the paper's numbers beside ours
    assert "**" in report  # best per block marked
    assert "![confusion matrix](confusion_best.png)" in report and "confusion_best.png" in page
    assert (out / "confusion_best.png").read_bytes()[:4] == b"\x89PNG"
    assert all(c in report for c in CLASSES)  # per-class F1 of the best system


def test_second_run_does_no_work(finished_run, subset_csv):
    recipe, out, first = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.csv")} | {
        p: p.stat().st_mtime_ns for p in out.rglob("*.h5")
    }
    second = run_recipe(recipe, root=subset_csv, out_dir=out)
    assert second.executed == []
    assert all(o.cached for o in second.outcomes if o.status == "ok")
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before
    assert [(o.name, o.devel, o.test) for o in second.outcomes] == [(o.name, o.devel, o.test) for o in first.outcomes]


def test_report_command_rerenders_from_disk(finished_run, capsys):
    _, out, _ = finished_run
    (out / "report.md").unlink()
    (out / "confusion_best.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "confusion_best.png").is_file()
    assert "CRNN + DEEP SPECTRUM" in capsys.readouterr().out


def test_run_records_the_time_of_every_step(finished_run):
    from specfusion.pipeline.runner import TIMINGS_FILE, format_timings

    recipe, out, first = finished_run
    steps = [s.name for s in recipe.systems] + [f.name for f in recipe.fusions] + ["report"]
    assert [t["step"] for t in first.timings] == steps
    assert all(t["seconds"] >= 0 for t in first.timings) and not any(t["cached"] for t in first.timings)
    assert {t["step"]: t["status"] for t in first.timings}["VGG16 / ImageNet"] == "skipped"
    rows = (out / TIMINGS_FILE).read_text().splitlines()
    assert rows[0] == "step\tkind\tseconds\tcached\tstatus" and [r.split("\t")[0] for r in rows[1:]] == steps
    assert json.loads((out / "timings.json").read_text())[0]["step"] == steps[0]
    assert len(format_timings(first.timings).splitlines()) == len(steps) + 1  # + the total
