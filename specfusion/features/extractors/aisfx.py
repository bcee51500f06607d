"""aisfx sound-effects embeddings (Ma & Lerch, ISMIR 2022): the audio-pretrained net that runs here.

Registered name: ``aisfx`` -- the 512-d embedding of the released "X-Sequential-CE" model, whose
checkpoint ships inside the ``aisfx`` wheel (``pip install --no-deps aisfx==0.1.2``; model and paper
CC BY 4.0, code MIT). The package is never imported: the network is defined in
:mod:`specfusion.features.nets.aisfx` and the checkpoint is found with ``importlib.util.find_spec("aisfx")``
and read with ``torch.load(weights_only=True)`` and an allow-list of numpy types.

Preprocessing -- aisfx's own, librosa path (``aisfx/spectrogram/spectrogram_librosa.py``,
``preprocessing.py``, ``inference.py``; the essentia path of the paper is not available here):

1. mono waveform at 44.1 kHz, peak-normalised (divided by its maximum absolute value);
2. ``librosa.feature.melspectrogram(n_fft=2048, win_length=2048, hop_length=1024, n_mels=96,
   fmin=0, fmax=22050, htk=True, norm=1.0, power=2.0)`` (periodic Hann, centred, zero padding),
   compressed as ``log10(10000 * S + 1)``;
3. ``'original'`` min/max normalisation with aisfx's constants (0, 9.457798957824707);
4. blocks of 100 frames (~2.3 s) with hop 50 (``emb_hop_size=0.5``), the last partial block dropped,
   clips shorter than one block zero-padded to one block;
5. the network embeds every block (512-d); the clip feature pools the blocks over time
   (``pooling=``: mean by default, or max, mean+max, mean+std; :mod:`specfusion.features.extractors.pooling`).

One deliberate difference: aisfx's librosa path hands the network a (mel, time) array, while the
network, its docstring and aisfx's essentia path (used for training) are (time, mel); we use (time,
mel). See docs/audio_nets.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError
from specfusion.features.extractors._audio_nets import as_mono, clip_batch, in_chunks
from specfusion.features.extractors._weights import (
    checkpoint_file,
    checkpoint_record,
    packaged_file,
    seeded,
    weights_kind,
)
from specfusion.features.extractors.base import (
    RANDOM_WEIGHTS,
    Extractor,
    ExtractorInfo,
    place_network,
    torch_device,
    weights_found,
)
from specfusion.features.extractors.pooling import POOLING_DIM_RULE, check_pooling, pool_frames, pooled_dim
from specfusion.features.nets.aisfx import EMBEDDING_DIM, RELEASED_HEADS, CrossNet, read_checkpoint
from specfusion.features.weights import WeightsSpec, load_into, resolve_packaged_weights

#: The checkpoint inside the aisfx 0.1.2 wheel (``aisfx/models/checkpoint.pth``, 24,900,277 bytes).
AISFX_WEIGHTS = WeightsSpec(
    "aisfx/X-Sequential-CE",
    "https://pypi.org/project/aisfx/0.1.2/",
    "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5",
    "aisfx-checkpoint-499ea759.pth",
    "CC BY 4.0 (pre-trained model and paper, Ma & Lerch, ISMIR 2022); package code MIT",
    "inside the wheel aisfx-0.1.2-py2.py3-none-any.whl (SHA-256 "
    "bfe219950715af179e9a1653e7117cc1852baef267cd6596c42cad74afe1d194); pip install --no-deps aisfx==0.1.2",
)

#: aisfx's preprocessing constants (``aisfx/inference.py``, ``preprocessing.py``).
SAMPLE_RATE = 44100
N_FFT = 2048
HOP_LENGTH = 1024
N_MELS = 96
F_MIN, F_MAX = 0.0, 22050.0
BLOCK_FRAMES = 100
#: ``spec_norm='original'``: min/max of the Essentia spectrograms of all training data sets.
NORM_MIN, NORM_MAX = 0.0, 9.457798957824707


def packaged_checkpoint() -> Path | None:
    """``aisfx/models/checkpoint.pth`` of the installed wheel, found without importing the package."""
    return packaged_file("aisfx", "models", "checkpoint.pth")


def resolve_aisfx_checkpoint(*, path: str | os.PathLike | None = None) -> Path:
    """Verified checkpoint: ``path``, else the installed wheel's file, else a copy in the cache."""
    hint = "the aisfx checkpoint ships inside the aisfx wheel: run `pip install --no-deps aisfx==0.1.2` (its file aisfx/models/checkpoint.pth)"
    return resolve_packaged_weights(AISFX_WEIGHTS, path=path, packaged=packaged_checkpoint(), install_hint=hint)


