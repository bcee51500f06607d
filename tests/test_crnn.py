"""The paper's CRNN: architecture, training rules, checkpoints and the fold protocol on real ESC-50 clips."""

import json

import numpy as np
import pytest
import torch

from specfusion.cli import main
from specfusion.data.datasets import DatasetTable, Item, load_esc50
from specfusion.errors import StoreError
from specfusion.evaluation.metrics import accuracy
from specfusion.evaluation.predictions import read_predictions
from specfusion.identity import items_digest
from specfusion.models.crnn import CRNNClassifier, build_network, torch_threads, variant_defaults
from specfusion.models.crnn.protocol import crnn_fold_protocol
from specfusion.models.crnn.spectrograms import compute_spectrograms

N_CLASSES = 5
QUICK = dict(lr=0.001, batch_size=16, epochs=10, num_threads=1, filters=(16, 32, 64, 64))  # the small net: fast


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One thread: on the shared 2-core machine a second OpenMP thread waiting for a busy core spins."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def small_esc50(esc50_root):
    """Five ESC-50 classes (160 clips): folds 1-3 development, fold 4 playing the test partition."""
    table = load_esc50(esc50_root, test_folds=(4,))
    table = table.subset([i for i, item in enumerate(table) if item.label in table.classes[:N_CLASSES]])
    table.classes = table.classes[:N_CLASSES]
    return table


@pytest.fixture(scope="module")
def protocol_run(small_esc50, tmp_path_factory):
    out = tmp_path_factory.mktemp("crnn")
    result = crnn_fold_protocol(small_esc50, out_dir=out, variant="esc50", **QUICK)
    return out, result


def _layers(network, kind):
    return [m for m in network.modules() if type(m).__name__ == kind]


def test_architecture_follows_the_paper():
    dcase = build_network(9, **{k: variant_defaults("dcase2018")[k] for k in ("kernels", "filters", "pools")})
    convs = _layers(dcase, "Conv2d")
    assert [c.kernel_size for c in convs] == [(5, 5), (4, 4), (3, 3)]
    assert _layers(dcase, "MaxPool2d")[2].kernel_size == (32, 2)  # third block: 32 in frequency, 2 in time
    assert len(_layers(dcase, "BatchNorm2d")) == 3 and len(_layers(dcase, "ELU")) == 3
    assert [d.p for d in _layers(dcase, "FastDropout")] == [0.3] * 4
    assert dcase.gru.num_layers == 2 and dcase.gru.hidden_size == 256
    blocks = [type(m).__name__ for m in dcase.conv]
    assert blocks[:5] == ["Conv2d", "BatchNorm2d", "ELU", "MaxPool2d", "FastDropout"]
    assert blocks[5:11] == [
        "ZeroPad2d",
        "Conv2d",
        "BatchNorm2d",
        "ELU",
        "MaxPool2d",
        "FastDropout",
    ]  # 4x4: "same" by padding 1+2
    x = torch.zeros(2, 1, 128, 63)  # a 10-s DCASE segment
    assert tuple(dcase.conv(x).shape) == (2, 128, 1, 31)  # frequency pooled to one band, 31 GRU steps
    assert tuple(dcase.eval()(x).shape) == (2, 9)

    esc = build_network(50, **{k: variant_defaults("esc50")[k] for k in ("kernels", "filters", "pools")})
    assert [c.kernel_size for c in _layers(esc, "Conv2d")] == [(3, 3)] * 4
    x = torch.zeros(2, 1, 128, 32)  # a 5-s ESC-50 clip
    assert tuple(esc.conv(x).shape) == (2, 256, 1, 4)  # filters 64-128-256-256 (issue 10)
    assert tuple(esc.eval()(x).shape) == (2, 50)
    assert variant_defaults("esc50")["epochs"] == 100 and variant_defaults("dcase2017")["epochs"] == 50
    assert variant_defaults("dcase2018")["epochs"] == 30 and variant_defaults("esc50")["clip_db"] == -80


def test_learning_rate_decays_per_update(small_esc50):
    S = compute_spectrograms(small_esc50.subset(range(20)), clip_db=-80)
    model = CRNNClassifier(epochs=3, batch_size=8, lr=0.01, decay=0.1, num_threads=1).fit(S, small_esc50.labels()[:20])
    updates_per_epoch = 3  # 20 items in batches of 8
    expected = [0.01 / (1 + 0.1 * updates_per_epoch * e) for e in (1, 2, 3)]
    assert [h["lr"] for h in model.history_] == pytest.approx(expected)


