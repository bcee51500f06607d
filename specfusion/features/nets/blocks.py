"""Building blocks shared by the audio networks defined in :mod:`specfusion.features.nets`."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from specfusion.features.nets.init import reset_batchnorm_

_POOLING = {"avg": F.avg_pool2d, "max": F.max_pool2d}


class DoubleConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias), each followed by batch norm and ReLU, then 2-D pooling.

    The ``ConvBlock`` of PANNs (``qiuqiangkong/audioset_tagging_cnn``, average pooling) and of the DCASE 2018
    cross-task baseline that aisfx builds on (max pooling), with their parameter names (``conv1``, ``conv2``,
    ``bn1``, ``bn2``).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    pooling : {"avg", "max"}
        The pooling after the second convolution.
    init_conv : callable
        Initialises a convolution in place (the reference implementation's ``init_layer``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, pooling: str, init_conv: Callable[[nn.Module], None]):
        super().__init__()
        if pooling not in _POOLING:
            raise ValueError(f"pooling must be one of {sorted(_POOLING)}, got {pooling!r}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pooling = pooling
        self.init_conv = init_conv

    def reset_parameters(self) -> None:
        """The reference initialisation: ``init_conv`` on both convolutions, then fresh batch norms."""
        self.init_conv(self.conv1)
        self.init_conv(self.conv2)
        reset_batchnorm_(self.bn1)
        reset_batchnorm_(self.bn2)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int] = (2, 2)) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return _POOLING[self.pooling](x, kernel_size=pool_size)
