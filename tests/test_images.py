"""Spectrogram images: close to matplotlib's own rendering, oriented like a plot, normalised per network."""

from __future__ import annotations

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError
from specfusion.features.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    colormap_lut,
    render_rgb,
    resize_matrix,
    save_png,
    to_network_input,
)
from specfusion.features.spectrogram import melspectrogram

CLIPS = ["1-100032-A-0.flac", "1-115521-A-19.flac", "1-12654-B-15.flac"]


@pytest.fixture(scope="module")
def spectrograms(esc50_root):
    out = []
    for name in CLIPS:
        y, sr = load_audio(esc50_root / "audio" / name)
        out.append(melspectrogram(y[0], sr, clip_db=-80))
    return out


def matplotlib_render(mel_db, colormap, size=(224, 224), **imshow_kw):
    """Reference: an imshow of the array filling a figure of exactly ``size`` pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = size
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    try:
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        ax.imshow(mel_db, origin="lower", aspect="auto", cmap=colormap, **imshow_kw)
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("colormap", ["viridis", "magma", "cividis", "hot", "gray", "viridis_r"])
def test_matches_matplotlib_bilinear_rendering(spectrograms, colormap):
    for mel_db in spectrograms:
        ours = render_rgb(mel_db, colormap=colormap).astype(np.int16)
        ref = matplotlib_render(mel_db, colormap, interpolation="bilinear", interpolation_stage="data")
        assert ours.shape == ref.shape == (224, 224, 3)
        mad = np.abs(ours - ref).mean()
        assert mad < 0.5, f"{colormap}: mean absolute difference {mad:.3f} grey levels"
        assert np.percentile(np.abs(ours - ref), 99) <= 3


def test_close_to_matplotlib_default_rendering(spectrograms):
    for mel_db in spectrograms:
        ours = render_rgb(mel_db, colormap="viridis").astype(np.int16)
        ref = matplotlib_render(mel_db, "viridis")  # default interpolation ("auto"/antialiased)
        assert np.abs(ours - ref).mean() < 4.0


def test_non_square_size_matches_matplotlib(spectrograms):
    mel_db = spectrograms[0]
    ours = render_rgb(mel_db, colormap="magma", size=(150, 300)).astype(np.int16)
    ref = matplotlib_render(mel_db, "magma", size=(150, 300), interpolation="bilinear", interpolation_stage="data")
    assert ours.shape == (150, 300, 3)
    assert np.abs(ours - ref).mean() < 0.5


def test_low_frequencies_at_the_bottom_time_left_to_right():
    mel_db = np.full((128, 40), -80.0, dtype=np.float32)
    mel_db[:16, :] = 0.0  # bright only in the lowest 16 bands
    img = render_rgb(mel_db, colormap="gray").astype(int)
    brightness = img.mean(axis=(1, 2))
    assert brightness[-20:].min() > 250 and brightness[:150].max() < 5  # bottom rows bright, top dark

    mel_db = np.full((128, 40), -80.0, dtype=np.float32)
    mel_db[:, :5] = 0.0  # bright only at the start of the clip
    img = render_rgb(mel_db, colormap="gray").astype(int)
    column = img.mean(axis=(0, 2))
    assert column[:20].min() > 250 and column[40:].max() < 5


def test_colours_are_matplotlibs_lut_values():
    import matplotlib

    mel_db = np.linspace(-80, 0, 128 * 32, dtype=np.float32).reshape(128, 32)
    img = render_rgb(mel_db, colormap="cividis")
    lut = matplotlib.colormaps["cividis"](np.arange(256), bytes=True)[:, :3]
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in lut}
    assert tuple(img[-1, 0]) == tuple(lut[0]) and tuple(img[0, -1]) == tuple(lut[-1])  # min at bottom-left


def test_vmin_vmax_fix_the_colour_scale():
    mel_db = np.linspace(-40, 0, 128 * 32, dtype=np.float32).reshape(128, 32)
    auto = render_rgb(mel_db, colormap="gray")
    fixed = render_rgb(mel_db, colormap="gray", vmin=-80, vmax=0)
    assert auto.min() == 0 and fixed.min() > 100  # -40 dB is mid-grey on a -80..0 scale
    constant = render_rgb(np.zeros((128, 32), np.float32), colormap="viridis")
    assert (constant == colormap_lut("viridis")[0]).all()


def test_unknown_colormap_lists_valid_names():
    with pytest.raises(ConfigError, match="viridis.*magma"):
        render_rgb(np.zeros((128, 32), np.float32), colormap="not_a_colormap")


def test_bad_input_shapes_fail_clearly():
    with pytest.raises(ConfigError, match="2-D"):
        render_rgb(np.zeros((2, 128, 32), np.float32))
    with pytest.raises(ConfigError, match="non-finite"):
        render_rgb(np.full((128, 32), np.nan, np.float32))


def test_resize_matrix_rows_sum_to_one_and_downsampling_averages():
    for n_in, n_out in [(32, 224), (128, 224), (400, 224), (224, 224)]:
        m = resize_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(resize_matrix(224, 224), np.eye(224), atol=1e-6)
    # a 2x downsampling of an alternating signal averages it out instead of aliasing
    alternating = np.tile([0.0, 1.0], 100).astype(np.float32)
    down = resize_matrix(200, 100) @ alternating
    assert np.abs(down[1:-1] - 0.5).max() < 0.01


def test_long_clip_is_downsampled_in_time(esc50_root):
    y, sr = load_audio(esc50_root / "audio" / CLIPS[0])
    long = np.tile(y[0], 8)  # 40 s -> 251 frames, more than 224 columns
    mel_db = melspectrogram(long, sr, clip_db=-80)
    assert mel_db.shape[1] > 224
    img = render_rgb(mel_db, size=(224, 224))
    assert img.shape == (224, 224, 3)
    ref = matplotlib_render(mel_db, "viridis")
    assert np.abs(img.astype(np.int16) - ref).mean() < 3.0


def test_to_network_input_normalises_per_channel():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 128, 255
    x = to_network_input(rgb)
    assert x.shape == (3, 4, 5) and x.dtype == np.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD)]
    np.testing.assert_allclose(x[:, 0, 0], expected, rtol=1e-5)
    lite = to_network_input(rgb, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    np.testing.assert_allclose(lite[:, 0, 0], [-127 / 128, 1 / 128, 1.0], rtol=1e-5)


def test_save_png_roundtrips_exactly(tmp_path, spectrograms):
    import matplotlib.image

    img = render_rgb(spectrograms[0], colormap="magma")
    path = tmp_path / "spec.png"
    save_png(img, path)
    back = matplotlib.image.imread(path)
    np.testing.assert_array_equal((back[..., :3] * 255).round().astype(np.uint8), img)
