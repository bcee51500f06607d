"""PANNs CNN14 (Kong et al., 2020), with the parameter names of the official checkpoints.

The module reproduces ``Cnn14`` of ``qiuqiangkong/audioset_tagging_cnn`` (``pytorch/models.py``): the
torchlibrosa front end (``spectrogram_extractor``: STFT as two 1-D convolutions, periodic Hann window,
``center=True``, reflect padding; ``logmel_extractor``: ``librosa.filters.mel(sr, n_fft, n_mels, fmin,
fmax).T`` as ``melW``, ``power_to_db`` with ``ref=1.0, amin=1e-10, top_db=None``), the batch norm
``bn0`` over the Mel bands, six ``ConvBlock``s (two 3x3 convolutions with batch norm and ReLU, 2x2
average pooling; none after block 6), pooling over frequency (mean) and time (max + mean), ``fc1``
(2048) and ``fc_audioset`` (527 AudioSet classes). The official ``Cnn14_mAP=0.431.pth`` (32 kHz) and
``Cnn14_16k_mAP=0.438.pth`` (16 kHz) hold the state dict under ``"model"``, front-end matrices
included, and load into :class:`Cnn14` strictly and unchanged.

Training-only parts hold no parameters and are left out: SpecAugment (``spec_augmenter``), mixup and
dropout (identity in eval mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specfusion.errors import ConfigError
from specfusion.features.nets.blocks import DoubleConvBlock
from specfusion.features.nets.init import reset_batchnorm_

#: Number of AudioSet classes of the released checkpoints.
AUDIOSET_CLASSES = 527
#: Length of the clip embedding (``fc1``).
EMBEDDING_DIM = 2048
#: The time axis is average-pooled by 2 five times, so the log-Mel needs at least 32 frames.
MIN_FRAMES = 32


@dataclasses.dataclass(frozen=True)
class Cnn14FrontEnd:
    """Log-Mel front end of one CNN14 checkpoint.

    Parameters
    ----------
    sample_rate : int
        Input rate in Hz.
    window_size : int
        STFT size and Hann window length in samples.
    hop_size : int
        STFT hop in samples.
    mel_bins : int
        Number of Mel bands.
    fmin, fmax : float
        Band edges of the Mel filter bank in Hz.
    """

    sample_rate: int
    window_size: int
    hop_size: int
    mel_bins: int
    fmin: float
    fmax: float

    def as_dict(self) -> dict[str, Any]:
        """All parameters, plus the fixed ones of the original (window, padding, dB conversion)."""
        return {
            **dataclasses.asdict(self),
            "window": "hann (periodic)",
            "center": True,
            "pad_mode": "reflect",
            "power": 2.0,
            "mel_norm": "slaney",
            "htk": False,
            "db_ref": 1.0,
            "db_amin": 1e-10,
            "top_db": None,
        }

    @property
    def min_samples(self) -> int:
        """Shortest waveform that yields :data:`MIN_FRAMES` frames with ``center=True``."""
        return (MIN_FRAMES - 1) * self.hop_size


#: The two released configurations: ``Cnn14`` (32 kHz) and ``Cnn14_16k``.
FRONT_ENDS: dict[str, Cnn14FrontEnd] = {
    "32k": Cnn14FrontEnd(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000),
    "16k": Cnn14FrontEnd(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000),
}


def _init_layer(layer: nn.Module) -> None:
    """Xavier-uniform weights, zero bias (the reference ``init_layer``)."""
    nn.init.xavier_uniform_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


class Cnn14(nn.Module):
    """PANNs CNN14 with the official key layout.

    Parameters
    ----------
    front_end : Cnn14FrontEnd
        Log-Mel parameters (see :data:`FRONT_ENDS`).
    classes_num : int
        Size of the AudioSet head.

    Notes
    -----
    Built on ``torchlibrosa.stft.Spectrogram`` / ``LogmelFilterBank`` (the original front end), so the
    buffers ``spectrogram_extractor.stft.conv_real.weight``, ``...conv_imag.weight`` and
    ``logmel_extractor.melW`` have the official names and values.
    """

    def __init__(self, front_end: Cnn14FrontEnd = FRONT_ENDS["32k"], *, classes_num: int = AUDIOSET_CLASSES):
        try:
            from torchlibrosa.stft import LogmelFilterBank, Spectrogram
        except ModuleNotFoundError as err:
            raise ConfigError(
                "PANNs CNN14 needs torchlibrosa (its original front end), an optional dependency: "
                "pip install 'specfusion[panns]'"
            ) from err

        super().__init__()
        self.front_end = front_end
        fe = front_end
        self.spectrogram_extractor = Spectrogram(
            n_fft=fe.window_size,
            hop_length=fe.hop_size,
            win_length=fe.window_size,
            window="hann",
            center=True,
            pad_mode="reflect",
            freeze_parameters=True,
        )
        self.logmel_extractor = LogmelFilterBank(
            sr=fe.sample_rate,
            n_fft=fe.window_size,
            n_mels=fe.mel_bins,
            fmin=fe.fmin,
            fmax=fe.fmax,
            ref=1.0,
            amin=1e-10,
            top_db=None,
            freeze_parameters=True,
        )
        self.bn0 = nn.BatchNorm2d(fe.mel_bins)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            block = DoubleConvBlock(widths[i], widths[i + 1], pooling="avg", init_conv=_init_layer)
            setattr(self, f"conv_block{i + 1}", block)
        self.fc1 = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM, bias=True)
        self.fc_audioset = nn.Linear(EMBEDDING_DIM, classes_num, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation of every trainable layer (uses torch's global RNG).

        The front-end matrices are fixed functions of :attr:`front_end` and are left alone.
        """
        reset_batchnorm_(self.bn0)
        for i in range(6):
            getattr(self, f"conv_block{i + 1}").reset_parameters()
        _init_layer(self.fc1)
        _init_layer(self.fc_audioset)

    def logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-Mel spectrogram in dB, (n, samples) -> (n, 1, frames, mel_bins), before ``bn0``."""
        return self.logmel_extractor(self.spectrogram_extractor(waveform))

    def feature_map(self, waveform: torch.Tensor) -> torch.Tensor:
        """Time-varying features before pooling: (n, samples) -> (n, 2048, frames / 32)."""
        x = self.logmel(waveform)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(5):
            x = getattr(self, f"conv_block{i + 1}")(x, pool_size=(2, 2))
        x = self.conv_block6(x, pool_size=(1, 1))
        return x.mean(dim=3)

    @staticmethod
    def pool(feature_map: torch.Tensor) -> torch.Tensor:
        """Clip pooling of the reference: max over time plus mean over time."""
        return feature_map.amax(dim=2) + feature_map.mean(dim=2)

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Clip embedding ``ReLU(fc1(pooled))``: (n, samples) -> (n, 2048)."""
        return F.relu(self.fc1(self.pool(self.feature_map(waveform))))

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference output: ``clipwise_output`` (sigmoid AudioSet scores) and ``embedding``."""
        embedding = self.embed(waveform)
        return {"clipwise_output": torch.sigmoid(self.fc_audioset(embedding)), "embedding": embedding}
