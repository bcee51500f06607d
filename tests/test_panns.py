"""PANNs CNN14: official key layout, the torchlibrosa front end against librosa on a real clip,
determinism and batch independence, checkpoint handling and the offline error."""

from __future__ import annotations

import json
import socket

import librosa
import numpy as np
import pytest
import torch

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors import panns
from specfusion.features.extractors.base import available_extractors, get_extractor
from specfusion.features.nets.panns import FRONT_ENDS
from specfusion.features.weights import WeightsSpec

CLIPS = ["1-100032-A-0.flac", "1-115521-A-19.flac"]

#: Every key of the official Cnn14_mAP=0.431.pth "model" entry that is not a conv block.
OFFICIAL_OUTER_KEYS = {
    "spectrogram_extractor.stft.conv_real.weight",
    "spectrogram_extractor.stft.conv_imag.weight",
    "logmel_extractor.melW",
    "bn0.weight",
    "bn0.bias",
    "bn0.running_mean",
    "bn0.running_var",
    "bn0.num_batches_tracked",
    "fc1.weight",
    "fc1.bias",
    "fc_audioset.weight",
    "fc_audioset.bias",
}


pytestmark = pytest.mark.usefixtures("torch_two_threads")


@pytest.fixture(scope="module")
def clips32k(esc50_root):
    """The first 2 s of two real clips at 32 kHz (soxr resampling); 2 s keeps CPU tests quick."""
    return [load_audio(esc50_root / "audio" / n, sr=32000, duration=2.0)[0][0] for n in CLIPS]


@pytest.fixture(scope="module")
def random_cnn14():
    return get_extractor("panns_cnn14", weights="none", seed=0, device="cpu")


@pytest.fixture(scope="module")
def official_layout_file(tmp_path_factory, random_cnn14):
    """A checkpoint in the official layout: {"iteration", "model", "sampler"} with numpy sampler state."""
    state = {k: v.clone() for k, v in random_cnn14.net.state_dict().items()}
    sampler = {  # as BalancedTrainSampler.state_dict() of audioset_tagging_cnn stores it
        "indexes_per_class": [np.arange(k, k + 5, dtype=np.int64) for k in range(3)],
        "queue": [2, 0, 1],
        "pointers_of_classes": [0, 3, np.int64(1)],
    }
    path = tmp_path_factory.mktemp("panns") / "Cnn14_mAP=0.431.pth"
    torch.save({"iteration": 660000, "model": state, "sampler": sampler}, path)
    return path


def test_registered():
    assert "panns_cnn14" in available_extractors()


def test_key_layout_is_the_official_one(random_cnn14):
    keys = set(random_cnn14.net.state_dict())
    blocks = {k for k in keys if k.startswith("conv_block")}
    assert keys - blocks == OFFICIAL_OUTER_KEYS
    assert {k.split(".")[0] for k in blocks} == {f"conv_block{i}" for i in range(1, 7)}
    assert "conv_block6.conv2.weight" in keys and "conv_block1.bn2.running_var" in keys
    assert sum(p.numel() for p in random_cnn14.net.parameters()) == 81_837_071  # CNN14, as published


