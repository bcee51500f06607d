"""Saved systems (model.sfm): a tiny recipe on real ESC-50 clips saves its systems, and a fresh process applying
them with `specfusion predict` gives exactly the run's test scores; unsafe or foreign files are refused."""

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specfusion.errors import ModelError
from specfusion.evaluation.predictions import read_predictions
from specfusion.pipeline.model_checks import DESCRIPTION_DIGEST, description_digest
from specfusion.pipeline.recipes import parse_recipe, slug
from specfusion.pipeline.runner import run_recipe
from specfusion.pipeline.systems import FORMAT_VERSION, MODEL_FILE, load_system

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("dog", "rooster", "rain")
PER_FOLD = 4  # clips per class and fold: 36 development items (folds 1-3), 12 test items (fold 4)

RECIPE = """
title = "saved systems"
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
epochs = 2
filters = [4, 4, 8, 8]
gru_units = 8
batch_size = 16

[[fusions]]
name = "weighted"
members = ["Lite0 / ImageNet", "CRNN"]
method = "weighted"

[[fusions]]
name = "stacking"
members = ["Lite0 / ImageNet", "CRNN"]
method = "stacking-svm"
"""


@pytest.fixture(scope="module")
def dataset(esc50_root, tmp_path_factory):
    """A user's CSV: development rows (folds 1-3) first, then the test rows (ESC-50 fold 4), so that the
    test items fill whole extraction batches of 4, as `specfusion predict` forms them from the test files."""
    from specfusion.data.datasets import load_esc50

    table = load_esc50(esc50_root)
    chosen: dict[tuple, list] = {}
    for item in table:
        if item.label in CLASSES:
            chosen.setdefault((item.fold, item.label), []).append(item)
    dev = [i for f in (1, 2, 3) for c in CLASSES for i in chosen[(f, c)][:PER_FOLD]]
    test = [i for c in CLASSES for i in chosen[(4, c)][:PER_FOLD]]
    folder = tmp_path_factory.mktemp("dataset")
    rows = (
        ["path,label,fold,partition"]
        + [f"{i.path},{i.label},{i.fold},dev" for i in dev]
        + [f"{i.path},{i.label},,test" for i in test]
    )
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    (folder / "test.csv").write_text("path\n" + "\n".join(str(i.path) for i in test) + "\n")
    return folder, test


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    folder, _ = dataset
    out = tmp_path_factory.mktemp("run")
    run_recipe(parse_recipe(RECIPE), root=folder / "data.csv", out_dir=out)
    return out


def _model(run_dir, kind, name) -> Path:
    return run_dir / kind / slug(name) / MODEL_FILE


def _test_scores(run_dir, kind, name, test_items) -> np.ndarray:
    """The run's recorded test scores, in the order of ``test_items``."""
    predictions = read_predictions(run_dir / kind / slug(name) / "predictions.csv")
    order = {n: i for i, n in enumerate(predictions.names.tolist())}
    return predictions.scores[[order[Path(i.path).with_suffix("").as_posix()] for i in test_items]]


def _predict_in_fresh_process(model, audio, out_csv) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "specfusion", "predict", str(model), *map(str, audio), "--csv", str(out_csv)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_every_system_saves_a_model_file(run_dir):
    for kind, name in [
        ("systems", "Lite0 / ImageNet"),
        ("systems", "CRNN"),
        ("fusions", "weighted"),
        ("fusions", "stacking"),
    ]:
        path = _model(run_dir, kind, name)
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("model.json"))
        assert meta["format"] == "specfusion-model" and meta["format_version"] == FORMAT_VERSION
        assert meta["system"]["name"] == name


def test_svm_model_in_a_fresh_process_gives_the_runs_test_scores(run_dir, dataset, tmp_path):
    folder, test = dataset
    out = tmp_path / "predicted.csv"
    done = _predict_in_fresh_process(_model(run_dir, "systems", "Lite0 / ImageNet"), [folder / "test.csv"], out)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert table["file"].tolist() == [str(i.path) for i in test]
    scores = table[[f"score_{c}" for c in sorted(CLASSES)]].to_numpy()
    recorded = _test_scores(run_dir, "systems", "Lite0 / ImageNet", test)
    np.testing.assert_array_equal(scores, recorded)
    assert table["predicted"].tolist() == [sorted(CLASSES)[j] for j in recorded.argmax(axis=1)]
    assert "12 of 12 file(s) predicted" in done.stdout


