"""OpenL3 embeddings (Cramer et al., 2019) with the paper's choice: environmental content, mel256.

Registered name: ``openl3``. A clip at 48 kHz is cut into 1-s frames every ``hop_s`` seconds (default
0.1 s), openl3-style: with ``center=True`` half a frame of zeros is prepended so the first frame is
centred on the first sample, and the end is zero-padded so every sample is covered. Each frame goes
through the L3-Net audio network (:mod:`specfusion.features.nets.openl3`, kapre 0.1.4 Mel front end included)
and gives a 512- or 6144-d embedding; the clip feature pools them over time (``pooling=``: ``"mean"``
by default, ``"max"``, ``"mean+max"`` or ``"mean+std"`` -- the last two twice the dimension;
:mod:`specfusion.features.extractors.pooling`).

:meth:`OpenL3Extractor.prepare` does the framing on the CPU (returns (frames, 48000));
:meth:`~OpenL3Extractor.embed` runs spectrogram + network on all frames of a batch, in chunks of
``frame_batch`` frames, and pools per clip; :meth:`~OpenL3Extractor.embed_frames` returns the frame
embeddings themselves.

Weights (``weights=``): ``"pretrained"`` -- the openl3 project's released Keras weights of the
environmental mel256 audio model, read with h5py (no TensorFlow): ``weights_path=`` a local copy
(``.h5`` or the released ``.h5.gz``), else the file of an installed ``openl3`` package, else the
cache, else a download; ``"none"`` -- He-normal random initialisation from ``seed``; or a path to
any weight file of the same layout.
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
from specfusion.features.nets.openl3 import (
    FRAME_SAMPLES,
    N_DFT,
    N_HOP,
    N_MELS,
    POOLING,
    SAMPLE_RATE,
    L3AudioNet,
    keras_h5_state_dict,
)
from specfusion.features.weights import WeightsSpec, cache_dir, load_into, resolve_weights

#: The released Keras weights of the environmental mel256 audio model (openl3 <= 0.3.x, kapre 0.1.4,
#: the front end the network was trained with). The project publishes no digest and none could be
#: found, and the URL names a branch, not a commit: specfusion therefore refuses to download it
#: (:func:`specfusion.features.weights.is_pinned`); pass a local copy (``weights_path=`` / ``--weights FILE``)
#: or install the ``openl3`` package. The SHA-256 of the file actually used is recorded in ``config()``.
OPENL3_WEIGHTS = WeightsSpec(
    "openl3/audio-mel256-env",
    "https://github.com/marl/openl3/raw/models/openl3_audio_mel256_env-v0_2_0.h5.gz",
    None,
    "openl3_audio_mel256_env-v0_2_0.h5.gz",
    "MIT (marl/openl3, code and models)",
    "OpenL3 audio model, environmental content (AudioSet videos), mel256 input; Keras HDF5, gzip-compressed. "
    "The v0_4_0 file of openl3 >= 0.4 (same URL with -v0_4_0) holds the same network without the kapre "
    "front-end layer and loads too.",
)
#: File name of the decompressed weights inside an installed ``openl3`` package.
PACKAGE_FILE = "openl3_audio_mel256_env.h5"


def packaged_weights_path() -> Path | None:
    """``openl3_audio_mel256_env.h5`` of an installed ``openl3`` package (found without importing it)."""
    return packaged_file("openl3", PACKAGE_FILE)


def resolve_openl3_weights(*, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Local file of the released weights: ``path``, an installed openl3's file, the cache, or a download."""
    if path is None:
        packaged = packaged_weights_path()
        if packaged is not None and not (cache_dir() / OPENL3_WEIGHTS.filename).is_file():
            return packaged
    return resolve_weights(OPENL3_WEIGHTS, path=path, download=download)


