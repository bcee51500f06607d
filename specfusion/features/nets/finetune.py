"""The network of fine-tuning: a pretrained network's blocks, global average pooling and a new linear head.

Built by :mod:`specfusion.models.finetune.networks` from YAMNet's or EfficientNet-Lite's modules.
"""

from __future__ import annotations

import torch
from torch import nn

from specfusion.features.nets.efficientnet_lite import SameConv2d


class ConvBNReLU6(nn.Module):
    """A convolution, its batch norm and ReLU6 (EfficientNet-Lite's stem and head convolutions).

    With ``in_channels`` fewer than the convolution's (a one-channel spectrogram for the three colour
    channels), the kernel is summed over its input channels: the same output as the input repeated as
    identical channels.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, in_channels: int):
        super().__init__()
        if in_channels != conv.in_channels:
            summed = SameConv2d(in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0])
            if conv.weight.device.type != "meta":
                with torch.no_grad():
                    summed.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            conv = summed
        self.conv, self.bn, self.act = conv, bn, nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class FineTuneNet(nn.Module):
    """Pretrained blocks, then global average pooling over the last two axes, dropout and a new linear head.

    Parameters
    ----------
    blocks : list of nn.Module
    feature_dim : int
        Channels of the last block's output.
    n_classes : int
    dropout : float
        Before the head (training only).
    swap_axes : bool
        The blocks read (batch, channels, frames, bands) (YAMNet): the last two axes are swapped around them,
        so that inputs and the maps :meth:`run_blocks` returns are (batch, channels, bands, frames), time last.
    """

    def __init__(self, blocks, feature_dim: int, n_classes: int, *, dropout: float, swap_axes: bool):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, n_classes)
        self.swap_axes = swap_axes

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Blocks ``start`` to ``stop`` (exclusive) on time-last maps; returns time-last maps."""
        if self.swap_axes:
            x = x.transpose(-1, -2)
        for block in self.blocks[start:stop]:
            x = block(x)
        return x.transpose(-1, -2) if self.swap_axes else x

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Logits of inputs (batch, channels, bands, frames), or with ``start`` of block ``start``'s input maps."""
        pooled = self.run_blocks(x, start).mean(dim=(-2, -1))
        return self.head(self.dropout(pooled))
