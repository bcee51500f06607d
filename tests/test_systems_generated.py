"""Core contract of model files on generated data: every fitted estimator a system holds is rebuilt from plain
JSON + numeric arrays (no pickle) and gives bit-identical scores."""

import io

import numpy as np
import pytest

from specfusion.errors import ConfigError, ModelError
from specfusion.fusion.methods import FUSION_METHODS, make_estimator
from specfusion.models.svm import LinearSVM
from specfusion.pipeline.systems import decode_estimator, encode_estimator, read_archive


def _data(n_per_class=12, n_classes=3, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([f"c{k}" for k in range(n_classes)], n_per_class)
    X = rng.normal(size=(len(y), dim)) + np.repeat(np.eye(n_classes, dim) * 2.0, n_per_class, axis=0)
    folds = np.tile(np.arange(1, 4), len(y) // 3 + 1)[: len(y)]
    return X, y, folds


def _round_trip(model):
    arrays: dict = {}
    node = encode_estimator(model, "m/", arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}
    return decode_estimator(node, loaded, "generated")


@pytest.mark.parametrize("solver, rowspace", [("newton", "auto"), ("liblinear", True), ("liblinear", False)])
def test_linear_svm_round_trip_is_exact(solver, rowspace):
    X, y, folds = _data()
    svm = LinearSVM(solver=solver, rowspace=rowspace, c_grid=[1e-3, 1e-1]).fit(X, y, folds=folds)
    rebuilt = _round_trip(svm)
    X_new = np.random.default_rng(1).normal(size=(7, X.shape[1]))
    np.testing.assert_array_equal(rebuilt.decision_function(X_new), svm.decision_function(X_new))
    assert rebuilt.predict(X_new).tolist() == svm.predict(X_new).tolist() and rebuilt.best_C_ == svm.best_C_


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_every_fusion_method_round_trip_is_exact(method):
    X, y, folds = _data(dim=6)  # two members x 3 classes of decision values
    # metric accuracy: stacking-logreg's macro-F1 C search fails inside scikit-learn 1.9's LogisticRegressionCV
    model = make_estimator(method, kinds=("decision", "decision"), classes=sorted(set(y)), metric="accuracy").fit(
        X, y, folds=folds
    )
    rebuilt = _round_trip(model)
    X_new = np.random.default_rng(2).normal(size=(5, 6))
    np.testing.assert_array_equal(rebuilt.decision_function(X_new), model.decision_function(X_new))


def test_unknown_classes_are_neither_saved_nor_loaded():
    from sklearn.ensemble import RandomForestClassifier

    with pytest.raises(ConfigError, match="cannot save a fitted RandomForestClassifier"):
        encode_estimator(RandomForestClassifier(), "x/", {})
    with pytest.raises(ModelError, match="unknown estimator type 'RandomForestClassifier'"):
        decode_estimator({"type": "RandomForestClassifier"}, {}, "generated")


def test_bytes_that_are_not_a_model_archive_are_refused():
    for data in (b"", b"\x80\x04K\x01.", b"PK\x03\x04 truncated"):
        with pytest.raises(ModelError, match="not a"):
            read_archive(data, "x.sfm")


def test_an_extractor_is_rebuilt_from_a_store_configuration_alone():
    from specfusion.features.extraction import store_config
    from specfusion.features.extractors import get_extractor
    from specfusion.pipeline.systems import extractor_from_store_config

    made = get_extractor("efficientnet_lite0", weights="none", seed=3, colormap="magma", clip_db=-60.0, device="cpu")
    config = store_config(made, short="error")
    rebuilt, options = extractor_from_store_config(config, device="cpu")
    assert store_config(rebuilt, short="error") == config
    assert options["weights"] == "none" and options["seed"] == 3 and options["colormap"] == "magma"
    config["weights"] = {"kind": "file", "sha256": "0" * 64}
    with pytest.raises(ModelError, match="cannot be rebuilt from the feature store's configuration"):
        extractor_from_store_config(config, device="cpu")


def test_a_crnn_model_file_keeps_its_spectrogram_parameters(tmp_path):
    # a CRNN trained on spectrograms with another hop must be applied with that hop, not the paper's
    from specfusion.features.spectrogram import MelSpecParams, melspectrogram
    from specfusion.models.crnn import CRNNClassifier
    from specfusion.pipeline.systems import crnn_system_bytes, load_system

    rng = np.random.default_rng(0)
    S = rng.normal(size=(12, 16, 8)).astype(np.float32)
    y = np.repeat(["a", "b"], 6)
    model = CRNNClassifier(variant="esc50", filters=(2, 2, 2, 2), pools=((2, 1), (2, 1), (2, 1), (2, 1)),
                           gru_units=4, epochs=1, batch_size=6, num_threads=1).fit(S, y)  # fmt: skip
    path = tmp_path / "crnn.sfm"
    path.write_bytes(
        crnn_system_bytes([model], sr=8000, clip_db=-80.0, n_frames=8, spec_params={"hop_s": 0.08, "n_mels": 16})
    )
    system = load_system(path)
    wave = rng.normal(size=8000).astype(np.float32)
    rows, spectrograms, failures = system.spectrograms([(wave, 8000, "generated")])
    expected = melspectrogram(wave, 8000, params=MelSpecParams(hop_s=0.08, n_mels=16, clip_db=-80.0))
    assert not failures and list(rows) == [0]
    np.testing.assert_array_equal(spectrograms[0], expected[:, :8])


def test_a_crnn_model_file_keeps_per_band_standardisation(tmp_path):
    from specfusion.models.crnn import CRNNClassifier
    from specfusion.pipeline.systems import crnn_system_bytes, load_system

    rng = np.random.default_rng(1)
    S = rng.normal(size=(12, 16, 8)).astype(np.float32) * np.arange(1, 17, dtype=np.float32)[None, :, None]
    y = np.repeat(["a", "b"], 6)
    model = CRNNClassifier(variant="esc50", filters=(2, 2, 2, 2), pools=((2, 1), (2, 1), (2, 1), (2, 1)),
                           gru_units=4, epochs=1, batch_size=6, num_threads=1, standardize="band").fit(S, y)  # fmt: skip
    path = tmp_path / "crnn.sfm"
    path.write_bytes(crnn_system_bytes([model], sr=8000, clip_db=-80.0, n_frames=8, spec_params={"n_mels": 16}))
    loaded = load_system(path).models[0]
    np.testing.assert_array_equal(loaded.input_std_, model.input_std_)
    assert loaded.input_std_.shape == (16,) and loaded.resolved_params()["standardize"] == "band"
    np.testing.assert_allclose(loaded.predict_proba(S), model.predict_proba(S), rtol=1e-6)