def build_aisfx(
    *, weights: str | os.PathLike = "pretrained", weights_path: str | os.PathLike | None = None, seed: int = 0
):
    """The aisfx CrossNet with its weights: ``(module in eval mode on CPU, weights description)``."""
    kind = weights_kind(weights)
    path = checkpoint_file(kind, weights, weights_path, resolve=lambda: resolve_aisfx_checkpoint(path=weights_path))
    if path is None:
        net = seeded(lambda: CrossNet(RELEASED_HEADS), seed)
        return net.eval(), {"kind": "none", "seed": int(seed), "init": "aisfx reference init (Kaiming-uniform)"}
    state_dict, heads = read_checkpoint(path)
    net = seeded(lambda: CrossNet(heads), seed)  # overwritten next
    load_into(net, state_dict, source=path)
    return net.eval(), checkpoint_record(kind, path, AISFX_WEIGHTS)


def aisfx_spectrogram(y: np.ndarray) -> np.ndarray:
    """aisfx's librosa Mel spectrogram of a 44.1 kHz waveform, normalised: (frames, 96) float32."""
    import librosa

    peak = float(np.max(np.abs(y))) if y.size else 0.0
    y = y / (peak if peak > 0 else 1.0)
    spec = librosa.feature.melspectrogram(
        y=y,
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        win_length=N_FFT,
        hop_length=HOP_LENGTH,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=N_MELS,
        fmin=F_MIN,
        fmax=F_MAX,
        htk=True,
        norm=1.0,
    )
    spec = np.log10(spec * 10000.0 + 1.0)
    spec = (spec - NORM_MIN) / (NORM_MAX - NORM_MIN)
    return np.ascontiguousarray(spec.T, dtype=np.float32)


def block_spectrogram(
    spec: np.ndarray,
    *,
    block_frames: int = BLOCK_FRAMES,
    hop_frames: int = BLOCK_FRAMES // 2,
    drop_partial_block: bool = True,
) -> np.ndarray:
    """aisfx's ``blocking``: (frames, bands) -> (blocks, block_frames, bands), zero-padded at the end."""
    n = spec.shape[0]
    n_blocks = int(np.ceil((n - block_frames) / hop_frames + 1))
    if (n - block_frames) % hop_frames != 0 and drop_partial_block:
        n_blocks -= 1
    n_blocks = max(n_blocks, 1)
    padded = np.concatenate([spec, np.zeros((block_frames, spec.shape[1]), dtype=spec.dtype)])
    return np.stack([padded[i * hop_frames : i * hop_frames + block_frames] for i in range(n_blocks)])


