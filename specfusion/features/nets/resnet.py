"""ResNet50 (He et al. 2016) with torchvision's parameter names (V1.5: stride in the 3x3 convolution,
or V1 with ``stride_in_1x1=True``).

Parameters: ``conv1``, ``bn1``, ``layer{1..4}.{i}.conv{1,2,3}`` / ``bn{1,2,3}``, the projection
shortcut ``layer{k}.0.downsample.0`` (1x1 conv) and ``.1`` (batch norm), and ``fc``, exactly as in
``torchvision.models.resnet50``, so ``resnet50-0676ba61.pth`` (``IMAGENET1K_V1``) loads unchanged.

The DEEP SPECTRUM feature is the global average pool of the last stage (2048-d).
"""

from __future__ import annotations

import torch
from torch import nn

from specfusion.features.nets._base import ImageNetwork


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 residual block with expansion 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        width = planes
        stride1, stride3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, stride=stride1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(ImageNetwork):
    """ResNet with bottleneck blocks, torchvision layout; feature = global average pool (2048-d).

    Parameters
    ----------
    layers : sequence of int
        Blocks per stage, ``(3, 4, 6, 3)`` for ResNet50.
    num_classes : int
        Size of the classification layer.
    stride_in_1x1 : bool
        Put a downsampling block's stride in its first 1x1 convolution (ResNet V1 as in Caffe and
        Keras, ``keras_applications``' ``resnet_common``) instead of the 3x3 one (torchvision's V1.5).
        Same parameters either way, so checkpoints load into both.
    """

    feature_dim = 512 * Bottleneck.expansion

    def __init__(self, layers=(3, 4, 6, 3), *, num_classes: int = 1000, stride_in_1x1: bool = False):
        super().__init__()
        self.stride_in_1x1 = bool(stride_in_1x1)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, stride_in_1x1=self.stride_in_1x1)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal convolutions (fan-out), unit batch norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0 / variance 1
            elif isinstance(m, nn.Linear):
                m.reset_parameters()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of ``layer4``, shape (n, 2048)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        return self.fc(self.embed(x))


def resnet50(**kwargs) -> ResNet:
    """ResNet50: bottleneck stages of 3, 4, 6 and 3 blocks."""
    return ResNet((3, 4, 6, 3), **kwargs)
