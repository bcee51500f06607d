"""The HEAR 2021 API (specfusion.hear) on real ESC-50 clips: the spec's shapes, dtypes, times and errors."""

import numpy as np
import pytest
import torch

from specfusion import hear
from specfusion.data.audio import load_audio, resample
from specfusion.data.datasets import load_esc50
from specfusion.errors import ConfigError
from specfusion.features.extractors import get_extractor
from specfusion.features.extractors.openl3 import FRAME_SAMPLES, frame_audio


@pytest.fixture(scope="module")
def esc50_paths(esc50_root):
    table = load_esc50(esc50_root)
    return [item.path for item in list(table)[:2]]


def clips(paths, sample_rate, seconds):
    """The clips at ``sample_rate`` (soxr), cropped to ``seconds``, as a (n, samples) float32 tensor."""
    n = int(round(seconds * sample_rate))
    return torch.from_numpy(np.stack([load_audio(p, sr=sample_rate)[0][0, :n] for p in paths]))


def check_spec_shapes(model, audio):
    """What hear-validator checks, plus the timestamps' regularity and range."""
    for attr in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert isinstance(getattr(model, attr), int)
    assert model.sample_rate in hear.HEAR_SAMPLE_RATES
    assert isinstance(model, torch.nn.Module)
    scene = hear.get_scene_embeddings(audio, model)
    frames, ms = hear.get_timestamp_embeddings(audio, model)
    n = audio.shape[0]
    assert scene.dtype == torch.float32 and scene.shape == (n, model.scene_embedding_size)
    assert frames.dtype == torch.float32 and frames.ndim == 3
    assert frames.shape[0] == n and frames.shape[2] == model.timestamp_embedding_size
    assert ms.shape == frames.shape[:2]
    assert torch.isfinite(scene).all() and torch.isfinite(frames).all()
    duration_ms = 1000 * audio.shape[1] / model.sample_rate
    assert (ms >= 0).all() and (ms <= duration_ms).all()
    if ms.shape[1] > 1:
        steps = np.diff(ms.numpy(), axis=1)
        assert np.abs(steps - steps.mean()).max() < 1.0  # regular within 1 ms, as hear-validator demands
    assert torch.equal(ms[0], ms[-1])
    return scene, frames, ms


def test_aisfx_block_embeddings_with_their_times(esc50_paths, torch_two_threads):
    model = hear.load_model("aisfx")
    audio = clips(esc50_paths, model.sample_rate, 5.0)
    scene, frames, ms = check_spec_shapes(model, audio)
    # 5 s at 44.1 kHz: 216 STFT frames -> blocks at frames 0, 50, 100 (the partial fourth dropped)
    assert frames.shape[1] == 3
    assert np.allclose(ms[0].numpy(), (np.array([0, 50, 100]) + 49.5) * 1024 / 44100 * 1000, atol=1e-3)
    # aisfx's clip feature is the mean of its block embeddings
    assert torch.allclose(scene, frames.mean(dim=1), atol=1e-5)
    # and the scene embedding is the very feature the extraction engine stores
    ext = model.extractor
    assert np.allclose(scene[1].numpy(), ext.embed(ext.prepare(audio[1].numpy())[None])[0], atol=1e-5)


def test_short_sound_gets_one_frame_at_its_centre(esc50_paths, torch_two_threads):
    model = hear.load_model("aisfx")
    audio = clips(esc50_paths, model.sample_rate, 1.07)  # shorter than one 2.3-s block
    _, frames, ms = check_spec_shapes(model, audio)
    assert frames.shape[1] == 1 and ms[0, 0].item() == pytest.approx(535.0, abs=0.01)


def test_image_cnn_is_a_clip_level_model(esc50_paths, torch_two_threads):
    model = hear.load_model("efficientnet_lite0")
    audio = clips(esc50_paths, model.sample_rate, 2.74)
    scene, frames, ms = check_spec_shapes(model, audio)
    assert frames.shape[1] == 1 and torch.equal(frames[:, 0], scene)
    assert ms[0, 0].item() == pytest.approx(1370.0)


def test_panns_and_openl3_frame_times(esc50_paths, torch_two_threads):
    panns = hear.load_model("panns_cnn14", weights="none")
    _, frames, ms = check_spec_shapes(panns, clips(esc50_paths, panns.sample_rate, 2.5))
    # 80000 samples -> 251 log-Mel frames (hop 10 ms) -> 7 steps of 32 frames, centred on frame 32 i + 15.5
    assert frames.shape[1] == 7 and np.allclose(ms[0].numpy(), (32 * np.arange(7) + 15.5) * 10.0)
    openl3 = hear.load_model("openl3", weights="none", hop_s=0.5)
    _, frames, ms = check_spec_shapes(openl3, clips(esc50_paths, openl3.sample_rate, 1.2))
    assert frames.shape[1] == 3 and np.allclose(ms[0].numpy(), [0.0, 500.0, 1000.0])


def test_openl3_frame_times_are_the_centres_of_its_frames():
    """frame_times agrees with the framing itself: a ramp's value at each frame's centre is that time."""
    for center in (True, False):
        ext = get_extractor("openl3", weights="none", hop_s=0.25, center=center, device="cpu")
        ramp = np.arange(3 * 48000, dtype=np.float64)
        frames = frame_audio(ramp, hop_samples=ext.hop_samples, center=center)
        centre_samples = frames[:, FRAME_SAMPLES // 2]
        assert np.allclose(ext.frame_times(len(frames)) * 48000, centre_samples)


def test_wrong_input_raises_value_error(esc50_paths):
    model = hear.load_model("efficientnet_lite0")
    audio = clips(esc50_paths, model.sample_rate, 1.0)
    for bad in (audio[0], audio[None], audio.numpy()):
        with pytest.raises(ValueError):
            hear.get_scene_embeddings(bad, model)
        with pytest.raises(ValueError):
            hear.get_timestamp_embeddings(bad, model)
    with pytest.raises(ConfigError, match="load_model"):
        hear.get_scene_embeddings(audio, model.extractor)


def test_prepare_audio_resamples_and_checks_the_rate(esc50_paths):
    # the paper's 0.32-s frames, which these margins were measured with (resampling does not depend on them)
    ext = get_extractor("efficientnet_lite0", spec_params={"window_s": 0.32, "hop_s": 0.16})
    y16, sr = load_audio(esc50_paths[0])
    y16 = y16[0]
    assert sr == 16000 == ext.sample_rate
    y44 = resample(y16, 16000, 44100)
    direct = ext.embed(ext.prepare(y16)[None])[0]
    resampled = ext.embed(ext.prepare_audio(y44, 44100)[None])[0]
    wrong = ext.embed(ext.prepare(y44)[None])[0]  # 44.1 kHz treated as 16 kHz: another sound
    assert np.array_equal(ext.prepare_audio(y44, 44100), ext.prepare(resample(y44, 44100, 16000)))
    cosine = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    # the up-and-down resampled clip lost only what soxr's passband cuts near 8 kHz; the misread one
    # is another sound (1.76x slower, 0.99 ... 0.995 vs 0.5 ... 0.73 on the first ESC-50 clips)
    assert cosine(direct, resampled) > 0.85 and cosine(direct, resampled) > cosine(direct, wrong) + 0.2
    for bad in (0, -16000, 16000.5, "16000", True):
        with pytest.raises(ConfigError, match="sample rate"):
            ext.prepare_audio(y16, bad)
