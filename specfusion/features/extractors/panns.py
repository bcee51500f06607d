"""PANNs CNN14 embeddings (Kong et al., 2020; paper section 3.3, "Pre-trained audio models").

Registered name: ``panns_cnn14`` -- the 2048-d ``fc1`` activation (``ReLU(fc1(max + mean pooled))``)
of CNN14 trained on AudioSet, in eval mode. ``variant="32k"`` (default; ``Cnn14_mAP=0.431.pth``,
32 kHz input, 1024/320 STFT, 64 Mel bands 50-14 000 Hz) or ``variant="16k"``
(``Cnn14_16k_mAP=0.438.pth``, 16 kHz, 512/160, 50-8 000 Hz).

Temporal pooling (``pooling=``): ``"fc1"`` (default) is the network's own clip head above;
``"mean"``, ``"max"``, ``"mean+max"`` or ``"mean+std"`` instead pool the frame features of
:meth:`~PannsCnn14Extractor.embed_frames` (the ``conv_block6`` map averaged over frequency, 2048-d
per 32 log-Mel frames) with :func:`specfusion.features.extractors.pooling.pool_frames` (no ``fc1``).

:meth:`PannsCnn14Extractor.prepare` only checks the waveform and zero-pads clips shorter than
32 log-Mel frames (~0.31 s; the five 2x2 poolings need them); the log-Mel front end is part of the
network and runs in :meth:`~PannsCnn14Extractor.embed`, on the GPU when there is one, with the
checkpoint's own STFT and Mel matrices.

Weights (``weights=``): ``"pretrained"`` (the official Zenodo file: ``weights_path=`` a local copy,
else the cache, else a download, SHA-256 checked; see :mod:`specfusion.features.weights`), ``"none"`` (the
reference random initialisation from ``seed``), or a path to any checkpoint of the same layout.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError
from specfusion.features.extractors._audio_nets import as_mono, waveform_batch
from specfusion.features.extractors._weights import checkpoint_file, checkpoint_record, seeded, weights_kind
from specfusion.features.extractors.base import (
    RANDOM_WEIGHTS,
    Extractor,
    ExtractorInfo,
    place_network,
    torch_device,
    weights_found,
)
from specfusion.features.extractors.pooling import POOLING_DIM_RULE, POOLINGS, check_pooling, pool_frames, pooled_dim
from specfusion.features.nets.panns import EMBEDDING_DIM, FRONT_ENDS, MIN_FRAMES, Cnn14
from specfusion.features.weights import WeightsSpec, load_into, load_state_dict, resolve_weights

_ZENODO = "https://zenodo.org/record/3987831/files/"
_LICENCE = "CC BY 4.0 (weights, Zenodo record 3987831); model code MIT (qiuqiangkong/audioset_tagging_cnn)"

#: The official checkpoints. SHA-256 digests as recorded by several independent users of the files
#: (Zenodo publishes MD5 only: 541141fa2ee191a88f24a3219fff024e and 362fc5ff18f1d6ad2f6d464b45893f2c).
PANNS_WEIGHTS: dict[str, WeightsSpec] = {
    "32k": WeightsSpec(
        "panns_cnn14/audioset",
        _ZENODO + "Cnn14_mAP%3D0.431.pth?download=1",
        "0dc499e40e9761ef5ea061ffc77697697f277f6a960894903df3ada000e34b31",
        "Cnn14_mAP=0.431.pth",
        _LICENCE,
        "PANNs Cnn14, AudioSet mAP 0.431, 32 kHz (327,428,481 bytes; Zenodo MD5 541141fa2ee191a88f24a3219fff024e)",
    ),
    "16k": WeightsSpec(
        "panns_cnn14_16k/audioset",
        _ZENODO + "Cnn14_16k_mAP%3D0.438.pth?download=1",
        "e2ee543a27919542c2ea03eabaa70b24dcd4e6c8e05621de6b67a94e4c5058e6",
        "Cnn14_16k_mAP=0.438.pth",
        _LICENCE,
        "PANNs Cnn14_16k, AudioSet mAP 0.438, 16 kHz (Zenodo MD5 362fc5ff18f1d6ad2f6d464b45893f2c)",
    ),
}

#: Network name of each variant in the reference code.
NETWORK_NAMES = {"32k": "Cnn14", "16k": "Cnn14_16k"}
#: ``pooling`` choices: the network's own ``fc1`` head, or a pooling of the frame features.
PANNS_POOLINGS = ("fc1", *POOLINGS)


def checkpoint_safe_globals() -> list:
    """numpy types the official checkpoints may pickle besides tensors, and nothing else.

    Besides ``"model"``, the released files keep the training sampler's state (``"sampler"``: lists
    of int64 index arrays and ints, see ``utils/data_generator.py`` of audioset_tagging_cnn). Plain
    numpy arrays and scalars are rebuilt by ``_reconstruct``/``scalar`` from a ``dtype``; both the
    numpy 1 (``numpy.core``) and numpy 2 (``numpy._core``) names are allowed.
    """
    core = getattr(np, "_core", None) or np.core
    allowed: list = [np.ndarray, np.dtype]
    for func in (core.multiarray._reconstruct, core.multiarray.scalar):
        allowed += [func, (func, f"numpy.core.multiarray.{func.__name__}")]
    if hasattr(np, "dtypes"):
        allowed += [np.dtypes.Int64DType, np.dtypes.Int32DType, np.dtypes.Float64DType, np.dtypes.Float32DType]
    return allowed


def build_cnn14(
    variant: str = "32k",
    *,
    weights: str | os.PathLike = "pretrained",
    weights_path: str | os.PathLike | None = None,
    seed: int = 0,
    download: bool = True,
):
    """CNN14 of ``variant`` with its weights: ``(module in eval mode on CPU, weights description)``.

    Parameters
    ----------
    variant : {"32k", "16k"}
        Which checkpoint / front end.
    weights : {"pretrained", "none"} or path-like
        Official AudioSet weights, the reference random initialisation, or a checkpoint file in the
        official layout (``{"model": state_dict, ...}``), loaded strictly without a hash check.
    weights_path : path-like, optional
        Local copy of the official file (``weights="pretrained"`` only); checked against its SHA-256.
    seed : int
        Seed of the random initialisation (``weights="none"``).
    download : bool
        Whether a missing official file may be downloaded into the cache.

    Returns
    -------
    module : specfusion.features.nets.panns.Cnn14
    description : dict
        ``kind`` and ``file`` + ``sha256`` + ``source``, or ``seed`` + ``init``.
    """
    if variant not in FRONT_ENDS:
        raise ConfigError(f"variant must be one of {', '.join(FRONT_ENDS)}, got {variant!r}")
    kind = weights_kind(weights)
    spec = PANNS_WEIGHTS[variant]
    path = checkpoint_file(
        kind, weights, weights_path, resolve=lambda: resolve_weights(spec, path=weights_path, download=download)
    )
    if path is None:
        net = seeded(lambda: Cnn14(FRONT_ENDS[variant]), seed)  # global RNG untouched
        return net.eval(), {"kind": "none", "seed": int(seed), "init": "Cnn14 reference init (Xavier-uniform)"}
    state_dict = load_state_dict(path, key="model", extra_safe_globals=checkpoint_safe_globals())
    net = seeded(lambda: Cnn14(FRONT_ENDS[variant]), seed)  # overwritten next; global RNG untouched
    load_into(net, state_dict, source=path)
    return net.eval(), checkpoint_record(kind, path, spec)


class PannsCnn14Extractor(Extractor):
    """PANNs CNN14: waveform -> 2048-d ``fc1`` embedding.

    Parameters
    ----------
    weights : {"pretrained", "none"} or path-like
        See :func:`build_cnn14`.
    weights_path : path-like, optional
        Local copy of the official checkpoint.
    seed : int
        Seed of the random initialisation for ``weights="none"``.
    variant : {"32k", "16k"}
        ``Cnn14`` at 32 kHz (default) or ``Cnn14_16k``.
    pooling : {"fc1", "mean", "max", "mean+max", "mean+std"}
        ``"fc1"``: the 2048-d ``fc1`` embedding (the network's max + mean over time); otherwise the
        frame features of :meth:`embed_frames` pooled over time (2048-d or 4096-d).
    device : str, optional
        torch device; default :func:`~specfusion.features.extractors.base.default_device`.
    channels_last : bool
        Run the convolutions in channels-last memory format (faster on CPU for this network, see
        docs/audio_nets.md; the features agree with the plain layout to float precision).
    """

    name: ClassVar[str] = "panns_cnn14"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and weights (the Zenodo file of each variant, looked for in the cache)."""
        pretrained = tuple(
            weights_found("pretrained", spec, options=f"variant={variant}") for variant, spec in PANNS_WEIGHTS.items()
        )
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=EMBEDDING_DIM,
            dim_rule=f"{EMBEDDING_DIM} with pooling fc1 (default), mean or max; {POOLING_DIM_RULE}",
            sample_rate=FRONT_ENDS["32k"].sample_rate,
            sample_rate_rule=f"variant=16k: {FRONT_ENDS['16k'].sample_rate}",
            weights=(*pretrained, RANDOM_WEIGHTS),
            summary="PANNs CNN14 (AudioSet), fc1 embedding",
        )

    def __init__(
        self,
        *,
        weights: str | os.PathLike = "pretrained",
        weights_path: str | os.PathLike | None = None,
        seed: int = 0,
        variant: str = "32k",
        pooling: str = "fc1",
        device: str | None = None,
        channels_last: bool = True,
    ):
        self.pooling = check_pooling(pooling, PANNS_POOLINGS)
        net, self.weights_info = build_cnn14(variant, weights=weights, weights_path=weights_path, seed=seed)
        self.variant = variant
        self.front_end = FRONT_ENDS[variant]
        self.sample_rate = self.front_end.sample_rate
        self.frame_dim = EMBEDDING_DIM
        self.dim = EMBEDDING_DIM if self.pooling == "fc1" else pooled_dim(self.pooling, EMBEDDING_DIM)
        self.seed = int(seed)
        self.device = torch_device(device)
        self.channels_last = bool(channels_last)
        self.net = place_network(net, self.device, channels_last=self.channels_last)

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float32 waveform at :attr:`sample_rate`, zero-padded to at least 32 frames."""
        y = as_mono(waveform, self.name)
        short = self.front_end.min_samples - y.size
        return np.pad(y, (0, short)) if short > 0 else y

    def _forward(self, batch: np.ndarray, method: str):
        import torch

        batch = waveform_batch(batch, self.name, self.front_end.min_samples)
        with torch.inference_mode():
            out = getattr(self.net, method)(torch.from_numpy(batch).to(self.device))
        return out.float().cpu().numpy()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Batch of equal-length prepared waveforms (n, samples) -> float32 (n, :attr:`dim`)."""
        if self.pooling == "fc1":
            return self._forward(batch, "embed")
        return pool_frames(self.embed_frames(batch), self.pooling)

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Time-varying features before pooling: (n, samples) -> float32 (n, frames, 2048).

        One vector per 32 log-Mel frames (320 ms at either rate); the conv_block6 output averaged
        over frequency.
        """
        return np.ascontiguousarray(self._forward(batch, "feature_map").transpose(0, 2, 1))

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each step of :meth:`embed_frames` in seconds: step i pools log-Mel frames
        ``32 i .. 32 i + 31`` (five 2x2 poolings), frame j centred on sample ``j * hop_size``."""
        steps = np.arange(int(n_frames)) * MIN_FRAMES
        return (steps + (MIN_FRAMES - 1) / 2) * self.front_end.hop_size / self.sample_rate

    def config(self) -> dict[str, Any]:
        """Network, layer, weights (hash or seed), front end and input rate."""
        return {
            "extractor": self.name,
            "network": NETWORK_NAMES[self.variant],
            "variant": self.variant,
            "layer": (
                "fc1 after ReLU (max + mean pooled over time of conv_block6, mean over frequency)"
                if self.pooling == "fc1"
                else "conv_block6, mean over frequency, per 32 log-Mel frames"
            ),
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": dict(self.weights_info),
            "front_end": self.front_end.as_dict(),
            "min_samples": self.front_end.min_samples,
            "sample_rate": self.sample_rate,
        }
