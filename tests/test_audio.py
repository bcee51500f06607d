"""Audio I/O on real files: bit depths, channel counts, resampling, and every bad-input case."""

import numpy as np
import pytest
import soundfile as sf

from specfusion.data.audio import audio_info, fix_length, load_audio
from specfusion.errors import AudioError, ConfigError


def test_24bit_and_16bit_stereo_decode_to_the_same_recording(formats_dir):
    y16, sr16 = load_audio(formats_dir / "tut_stereo_44khz_16bit_10s.wav", channels="each")
    y24, sr24 = load_audio(formats_dir / "tut_stereo_44khz_24bit_10s.wav", channels="each")
    assert sr16 == sr24 == 44100
    assert y16.shape[0] == y24.shape[0] == 2
    assert y16.dtype == y24.dtype == np.float32
    assert audio_info(formats_dir / "tut_stereo_44khz_24bit_10s.wav").subtype == "PCM_24"
    # 24-bit samples are not quantised to 16-bit steps
    steps = y24 * 2**15
    assert np.abs(steps - np.round(steps)).max() > 1e-3


def test_channel_policies_on_real_4_channel_file(formats_dir):
    path = formats_dir / "sins_4ch_16khz_16bit_10s.wav"
    each, sr = load_audio(path, channels="each")
    mean, _ = load_audio(path, channels="mean")
    third, _ = load_audio(path, channels=2)
    assert sr == 16000 and each.shape == (4, 160000)
    assert mean.shape == (1, 160000)
    np.testing.assert_allclose(mean[0], each.mean(axis=0), atol=1e-7)
    np.testing.assert_array_equal(third[0], each[2])
    # 12-bit ADC stored as 16-bit: every sample is a multiple of 16 steps
    assert np.all(np.round(each * 2**15) % 16 == 0)
    with pytest.raises(AudioError, match="channel 4 requested but the file has 4"):
        load_audio(path, channels=4)
    with pytest.raises(ConfigError):
        load_audio(path, channels="left")


def test_resampling_keeps_duration_and_content(esc50_root):
    path = next((esc50_root / "audio").glob("*.flac"))
    y, sr = load_audio(path)
    up, sr_up = load_audio(path, sr=32000)
    assert sr == 16000 and sr_up == 32000
    assert up.shape[1] == 2 * y.shape[1]
    back, _ = load_audio(path, sr=32000)
    import soxr

    roundtrip = soxr.resample(back[0], 32000, 16000)
    # band-limited round trip: nearly the same signal
    corr = np.corrcoef(roundtrip[1000:-1000], y[0][1000:-1000])[0, 1]
    assert corr > 0.99


def test_fixed_length_pads_and_crops(formats_dir):
    path = formats_dir / "sins_4ch_16khz_16bit_10s.wav"
    short, _ = load_audio(path, duration=2.5)
    long, _ = load_audio(path, duration=12.0)
    assert short.shape == (1, 40000)
    assert long.shape == (1, 192000) and not long[0, 160000:].any()
    assert fix_length(np.ones((2, 5)), 3).shape == (2, 3)


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "missing.wav"
    files["empty"] = tmp_path / "empty.wav"
    files["empty"].write_bytes(b"")
    files["garbage"] = tmp_path / "garbage.wav"
    files["garbage"].write_bytes(b"RIFF not really a wave file" * 10)
    files["zero"] = tmp_path / "zero.wav"
    sf.write(files["zero"], np.zeros((0, 1), dtype=np.float32), 16000, subtype="FLOAT")
    files["nan"] = tmp_path / "nan.wav"
    sf.write(files["nan"], np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    files["inf"] = tmp_path / "inf.wav"
    data = np.zeros(16000, dtype=np.float32)
    data[100] = np.inf
    sf.write(files["inf"], data, 16000, subtype="FLOAT")
    files["short"] = tmp_path / "short.flac"
    sf.write(files["short"], np.ones(1000, dtype=np.float32) * 0.1, 16000)
    return files


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "file not found"),
        ("empty", "empty file"),
        ("garbage", "unreadable audio"),
        ("zero", "zero-length"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("short", "too short"),
    ],
)
def test_bad_inputs_get_a_typed_error_naming_file_and_reason(bad_files, case, reason):
    path = bad_files[case]
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert reason in info.value.reason
