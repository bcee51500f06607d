"""EmbeddingTransformer: audio -> embeddings -> LinearSVM as one scikit-learn Pipeline, on real ESC-50 clips."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, PredefinedSplit, cross_val_predict
from sklearn.pipeline import make_pipeline

from specfusion.data.audio import resample
from specfusion.data.datasets import load_esc50
from specfusion.errors import ConfigError
from specfusion.models.svm import LinearSVM
from specfusion.sklearn import EmbeddingTransformer

NET = "efficientnet_lite0"  # the fastest registered extractor on CPU


@pytest.fixture(scope="module")
def esc50_clips(esc50_root):
    """8 clips: 2 classes x 4 (one per fold 1-4), as 16-kHz waveforms with labels and folds."""
    from specfusion.data.audio import load_audio

    table = load_esc50(esc50_root)
    chosen = []
    for label in table.classes[:2]:
        for fold in (1, 2, 3, 4):
            chosen.append(next(item for item in table if item.label == label and item.fold == fold))
    waveforms = [load_audio(item.path)[0][0] for item in chosen]
    return {
        "X": waveforms,
        "y": np.array([item.label for item in chosen], dtype=object),
        "folds": np.array([1 if item.fold <= 2 else 2 for item in chosen]),  # 2 folds: cheap but real CV
    }


@pytest.fixture(scope="module")
def embeddings(esc50_clips, torch_two_threads):
    return EmbeddingTransformer(NET, sample_rate=16000).fit_transform(esc50_clips["X"])


def test_transformer_is_clone_able_and_builds_lazily():
    transformer = EmbeddingTransformer(NET, sample_rate=16000, options={"seed": 1})
    assert not hasattr(transformer, "extractor_")  # __init__ only stores parameters
    copy = clone(transformer)
    assert copy.get_params() == transformer.get_params() and copy.options is not transformer.options
    assert pickle.loads(pickle.dumps(transformer)).get_params() == transformer.get_params()
    with pytest.raises(ConfigError, match="unknown extractor"):
        EmbeddingTransformer("no_such_net").fit()
    with pytest.raises(ConfigError, match="batch_size"):
        EmbeddingTransformer(NET, batch_size=0).fit()


def test_embeddings_match_the_extractor_and_survive_pickling(esc50_clips, embeddings, torch_two_threads):
    from specfusion.features.extractors import get_extractor

    assert embeddings.shape == (8, 1280) and embeddings.dtype == np.float32
    ext = get_extractor(NET)
    first = ext.embed(ext.prepare(esc50_clips["X"][0])[None])[0]
    assert np.allclose(embeddings[0], first, atol=1e-5)
    fitted = EmbeddingTransformer(NET, sample_rate=16000).fit()
    restored = pickle.loads(pickle.dumps(fitted))
    assert not hasattr(restored, "extractor_") or restored.extractor_ is None  # the network is not pickled
    assert np.allclose(restored.transform(esc50_clips["X"][:1])[0], first, atol=1e-5)


def test_each_clip_may_carry_its_own_rate(esc50_clips, embeddings, torch_two_threads):
    y44 = resample(esc50_clips["X"][1], 16000, 44100)
    pairs = [(esc50_clips["X"][0], 16000), (y44, 44100)]
    out = EmbeddingTransformer(NET).fit_transform(pairs)
    assert np.allclose(out[0], embeddings[0], atol=1e-5)
    from specfusion.features.extractors import get_extractor

    ext = get_extractor(NET)  # the 44.1-kHz clip is resampled to 16 kHz before the front end
    expected = ext.embed(ext.prepare(resample(y44, 44100, 16000))[None])[0]
    assert np.allclose(out[1], expected, atol=1e-5)
    cosine = float(out[1] @ embeddings[1] / np.linalg.norm(out[1]) / np.linalg.norm(embeddings[1]))
    assert cosine > 0.85  # the same sound (misread as 16 kHz it would be about 0.5, tests/test_hear.py)
    with pytest.raises(ConfigError, match="sample_rate"):
        EmbeddingTransformer(NET, sample_rate=16000).fit_transform(pairs)


def test_pipeline_cross_val_predict_equals_the_two_step_protocol(esc50_clips, embeddings, torch_two_threads):
    c = esc50_clips
    cv = PredefinedSplit(c["folds"])
    pipeline = make_pipeline(EmbeddingTransformer(NET, sample_rate=16000), LinearSVM(c_grid=[1e-2]))
    predicted = cross_val_predict(pipeline, c["X"], c["y"], cv=cv)
    two_step = cross_val_predict(LinearSVM(c_grid=[1e-2]), embeddings, c["y"], cv=cv)
    assert list(predicted) == list(two_step)
    assert set(predicted) <= set(c["y"])


def test_grid_search_over_the_pipeline(esc50_clips, embeddings, tmp_path, torch_two_threads):
    keep = [0, 2, 4, 6]  # 2 classes x 2 splits: every clone embeds only a few clips
    X, y = [esc50_clips["X"][i] for i in keep], esc50_clips["y"][keep]
    cv = PredefinedSplit(esc50_clips["folds"][keep])
    grid = {"linearsvm__c_grid": [[1e-4], [1e-1]]}
    # memory=: the training embeddings of a split are computed once for both candidates
    pipeline = make_pipeline(EmbeddingTransformer(NET, sample_rate=16000), LinearSVM(), memory=str(tmp_path))
    search = GridSearchCV(pipeline, grid, cv=cv, scoring="accuracy", refit=False).fit(X, y)
    reference = GridSearchCV(LinearSVM(), {"c_grid": grid["linearsvm__c_grid"]}, cv=cv, scoring="accuracy", refit=False)
    reference.fit(embeddings[keep], y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert np.allclose(search.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"])
