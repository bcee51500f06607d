"""The paper's CRNN as a module-level ``torch.nn.Module`` (so that fitted models pickle).

:class:`CRNN` maps (batch, 1, n_mels, frames) dB Mel-spectrograms to (batch, n_classes) logits: a
stack of convolutional blocks (convolution → batch norm → ELU → max-pooling → dropout), a GRU over the
remaining time steps and a linear layer on a read-out of the GRU output. The hyper-parameters and
their paper values are documented in :mod:`specfusion.models.crnn` and docs/crnn.md; use
:func:`specfusion.models.crnn.build_network` to build one with a variant's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from specfusion.errors import ConfigError

READOUTS = ("last", "mean", "max")


class FastDropout(nn.Module):
    """Inverted dropout; on CPU the mask comes from ``torch.rand`` (3-4x faster than ``bernoulli_``).

    Parameters
    ----------
    p : float
        Probability of zeroing an element.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return nn.functional.dropout(x, self.p, True)
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def frequency_steps(n_mels: int, pools: Sequence[Sequence[int]]) -> int:
    """Frequency bands left after the blocks' pooling (ConfigError when none is left)."""
    freq = int(n_mels)
    for pf, _ in pools:
        freq //= int(pf)
    if freq < 1:
        raise ConfigError(f"the frequency pools {[p[0] for p in pools]} reduce {n_mels} bands to nothing")
    return freq


class CRNN(nn.Module):
    """Convolutional blocks, GRU layers and a linear output layer.

    Parameters
    ----------
    n_classes : int
    n_mels : int
        Mel bands of the input.
    kernels, filters : sequence of int
        Per block: square kernel size and number of filters.
    pools : sequence of (int, int)
        Per block: max-pooling size (frequency, time).
    gru_units, gru_layers : int
    dropout : float
        Dropout after every block and before the output layer.
    readout : {"last", "mean", "max"}
        GRU output at the last time step, or its mean / maximum over time.
    bn_momentum : float
        PyTorch momentum of the batch norms' running statistics (Keras' 0.99 is PyTorch's 0.01).
    keras_init : bool
        Initialise as Keras does (Glorot-uniform kernels, orthogonal recurrent kernels, zero biases);
        False keeps PyTorch's default (faster; for loading saved weights).
    """

    def __init__(
        self,
        n_classes: int,
        *,
        n_mels: int = 128,
        kernels: Sequence[int],
        filters: Sequence[int],
        pools: Sequence[Sequence[int]],
        gru_units: int = 256,
        gru_layers: int = 2,
        dropout: float = 0.3,
        readout: str = "last",
        bn_momentum: float = 0.1,
        keras_init: bool = True,
    ):
        super().__init__()
        if not (len(kernels) == len(filters) == len(pools)):
            raise ConfigError(
                f"kernels, filters and pools need one entry per block, got {len(kernels)}, {len(filters)}, {len(pools)}"
            )
        if readout not in READOUTS:
            raise ConfigError(f"readout must be one of {READOUTS}, got {readout!r}")
        freq = frequency_steps(n_mels, pools)
        blocks, channels = [], 1
        for k, f, (pf, pt) in zip(kernels, filters, pools):
            k, f = int(k), int(f)
            if k % 2:
                conv = [nn.Conv2d(channels, f, k, padding="same")]
            else:  # "same" for an even kernel pads one more at the end, as TensorFlow does
                before, after = (k - 1) // 2, k // 2
                conv = [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(channels, f, k)]
            blocks += conv + [
                nn.BatchNorm2d(f, eps=1e-3, momentum=float(bn_momentum)),
                nn.ELU(),
                nn.MaxPool2d((int(pf), int(pt))),
                FastDropout(dropout),
            ]
            channels = f
        self.conv = nn.Sequential(*blocks)
        self.gru = nn.GRU(channels * freq, int(gru_units), num_layers=int(gru_layers), batch_first=True)
        self.dropout = FastDropout(dropout)
        self.out = nn.Linear(int(gru_units), int(n_classes))
        self.readout = readout
        if keras_init:
            self.reset_parameters_like_keras()

    def reset_parameters_like_keras(self) -> None:
        """Glorot-uniform kernels, orthogonal recurrent kernels (per gate), zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for name, param in self.gru.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                for gate in param.data.chunk(3, dim=0):
                    nn.init.orthogonal_(gate)
            else:
                nn.init.zeros_(param)

    def forward(self, x):
        # channels-last is 25 % faster for the CPU (oneDNN) convolutions and pooling
        x = self.conv(x.contiguous(memory_format=torch.channels_last))  # (B, C, F', T')
        x = x.flatten(1, 2).transpose(1, 2)  # (B, T', C*F')
        x, _ = self.gru(x)
        if self.readout == "last":
            x = x[:, -1]
        elif self.readout == "mean":
            x = x.mean(dim=1)
        else:
            x = x.amax(dim=1)
        return self.out(self.dropout(x))
