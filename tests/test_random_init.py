"""Random initialisation (Keras' and torchvision's schemes) and DEEP SPECTRUM's input preprocessing.

Generated tensors for the initialiser statistics; one real ESC-50 clip for the extractor options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError
from specfusion.features.extractors.base import get_extractor
from specfusion.features.extractors.image_cnns import build_network
from specfusion.features.images import IMAGENET_MEAN, IMAGENET_STD, to_network_input
from specfusion.features.nets import NETWORKS, preprocessing
from specfusion.features.nets.init import initialise, keras_init_
from specfusion.features.nets.resnet import resnet50


@pytest.fixture(scope="module")
def clip(esc50_root):
    return load_audio(esc50_root / "audio" / "1-100032-A-0.flac", sr=16000)[0][0]


def test_keras_glorot_uniform_conv_kernel_statistics():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, kernel_size=3)
    nn.init.normal_(conv.bias)  # must become zero
    keras_init_(conv)
    fan_in, fan_out = 3 * 3 * 64, 3 * 3 * 128  # Keras' _compute_fans for a (3, 3, 64, 128) kernel
    limit = math.sqrt(6 / (fan_in + fan_out))
    w = conv.weight.detach().double()
    n = w.numel()
    # std of U(-a, a) is a / sqrt(3) = sqrt(2 / (fan_in + fan_out)); the sample std's error is ~ sigma / sqrt(2n)
    expected = math.sqrt(2 / (fan_in + fan_out))
    assert abs(float(w.std()) / expected - 1) < 5 / math.sqrt(2 * n)
    assert float(w.abs().max()) <= limit and float(w.abs().max()) > 0.99 * limit  # uniform up to the limit
    assert abs(float(w.mean())) < 5 * expected / math.sqrt(n)
    assert torch.count_nonzero(conv.bias) == 0


def test_keras_init_dense_and_batchnorm_defaults():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(1000, 300), nn.BatchNorm2d(16))
    bn = net[1]
    for t in (bn.weight, bn.bias, bn.running_mean):
        nn.init.normal_(t)
    bn.running_var.fill_(5.0)
    keras_init_(net)
    fc = net[0]
    assert abs(float(fc.weight.detach().std()) / math.sqrt(2 / 1300) - 1) < 0.02
    assert torch.count_nonzero(fc.bias) == 0
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))
    assert torch.equal(bn.running_mean, torch.zeros(16)) and torch.equal(bn.running_var, torch.ones(16))


def test_keras_he_normal_conv_statistics():
    torch.manual_seed(2)
    conv = nn.Conv2d(256, 64, kernel_size=1)
    initialise(conv, "keras-he")
    w = conv.weight.detach().double()
    assert abs(float(w.std()) / math.sqrt(2 / 256) - 1) < 0.03  # truncated normal rescaled to sqrt(2 / fan_in)
    assert float(w.abs().max()) <= 2 * math.sqrt(2 / 256) / 0.87962566103423978 + 1e-6


def test_whole_network_keras_init_is_seeded_and_differs_from_torchvision():
    a, info = build_network("densenet121", weights="none", seed=3, init="keras")
    b, _ = build_network("densenet121", weights="none", seed=3)  # keras is the default for DEEP SPECTRUM nets
    tv, tv_info = build_network("densenet121", weights="none", seed=3, init="torchvision")
    assert info == {"kind": "none", "seed": 3, "init": "keras"} and tv_info["init"] == "torchvision"
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), key
    conv = a.features.denseblock2.denselayer1.conv2  # 3x3, 128 -> 32
    expected = math.sqrt(2 / (9 * 128 + 9 * 32))
    assert abs(float(conv.weight.detach().std()) / expected - 1) < 0.05
    tv_conv = tv.features.denseblock2.denselayer1.conv2  # Kaiming normal, fan_in
    assert abs(float(tv_conv.weight.detach().std()) / math.sqrt(2 / (9 * 128)) - 1) < 0.05
    assert torch.equal(a.features.norm5.running_var, torch.ones(1024))
    with pytest.raises(ConfigError, match="unknown init"):
        build_network("densenet121", weights="none", init="xavier")


def test_resnet_stride_in_1x1_keeps_parameters_and_output_shape():
    v15, v1 = resnet50(), resnet50(stride_in_1x1=True)
    assert [(k, t.shape) for k, t in v15.state_dict().items()] == [(k, t.shape) for k, t in v1.state_dict().items()]
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    keras_init_(v1)
    with torch.no_grad():
        assert v1.eval().embed(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("vgg16", [30.0, 20.0, 10.0]),  # RGB -> BGR only
        ("vgg19", [30.0, 20.0, 10.0]),
        ("resnet50", [30 - 103.939, 20 - 116.779, 10 - 123.68]),  # caffe mode: BGR minus BGR means
        (
            "densenet121",
            [(v / 255 - m) / s for v, m, s in zip((10, 20, 30), IMAGENET_MEAN, IMAGENET_STD)],
        ),  # torch mode
    ],
)
def test_deepspectrum_preprocessing_of_a_known_pixel(network, expected):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[1, 0] = (10, 20, 30)
    pre = preprocessing(network, "deepspectrum")
    x = to_network_input(rgb, mean=pre.mean, std=pre.std, channel_order=pre.channel_order)
    np.testing.assert_allclose(x[:, 1, 0], expected, rtol=1e-5, atol=1e-4)


def test_torchvision_preprocessing_is_the_checkpoint_normalisation():
    for name, info in NETWORKS.items():
        pre = preprocessing(name, "torchvision")
        assert (pre.channel_order, pre.mean, pre.std) == ("RGB", info.mean, info.std)
    with pytest.raises(ConfigError, match="deepspectrum"):
        preprocessing("efficientnet_lite0", "deepspectrum")
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        preprocessing("vgg16", "keras")


def test_extractor_defaults_and_config_record_init_and_preprocessing(clip):
    ds = get_extractor("resnet50", weights="none", seed=0)
    cfg = ds.config()
    assert cfg["weights"] == {"kind": "none", "seed": 0, "init": "keras", "stride_in_1x1": True}
    assert cfg["normalisation"]["preset"] == "deepspectrum" and cfg["normalisation"]["channel_order"] == "BGR"
    tv = get_extractor("resnet50", weights="none", seed=0, init="torchvision", preprocess="torchvision")
    assert tv.config()["weights"]["init"] == "torchvision" and tv.config()["normalisation"]["preset"] == "torchvision"
    x_ds, x_tv = ds.prepare(clip), tv.prepare(clip)
    rgb = ds.render(clip)
    np.testing.assert_allclose(x_ds[0], rgb[..., 2] - 103.939, rtol=1e-5, atol=1e-3)  # blue first
    assert not np.allclose(x_ds, x_tv)
    lite = get_extractor("efficientnet_lite0", weights="none")
    assert lite.config()["weights"]["init"] == "torchvision" and lite.preprocess == "torchvision"
    with pytest.raises(ConfigError, match="init only applies"):
        get_extractor("resnet50", weights="imagenet", init="keras")


def test_image_cnns_use_deep_spectrums_stft_unless_a_window_is_given(clip):
    from specfusion.features.deepspectrum_image import deepspectrum_stft_seconds
    from specfusion.features.spectrogram import MelSpecParams, melspectrogram

    # DEEP SPECTRUM's plot_chunk: nfft = next power of two of int(0.025 * sr) samples, hop nfft / 2
    assert deepspectrum_stft_seconds(16000) == (512 / 16000, 256 / 16000)
    assert deepspectrum_stft_seconds(44100) == (2048 / 44100, 1024 / 44100)
    assert deepspectrum_stft_seconds(8000) == (256 / 8000, 128 / 8000)
    ds = get_extractor("vgg16", weights="none")
    assert (ds.spec_params.window_s, ds.spec_params.hop_s) == (0.032, 0.016)
    assert ds.config()["spectrogram"]["window_s"] == 0.032  # part of the store key
    assert melspectrogram(clip, 16000, params=ds.spec_params).shape[1] == 1 + len(clip) // 256  # 16-ms frames
    at_44k = get_extractor("vgg16", weights="none", sample_rate=44100)
    assert at_44k.spec_params.window_s == 2048 / 44100
    narrow = get_extractor("vgg16", weights="none", spec_params={"n_mels": 64})  # other fields keep the default
    assert (narrow.spec_params.window_s, narrow.spec_params.n_mels) == (0.032, 64)
    given = get_extractor("vgg16", weights="none", spec_params={"window_s": 0.32, "hop_s": 0.16})
    assert (given.spec_params.window_s, given.spec_params.hop_s) == (0.32, 0.16)
    assert not np.array_equal(given.render(clip), ds.render(clip))
    assert get_extractor("vgg16", weights="none", spec_params=MelSpecParams()).spec_params.window_s == 0.32
    window_only = get_extractor("vgg16", weights="none", spec_params={"window_s": 0.064}).spec_params
    assert (window_only.window_s, window_only.hop_s) == (0.064, 0.032)  # DEEP SPECTRUM's hop: half the window
    for other in (
        get_extractor("vgg16", weights="none", preprocess="torchvision"),
        get_extractor("efficientnet_lite0"),
    ):
        assert (other.spec_params.window_s, other.spec_params.hop_s) == (0.032, 0.016)


def test_trim_silence_drops_digital_zeros_at_both_ends(clip):
    ex = get_extractor("densenet121", weights="none", trim_silence=True)
    padded = np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(16000, np.float32)])
    trimmed = np.trim_zeros(clip)
    np.testing.assert_array_equal(ex.render(padded), ex.render(trimmed))
    plain = get_extractor("densenet121", weights="none")
    assert not np.array_equal(plain.render(padded), ex.render(padded))
    assert ex.config()["trim_silence"] is True and "trim_silence" not in plain.config()


def test_cli_extract_passes_init_preprocess_and_trim():
    import argparse

    from specfusion.cli.extract import extractor_options
    from specfusion.features.extractors import get_extractor_class

    args = argparse.Namespace(
        weights="none",
        weights_seed=3,
        init="torchvision",
        preprocess="deepspectrum",
        trim_silence=True,
        colormap=None,
        clip_db=None,
        device=None,
    )
    options = extractor_options(args, get_extractor_class("vgg16"))
    assert options == {
        "weights": "none",
        "seed": 3,
        "init": "torchvision",
        "preprocess": "deepspectrum",
        "trim_silence": True,
    }
    args.trim_silence = None  # flag not given: the extractor's default
    assert "trim_silence" not in extractor_options(args, get_extractor_class("vgg16"))
    args.stride_in_1x1 = False  # --no-stride-in-1x1
    assert extractor_options(args, get_extractor_class("resnet50"))["stride_in_1x1"] is False


def test_a_keras_initialised_random_resnet50_takes_keras_v1_layout(clip):
    v1 = get_extractor("resnet50", weights="none", seed=0)
    assert v1.stride_in_1x1 and v1.config()["weights"] == {
        "kind": "none",
        "seed": 0,
        "init": "keras",
        "stride_in_1x1": True,
    }
    assert v1.net.layer2[0].conv1.stride == (2, 2) and v1.net.layer2[0].conv2.stride == (1, 1)
    v15 = get_extractor("resnet50", weights="none", seed=0, stride_in_1x1=False)
    assert "stride_in_1x1" not in v15.config()["weights"]  # the key of a V1.5 store is the one it always had
    # the same seed draws the same parameters in both layouts: only where the stride sits differs
    for (name, a), (_, b) in zip(v1.net.state_dict().items(), v15.net.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.from_numpy(v1.prepare(clip)[None])
    with torch.inference_mode():
        assert not torch.allclose(v1.net.embed(x), v15.net.embed(x))
    for other in (
        get_extractor("resnet50", weights="none", init="torchvision"),
        get_extractor("vgg16", weights="none"),
    ):
        assert not other.stride_in_1x1 and "stride_in_1x1" not in other.config()["weights"]
    with pytest.raises(ConfigError, match="stride_in_1x1 applies to resnet50 with weights='none'"):
        get_extractor("resnet50", weights="imagenet", stride_in_1x1=True)
    with pytest.raises(ConfigError, match="stride_in_1x1 applies to resnet50"):
        get_extractor("vgg16", weights="none", stride_in_1x1=True)


def test_a_resnet50_store_and_model_file_rebuild_their_own_layout(tmp_path):
    from specfusion.features.extraction import store_config
    from specfusion.models.svm import LinearSVM
    from specfusion.pipeline.systems import extractor_from_store_config, load_system, svm_system_bytes

    for stride in (True, False):
        made = get_extractor("resnet50", weights="none", seed=1, stride_in_1x1=stride, device="cpu")
        config = store_config(made, short="pad")
        rebuilt, options = extractor_from_store_config(config, device="cpu")
        assert rebuilt.stride_in_1x1 is stride and store_config(rebuilt, short="pad") == config
    # a model file saved before the default changed names no layout in its options: it must keep V1.5
    rng = np.random.default_rng(0)
    svm = LinearSVM(c_grid=[1e-2]).fit(rng.normal(size=(12, 2048)), np.repeat(["a", "b"], 6),
                                       folds=np.tile([1, 2, 3], 4))  # fmt: skip
    old = get_extractor("resnet50", weights="none", seed=1, stride_in_1x1=False, device="cpu")
    path = tmp_path / "old.sfm"
    path.write_bytes(svm_system_bytes(svm, old, extractor_options={"weights": "none", "seed": 1}))
    assert load_system(path).extractor.stride_in_1x1 is False
