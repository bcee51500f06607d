"""OpenL3 (env, mel256): Keras weight files read with h5py and loaded strictly, the kapre 0.1.4 front
end against an independent DFT-kernel computation on a real clip, openl3's framing, determinism and
batch independence, pooling, and the offline error."""

from __future__ import annotations

import gzip
import json
import shutil
import socket

import h5py
import librosa
import numpy as np
import pytest
import torch

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors import openl3
from specfusion.features.extractors.base import available_extractors, get_extractor
from specfusion.features.nets.openl3 import CONVS, kapre_mel_basis, keras_h5_state_dict, same_padding, write_keras_h5
from specfusion.features.weights import WeightsSpec

CLIPS = ["1-100038-A-14.flac", "1-115521-A-19.flac"]  # sound from the first second on


pytestmark = pytest.mark.usefixtures("torch_two_threads")


@pytest.fixture(scope="module")
def clips48k(esc50_root):
    """1 s of two real clips at 48 kHz (soxr); with hop 0.5 s each gives two 1-s frames."""
    return [load_audio(esc50_root / "audio" / n, sr=48000, duration=1.0)[0][0] for n in CLIPS]


@pytest.fixture(scope="module")
def random_l3():
    return get_extractor("openl3", weights="none", seed=0, hop_s=0.5, device="cpu")


def test_registered_and_keras_layer_names(random_l3):
    assert "openl3" in available_extractors()
    keys = {k.rsplit(".", 1)[0] for k in random_l3.net.state_dict()}
    expected = {f"batch_normalization_{i}" for i in range(1, 9)} | {name for name, _, _ in CONVS}
    assert keys == expected | {"speclayer"}
    assert random_l3.net.state_dict()["conv2d_7.weight"].shape == (512, 256, 3, 3)


def test_front_end_matches_kapre_dft_kernels_on_a_real_clip(esc50_root, random_l3):
    y = load_audio(esc50_root / "audio" / CLIPS[1], sr=48000, duration=1.0)[0][0]
    with torch.inference_mode():
        ours = random_l3.net.speclayer(torch.from_numpy(y)[None])[0, 0].numpy()
    assert ours.shape == (256, 199)
    # kapre 0.1.4: windowed DFT kernels applied as a strided 'same' convolution, |.|^2, Mel, sqrt, dB
    n = 2048
    t = np.arange(n)
    w = np.arange(n // 2 + 1)[:, None] * 2 * np.pi / n
    window = librosa.filters.get_window("hann", n, fftbins=True)
    real, imag = np.cos(w * t) * window, -np.sin(w * t) * window
    left, right = same_padding()
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y.astype(np.float64), (left, right)), n)[::242]
    power = (frames @ real.T) ** 2 + (frames @ imag.T) ** 2
    mel = np.sqrt(kapre_mel_basis().astype(np.float64) @ power.T)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    reference = np.maximum(db - db.max(), -80.0)
    assert frames.shape[0] == 199 and reference.min() < -60  # real dynamics
    # kapre's "dB" is 10*log10 of a magnitude: below about -45 it is float32 round-off (in kapre too)
    audible = reference > -45
    assert audible.mean() > 0.3  # (this ESC-50 copy is 16 kHz: nothing above 8 kHz)
    np.testing.assert_allclose(ours[audible], reference[audible], atol=5e-3)
    assert np.median(np.abs(ours - reference)) < 1e-3


def test_mel_basis_is_slaney_area_normalised_htk():
    basis = kapre_mel_basis()
    assert basis.shape == (256, 1025)
    hz = librosa.mel_frequencies(258, fmin=0, fmax=24000, htk=True)
    freqs = np.linspace(0, 24000, 1025)
    k = 200  # a band wide enough to be sampled well: area of the triangle * (2 / width) == 1
    area = np.trapezoid(basis[k], freqs) if hasattr(np, "trapezoid") else np.trapz(basis[k], freqs)
    assert area == pytest.approx(1.0, rel=0.02)
    assert freqs[basis[k].argmax()] == pytest.approx(hz[k + 1], abs=24000 / 1024)


