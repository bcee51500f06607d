"""The aisfx sound-effects embedding network (Ma & Lerch, ISMIR 2022), model "X-Sequential-CE".

Defined here with the key layout of the checkpoint shipped in the ``aisfx`` wheel
(``aisfx/models/checkpoint.pth``, CC BY 4.0), so the package itself is never imported (it pins old
numpy/librosa). ``CrossNet`` = ``embedding_net`` (the DCASE 2018 cross-task baseline "Cnn_9layers":
four conv blocks of two 3x3 convolutions without bias, batch norm and ReLU, 2x2 max pooling after the
first three; mean over frequency, max over time -> 512-d) plus one classification head per training
data set (``fc.<i>``: Linear 512-256, ReLU, Linear 256-128, ReLU, Linear 128-classes).

The checkpoint is a pickled tuple ``(state_dict, ds_dict)`` whose ``ds_dict`` maps data-set names to
``(numpy.int64 index, number of classes)``; aisfx's own loader calls ``torch.load`` without
``weights_only`` and fails on torch >= 2.6. :func:`read_checkpoint` loads it with
``weights_only=True`` and an explicit allow-list of exactly the numpy types it contains
(:func:`checkpoint_safe_globals`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from specfusion.errors import WeightsError
from specfusion.features.nets.blocks import DoubleConvBlock

#: Width of the first conv block; the embedding has 8x as many channels.
HL1 = 64
#: Length of the embedding.
EMBEDDING_DIM = 8 * HL1
#: Classes of the nine training heads of the released checkpoint, in head order (prosfx, soundlyTrain,
#: ucsMixed, soundstormBalanced, productionelementsBalanced, cartoonexpressBalanced,
#: hpxdigitalBalanced, series6000Balanced, series9000Balanced).
RELEASED_HEADS = (78, 79, 69, 81, 10, 27, 3, 23, 8)


def _init_layer(layer: nn.Module) -> None:
    """The reference ``init_layer``: Kaiming-uniform (leaky-ReLU gain), zero bias."""
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="leaky_relu")
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class EmbeddingNet(nn.Module):
    """Conv trunk: (n, time_steps, mel_bins) -> (n, 512) (mean over frequency, max over time)."""

    def __init__(self, hl1: int = HL1):
        super().__init__()
        widths = (1, hl1, 2 * hl1, 4 * hl1, 8 * hl1)
        for i in range(4):
            block = DoubleConvBlock(widths[i], widths[i + 1], pooling="max", init_conv=_init_layer)
            setattr(self, f"conv_block{i + 1}", block)
        self.hl4 = widths[-1]

    def reset_parameters(self) -> None:
        for i in range(4):
            getattr(self, f"conv_block{i + 1}").reset_parameters()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(n, time_steps, mel_bins) -> (n, 512, time_steps / 8) before the max over time."""
        x = x.unsqueeze(1)
        for i in range(3):
            x = getattr(self, f"conv_block{i + 1}")(x, pool_size=(2, 2))
        x = self.conv_block4(x, pool_size=(1, 1))
        return x.mean(dim=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).amax(dim=2)


class CrossNet(nn.Module):
    """Embedding network plus the per-data-set classification heads of cross-data-set training.

    Parameters
    ----------
    head_classes : sequence of int
        Number of classes of each head, in head-index order.
    hl1 : int
        Width of the first conv block.
    """

    def __init__(self, head_classes: Sequence[int] = RELEASED_HEADS, *, hl1: int = HL1):
        super().__init__()
        self.embedding_net = EmbeddingNet(hl1)
        hl4 = self.embedding_net.hl4
        self.fc = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hl4, hl4 // 2),
                nn.ReLU(),
                nn.Linear(hl4 // 2, hl4 // 4),
                nn.ReLU(),
                nn.Linear(hl4 // 4, int(n)),
            )
            for n in head_classes
        )
        self.head_classes = tuple(int(n) for n in head_classes)

    def reset_parameters(self) -> None:
        """The reference initialisation (uses torch's global RNG)."""
        self.embedding_net.reset_parameters()
        for head in self.fc:
            for layer in head:
                if isinstance(layer, nn.Linear):
                    _init_layer(layer)

    def embed(self, blocks: torch.Tensor) -> torch.Tensor:
        """512-d embeddings of spectrogram blocks (n, 100, 96)."""
        return self.embedding_net(blocks)

    def forward(self, blocks: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embedding_net(blocks)
        return embedding, self.fc[head](embedding)


def checkpoint_safe_globals() -> list:
    """The numpy types the released checkpoint pickles, and nothing else.

    ``ds_dict`` holds ``numpy.int64`` indices: they are pickled as ``numpy.core.multiarray.scalar``
    applied to a ``numpy.dtype`` (whose class under numpy >= 1.25 is ``numpy.dtypes.Int64DType``).
    The released file (numpy 1) names the function ``numpy.core.multiarray.scalar``; numpy 2, where
    it lives in ``numpy._core``, writes that name: both names of the one function are allowed.
    """
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list = [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.Int64DType)
    return allowed


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """Read an aisfx checkpoint safely: ``(state_dict, head_classes)``.

    Uses ``torch.load(weights_only=True)`` with :func:`checkpoint_safe_globals` only.

    Raises
    ------
    WeightsError
        Missing, unreadable, or not of the aisfx layout ``(state_dict, {name: (index, classes)})``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"aisfx checkpoint {path} does not exist")
    try:
        from specfusion.features.weights import allow_globals

        with allow_globals(checkpoint_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, zip errors ...
        from specfusion.features.weights import describe_load_error

        raise WeightsError(f"cannot read aisfx checkpoint {path}: {describe_load_error(err)}") from None
    if not (
        isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], Mapping) and isinstance(obj[1], Mapping)
    ):
        raise WeightsError(
            f"{path} is not an aisfx checkpoint: expected a pair (state_dict, ds_dict), got {type(obj).__name__}"
        )
    state_dict, ds_dict = obj
    try:
        heads = sorted((int(idx), int(n)) for idx, n in ds_dict.values())
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: ds_dict must map data-set names to (index, classes): {err}") from None
    if [idx for idx, _ in heads] != list(range(len(heads))):
        raise WeightsError(f"{path}: head indices {[idx for idx, _ in heads]} are not 0..{len(heads) - 1}")
    return dict(state_dict), tuple(n for _, n in heads)
