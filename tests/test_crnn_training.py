"""The CRNN's training loop beyond the paper: augmentation, learning curves, pickling, device selection.

Generated spectrograms and a small network keep these seconds-fast; the paper's architecture and the
protocol on real clips are tested in test_crnn.py.
"""

import pickle

import numpy as np
import pytest
import torch

import specfusion.models.augment as augment
import specfusion.models.crnn as crnn
from specfusion.errors import ConfigError
from specfusion.models.augment import Augmentation, mixup, spec_augment, time_shift
from specfusion.models.crnn import CRNNClassifier, torch_threads

SMALL = dict(filters=(4, 8, 8, 8), gru_units=16, batch_size=8, epochs=2, num_threads=1)
AUGMENTED = dict(time_shift=4, freq_masks=2, freq_width=16, time_masks=1, time_width=4, mixup=0.4)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    """24 generated (128 × 16) spectrograms of 3 classes whose mean level differs by class."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c"] * 8)
    S = rng.uniform(-80, 0, size=(len(labels), 128, 16)).astype(np.float32)
    S += np.array([{"a": 0.0, "b": 10.0, "c": 20.0}[v] for v in labels], dtype=np.float32)[:, None, None]
    return np.minimum(S, 0.0), labels


def _weights(model):
    return {k: v.clone() for k, v in model.network_.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_off_is_bit_identical_to_no_augmentation_code(data, monkeypatch):
    S, y = data
    plain = CRNNClassifier(**SMALL, seed=3).fit(S, y, validation=(S[:6], y[:6]))

    def never(*args, **kwargs):
        raise AssertionError("the augmentation code path ran with augmentation off")

    monkeypatch.setattr(Augmentation, "__call__", never)
    monkeypatch.setattr(crnn.estimator, "mixup_loss", never)
    without = CRNNClassifier(**SMALL, seed=3).fit(S, y, validation=(S[:6], y[:6]))
    assert _same_weights(_weights(plain), _weights(without))
    assert [r["loss"] for r in plain.history_] == [r["loss"] for r in without.history_]
    monkeypatch.undo()
    augmented = CRNNClassifier(**SMALL, **AUGMENTED, seed=3).fit(S, y)
    assert not _same_weights(_weights(plain), _weights(augmented))  # the switch does reach the training
    again = CRNNClassifier(**SMALL, **AUGMENTED, seed=3).fit(S, y)
    assert _same_weights(_weights(augmented), _weights(again))  # augmented runs are reproducible


def test_augmentation_settings_are_parameters_and_validated(data):
    model = CRNNClassifier(**AUGMENTED)
    params = model.get_params()
    assert all(params[k] == v for k, v in AUGMENTED.items())
    resolved = model.resolved_params()
    assert all(resolved[k] == v for k, v in AUGMENTED.items())  # so checkpoints and caches tell them apart
    assert set(crnn.AUGMENTED) <= set(CRNNClassifier().get_params())  # the recipe's preset is all parameters
    assert CRNNClassifier(**crnn.AUGMENTED).augmentation().active is True
    assert CRNNClassifier().augmentation().active is False
    assert model.augmentation().active is True
    with pytest.raises(ConfigError):
        CRNNClassifier(mixup=-1).resolved_params()


def test_time_shift_rolls_each_item():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 1, 3, 10)
    out = time_shift(x, 3, np.random.default_rng(1))
    assert out.shape == x.shape
    for item, shifted in zip(x, out):
        rolls = [k for k in range(-3, 4) if torch.equal(torch.roll(item, k, dims=-1), shifted)]
        assert len(rolls) == 1
    assert torch.equal(out, time_shift(x, 3, np.random.default_rng(1)))
    assert time_shift(x, 0, np.random.default_rng(1)) is x


def test_spec_augment_masks_whole_bands_and_frames():
    x = torch.ones(16, 1, 128, 32)
    out = spec_augment(x, np.random.default_rng(2), freq_masks=2, freq_width=10, time_masks=1, time_width=5, fill=0.0)
    assert out.shape == x.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    zero = out[:, 0] == 0
    masked_bands = zero.all(dim=2).sum(dim=1)  # bands zero over all frames
    masked_frames = zero.all(dim=1).sum(dim=1)
    assert (masked_bands <= 20).all() and (masked_frames <= 5).all()
    assert masked_bands.sum() > 0 and masked_frames.sum() > 0
    # every zero lies in a masked band or a masked frame
    assert torch.equal(zero, zero.all(dim=2, keepdim=True) | zero.all(dim=1, keepdim=True))
    again = spec_augment(x, np.random.default_rng(2), freq_masks=2, freq_width=10, time_masks=1, time_width=5)
    assert torch.equal(out, again)


def test_mixup_is_a_convex_combination_of_pairs():
    x = torch.randn(8, 1, 4, 5)
    mixed, perm, lam = mixup(x, 0.4, np.random.default_rng(3))
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    logits, targets = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = augment.mixup_loss(torch.nn.CrossEntropyLoss(), logits, targets, perm, lam)
    expected = lam * torch.nn.functional.cross_entropy(logits, targets) + (1 - lam) * torch.nn.functional.cross_entropy(
        logits, targets[perm]
    )
    assert torch.allclose(loss, expected)


def test_fitted_classifier_pickles_with_identical_predictions(data):
    S, y = data
    model = CRNNClassifier(**SMALL, **AUGMENTED).fit(S, y)
    restored = pickle.loads(pickle.dumps(model))
    assert type(restored.network_).__module__ == "specfusion.features.nets.crnn"
    np.testing.assert_array_equal(model.predict_proba(S), restored.predict_proba(S))
    assert list(restored.predict(S)) == list(model.predict(S))


def test_learning_curve_png(data, tmp_path):
    S, y = data
    model = CRNNClassifier(**SMALL).fit(S, y, validation=(S[:6], y[:6]))
    path = model.plot_learning_curve(tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert all({"loss", "val_loss", "val_accuracy"} <= set(r) for r in model.history_)


def test_epochs_are_logged_without_a_progress_bar(data, caplog):
    S, y = data
    with caplog.at_level("INFO", logger="specfusion.models.crnn"):
        CRNNClassifier(**SMALL).fit(S, y, validation=(S[:6], y[:6]))
    lines = [r.getMessage() for r in caplog.records if "CRNN epoch" in r.getMessage()]
    assert len(lines) == SMALL["epochs"] and "val_accuracy" in lines[-1] and "loss" in lines[0]


def test_device_and_mixed_precision_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = CRNNClassifier()
    assert gpu._device().type == "cuda" and gpu.resolved_params()["mixed_precision"] is True
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert crnn.variants._amp_dtype(torch.device("cuda")) == torch.float16  # float16 with loss scaling
    assert crnn.variants._amp_dtype(torch.device("cpu")) == torch.bfloat16
    cpu = CRNNClassifier(device="cpu")
    assert cpu._device().type == "cpu" and cpu.resolved_params()["mixed_precision"] is False
    assert CRNNClassifier(device="cuda", mixed_precision=False).resolved_params()["mixed_precision"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert CRNNClassifier()._device().type == "cpu"


def test_bfloat16_autocast_trains_on_cpu(data):
    S, y = data
    model = CRNNClassifier(**SMALL, mixed_precision=True).fit(S, y)
    proba = model.predict_proba(S)
    assert proba.dtype == np.float64 and np.allclose(proba.sum(axis=1), 1.0, atol=1e-3)
    assert np.isfinite([r["loss"] for r in model.history_]).all()


def test_weight_averaging_returns_the_mean_of_the_last_epochs_weights(data):
    """average_epochs=2 of 3 gives the mean of the weights after epochs 2 and 3 (same seed, same trajectory)."""
    S, y = data
    params = {**SMALL, "seed": 5}
    after_2 = _weights(CRNNClassifier(**params | {"epochs": 2}).fit(S, y))
    after_3 = _weights(CRNNClassifier(**params | {"epochs": 3}).fit(S, y))
    averaged = CRNNClassifier(**params | {"epochs": 3, "average_epochs": 2}).fit(S, y)
    weights = _weights(averaged)
    parameters = dict(averaged.network_.named_parameters())
    assert parameters
    for name in parameters:
        assert torch.allclose(weights[name], (after_2[name] + after_3[name]) / 2, atol=1e-6), name
        assert not torch.equal(after_2[name], after_3[name]) or name.endswith("bias"), name
    assert len(averaged.history_) == 3
    assert averaged.predict_proba(S).shape == (len(S), 3)


def test_weight_averaging_is_validated_and_off_by_default(data):
    S, y = data
    assert CRNNClassifier().average_epochs == 0
    with pytest.raises(ConfigError, match="average_epochs"):
        CRNNClassifier(**SMALL, average_epochs=3).fit(S, y)
    with pytest.raises(ConfigError, match="average_epochs"):
        CRNNClassifier(**SMALL, average_epochs=-1).fit(S, y)


def test_band_standardisation_uses_each_bands_training_statistics(data, tmp_path):
    S, y = data
    S = S.copy()
    S[:, :8] = -80.0  # empty bands (audio of a lower bandwidth): a zero deviation must not divide
    S[:, 64:] += 30.0 * np.arange(64, dtype=np.float32)[None, :, None] / 64  # the level rises with the band
    model = CRNNClassifier(**SMALL, standardize="band").fit(S, y)
    assert model.input_mean_.shape == model.input_std_.shape == (128,)
    np.testing.assert_allclose(model.input_mean_, S.mean(axis=(0, 2)), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(model.input_std_[8:], S.std(axis=(0, 2), ddof=1)[8:], rtol=1e-4)
    assert np.all(model.input_std_[:8] == 1.0)
    x = model._standardiser(torch.device("cpu"))(torch.from_numpy(S)).numpy()
    np.testing.assert_allclose(x[:, 0, 8:].mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x[:, 0, 8:].std(axis=(0, 2), ddof=1), 1.0, rtol=1e-4)
    assert model.resolved_params()["standardize"] == "band"  # so checkpoints and caches tell it apart
    restored = CRNNClassifier.load(model.save(tmp_path / "band.pt"))
    np.testing.assert_array_equal(restored.input_mean_, model.input_mean_)
    np.testing.assert_array_equal(restored.predict_proba(S), model.predict_proba(S))
    glob = CRNNClassifier(**SMALL, standardize="global").fit(S, y)
    assert isinstance(glob.input_mean_, float) and glob.resolved_params()["standardize"] is True
    assert not np.allclose(glob.predict_proba(S), model.predict_proba(S))
    assert CRNNClassifier(**SMALL, standardize=False).resolved_params()["standardize"] is False
    with pytest.raises(ConfigError, match="standardize"):
        CRNNClassifier(standardize="bands").resolved_params()


def test_readout_and_standardisation_default_to_the_variants(data):
    """esc50 and dcase2017 default to per-band statistics and the mean read-out; dcase2018 to one pair and the last step."""
    S, y = data
    default = CRNNClassifier(**SMALL).fit(S, y)
    assert default.input_mean_.shape == (128,) and default.network_.readout == "mean"
    paper = CRNNClassifier(**SMALL, standardize="global", readout="last").fit(S, y)
    assert isinstance(paper.input_mean_, float) and paper.network_.readout == "last"
    assert not np.allclose(paper.predict_proba(S), default.predict_proba(S))
    assert crnn.model_identity(default) != crnn.model_identity(paper)  # a checkpoint of one is never the other's
    explicit = CRNNClassifier(**SMALL, standardize="band", readout="mean")
    assert crnn.model_identity(CRNNClassifier(**SMALL)) == crnn.model_identity(explicit)
    assert CRNNClassifier(variant="dcase2017").resolved_params()["readout"] == "mean"
    old = CRNNClassifier(variant="dcase2018", filters=(4, 8, 8), gru_units=16, batch_size=8, epochs=1, num_threads=1)
    old.fit(S, y)
    assert isinstance(old.input_mean_, float) and old.network_.readout == "last"