def test_fusion_model_applies_its_members_and_itself_in_one_call(run_dir, dataset, tmp_path):
    folder, test = dataset
    out = tmp_path / "fused.csv"
    done = _predict_in_fresh_process(_model(run_dir, "fusions", "weighted"), [folder / "test.csv"], out)
    assert done.returncode == 0, done.stderr
    scores = pd.read_csv(out)[[f"score_{c}" for c in sorted(CLASSES)]].to_numpy()
    np.testing.assert_array_equal(scores, _test_scores(run_dir, "fusions", "weighted", test))


def test_crnn_and_stacking_models_from_python(run_dir, dataset):
    from specfusion.data.audio import load_audio

    _, test = dataset
    import specfusion

    crnn = specfusion.load_system(_model(run_dir, "systems", "CRNN"), device="cpu")  # lazily exported
    assert crnn.kind == "proba" and list(crnn.classes_) == sorted(CLASSES)
    np.testing.assert_array_equal(
        crnn.score([i.path for i in test]).scores, _test_scores(run_dir, "systems", "CRNN", test)
    )
    stacking = load_system(_model(run_dir, "fusions", "stacking"), device="cpu")
    np.testing.assert_array_equal(
        stacking.score([i.path for i in test]).scores, _test_scores(run_dir, "fusions", "stacking", test)
    )
    # waveforms at another rate: resampled, scored, labels from the classes
    waveforms = [load_audio(i.path, sr=22050)[0][0] for i in test[:2]]
    labels = stacking.predict(waveforms, sr=22050)
    assert labels.shape == (2,) and set(labels) <= set(CLASSES)
    assert stacking.decision_function(waveforms, sr=22050).shape == (2, len(CLASSES))


def test_predict_reports_bad_files_and_skips_them(run_dir, dataset, tmp_path):
    folder, test = dataset
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really audio")
    model = _model(run_dir, "systems", "CRNN")
    done = _predict_in_fresh_process(model, [test[0].path, bad], tmp_path / "one.csv")
    assert done.returncode == 0, done.stderr
    assert "1 of 2 file(s) predicted" in done.stdout and "broken.wav" in done.stdout
    assert pd.read_csv(tmp_path / "one.csv")["file"].tolist() == [str(test[0].path)]


def test_predict_fails_when_no_file_can_be_predicted(run_dir, tmp_path, capsys):
    from specfusion.cli import main

    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really audio")
    assert main(["predict", str(_model(run_dir, "systems", "CRNN")), str(bad), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "0 of 1 file(s) predicted" in captured.out and "broken.wav" in captured.out
    assert "no file could be predicted" in captured.err


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_named_model_sfm_is_refused_not_unpickled(tmp_path):
    path = tmp_path / MODEL_FILE
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ModelError, match="not a specfusion model file"):
        load_system(path)
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    # inside a well-formed archive, a pickled array is refused too (np.load(allow_pickle=False))
    import hashlib
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([_Boom()], dtype=object), allow_pickle=True)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as inner:
        inner.writestr("x.npy", buffer.getvalue())
    meta = {"format": "specfusion-model", "format_version": FORMAT_VERSION, "arrays_sha256": hashlib.sha256(npz.getvalue()).hexdigest(),
            "system": {"type": "svm"}}  # fmt: skip
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("model.json", json.dumps(meta))
        zf.writestr("arrays.npz", npz.getvalue())
    # its description is checked first (it names no class); tests/test_model_files.py has a valid one
    with pytest.raises(ModelError, match="not a plain numeric archive|class list"):
        load_system(path)


