"""VGG16 and VGG19 (Simonyan & Zisserman 2015) with torchvision's parameter names.

Layout (identical to ``torchvision.models.vgg16`` / ``vgg19`` without batch norm):

* ``features``: ``Sequential`` of 3x3 convolutions (padding 1, with bias), in-place ReLUs and 2x2 max
  pools, so parameters are ``features.{N}.weight`` / ``features.{N}.bias`` at torchvision's indices;
* ``avgpool``: adaptive average pool to 7x7;
* ``classifier``: ``Linear(25088, 4096)``, ReLU, Dropout, ``Linear(4096, 4096)``, ReLU, Dropout,
  ``Linear(4096, 1000)`` -- parameters ``classifier.{0,3,6}.*``.

The DEEP SPECTRUM feature is Keras' ``fc2``: the second fully connected layer after its ReLU, i.e. the
output of ``classifier[:5]`` (dropout is the identity in eval mode, and :meth:`VGG.embed` skips it).
"""

from __future__ import annotations

import torch
from torch import nn

from specfusion.features.nets._base import ImageNetwork

#: Convolution widths per stage ("M" = 2x2 max pool), torchvision's configurations "D" and "E".
CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(config: list[int | str]) -> nn.Sequential:
    """The convolutional base: conv3x3 + ReLU per number, 2x2 max pool per ``"M"``."""
    layers: list[nn.Module] = []
    channels = 3
    for width in config:
        if width == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(width), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(width)
    return nn.Sequential(*layers)


class VGG(ImageNetwork):
    """VGG without batch norm, torchvision layout; feature = ``fc2`` after ReLU (4096-d).

    Parameters
    ----------
    config : list
        Stage configuration, one of :data:`CONFIGS`.
    num_classes : int
        Size of the classification layer (1000 for ImageNet).
    dropout : float
        Dropout probability in the classifier (training only).
    """

    feature_dim = 4096

    def __init__(self, config: list[int | str], *, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = make_features(config)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal convolutions (fan-out), N(0, 0.01) linear layers."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``fc2`` activations after ReLU, shape (n, 4096); dropout is never applied."""
        x = self._pooled(x)
        fc1, relu1, _drop1, fc2, relu2 = self.classifier[:5]
        return relu2(fc2(relu1(fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits, shape (n, num_classes)."""
        return self.classifier(self._pooled(x))


def vgg16(**kwargs) -> VGG:
    """VGG16 (configuration "D")."""
    return VGG(CONFIGS["vgg16"], **kwargs)


def vgg19(**kwargs) -> VGG:
    """VGG19 (configuration "E")."""
    return VGG(CONFIGS["vgg19"], **kwargs)
