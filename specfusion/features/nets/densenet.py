"""DenseNet121 (Huang et al. 2017) with torchvision's parameter names.

Parameters: ``features.conv0``, ``features.norm0``,
``features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}``,
``features.transition{t}.{norm,conv}``, ``features.norm5`` and ``classifier``, exactly as in
``torchvision.models.densenet121``.

torchvision's published ``densenet121-a639ec97.pth`` predates the current names and stores
``...denselayer1.norm.1.weight`` instead of ``...denselayer1.norm1.weight``; :meth:`DenseNet.remap_state_dict`
applies torchvision's own renaming rule, so both the legacy and the current layout load strictly.

The DEEP SPECTRUM feature is the global average pool after the final batch norm and ReLU (1024-d),
which is the input of torchvision's classifier.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specfusion.features.nets._base import ImageNetwork

#: torchvision's rule for the legacy ``norm.1`` / ``relu.1`` / ``conv.1`` key layout.
LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (bottleneck) then BN-ReLU-conv3x3 producing ``growth_rate`` new maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each seeing the concatenation of all earlier outputs."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int):
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-conv1x1 halving the channels, then 2x2 average pooling."""

    def __init__(self, num_input_features: int, num_output_features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(ImageNetwork):
    """DenseNet-BC, torchvision layout; feature = global average pool of ``relu(norm5)``.

    Parameters
    ----------
    growth_rate : int
        New feature maps per layer (32).
    block_config : tuple of int
        Layers per dense block, ``(6, 12, 24, 16)`` for DenseNet121.
    num_init_features : int
        Channels of the stem convolution (64).
    bn_size : int
        Bottleneck width factor (4).
    num_classes : int
        Size of the classification layer.
    """

    feature_dim = 1024

    def __init__(
        self,
        growth_rate: int = 32,
        block_config=(6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        *,
        num_classes: int = 1000,
    ):
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, channels, bn_size, growth_rate))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        self.feature_dim = channels  # instance attribute shadows the class default for other configs

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal convolutions, unit batch norms, zero linear bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0 / variance 1
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
                nn.init.zeros_(m.bias)

    @classmethod
    def remap_state_dict(cls, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Rename legacy ``denselayerN.norm.1.*`` keys to ``denselayerN.norm1.*`` (torchvision's rule)."""
        out = {}
        for key, value in state_dict.items():
            match = LEGACY_KEY.match(key)
            out[match.group(1) + match.group(2) if match else key] = value
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of ``relu(norm5)``, shape (n, 1024)."""
        x = F.relu(self.features(x), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        return self.classifier(self.embed(x))


def densenet121(**kwargs) -> DenseNet:
    """DenseNet121: growth 32, blocks of 6, 12, 24 and 16 layers, 64 stem channels."""
    return DenseNet(32, (6, 12, 24, 16), 64, **kwargs)