def _rewrite(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(files["model.json"])
    change(meta, files)
    if DESCRIPTION_DIGEST in meta:  # the edit keeps the description's digest valid
        meta[DESCRIPTION_DIGEST] = description_digest(meta)
    files["model.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return target


def test_another_format_version_a_missing_member_and_other_weights_are_refused(run_dir, tmp_path):
    svm = _model(run_dir, "systems", "Lite0 / ImageNet")
    newer = _rewrite(svm, tmp_path / "newer.sfm", lambda m, f: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelError, match=f"model format version {FORMAT_VERSION + 1}.*update specfusion"):
        load_system(newer)

    def other_weights(meta, files):
        meta["system"]["extractor"]["config"]["weights"]["sha256"] = "0" * 64

    with pytest.raises(ModelError, match="extractor this installation builds differs.*weights"):
        load_system(_rewrite(svm, tmp_path / "weights.sfm", other_weights))
    fusion = _model(run_dir, "fusions", "weighted")
    with pytest.raises(ModelError, match="member 'CRNN' .* is missing"):
        load_system(_rewrite(fusion, tmp_path / "member.sfm", lambda m, f: f.pop("members/1.sfm")))


def test_svm_command_saves_a_model_rebuilt_from_the_store(run_dir, dataset, tmp_path, capsys):
    from specfusion.cli import main

    _, test = dataset
    store = next((run_dir / "features").glob("lite0-imagenet-*.h5"))
    assert main(["svm", str(store), "--out", str(tmp_path / "svm"), "-q"]) == 0
    assert "fitted system saved as" in capsys.readouterr().out
    system = load_system(tmp_path / "svm" / MODEL_FILE, device="cpu")
    assert system.extractor.config()["weights"]["kind"] == "imagenet"
    recorded = read_predictions(tmp_path / "svm" / "predictions.csv")
    order = {n: i for i, n in enumerate(recorded.names.tolist())}
    expected = recorded.scores[[order[Path(i.path).with_suffix("").as_posix()] for i in test]]
    np.testing.assert_array_equal(system.score([i.path for i in test]).scores, expected)


def test_crnn_command_saves_its_fold_models(dataset, tmp_path):
    from specfusion.cli import main

    folder, test = dataset
    out = tmp_path / "crnn"
    args = ["crnn", "--dataset", "csv", "--root", str(folder / "data.csv"), "--out", str(out), "--epochs", "1",
            "--filters", "4", "4", "8", "8", "--only-folds", "1", "2", "-q"]  # fmt: skip
    assert main(args) == 0
    system = load_system(out / MODEL_FILE, device="cpu")
    assert [f["fold"] for f in system.node["folds"]] == [1, 2]
    recorded = read_predictions(out / "predictions.csv")
    order = {n: i for i, n in enumerate(recorded.names.tolist())}
    expected = recorded.scores[[order[Path(i.path).with_suffix("").as_posix()] for i in test]]
    np.testing.assert_array_equal(system.score([i.path for i in test]).scores, expected)


def test_predict_searches_folders_recursively(run_dir, dataset, tmp_path, capsys):
    from specfusion.cli import main

    _, test = dataset
    (tmp_path / "clips" / "deeper").mkdir(parents=True)
    (tmp_path / "clips" / "a.flac").symlink_to(test[0].path)
    (tmp_path / "clips" / "deeper" / "b.flac").symlink_to(test[5].path)
    (tmp_path / "clips" / "notes.txt").write_text("not audio")
    out = tmp_path / "predicted.csv"
    assert (
        main(
            [
                "predict",
                str(_model(run_dir, "systems", "CRNN")),
                str(tmp_path / "clips"),
                "--csv",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert [Path(f).name for f in table["file"]] == ["a.flac", "b.flac"]
    assert set(table["predicted"]) <= set(CLASSES) and "2 of 2 file(s) predicted" in capsys.readouterr().out
    np.testing.assert_allclose(table[[f"score_{c}" for c in sorted(CLASSES)]].sum(axis=1), 1.0, rtol=1e-6)


def test_a_model_saved_before_the_image_window_default_changed_still_loads(run_dir, dataset, tmp_path):
    # until session 6 the image CNNs' spectrogram defaulted to the paper's 0.32 / 0.16 s, and model files
    # record only the options given: such a file must rebuild its own spectrogram, not today's default
    def old_window(meta, files):
        meta["system"]["extractor"]["config"]["spectrogram"].update(window_s=0.32, hop_s=0.16)

    old = load_system(_rewrite(_model(run_dir, "systems", "Lite0 / ImageNet"), tmp_path / "old.sfm", old_window))
    assert (old.extractor.spec_params.window_s, old.extractor.spec_params.hop_s) == (0.32, 0.16)
    today = load_system(_model(run_dir, "systems", "Lite0 / ImageNet"))
    assert today.extractor.spec_params.window_s == 0.032

    def other_colours(meta, files):
        meta["system"]["extractor"]["config"]["colormap"] = "magma"

    with pytest.raises(ModelError, match="differs.*colormap"):  # anything else that differs is still refused
        load_system(_rewrite(_model(run_dir, "systems", "Lite0 / ImageNet"), tmp_path / "colours.sfm", other_colours))
