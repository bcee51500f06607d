"""Model files of runs, end to end: a DCASE 2018 task 5 per-channel system scores a 4-channel file per channel and
combines the channels as the run did (not a down-mix), and a step taken from the runner's cache still has its model
file -- every system folder of a finished run has one, and it gives the recorded predictions."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from specfusion.evaluation.predictions import read_predictions
from specfusion.pipeline.recipes import parse_recipe, slug
from specfusion.pipeline.runner import run_recipe
from specfusion.pipeline.systems import MODEL_FILE, load_system

DCASE_CLASSES = ("absence", "cooking", "working")

DCASE_RECIPE = """
title = "DCASE 2018 task 5, 3 activities, per channel"
[dataset]
kind = "dcase2018"
options = { channels = "each" }

[[systems]]
name = "Lite0 / ImageNet"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "imagenet"
batch_size = 4

[[systems]]
name = "CRNN"
kind = "crnn"
variant = "dcase2018"
epochs = 1
filters = [4, 8, 8]
gru_units = 8

[[systems]]
name = "Fine-tuned YAMNet"
kind = "finetune"
network = "yamnet"
epochs = 1
batch_size = 8

[[fusions]]
name = "stacking"
members = ["Lite0 / ImageNet", "CRNN"]
"""


def _real_rows(meta: Path, per_class: int) -> list[str]:
    """The first ``per_class`` rows of each of :data:`DCASE_CLASSES` in a real DCASE 2018 meta file, each from
    another session."""
    chosen: dict[str, list[str]] = {c: [] for c in DCASE_CLASSES}
    sessions: set[str] = set()
    for row in meta.read_text().splitlines():
        file, label, session = row.split("\t")[:3]
        if label in chosen and len(chosen[label]) < per_class and session not in sessions:
            chosen[label].append(row)
            sessions.add(session)
    return [r for k in range(per_class) for r in (chosen[c][k] for c in DCASE_CLASSES)]


def _write_segments(rows: list[str], folder: Path, source: np.ndarray, sr: int, start: int) -> None:
    """A distinct 4-channel, 4-s excerpt of the real SINS recording for every row (offset and channel order vary)."""
    import soundfile as sf

    length = 4 * sr
    for k, row in enumerate(rows):
        i = start + k
        offset = (i * 7919) % (source.shape[0] - length)
        order = np.roll(np.arange(4), i)
        path = folder / row.split("\t")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, source[offset : offset + length, order], sr, subtype="PCM_16")


@pytest.fixture(scope="module")
def dcase_run(dcase2018_root, formats_dir, tmp_path_factory):
    """Real DCASE 2018 meta rows (12 development segments in 4 official-layout folds, 6 evaluation segments) over
    excerpts of the real 4-channel SINS clip, run with a per-channel SVM, a per-channel CRNN and their stacking
    fusion (the weighted and calibrated fusions need a development item of every one of the 9 classes)."""
    import soundfile as sf

    source, sr = sf.read(formats_dir / "sins_4ch_16khz_16bit_10s.wav", dtype="float32")
    root = tmp_path_factory.mktemp("dcase2018")
    dev, ev = root / "dcase2018-dev", root / "dcase2018-eval"
    (dev / "evaluation_setup").mkdir(parents=True)
    ev.mkdir()
    dev_rows = _real_rows(dcase2018_root / "dev" / "meta.txt", 4)
    eval_rows = _real_rows(dcase2018_root / "eval" / "meta.txt", 2)
    (dev / "meta.txt").write_text("\n".join(dev_rows) + "\n")
    (ev / "meta.txt").write_text("\n".join(eval_rows) + "\n")
    for k in range(1, 5):  # fold k: one segment of each activity
        fold = dev_rows[(k - 1) * 3 : k * 3]
        listing = "\n".join("\t".join(r.split("\t")[:2]) for r in fold) + "\n"
        (dev / "evaluation_setup" / f"fold{k}_evaluate.txt").write_text(listing)
    _write_segments(dev_rows, dev, source, sr, 0)
    _write_segments(eval_rows, ev, source, sr, len(dev_rows))
    out = root / "run"
    run_recipe(parse_recipe(DCASE_RECIPE), root=root, out_dir=out)
    return root, out


def _eval_files(root: Path) -> tuple[list[str], list[Path]]:
    """(segment names, files) of the test partition, in table order."""
    from specfusion.data.datasets import load_dcase2018

    test = load_dcase2018(root, channels="mean").test()
    return [i.name for i in test], [Path(i.path) for i in test]


def _recorded(run: Path, kind: str, name: str, segments: list[str]) -> np.ndarray:
    predictions = read_predictions(run / kind / slug(name) / "predictions.csv")
    order = {n: i for i, n in enumerate(predictions.names.tolist())}
    return predictions.scores[[order[s] for s in segments]]


@pytest.mark.parametrize(
    "kind, name",
    [("systems", "Lite0 / ImageNet"), ("systems", "CRNN"), ("systems", "Fine-tuned YAMNet"), ("fusions", "stacking")],
)
def test_per_channel_model_scores_each_channel_as_the_run_did(dcase_run, kind, name):
    root, run = dcase_run
    segments, files = _eval_files(root)
    assert len(files) == 6
    system = load_system(run / kind / slug(name) / MODEL_FILE, device="cpu")
    recorded = _recorded(run, kind, name, segments)
    np.testing.assert_allclose(system.score(files).scores, recorded, rtol=1e-6, atol=1e-9)
    if kind == "systems":
        assert system.channels == "each" and system.combine == "mean"
        system.channels = "mean"  # what the model did before: the down-mixed file, clearly other scores
        downmixed = system.score(files).scores
        assert np.abs(downmixed - recorded).max() > 1e-3


def test_predict_command_gives_the_runs_test_predictions(dcase_run, tmp_path, capsys):
    import pandas as pd

    from specfusion.cli import main

    root, run = dcase_run
    segments, files = _eval_files(root)
    out = tmp_path / "predicted.csv"
    model = run / "systems" / slug("Lite0 / ImageNet") / MODEL_FILE
    assert main(["predict", str(model), *map(str, files), "--csv", str(out), "-q"]) == 0
    table = pd.read_csv(out)
    classes = json.loads(zipfile.ZipFile(model).read("model.json"))["system"]["classes"]
    recorded = _recorded(run, "systems", "Lite0 / ImageNet", segments)
    np.testing.assert_allclose(table[[f"score_{c}" for c in classes]].to_numpy(), recorded, rtol=1e-6, atol=1e-9)
    assert table["predicted"].tolist() == [classes[j] for j in recorded.argmax(axis=1)]


def test_a_model_file_records_the_channel_policy_and_is_checked_on_load(dcase_run):
    from specfusion.errors import ModelError
    from specfusion.pipeline.systems import system_from_bytes

    _, run = dcase_run
    data = (run / "systems" / "crnn" / MODEL_FILE).read_bytes()
    node = _description(data)["system"]
    assert node["channels"] == "each" and node["combine"] == "mean"
    with pytest.raises(ModelError, match="channels must be one of mean, each"):
        system_from_bytes(_with_entry(data, "channels", "all"), "altered.sfm", device="cpu")


def _description(data: bytes) -> dict:
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return json.loads(zf.read("model.json"))


def _with_entry(data: bytes, key: str, value) -> bytes:
    """A model file whose system description has ``key`` set to ``value``, every digest recomputed."""
    import io

    from specfusion.pipeline.model_checks import DESCRIPTION_DIGEST, description_digest

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(entries["model.json"])
    meta["system"][key] = value
    meta[DESCRIPTION_DIGEST] = description_digest(meta)
    entries["model.json"] = json.dumps(meta).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return out.getvalue()


# -- steps taken from the runner's cache ----------------------------------------------------------------------------
CACHE_RECIPE = """
title = "cached model files"
[dataset]
kind = "csv"