def test_fixed_seed_is_reproducible(small_esc50):
    S = compute_spectrograms(small_esc50.subset(range(40)), clip_db=-80)
    y = small_esc50.labels()[:40]
    a = CRNNClassifier(epochs=2, seed=3, num_threads=1).fit(S, y).predict_proba(S)
    b = CRNNClassifier(epochs=2, seed=3, num_threads=1).fit(S, y).predict_proba(S)
    c = CRNNClassifier(epochs=2, seed=4, num_threads=1).fit(S, y).predict_proba(S)
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_crnn_learns_well_above_chance(protocol_run, small_esc50):
    _, result = protocol_run
    p = result.predictions
    dev, test = p.partitions == "dev", p.partitions == "test"
    chance = 1 / N_CLASSES
    assert accuracy(p.labels[dev], p.predicted()[dev]) >= 2.25 * chance  # 57.5 % on the development machine
    assert accuracy(p.labels[test], p.predicted()[test]) >= 2.25 * chance  # 75 %
    assert p.kind == "proba" and np.allclose(p.scores.sum(axis=1), 1.0)
    assert all(len(h) == QUICK["epochs"] and "val_accuracy" in h[-1] for h in result.histories.values())


def test_out_of_fold_and_test_predictions(protocol_run, small_esc50):
    out, result = protocol_run
    p = result.predictions
    table = small_esc50
    assert sorted(p.names) == sorted(table.uids())
    expected_fold = dict(zip(table.uids(), table.folds()))
    assert all(expected_fold[n] == k for n, k in zip(p.names, p.folds))
    # no leakage: each fold model was trained on exactly the other development folds (no test items)
    S = compute_spectrograms(table, clip_db=-80, cache_dir=out)
    test_items = table.partitions() == "test"
    fused = np.zeros((test_items.sum(), N_CLASSES))
    for k in (1, 2, 3):
        model = CRNNClassifier.load(out / f"fold{k}.pt", num_threads=1)
        others = [u for u, f, part in zip(table.uids(), table.folds(), table.partitions()) if part == "dev" and f != k]
        assert model.checkpoint_extra_["train_items_sha256"] == items_digest(others)
        assert model.checkpoint_extra_["n_train"] == 80
        held_out = (table.folds() == k) & ~test_items
        names = np.array(table.uids())[held_out]
        assert np.allclose(p.align(names).scores, model.predict_proba(S[held_out]))
        fused += model.predict_proba(S[test_items])
    # test predictions are the mean of the three fold models' probabilities
    assert np.allclose(p.align(np.array(table.uids())[test_items]).scores, fused / 3)
    assert read_predictions(out / "predictions.csv").names.tolist() == p.names.tolist()


def test_rerun_skips_finished_folds(protocol_run, small_esc50):
    out, result = protocol_run
    stamps = {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2, 3)}
    again = crnn_fold_protocol(small_esc50, out_dir=out, variant="esc50", **QUICK)
    assert {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2, 3)} == stamps
    assert np.array_equal(again.predictions.scores, result.predictions.scores)
    # a checkpoint of other settings, items or labels is retrained, never reused: tests/test_reliability_state.py


def test_checkpoints_load_safely(protocol_run, small_esc50, tmp_path):
    out, _ = protocol_run
    data = torch.load(out / "fold1.pt", weights_only=True)  # plain tensors and values only
    assert data["format"] == "specfusion-crnn" and data["classes"] == small_esc50.classes
    model = CRNNClassifier.load(out / "fold1.pt")
    S = compute_spectrograms(small_esc50.subset(range(8)), clip_db=-80)
    copy = model.save(tmp_path / "copy.pt")
    assert np.array_equal(CRNNClassifier.load(copy).predict_proba(S), model.predict_proba(S))
    (tmp_path / "torn.pt").write_bytes((out / "fold1.pt").read_bytes()[:1000])
    with pytest.raises(StoreError, match="torn.pt"):
        CRNNClassifier.load(tmp_path / "torn.pt")


