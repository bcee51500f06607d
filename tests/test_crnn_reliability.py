"""The CRNN's state on disk and its parameters: every failure is one clear line, nothing wrong is used silently.

Generated clips (two tones in noise) and a tiny network keep these fast: a damaged spectrogram cache is
recomputed, invalid parameters are refused before any work (Python API, command line, recipes), a failed
checkpoint write keeps the previous checkpoint, and a damaged checkpoint is refused on load and retrained.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from specfusion.cli import main
from specfusion.data.datasets import load_dataset
from specfusion.errors import ConfigError, StoreError
from specfusion.identity import file_digest
from specfusion.models.crnn import CRNNClassifier, crnn_fold_protocol, torch_threads
from specfusion.models.crnn.spectrograms import compute_spectrograms
from specfusion.pipeline.recipes import parse_recipe

SR = 16000
#: A tiny network: the esc50 variant's blocks with few filters, one epoch.
TINY = dict(variant="esc50", epochs=1, batch_size=8, filters=[8, 8, 16, 16], gru_units=8, gru_layers=1, num_threads=1)
TORCH_WRITE_ERROR = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A CSV of 12 generated 2-s clips: a low or a high tone in noise, two of each per fold 1-3."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    rows = ["path,label,fold"]
    for fold in (1, 2, 3):
        for label, freq in (("low", 300.0), ("high", 3000.0)):
            for j in range(2):
                wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))
                sf.write(root / f"{label}{fold}{j}.wav", wave.astype(np.float32), SR)
                rows.append(f"{label}{fold}{j}.wav,{label},{fold}")
    csv = root / "clips.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


@pytest.fixture(scope="module")
def table(clips):
    return load_dataset("csv", clips)


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("crnn")
    return out, crnn_fold_protocol(table, out_dir=out, **TINY)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(1)
    S = rng.uniform(-80, 0, size=(12, 128, 16)).astype(np.float32)
    return CRNNClassifier(**TINY).fit(S, np.array(["a", "b", "c"] * 4))


def _copy(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained[0], out)
    return out


def _stamps(out):
    return {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2, 3)}


def _one_line(text: str) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text.strip()


# ------------------------------------------------------------------------------------ spectrogram cache
def test_damaged_spectrogram_cache_is_recomputed_with_a_warning(table, tmp_path, caplog):
    S = compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path)
    (cache,) = tmp_path.glob("spectrograms-*.npy")
    record = cache.with_suffix(".json")
    assert '"sha256": "' + file_digest(cache) + '"' in record.read_text()
    np.save(cache, np.zeros_like(S))  # other values of the same shape
    with caplog.at_level(logging.WARNING):
        again = compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path)
    assert np.array_equal(again, S) and "does not match the SHA-256" in caplog.text
    assert np.array_equal(np.load(cache), S)  # rewritten, with its record
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path), S)
    assert "recomputing" not in caplog.text
    for damage, why in ((record.unlink, "no digest record"), (lambda: record.write_text("{"), "cannot be read")):
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert np.array_equal(compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path), S)
        assert why in caplog.text


def test_protocol_recomputes_a_damaged_cache_and_keeps_its_fold_models(trained, table, tmp_path, caplog):
    out = _copy(trained, tmp_path)
    stamps = _stamps(out)
    (cache,) = out.glob("spectrograms-*.npy")
    S = np.load(cache)
    np.save(cache, S[::-1].copy())  # the items' spectrograms swapped around: same shape, same values
    with caplog.at_level(logging.WARNING):
        again = crnn_fold_protocol(table, out_dir=out, **TINY)
    assert "recomputing the spectrograms" in caplog.text
    assert _stamps(out) == stamps and np.array_equal(again.predictions.scores, trained[1].predictions.scores)


def test_disk_full_while_caching_spectrograms_is_one_line_and_leaves_nothing(table, tmp_path, monkeypatch):
    def full(handle, array):
        handle.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(StoreError, match="no space left on device") as err:
        compute_spectrograms(table, clip_db=-80, cache_dir=tmp_path)
    _one_line(str(err.value))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ parameters
def test_every_parameter_has_a_constraint():
    assert set(CRNNClassifier._parameter_constraints) == set(CRNNClassifier().get_params())


@pytest.mark.parametrize(
    ("name", "value"),
    [("epochs", 0), ("epochs", -1), ("batch_size", 0), ("lr", math.nan), ("lr", 0.0), ("lr", math.inf),
     ("decay", -0.1), ("dropout", 1.0), ("beta2", 1.0), ("eps", 0.0), ("gru_units", 0), ("mixup", -0.1),
     ("filters", [8, 0, 16, 16]), ("filters", [8, 8.5, 16, 16]), ("pools", [[2, 2], [2, 2], [4, 2], [8]]),
     ("validation_every", 0), ("metric", "f1"), ("seed", -1), ("num_threads", 0)],
    ids=lambda v: str(v).replace(" ", ""),
)  # fmt: skip
def test_invalid_parameters_are_refused_before_training(name, value):
    model = CRNNClassifier(**{**TINY, name: value})
    with pytest.raises(ConfigError, match=f"'{name}'") as err:
        model.fit(np.zeros((6, 128, 16), dtype=np.float32), ["a", "b"] * 3)
    assert isinstance(err.value, ValueError) and err.value.parameters == {name: None}
    _one_line(str(err.value))
    assert not hasattr(model, "network_")


def test_protocol_refuses_invalid_options_before_any_work(table, tmp_path):
    out = tmp_path / "out"
    for options, match in (({"epochs": 0}, "'epochs'"), ({"batch_size": 0}, "'batch_size'"),
                           ({"average_epochs": 2}, "average_epochs"), ({"combine": "maen"}, "combine"),
                           ({"n_jobs": 0}, "n_jobs")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            crnn_fold_protocol(table, out_dir=out, **{**TINY, **options})
    assert list(out.iterdir()) == []  # not a spectrogram computed


@pytest.mark.parametrize(
    ("flags", "start"),
    [(["--epochs", "0"], "--epochs 0: The 'epochs' parameter"), (["--lr", "nan"], "--lr nan: The 'lr' parameter"),
     (["--batch-size", "0"], "--batch-size 0: "), (["--jobs", "0"], "--jobs 0: n_jobs must not be 0")],
    ids=["epochs", "lr", "batch-size", "jobs"],
)  # fmt: skip
def test_cli_refuses_invalid_values_in_one_line_before_any_work(clips, tmp_path, capsys, flags, start):
    out = tmp_path / "out"
    code = main(["crnn", "--dataset", "csv", "--root", str(clips), "--out", str(out), "-q", *flags])
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"specfusion: error: {start}")
    assert not list(tmp_path.rglob("spectrograms-*"))


@pytest.mark.parametrize(
    ("entry", "match"),
    [("epochs = -1", "systems[1] (CRNN): The 'epochs' parameter of CRNNClassifier must be an int"),
     ("batch_size = 0", "systems[1] (CRNN): The 'batch_size' parameter"),
     ("grid = { epochs = [2, 0] }", "'grid.epochs': The 'epochs' parameter"),
     ("filters = [8, 0, 16, 16]", "The 'filters' parameter"), ("lr = nan", "'lr'")],
    ids=["epochs", "batch_size", "grid", "filters", "lr"],
)  # fmt: skip
def test_recipe_refuses_invalid_crnn_values_when_parsed(entry, match):
    text = f'[dataset]\nkind = "esc50"\n[[systems]]\nname = "CRNN"\nkind = "crnn"\n{entry}\n'
    with pytest.raises(ConfigError) as err:
        parse_recipe(text)
    assert match in _one_line(str(err.value))


# ---------------------------------------------------------------------------------- checkpoint writes
@pytest.mark.parametrize(
    ("failure", "says"),
    [(RuntimeError(TORCH_WRITE_ERROR), "the disk is full"),
     (OSError(errno.ENOSPC, "No space left on device"), "no space left on device")],
    ids=["torch-writer", "enospc"],
)  # fmt: skip
def test_disk_full_during_a_checkpoint_save_keeps_the_old_one(fitted, tmp_path, monkeypatch, failure, says):
    path = fitted.save(tmp_path / "fold1.pt")
    before = path.read_bytes()

    def full(data, handle):
        handle.write(b"PK\x03\x04 partial")
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(StoreError, match=says) as err:
        fitted.save(path)
    assert _one_line(str(err.value)).startswith(f"{path}: the CRNN checkpoint could not be written")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["fold1.pt"]
    monkeypatch.undo()
    assert CRNNClassifier.load(path).history_ == fitted.history_


def test_a_diverged_model_is_never_saved(fitted, tmp_path):
    """Non-finite weights (training diverged) are refused when saving, as load would refuse them."""
    import copy

    diverged = copy.deepcopy(fitted)
    with torch.no_grad():
        diverged.network_.out.weight[0, 0] = math.inf
    with pytest.raises(ConfigError, match="'out.weight' is NaN or infinite: training diverged") as err:
        diverged.save(tmp_path / "fold1.pt")
    assert err.value.parameters == {"lr": None} and list(tmp_path.iterdir()) == []


def test_cli_disk_full_during_a_checkpoint_save_is_one_line(clips, tmp_path, capsys, monkeypatch):
    def full(data, handle):
        raise RuntimeError(TORCH_WRITE_ERROR)

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "out"
    args = ["crnn", "--dataset", "csv", "--root", str(clips), "--out", str(out), "-q", "--jobs", "1", "--epochs", "1",
            "--filters", "8", "8", "16", "16"]  # fmt: skip
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err)
    assert "fold1.pt: the CRNN checkpoint could not be written" in line and "disk is full" in line
    assert not list(out.glob("*.pt")) and not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------- checkpoint loads
def _poison(data):
    weight = data["state_dict"]["out.weight"].clone()  # a checkpoint's CPU tensors are the network's own
    weight[0, 0] = math.nan
    data["state_dict"]["out.weight"] = weight


def _blocks(data, n=5):
    data["params"].update(filters=[8] * n, kernels=[3] * n, pools=[[2, 1]] * (n - 1) + [[8, 1]])


@pytest.mark.parametrize(
    ("tamper", "match"),
    [(_poison, "'out.weight' holds NaN"),
     (lambda d: d.update(input_std=[math.inf] * 128), "input_std must be finite"),
     (lambda d: d.update(input_mean=1.0), "input_mean must be finite numbers, one per Mel band"),
     (lambda d: d["params"].update(gru_units=1 << 20), "'gru.weight_ih_l0' is"),  # never allocated
     (lambda d: d["params"].update(gru_layers=1000), "larger than its"),
     (_blocks, "the weights do not match the recorded network parameters"),
     (lambda d: d["params"].update(lr=math.nan), "'lr'"),
     (lambda d: d["params"].update(epochs=0), "'epochs'"),
     (lambda d: d["params"].update(depth=3), "does not know"),
     (lambda d: d.update(n_mels=True), "n_mels"),
     (lambda d: d.update(classes=["a", "a", "c"]), "classes"),
     (lambda d: d.update(version=99), "version 99"),
     (lambda d: d["state_dict"].update({"out.bias": torch.zeros(99)}), "'out.bias' is"),
     (lambda d: d["state_dict"].update({"out.bias": [0.0, 0.0, 0.0]}), "'out.bias' is list")],
    ids=["nan-weight", "inf-std", "statistic-kind", "huge-gru", "gru-layers", "blocks", "nan-lr", "no-epochs",
         "unknown-parameter", "n_mels", "classes-twice", "version", "bias-shape", "bias-list"],
)  # fmt: skip
def test_a_damaged_checkpoint_is_refused_on_load_in_one_line(fitted, tmp_path, tamper, match):
    data = fitted.checkpoint()
    tamper(data)
    path = tmp_path / "fold1.pt"
    torch.save(data, path)
    with pytest.raises(StoreError, match=match) as err:
        CRNNClassifier.load(path)
    assert _one_line(str(err.value)).startswith(str(path))


def test_a_damaged_checkpoint_is_retrained_with_a_warning(trained, table, tmp_path, caplog):
    out = _copy(trained, tmp_path)
    stamps = _stamps(out)
    data = torch.load(out / "fold1.pt", weights_only=True)
    _poison(data)
    torch.save(data, out / "fold1.pt")
    with caplog.at_level(logging.WARNING):
        again = crnn_fold_protocol(table, out_dir=out, **TINY)
    assert "fold1.pt: retraining: the checkpoint cannot be used" in caplog.text and "NaN" in caplog.text
    after = _stamps(out)
    assert after[1] != stamps[1] and (after[2], after[3]) == (stamps[2], stamps[3])
    assert np.array_equal(again.predictions.scores, trained[1].predictions.scores)  # retrained exactly as before