@pytest.mark.parametrize("variant", ["32k", "16k"])
def test_front_end_matches_librosa_logmel(variant, esc50_root, random_cnn14):
    fe = FRONT_ENDS[variant]
    y = load_audio(esc50_root / "audio" / CLIPS[1], sr=fe.sample_rate)[0][0]
    ex = random_cnn14 if variant == "32k" else get_extractor("panns_cnn14", weights="none", variant="16k", device="cpu")
    with torch.inference_mode():
        ours = ex.net.logmel(torch.from_numpy(ex.prepare(y))[None])[0, 0].numpy()  # (frames, mels)
    power = librosa.feature.melspectrogram(
        y=y.astype(np.float64),
        sr=fe.sample_rate,
        n_fft=fe.window_size,
        hop_length=fe.hop_size,
        win_length=fe.window_size,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=fe.mel_bins,
        fmin=fe.fmin,
        fmax=fe.fmax,
    )
    reference = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None).T
    assert ours.shape == reference.shape == (1 + y.size // fe.hop_size, 64)
    assert reference.max() - reference.min() > 60  # a real clip with dynamics, not silence
    np.testing.assert_allclose(ours, reference, atol=2e-3)  # dB


def test_embeddings_deterministic_and_batch_independent(clips32k, random_cnn14):
    ex = random_cnn14
    batch = np.stack([ex.prepare(y) for y in clips32k])
    together = ex.embed(batch)
    assert together.shape == (2, 2048) and together.dtype == np.float32 and ex.dim == 2048
    alone = np.concatenate([ex.embed(batch[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ex.embed(batch), together)
    assert (together >= 0).all() and together.std(axis=1).min() > 0  # ReLU(fc1), not constant
    assert not np.allclose(together[0], together[1])


def test_seeded_random_weights_and_global_rng(clips32k, random_cnn14):
    before = torch.random.get_rng_state()
    again = get_extractor("panns_cnn14", weights="none", seed=0, device="cpu")
    assert torch.equal(torch.random.get_rng_state(), before)  # local generator only
    x = random_cnn14.prepare(clips32k[0][:32000])[None]  # 1 s is enough here
    np.testing.assert_array_equal(again.embed(x), random_cnn14.embed(x))
    other = get_extractor("panns_cnn14", weights="none", seed=1, device="cpu")
    assert not np.allclose(other.embed(x), random_cnn14.embed(x))
    assert random_cnn14.config()["weights"] == {"kind": "none", "seed": 0, "init": random_cnn14.weights_info["init"]}


def test_time_varying_features_pool_to_the_embedding(clips32k, random_cnn14):
    ex = random_cnn14
    x = ex.prepare(clips32k[0])[None]
    frames = ex.embed_frames(x)
    n_mel_frames = 1 + x.shape[1] // ex.front_end.hop_size
    assert frames.shape == (1, n_mel_frames // 32, 2048)
    pooled = torch.from_numpy(frames.max(axis=1) + frames.mean(axis=1))
    with torch.inference_mode():
        expected = torch.relu(ex.net.fc1(pooled)).numpy()
    np.testing.assert_allclose(ex.embed(x), expected, rtol=1e-4, atol=1e-5)


def test_short_clip_is_padded_to_32_frames(random_cnn14):
    y = np.sin(np.linspace(0, 200, 3200, dtype=np.float32))  # 0.1 s
    x = random_cnn14.prepare(y)
    assert x.shape == (FRONT_ENDS["32k"].min_samples,) and np.array_equal(x[:3200], y) and not x[3200:].any()
    assert random_cnn14.embed(x[None]).shape == (1, 2048)
    with pytest.raises(ConfigError):
        random_cnn14.embed(y[None])  # unprepared: too short for the pooling
    with pytest.raises(ConfigError):
        random_cnn14.prepare(np.zeros((2, 100), np.float32))


def test_official_layout_checkpoint_loads_strictly(official_layout_file, clips32k, random_cnn14):
    ex = get_extractor("panns_cnn14", weights=official_layout_file, seed=5, device="cpu")
    x = random_cnn14.prepare(clips32k[0])[None]
    np.testing.assert_array_equal(ex.embed(x), random_cnn14.embed(x))  # seed 5 was overwritten by the file
    info = ex.config()["weights"]
    assert info["kind"] == "file" and info["file"] == "Cnn14_mAP=0.431.pth" and len(info["sha256"]) == 64
    # given as the "official" local copy it is hash-checked and refused
    with pytest.raises(WeightsError, match="SHA-256"):
        get_extractor("panns_cnn14", weights_path=official_layout_file, device="cpu")


def test_missing_or_unexpected_keys_fail_clearly(official_layout_file, tmp_path):
    with torch.serialization.safe_globals(panns.checkpoint_safe_globals()):
        ckpt = torch.load(official_layout_file, weights_only=True, map_location="cpu")
    model = ckpt["model"]
    model["fc_1.weight"] = model.pop("fc1.weight")  # one key renamed: one missing, one unexpected
    bad = tmp_path / "renamed.pth"
    torch.save({"model": model}, bad)
    with pytest.raises(WeightsError) as err:
        get_extractor("panns_cnn14", weights=bad, device="cpu")
    message = str(err.value)
    assert "missing keys: fc1.weight" in message and "unexpected keys: fc_1.weight" in message
    assert "renamed.pth" in message
    torch.save({"state_dict": model}, bad)  # no "model" entry
    with pytest.raises(WeightsError, match="no entry 'model'"):
        get_extractor("panns_cnn14", weights=bad, device="cpu")


def test_offline_pretrained_names_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    spec = panns.PANNS_WEIGHTS["32k"]
    monkeypatch.setitem(
        panns.PANNS_WEIGHTS,
        "32k",
        WeightsSpec(spec.name, f"http://127.0.0.1:{port}/Cnn14_mAP%3D0.431.pth", spec.sha256, spec.filename),
    )
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        get_extractor("panns_cnn14", device="cpu")
    message = str(err.value)
    assert "Cnn14_mAP=0.431.pth" in message and str(tmp_path / "weights") in message
    assert "weights_path=FILE" in message and "--weights" not in message


def test_config_records_everything(random_cnn14):
    cfg = random_cnn14.config()
    json.dumps(cfg)
    assert cfg["network"] == "Cnn14" and cfg["dim"] == 2048 and cfg["sample_rate"] == 32000
    assert cfg["front_end"]["window_size"] == 1024 and cfg["front_end"]["hop_size"] == 320
    assert cfg["front_end"]["fmin"] == 50 and cfg["front_end"]["fmax"] == 14000
    with pytest.raises(ConfigError, match="variant"):
        get_extractor("panns_cnn14", weights="none", variant="44k")
    with pytest.raises(ConfigError, match="weights"):
        get_extractor("panns_cnn14", weights="")
