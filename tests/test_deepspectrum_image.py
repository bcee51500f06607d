"""DEEP SPECTRUM's own image path (``renderer="deepspectrum"``): generated signals for its contract, a real
ESC-50 clip through a random-init network."""

from __future__ import annotations

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, SignalError
from specfusion.features.deepspectrum_image import (
    PLOT_SIZE,
    deepspectrum_mel_db,
    plot_deepspectrum,
    render_deepspectrum,
)
from specfusion.features.extractors.base import get_extractor
from specfusion.features.images import colormap_lut

SR = 16000


def _quiet_then_loud(seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(seconds * SR)
    noise = rng.standard_normal(n).astype(np.float32)
    noise[: n // 2] *= 1e-3
    return noise


def test_image_size_and_the_colour_scale_spans_the_colormap():
    y = _quiet_then_loud()
    mel_db = deepspectrum_mel_db(y, SR)
    assert mel_db.shape[0] == 128 and mel_db.max() == 0.0  # ref=max
    assert mel_db.shape[1] == 1 + (len(y) - 512) // 256  # DEEP SPECTRUM's default STFT: 512 / 256, uncentred
    assert deepspectrum_mel_db(y, SR, window_s=0.32).shape[1] == 1 + (len(y) - 5120) // 2560
    pixels = plot_deepspectrum(mel_db, SR, hop_length=256)
    assert pixels.shape == (PLOT_SIZE, PLOT_SIZE, 3) and pixels.dtype == np.uint8
    lut = colormap_lut("viridis")
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert tuple(lut[0]) in colours  # the colour scale starts at the image's own minimum
    image = render_deepspectrum(y, SR)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8


def test_time_runs_left_to_right():
    image = render_deepspectrum(_quiet_then_loud(), SR).astype(float)
    # viridis: brighter (yellower) means louder; the loud second half is on the right
    assert image[:, 140:].mean() > image[:, :84].mean() + 30


def test_digital_silence_at_the_ends_is_trimmed():
    y = _quiet_then_loud()
    padded = np.concatenate([np.zeros(7000, np.float32), y, np.zeros(3000, np.float32)])
    np.testing.assert_array_equal(render_deepspectrum(padded, SR), render_deepspectrum(y, SR))


def test_clip_db_only_when_given():
    y = _quiet_then_loud()
    assert deepspectrum_mel_db(y, SR).min() < -60
    assert deepspectrum_mel_db(y, SR, clip_db=-30).min() == -30


def test_too_short_or_silent_is_a_signal_error():
    with pytest.raises(SignalError, match="fewer than one"):
        render_deepspectrum(np.r_[np.zeros(100), np.ones(500), np.zeros(100)].astype(np.float32), SR)
    with pytest.raises(SignalError):
        render_deepspectrum(np.zeros(SR, np.float32), SR)


def test_extractor_option_changes_the_configuration_and_the_features(esc50_root):
    y = load_audio(esc50_root / "audio" / "1-100032-A-0.flac", sr=SR)[0][0]
    plain = get_extractor("vgg16", weights="none", seed=0)
    plotted = get_extractor("vgg16", weights="none", seed=0, renderer="deepspectrum")
    assert "renderer" not in plain.config()  # existing stores keep their keys
    assert plotted.config()["renderer"] == "deepspectrum" and plotted.config()["trim_silence"] is True
    np.testing.assert_array_equal(plotted.render(y), render_deepspectrum(y, SR))
    features = plotted.embed(np.stack([plotted.prepare(y)]))
    assert features.shape == (1, 4096) and np.isfinite(features).all()
    assert not np.allclose(features, plain.embed(np.stack([plain.prepare(y)])))
    with pytest.raises(ConfigError, match="renderer"):
        get_extractor("vgg16", weights="none", renderer="matplotlib")


def test_the_extractors_colour_map_reaches_the_plot():
    # the recipe's random-init rows draw with cividis through this renderer: its colours, not viridis', must come out
    y = _quiet_then_loud()
    extractor = get_extractor("vgg16", weights="none", seed=0, renderer="deepspectrum", colormap="cividis")
    assert extractor.config()["colormap"] == "cividis"
    image = extractor.render(y)
    np.testing.assert_array_equal(image, render_deepspectrum(y, SR, colormap="cividis"))
    assert not np.array_equal(image, render_deepspectrum(y, SR))
    plotted = plot_deepspectrum(deepspectrum_mel_db(y, SR), SR, hop_length=256, colormap="cividis")
    colours = np.unique(plotted.reshape(-1, 3), axis=0).astype(int)

    def distance_to(name):  # each drawn colour's distance to the nearest entry of the map (Agg rounds by 1 level)
        lut = colormap_lut(name).astype(int)
        return np.abs(colours[:, None, :] - lut[None, :, :]).max(axis=2).min(axis=1)

    assert distance_to("cividis").max() <= 2
    assert np.median(distance_to("viridis")) > 10