def test_framing_follows_openl3():
    frames = openl3.frame_audio(np.arange(1, 240001, dtype=np.float32), hop_samples=4800)
    assert frames.shape == (46, 48000)  # openl3: 1 + ceil((240000 + 24000 - 48000) / 4800)
    assert not frames[0, :24000].any() and frames[0, 24000] == 1  # centred on the first sample
    assert frames[1, 24000 - 4800] == 1 and frames[-1, -1] == 240000  # hop; the last frame ends on the last sample
    longer = openl3.frame_audio(np.ones(240001, np.float32), hop_samples=4800)
    assert longer.shape == (47, 48000) and longer[-1, -4800] == 1 and not longer[-1, -4799:].any()  # zero-padded
    assert openl3.frame_audio(np.ones(100, np.float32), hop_samples=4800).shape == (1, 48000)
    assert openl3.frame_audio(np.ones(48000, np.float32), hop_samples=4800, center=False).shape == (1, 48000)


def test_embeddings_deterministic_and_batch_independent(clips48k, random_l3):
    ex = random_l3
    batch = np.stack([ex.prepare(y) for y in clips48k])
    assert batch.shape == (2, 2, 48000)
    together = ex.embed(batch)
    assert together.shape == (2, 512) and together.dtype == np.float32 and ex.dim == 512
    alone = np.concatenate([ex.embed(batch[i : i + 1]) for i in range(2)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    chunked = get_extractor("openl3", weights="none", seed=0, hop_s=0.5, frame_batch=1, device="cpu")
    frames = chunked.embed_frames(batch)  # one frame per network call: same numbers
    assert frames.shape == (2, 2, 512)
    np.testing.assert_allclose(frames.mean(axis=1), together, rtol=1e-4, atol=1e-5)
    assert not np.allclose(together[0], together[1]) and not np.allclose(frames[0, 0], frames[0, 1])


def test_mean_max_pooling_and_6144(clips48k, random_l3):
    ex = get_extractor("openl3", weights="none", seed=0, hop_s=0.5, pooling="mean+max", device="cpu")
    x = ex.prepare(clips48k[0])[None]
    feats = ex.embed(x)
    frames = random_l3.embed_frames(x)
    assert feats.shape == (1, 1024) and ex.dim == 1024
    np.testing.assert_allclose(feats[0, :512], frames[0].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats[0, 512:], frames[0].max(0), rtol=1e-5, atol=1e-6)
    big = get_extractor("openl3", weights="none", seed=0, embedding_size=6144, hop_s=1.0, device="cpu")
    x = big.prepare(clips48k[0])[:1][None]  # one frame
    emb = big.embed_frames(x)[0, 0]
    with torch.inference_mode():
        fmap = big.net.feature_map(torch.from_numpy(x[0]))[0].numpy()  # (512, 32, 24)
    pooled = fmap.reshape(512, 4, 8, 3, 8).max(axis=(2, 4))  # 8x8 max pooling -> (512, 4, 3)
    np.testing.assert_allclose(emb, pooled.transpose(1, 2, 0).ravel(), rtol=1e-5, atol=1e-6)  # Keras order
    with pytest.raises(ConfigError):
        get_extractor("openl3", weights="none", embedding_size=1024)
    with pytest.raises(ConfigError):
        get_extractor("openl3", weights="none", pooling="median")


def _state(random_l3):
    return {k: v.numpy().copy() for k, v in random_l3.net.state_dict().items()}


def test_keras_file_layout_loads_strictly(tmp_path, clips48k, random_l3):
    path = tmp_path / "openl3_audio_mel256_env.h5"
    write_keras_h5(path, _state(random_l3), with_front_end=True)
    with h5py.File(path, "r") as f:  # the Keras save_weights layout
        names = [n.decode() for n in f.attrs["layer_names"]]  # fixed-length bytes, as Keras writes them
        assert names[:3] == ["input_1", "melspectrogram_1", "batch_normalization_1"]
        assert f["conv2d_1"].attrs["weight_names"][0] == b"conv2d_1/kernel:0"
        assert f["conv2d_1/conv2d_1/kernel:0"].shape == (3, 3, 1, 64)
    ex = get_extractor("openl3", weights=path, seed=9, hop_s=0.5, device="cpu")
    x = ex.prepare(clips48k[0])[None]
    np.testing.assert_array_equal(ex.embed(x), random_l3.embed(x))
    assert ex.config()["weights"]["kind"] == "file"
    # the released form: gzip-compressed, TF2 layer names, no kapre layer (openl3 >= 0.4)
    suffix = ["", *(f"_{i}" for i in range(1, 8))]  # Keras 2 under TF2 names the first layer without _0
    renamed = [
        n
        for i in range(8)
        for n in (f"batch_normalization{suffix[i]}", "audio_embedding_layer" if i == 7 else f"conv2d{suffix[i]}")
    ]
    plain = tmp_path / "v4.h5"
    write_keras_h5(plain, _state(random_l3), layer_names=renamed)
    packed = tmp_path / "openl3_audio_mel256_env-v0_4_0.h5.gz"
    with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    state = keras_h5_state_dict(packed)
    for key, value in random_l3.net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(state[key].numpy(), value.numpy())


def test_incomplete_or_foreign_keras_files_fail_clearly(tmp_path, random_l3):
    state = _state(random_l3)
    path = tmp_path / "w.h5"
    write_keras_h5(path, state)
    with h5py.File(path, "r+") as f:  # drop the last layer
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != b"audio_embedding_layer"]
    with pytest.raises(WeightsError, match="expected 8 batch-norm/convolution pairs") as err:
        get_extractor("openl3", weights=path, device="cpu")
    assert "w.h5" in str(err.value)
    write_keras_h5(path, state)
    with h5py.File(path, "r+") as f:  # an extra dense layer
        g = f.create_group("dense_1")
        g.create_dataset("dense_1/kernel:0", data=np.zeros((512, 10), np.float32))
        g.attrs["weight_names"] = [b"dense_1/kernel:0"]
        f.attrs["layer_names"] = [*f.attrs["layer_names"], b"dense_1"]
    with pytest.raises(WeightsError, match="unexpected layer 'dense_1'"):
        get_extractor("openl3", weights=path, device="cpu")
    state["conv2d_3.weight"] = state["conv2d_3.weight"][:, :32]  # wrong shape
    write_keras_h5(path, state)
    with pytest.raises(WeightsError, match="conv2d_3.weight"):
        get_extractor("openl3", weights=path, device="cpu")
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(WeightsError, match="cannot read Keras weight file"):
        get_extractor("openl3", weights=path, device="cpu")


def test_offline_pretrained_names_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = openl3.OPENL3_WEIGHTS
    monkeypatch.setattr(
        openl3,
        "OPENL3_WEIGHTS",
        WeightsSpec(spec.name, f"http://127.0.0.1:{port}/{spec.filename}", spec.sha256, spec.filename),
    )
    monkeypatch.setattr(openl3, "packaged_weights_path", lambda: None)
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        get_extractor("openl3", device="cpu")
    message = str(err.value)
    assert "openl3_audio_mel256_env-v0_2_0.h5.gz" in message and str(tmp_path / "weights") in message
    assert "weights_path=FILE" in message and "--weights" not in message


def test_config_records_everything(random_l3):
    cfg = random_l3.config()
    json.dumps(cfg)
    assert cfg["content_type"] == "env" and cfg["input_repr"] == "mel256" and cfg["sample_rate"] == 48000
    assert cfg["hop_s"] == 0.5 and cfg["pooling"] == "mean" and cfg["embedding_size"] == 512
    assert cfg["weights"] == {"kind": "none", "seed": 0, "init": random_l3.weights_info["init"]}
    assert get_extractor("openl3", weights="none", device="cpu").config()["hop_s"] == 0.1