class AisfxExtractor(Extractor):
    """aisfx: 44.1 kHz waveform -> 512-d embeddings of 100-frame blocks, pooled over blocks.

    Parameters
    ----------
    weights : {"pretrained", "none"} or path-like
        The released checkpoint (from the installed wheel, hash checked), the reference random
        initialisation from ``seed``, or a checkpoint file of the same layout.
    weights_path : path-like, optional
        A copy of the released ``checkpoint.pth`` (instead of the installed wheel's).
    seed : int
        Seed of the random initialisation for ``weights="none"``.
    block_hop : float
        Hop between blocks as a fraction of the block (aisfx's ``emb_hop_size``; 0.5 as in the paper).
    pooling : {"mean", "max", "mean+max", "mean+std"}
        Pooling of the block embeddings over time (``"mean"``: 512-d, as aisfx; the two-statistic
        choices are 1024-d).
    block_batch : int
        Blocks per network call (memory only; does not change the output).
    device : str, optional
        torch device; default :func:`~specfusion.features.extractors.base.default_device`.
    channels_last : bool
        Run the convolutions in channels-last memory format (faster on CPU for this network, see
        docs/audio_nets.md; the features agree with the plain layout to float precision).
    """

    name: ClassVar[str] = "aisfx"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and weights (the installed aisfx wheel's checkpoint, or the cache)."""
        pretrained = weights_found(
            "pretrained", AISFX_WEIGHTS, packaged=packaged_checkpoint(), how="pip install --no-deps aisfx==0.1.2"
        )
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=EMBEDDING_DIM,
            dim_rule=f"{EMBEDDING_DIM} per block; {POOLING_DIM_RULE}",
            sample_rate=SAMPLE_RATE,
            sample_rate_rule="",
            weights=(pretrained, RANDOM_WEIGHTS),
            summary="aisfx X-Sequential-CE (sound effects), blocks pooled over time",
        )

    def __init__(
        self,
        *,
        weights: str | os.PathLike = "pretrained",
        weights_path: str | os.PathLike | None = None,
        seed: int = 0,
        block_hop: float = 0.5,
        pooling: str = "mean",
        block_batch: int = 64,
        device: str | None = None,
        channels_last: bool = True,
    ):
        self.hop_frames = int(np.round(BLOCK_FRAMES * float(block_hop)))
        if not 1 <= self.hop_frames <= BLOCK_FRAMES:
            raise ConfigError(f"block_hop must be in (0, 1], got {block_hop}")
        if int(block_batch) < 1:
            raise ConfigError(f"block_batch must be at least 1, got {block_batch}")
        self.pooling = check_pooling(pooling)
        net, self.weights_info = build_aisfx(weights=weights, weights_path=weights_path, seed=seed)
        self.block_hop = self.hop_frames / BLOCK_FRAMES
        self.block_batch = int(block_batch)
        self.sample_rate = SAMPLE_RATE
        self.frame_dim = EMBEDDING_DIM
        self.dim = pooled_dim(self.pooling, EMBEDDING_DIM)
        self.seed = int(seed)
        self.device = torch_device(device)
        self.channels_last = bool(channels_last)
        self.net = place_network(net, self.device, channels_last=self.channels_last)

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """44.1 kHz mono waveform -> normalised Mel blocks, float32 (blocks, 100, 96)."""
        spec = aisfx_spectrogram(as_mono(waveform, self.name))
        return block_spectrogram(spec, hop_frames=self.hop_frames)

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Block embeddings: (n, blocks, 100, 96) -> float32 (n, blocks, 512)."""
        import torch

        batch = clip_batch(batch, self.name, "blocks", BLOCK_FRAMES, N_MELS)
        n, n_blocks = batch.shape[:2]
        blocks = np.require(batch.reshape(n * n_blocks, BLOCK_FRAMES, N_MELS), requirements=["C", "W"])
        blocks = torch.from_numpy(blocks)
        with torch.inference_mode():
            out = in_chunks(lambda x: self.net.embed(x.to(self.device)).float().cpu(), blocks, self.block_batch)
        return out.numpy().reshape(n, n_blocks, self.frame_dim)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each block in seconds: block i spans STFT frames ``i * hop .. i * hop + 99``, frame j
        centred on sample ``j * 1024`` (centred STFT)."""
        first_frames = np.arange(int(n_frames)) * self.hop_frames
        return (first_frames + (BLOCK_FRAMES - 1) / 2) * HOP_LENGTH / SAMPLE_RATE

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Clip features: the block embeddings pooled over time -> float32 (n, :attr:`dim`)."""
        return pool_frames(self.embed_frames(batch), self.pooling)

    def config(self) -> dict[str, Any]:
        """Model, weights (hash or seed) and every preprocessing constant."""
        return {
            "extractor": self.name,
            "network": "aisfx X-Sequential-CE (CrossNet.embedding_net)",
            "layer": "embedding_net output (mean over frequency, max over time) per block",
            "frame_dim": self.frame_dim,
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": dict(self.weights_info),
            "front_end": {
                "spectrogram": "librosa (aisfx spectrogram_librosa)",
                "peak_normalise": True,
                "n_fft": N_FFT,
                "hop_length": HOP_LENGTH,
                "n_mels": N_MELS,
                "fmin": F_MIN,
                "fmax": F_MAX,
                "htk": True,
                "mel_norm": 1.0,
                "power": 2.0,
                "center": True,
                "pad_mode": "constant",
                "compression": "log10(10000 * S + 1)",
                "normalisation": ["original", NORM_MIN, NORM_MAX],
                "layout": "time x mel",
            },
            "block_frames": BLOCK_FRAMES,
            "block_hop": self.block_hop,
            "drop_partial_block": True,
            "sample_rate": self.sample_rate,
        }