def test_spectrograms_are_cached(small_esc50, tmp_path):
    sub = small_esc50.subset(range(6))
    S = compute_spectrograms(sub, clip_db=-80, cache_dir=tmp_path)
    cached = list(tmp_path.glob("spectrograms-*.npy"))
    assert len(cached) == 1 and S.shape == (6, 128, 32) and S.max() == 0 and S.min() >= -80
    assert np.array_equal(np.load(cached[0]), S)
    assert np.array_equal(compute_spectrograms(sub, clip_db=-80, cache_dir=tmp_path), S)
    other = compute_spectrograms(sub, clip_db=-60, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("spectrograms-*.npy"))) == 2 and other.min() >= -60


def test_channel_items_are_combined_per_segment(formats_dir, tmp_path):
    """DCASE 2018 task 5: every channel is an item; a segment's probabilities are its channels' mean."""
    wav = formats_dir / "sins_4ch_16khz_16bit_10s.wav"
    segments = [("s1", "a", 1, "dev"), ("s2", "b", 2, "dev"), ("s3", "a", 0, "test")]
    items = [Item(name=n, path=wav, label=lab, fold=f, partition=part) for n, lab, f, part in segments]
    table = DatasetTable(
        name="sins", root=formats_dir, items=items, classes=["a", "b"], metric="macro_f1"
    ).with_channels(4)
    result = crnn_fold_protocol(table, out_dir=tmp_path, variant="dcase2018", epochs=1, num_threads=1)
    p = result.predictions
    assert list(p.names) == ["s1", "s2", "s3"] and list(p.folds) == [1, 2, 0]
    S = compute_spectrograms(table, clip_db=-60, cache_dir=tmp_path)
    assert S.shape == (12, 128, 63) and not np.array_equal(S[0], S[1])  # the channels differ
    model = CRNNClassifier.load(tmp_path / "fold2.pt")  # trained on fold 1 (s1) and scores s2
    assert np.allclose(p.scores[1], model.predict_proba(S[4:8]).mean(axis=0))


def test_cli_writes_predictions_metrics_and_confusion(small_esc50, tmp_path, capsys):
    csv = tmp_path / "small.csv"
    rows = ["path,label,fold,partition"] + [
        f"{item.path},{item.label},{item.fold},{item.partition}" for item in small_esc50
    ]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code = main(
        ["crnn", "--dataset", "csv", "--root", str(csv), "--variant", "esc50", "--epochs", "1", "--out", str(out), "-q",
         "--average-epochs", "1", "--standardize", "band"]
    )  # fmt: skip
    assert code == 0
    assert "devel accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and 0 <= metrics["devel"] <= 100 and metrics["test"] is not None
    assert set(metrics["histories"]) == {"1", "2", "3"}
    p = read_predictions(out / "predictions.csv")
    assert len(p) == 160 and p.kind == "proba" and p.config["crnn"]["epochs"] == 1
    assert p.config["crnn"]["average_epochs"] == 1  # the options reach the models and their identity
    assert p.config["crnn"]["standardize"] == "band"
    assert (out / "confusion_devel.png").is_file() and (out / "confusion_test.png").is_file()


def test_batch_norm_recalibration_changes_only_the_statistics(small_esc50):
    S = compute_spectrograms(small_esc50.subset(range(40)), clip_db=-80)
    y = small_esc50.labels()[:40]
    plain = CRNNClassifier(epochs=2, bn_recalibration=False, num_threads=1).fit(S, y)
    recal = CRNNClassifier(epochs=2, bn_recalibration=True, num_threads=1).fit(S, y)
    assert [h["loss"] for h in plain.history_] == [h["loss"] for h in recal.history_]  # training untouched
    a, b = plain.network_.state_dict(), recal.network_.state_dict()
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in stats and not k.endswith("num_batches_tracked"))
    assert not all(torch.equal(a[k], b[k]) for k in stats)
    # recalibrating the plain model on its training data gives the recalibrated model
    plain.recalibrate_batch_norm(S)
    assert np.allclose(plain.predict_proba(S), recal.predict_proba(S), atol=1e-6)


def test_protocol_saves_the_learning_curve(protocol_run):
    out, result = protocol_run
    png = out / "learning_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_mtime_ns >= (out / "predictions.csv").stat().st_mtime_ns  # drawn from this run's histories