[[systems]]
name = "Lite0 / ImageNet"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "imagenet"
batch_size = 4

[[systems]]
name = "CRNN"
kind = "crnn"
variant = "esc50"
epochs = 1
filters = [4, 4, 8, 8]
gru_units = 8

[[fusions]]
name = "stacking"
members = ["Lite0 / ImageNet", "CRNN"]
"""


@pytest.fixture(scope="module")
def cached_runs(esc50_root, tmp_path_factory):
    """3 ESC-50 classes, folds 1-3 development and fold 4 test (4 clips per class and fold), run twice."""
    from specfusion.data.datasets import load_esc50

    chosen: dict[tuple, list] = {}
    for item in load_esc50(esc50_root):
        if item.label in ("dog", "rooster", "rain"):
            chosen.setdefault((item.fold, item.label), []).append(item)
    dev = [i for f in (1, 2, 3) for c in ("dog", "rooster", "rain") for i in chosen[(f, c)][:4]]
    test = [i for c in ("dog", "rooster", "rain") for i in chosen[(4, c)][:4]]
    folder = tmp_path_factory.mktemp("cached")
    rows = ["path,label,fold,partition"] + [f"{i.path},{i.label},{i.fold},dev" for i in dev]
    rows += [f"{i.path},{i.label},,test" for i in test]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    out = folder / "run"
    recipe = parse_recipe(CACHE_RECIPE)
    first = run_recipe(recipe, root=folder / "data.csv", out_dir=out)
    second = run_recipe(recipe, root=folder / "data.csv", out_dir=out)
    return recipe, folder, out, first, second, test


STEPS = [("systems", "Lite0 / ImageNet"), ("systems", "CRNN"), ("fusions", "stacking")]


def test_a_fully_cached_run_keeps_a_model_file_for_every_system(cached_runs):
    _, _, out, first, second, test = cached_runs
    assert sorted(first.executed) == ["CRNN", "Lite0 / ImageNet", "stacking"] and second.executed == []
    for kind, name in STEPS:
        predictions = read_predictions(out / kind / slug(name) / "predictions.csv")
        assert predictions.config["model_saved"] is True
        system = load_system(out / kind / slug(name) / MODEL_FILE, device="cpu")
        order = {n: i for i, n in enumerate(predictions.names.tolist())}
        recorded = predictions.scores[[order[Path(i.path).with_suffix("").as_posix()] for i in test]]
        np.testing.assert_array_equal(system.score([i.path for i in test]).scores, recorded)


def test_a_cached_step_without_its_model_file_is_run_again_to_save_one(cached_runs):
    """A run made before model files existed (or a model file removed since): the runner does not take the step
    from its cache as it is, it runs it again -- the same predictions -- and saves the model file."""
    recipe, folder, out, _, _, test = cached_runs
    lite0 = out / "systems" / slug("Lite0 / ImageNet")
    before = read_predictions(lite0 / "predictions.csv")
    saved = _description((lite0 / MODEL_FILE).read_bytes())
    (lite0 / MODEL_FILE).unlink()
    third = run_recipe(recipe, root=folder / "data.csv", out_dir=out)
    assert third.executed == ["Lite0 / ImageNet"]  # its predictions come out the same: the fusion stays cached
    assert _description((lite0 / MODEL_FILE).read_bytes()) == saved  # the same model (description and arrays' digest)
    after = read_predictions(lite0 / "predictions.csv")
    np.testing.assert_array_equal(after.scores, before.scores)
    assert all((out / kind / slug(name) / MODEL_FILE).is_file() for kind, name in STEPS)


def test_a_step_that_could_not_save_its_model_stays_cached(cached_runs):
    """A step whose model could not be saved records it; the runner then takes it from the cache (no endless re-runs)."""
    from specfusion.evaluation.predictions import write_predictions

    recipe, folder, out, _, _, _ = cached_runs
    crnn = out / "systems" / "crnn"
    predictions = read_predictions(crnn / "predictions.csv")
    predictions.config["model_saved"] = False
    write_predictions(crnn / "predictions.csv", predictions)
    (crnn / MODEL_FILE).unlink()
    fourth = run_recipe(recipe, root=folder / "data.csv", out_dir=out)
    assert "CRNN" not in fourth.executed