def build_l3net(
    *,
    embedding_size: int = 512,
    weights: str | os.PathLike = "pretrained",
    weights_path: str | os.PathLike | None = None,
    seed: int = 0,
    download: bool = True,
):
    """L3-Net (mel256) with its weights: ``(module in eval mode on CPU, weights description)``."""
    if embedding_size not in POOLING:
        raise ConfigError(f"embedding_size must be one of {sorted(POOLING)}, got {embedding_size!r}")
    kind = weights_kind(weights)
    path = checkpoint_file(
        kind, weights, weights_path, resolve=lambda: resolve_openl3_weights(path=weights_path, download=download)
    )
    if path is None:
        net = seeded(lambda: L3AudioNet(embedding_size=embedding_size), seed)
        return net.eval(), {"kind": "none", "seed": int(seed), "init": "He-normal convolutions, unit batch norms"}
    state_dict = keras_h5_state_dict(path)
    net = seeded(lambda: L3AudioNet(embedding_size=embedding_size), seed)  # overwritten next
    load_into(net, state_dict, source=path)
    return net.eval(), checkpoint_record(kind, path, OPENL3_WEIGHTS)  # no published digest: a file stays "file"


def frame_audio(
    y: np.ndarray, *, hop_samples: int, center: bool = True, frame_samples: int = FRAME_SAMPLES
) -> np.ndarray:
    """openl3's framing: (samples,) -> (frames, frame_samples), float32.

    ``center`` prepends ``frame_samples // 2`` zeros; the end is zero-padded so that the last frame
    reaches (or passes) the last sample; a clip shorter than one frame gives one zero-padded frame.
    """
    if center:
        y = np.pad(y, (frame_samples // 2, 0))
    if y.size <= frame_samples:
        n_frames = 1
    else:
        n_frames = 1 + int(np.ceil((y.size - frame_samples) / hop_samples))
    total = (n_frames - 1) * hop_samples + frame_samples
    y = np.pad(y, (0, total - y.size))
    frames = np.lib.stride_tricks.sliding_window_view(y, frame_samples)[::hop_samples][:n_frames]
    return np.array(frames, dtype=np.float32, order="C")  # a writable copy, not a view


class OpenL3Extractor(Extractor):
    """OpenL3 (env, mel256): waveform at 48 kHz -> pooled frame embeddings.

    Parameters
    ----------
    weights : {"pretrained", "none"} or path-like
        See the module docstring.
    weights_path : path-like, optional
        Local copy of the released weight file (``.h5`` or ``.h5.gz``).
    seed : int
        Seed of the random initialisation for ``weights="none"``.
    embedding_size : {512, 6144}
        Frame embedding size.
    hop_s : float
        Hop between 1-s frames in seconds (openl3's default 0.1).
    center : bool
        Centre the first frame on the first sample (openl3's default).
    pooling : {"mean", "max", "mean+max", "mean+std"}
        Clip-level pooling over frames (:func:`specfusion.features.extractors.pooling.pool_frames`).
    frame_batch : int
        Frames per network call (memory only; does not change the output).
    device : str, optional
        torch device; default :func:`~specfusion.features.extractors.base.default_device`.
    channels_last : bool
        Run the convolutions in channels-last memory format (faster on CPU for this network, see
        docs/audio_nets.md; the features agree with the plain layout to float precision).
    """

    name: ClassVar[str] = "openl3"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and weights (an installed openl3 package's file, or the cache)."""
        pretrained = weights_found(
            "pretrained",
            OPENL3_WEIGHTS,
            packaged=packaged_weights_path(),
            how="pip install openl3 (or pass weights_path=)",
        )
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=512,
            dim_rule=f"embedding_size (512, default, or 6144); {POOLING_DIM_RULE}",
            sample_rate=SAMPLE_RATE,
            sample_rate_rule="",
            weights=(pretrained, RANDOM_WEIGHTS),
            summary="OpenL3 environmental mel256 (AudioSet videos), 1-s frames pooled over time",
        )

    def __init__(
        self,
        *,
        weights: str | os.PathLike = "pretrained",
        weights_path: str | os.PathLike | None = None,
        seed: int = 0,
        embedding_size: int = 512,
        hop_s: float = 0.1,
        center: bool = True,
        pooling: str = "mean",
        frame_batch: int = 32,
        device: str | None = None,
        channels_last: bool = True,
    ):
        check_pooling(pooling)
        self.hop_samples = int(round(float(hop_s) * SAMPLE_RATE))
        if self.hop_samples < 1:
            raise ConfigError(f"hop_s must be positive, got {hop_s}")
        if int(frame_batch) < 1:
            raise ConfigError(f"frame_batch must be at least 1, got {frame_batch}")
        net, self.weights_info = build_l3net(
            embedding_size=int(embedding_size), weights=weights, weights_path=weights_path, seed=seed
        )
        self.embedding_size = int(embedding_size)
        self.hop_s = self.hop_samples / SAMPLE_RATE
        self.center = bool(center)
        self.pooling = pooling
        self.frame_batch = int(frame_batch)
        self.sample_rate = SAMPLE_RATE
        self.dim = pooled_dim(pooling, self.embedding_size)
        self.seed = int(seed)
        self.device = torch_device(device)
        self.channels_last = bool(channels_last)
        self.net = place_network(net, self.device, channels_last=self.channels_last)

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float32 waveform at 48 kHz -> 1-s frames, float32 (frames, 48000)."""
        return frame_audio(as_mono(waveform, self.name), hop_samples=self.hop_samples, center=self.center)

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Frame embeddings of a batch of prepared clips: (n, frames, 48000) -> float32 (n, frames, size)."""
        import torch

        batch = clip_batch(batch, self.name, "frames", FRAME_SAMPLES)
        n, n_frames = batch.shape[:2]
        frames = np.require(batch.reshape(n * n_frames, FRAME_SAMPLES), requirements=["C", "W"])
        frames = torch.from_numpy(frames)
        with torch.inference_mode():
            out = in_chunks(lambda x: self.net(x.to(self.device)).float().cpu(), frames, self.frame_batch)
        return out.numpy().reshape(n, n_frames, self.embedding_size)

    @property
    def frame_dim(self) -> int:
        """Length of each frame embedding (:attr:`embedding_size`)."""
        return self.embedding_size

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each 1-s frame in seconds: ``i * hop_s`` (``center=True``), else ``i * hop_s + 0.5``."""
        offset = 0.0 if self.center else FRAME_SAMPLES / 2 / SAMPLE_RATE
        return np.arange(int(n_frames)) * self.hop_samples / SAMPLE_RATE + offset

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Clip features: the frame embeddings pooled over time -> float32 (n, :attr:`dim`)."""
        return pool_frames(self.embed_frames(batch), self.pooling)

    def config(self) -> dict[str, Any]:
        """Network, content type, embedding size, framing, pooling, weights (hash or seed), front end."""
        return {
            "extractor": self.name,
            "network": "L3-Net audio (OpenL3)",
            "content_type": "env",
            "input_repr": "mel256",
            "embedding_size": self.embedding_size,
            "layer": f"audio_embedding_layer, max-pooled {POOLING[self.embedding_size]} and flattened",
            "frame_s": FRAME_SAMPLES / SAMPLE_RATE,
            "hop_s": self.hop_s,
            "center": self.center,
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": dict(self.weights_info),
            "front_end": {
                "kind": "kapre 0.1.4 Melspectrogram",
                "n_dft": N_DFT,
                "n_hop": N_HOP,
                "n_mels": N_MELS,
                "window": "hann (periodic)",
                "padding": "same (zeros)",
                "htk": True,
                "mel_norm": "slaney",
                "fmin": 0.0,
                "fmax": SAMPLE_RATE / 2,
                "power_melgram": 1.0,
                "db": "10*log10(max(x,1e-10)) - frame max, floor -80 dB",
            },
            "sample_rate": self.sample_rate,
        }
