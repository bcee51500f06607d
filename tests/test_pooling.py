"""Temporal pooling: the documented statistics and shapes on generated frames, the choices in every
frame-based audio extractor's config(), and aisfx's default output (mean over blocks) unchanged on a
real clip."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError
from specfusion.features.extractors import aisfx
from specfusion.features.extractors.base import get_extractor, get_extractor_class
from specfusion.features.extractors.pooling import POOLINGS, pool_frames, pooled_dim

pytestmark = pytest.mark.usefixtures("torch_two_threads")


@pytest.mark.parametrize("pooling,factor", [("mean", 1), ("max", 1), ("mean+max", 2), ("mean+std", 2)])
def test_pool_frames_statistics_and_shapes(pooling, factor):
    frames = np.random.default_rng(0).standard_normal((3, 7, 5)).astype(np.float32)
    out = pool_frames(frames, pooling)
    assert out.shape == (3, factor * 5) == (3, pooled_dim(pooling, 5)) and out.dtype == np.float32
    expected = {"mean": frames.mean(1), "max": frames.max(1), "std": frames.std(1)}
    np.testing.assert_allclose(out, np.concatenate([expected[s] for s in pooling.split("+")], axis=1), rtol=1e-6)


def test_one_frame_has_zero_spread():
    out = pool_frames(np.arange(4, dtype=np.float32).reshape(1, 1, 4), "mean+std")
    np.testing.assert_array_equal(out, [[0, 1, 2, 3, 0, 0, 0, 0]])


@pytest.mark.parametrize("bad", ["median", "", "mean+median"])
def test_unknown_pooling_is_refused(bad):
    with pytest.raises(ConfigError, match="mean\\+std"):
        pool_frames(np.zeros((1, 2, 3), dtype=np.float32), bad)


def test_every_frame_based_audio_extractor_takes_pooling():
    for name in ("aisfx", "panns_cnn14", "openl3", "birdnet", "soundnet", "yamnet"):
        assert "pooling" in inspect.signature(get_extractor_class(name).__init__).parameters, name


@pytest.mark.parametrize("pooling,dim", [("fc1", 2048), ("mean", 2048), ("mean+std", 4096)])
def test_panns_pooling_shapes(pooling, dim):
    ex = get_extractor("panns_cnn14", weights="none", variant="16k", pooling=pooling, device="cpu")
    y = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    out = ex.embed(ex.prepare(y)[None])
    assert out.shape == (1, dim) == (1, ex.dim) and ex.config()["pooling"] == pooling
    if pooling != "fc1":
        frames = ex.embed_frames(ex.prepare(y)[None])
        np.testing.assert_allclose(out[0, :2048], frames[0].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        get_extractor("panns_cnn14", weights="none", pooling="sum", device="cpu")


def test_aisfx_poolings_on_a_real_clip(esc50_root):
    if aisfx.packaged_checkpoint() is None:
        pytest.skip("the aisfx wheel is not installed (pip install --no-deps aisfx==0.1.2)")
    y = load_audio(esc50_root / "audio" / "1-100038-A-14.flac", sr=44100)[0][0]
    default = get_extractor("aisfx", device="cpu")
    prepared = default.prepare(y)[None]
    frames = default.embed_frames(prepared)
    assert frames.shape == (1, 3, 512)  # a 5-s clip: 3 blocks
    assert default.config()["pooling"] == "mean" and default.dim == 512
    np.testing.assert_array_equal(default.embed(prepared), frames.mean(axis=1).astype(np.float32))  # unchanged default
    for pooling in POOLINGS[1:]:
        default.pooling = pooling  # same network, another pooling
        assert default.embed(prepared).shape == (1, pooled_dim(pooling, 512))
    default.pooling = "mean"
    assert get_extractor("aisfx", pooling="mean+max", device="cpu").config()["dim"] == 1024
    np.testing.assert_allclose(default.frame_times(3), (np.arange(3) * 50 + 49.5) * 1024 / 44100)


def test_cli_passes_pooling_and_layer_only_to_extractors_that_take_them():
    import argparse

    from specfusion.cli.extract import extractor_options

    args = argparse.Namespace(
        weights=None, weights_seed=None, colormap=None, clip_db=None, device=None, pooling="mean+max", layer="conv5"
    )
    assert extractor_options(args, get_extractor_class("soundnet")) == {"pooling": "mean+max", "layer": "conv5"}
    args.layer = None
    assert extractor_options(args, get_extractor_class("aisfx")) == {"pooling": "mean+max"}
    with pytest.raises(ConfigError, match="--pooling"):
        extractor_options(args, get_extractor_class("efficientnet_lite0"))
