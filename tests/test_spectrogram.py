"""The paper's Mel-spectrogram against librosa on real clips."""

import librosa
import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError
from specfusion.features.spectrogram import MelSpecParams, mel_band_frequencies, melspectrogram


def librosa_reference(y, sr, clip_db=None):
    n_fft = int(round(0.32 * sr))
    hop = int(round(0.16 * sr))
    power = librosa.feature.melspectrogram(
        y=y, sr=sr, n_fft=n_fft, hop_length=hop, window="hann", n_mels=128, center=True, pad_mode="constant"
    )
    db = librosa.power_to_db(power, ref=np.max, top_db=None)
    return db if clip_db is None else np.maximum(db, clip_db)


@pytest.fixture(scope="module")
def esc50_clips(esc50_root):
    paths = sorted((esc50_root / "audio").glob("*.flac"))[:6]
    return [load_audio(p)[0][0] for p in paths]


@pytest.mark.parametrize("clip_db", [None, -30, -45, -60, -80])
def test_matches_librosa_on_real_clips(esc50_clips, clip_db):
    for y in esc50_clips:
        ours = melspectrogram(y, 16000, clip_db=clip_db)
        ref = librosa_reference(y, 16000, clip_db)
        assert ours.shape == ref.shape == (128, 1 + len(y) // 2560)
        np.testing.assert_allclose(ours, ref, atol=2e-3)
        assert ours.max() == 0.0
        if clip_db is not None:
            assert ours.min() >= clip_db
            assert (ours == clip_db).any() or ref.min() > clip_db


def test_window_and_hop_are_in_seconds_at_every_rate(formats_dir):
    y, sr = load_audio(formats_dir / "tut_stereo_44khz_24bit_10s.wav")
    ours = melspectrogram(y[0], sr, clip_db=-80)
    np.testing.assert_allclose(ours, librosa_reference(y[0], sr, -80), atol=2e-3)
    params = MelSpecParams()
    assert params.win_length(44100) == 14112 and params.hop_length(44100) == 7056
    assert params.win_length(16000) == 5120 and params.hop_length(16000) == 2560
    # 10 s at either rate gives the same number of frames
    y16, _ = load_audio(formats_dir / "tut_stereo_44khz_24bit_10s.wav", sr=16000)
    assert melspectrogram(y16[0], 16000).shape == ours.shape


def test_batched_equals_one_by_one(esc50_clips):
    batch = np.stack(esc50_clips)
    together = melspectrogram(batch, 16000, clip_db=-80)
    assert together.shape == (len(esc50_clips), 128, 32)
    for i, y in enumerate(esc50_clips):
        np.testing.assert_array_equal(together[i], melspectrogram(y, 16000, clip_db=-80))
    # every spectrogram is normalised on its own
    assert (together.max(axis=(1, 2)) == 0).all()


def test_multichannel_batch_on_real_4_channel_file(formats_dir):
    y, sr = load_audio(formats_dir / "sins_4ch_16khz_16bit_10s.wav", channels="each")
    spec = melspectrogram(y, sr, clip_db=-60)
    assert spec.shape == (4, 128, 63)
    assert (spec.max(axis=(1, 2)) == 0).all() and spec.min() >= -60


def test_parameters_are_validated():
    with pytest.raises(ConfigError, match="negative"):
        MelSpecParams(clip_db=10)
    with pytest.raises(ConfigError, match="positive"):
        MelSpecParams(hop_s=0)
    with pytest.raises(ConfigError, match="shorter than one FFT frame"):
        melspectrogram(np.ones(100, dtype=np.float32), 16000, params=MelSpecParams(center=False))


def test_band_frequencies_rise_to_nyquist():
    freqs = mel_band_frequencies(16000)
    assert len(freqs) == 128 and np.all(np.diff(freqs) > 0) and 0 < freqs[0] < freqs[-1] < 8000


def test_same_values_whatever_the_blas_thread_count():
    # a dense BLAS product sums in an order that depends on its thread count, so the filter bank is applied
    # as a sparse product: the spectrograms (and the caches and models made from them) do not depend on it
    from threadpoolctl import threadpool_limits

    batch = np.random.default_rng(0).standard_normal((4, 5 * 16000)).astype(np.float32)
    with threadpool_limits(1):
        one = melspectrogram(batch, 16000)
    with threadpool_limits(2):
        two = melspectrogram(batch, 16000)
    np.testing.assert_array_equal(one, two)
