"""The HEAR 2021 common API over any registered extractor.

HEAR (Holistic Evaluation of Audio Representations, NeurIPS 2021) evaluates an embedding model through
three functions; this module offers them for every extractor of :mod:`specfusion.features.extractors`::

    from specfusion import hear
    model = hear.load_model("aisfx")                                   # any registered name + options
    audio = torch.rand(2, 3 * model.sample_rate) * 2 - 1               # (n_sounds, n_samples)
    scene = hear.get_scene_embeddings(audio, model)                    # (2, model.scene_embedding_size)
    frames, ms = hear.get_timestamp_embeddings(audio, model)           # (2, T, model.timestamp_embedding_size), (2, T)

Conventions of the spec (hear-baseline ``naive.py``, hear-validator):

* ``audio`` is a 2-D float tensor ``(n_sounds, n_samples)`` of mono sounds in [-1, 1] at
  ``model.sample_rate``, all of the same length; anything else raises :class:`ValueError`
  (:class:`~specfusion.errors.ConfigError`);
* embeddings are float32 tensors on ``audio``'s device; timestamps are the centres of the frames in
  **milliseconds** from the start of the sound, shape ``(n_sounds, n_timestamps)``;
* the model is a :class:`torch.nn.Module` with the int attributes ``sample_rate``,
  ``scene_embedding_size`` and ``timestamp_embedding_size``.

Scene embeddings are the extractor's clip features (:meth:`~specfusion.features.extractors.base.Extractor.embed`,
the same vectors a feature store holds); timestamp embeddings are its
:meth:`~specfusion.features.extractors.base.Extractor.embed_frames` with
:meth:`~specfusion.features.extractors.base.Extractor.frame_times`. A clip-level extractor (the image CNNs) gives
one frame, placed at the centre of the sound; so does a frame-based extractor whose single frame is
longer than the sound (zero-padded), e.g. aisfx on sounds shorter than one 2.3-s block.

Difference from the spec: ``load_model``'s first argument is the extractor's registered name, not a
checkpoint path; a checkpoint goes in the extractor's own option (e.g. ``weights=FILE``). The network
runs on the extractor's ``device`` option; :meth:`torch.nn.Module.to` on the model does not move it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from specfusion.errors import ConfigError
from specfusion.features.extractors.base import Extractor, get_extractor

#: HEAR's accepted input rates (hear-validator); other rates work here but are not HEAR-valid.
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)


class HearModel(torch.nn.Module):
    """A registered extractor behind HEAR's model attributes.

    Parameters
    ----------
    extractor : Extractor
        A built extractor.
    batch_size : int
        Sounds per network call.

    Attributes
    ----------
    sample_rate : int
        Rate (Hz) the audio must have: the extractor's.
    scene_embedding_size : int
        The extractor's feature length (:attr:`~specfusion.features.extractors.base.Extractor.dim`).
    timestamp_embedding_size : int
        Length of a frame embedding (:attr:`~specfusion.features.extractors.base.Extractor.frame_dim`).
    extractor : Extractor
    """

    def __init__(self, extractor: Extractor, *, batch_size: int = 8):
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.extractor = extractor
        self.batch_size = int(batch_size)
        self.sample_rate = int(extractor.sample_rate)
        self.scene_embedding_size = int(extractor.dim)
        self.timestamp_embedding_size = int(extractor.frame_dim)

    def forward(self, audio):
        """The scene embeddings of ``audio`` (see :func:`get_scene_embeddings`)."""
        return get_scene_embeddings(audio, self)

    def extra_repr(self) -> str:
        return f"extractor={self.extractor.name!r}, sample_rate={self.sample_rate}"


def load_model(name: str = "aisfx", *, batch_size: int = 8, **options: Any) -> HearModel:
    """HEAR ``load_model``: the extractor registered as ``name``, built with ``options``.

    Parameters
    ----------
    name : str
        A registered extractor (:func:`~specfusion.features.extractors.available_extractors`).
    batch_size : int
        Sounds per network call (memory only).
    **options
        The extractor's keyword options, e.g. ``weights="none"``, ``device="cpu"``.

    Returns
    -------
    HearModel
    """
    return HearModel(get_extractor(name, **options), batch_size=batch_size)


def _check(audio, model) -> np.ndarray:
    if not isinstance(model, HearModel):
        raise ConfigError(f"model must come from specfusion.hear.load_model, got {type(model).__name__}")
    if not isinstance(audio, torch.Tensor):
        raise ConfigError(f"audio must be a torch tensor (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        raise ConfigError(
            f"audio input tensor must be 2D with shape (n_sounds, n_samples), got shape {tuple(audio.shape)}"
        )
    if audio.shape[1] == 0:
        raise ConfigError("audio has no samples")
    return audio.detach().to("cpu", torch.float32).numpy()


def _prepared_batches(sounds: np.ndarray, model: HearModel):
    """Prepared inputs of consecutive sounds, stacked in batches of ``model.batch_size``."""
    for start in range(0, len(sounds), model.batch_size):
        yield np.stack([model.extractor.prepare(y) for y in sounds[start : start + model.batch_size]])


def get_scene_embeddings(audio, model: HearModel):
    """HEAR ``get_scene_embeddings``: one embedding per sound.

    Parameters
    ----------
    audio : torch.Tensor, shape (n_sounds, n_samples)
        Mono sounds at ``model.sample_rate``.
    model : HearModel

    Returns
    -------
    torch.Tensor, float32, shape (n_sounds, model.scene_embedding_size)
    """
    sounds = _check(audio, model)
    dim = model.scene_embedding_size
    chunks = [np.asarray(model.extractor.embed(batch), dtype=np.float32) for batch in _prepared_batches(sounds, model)]
    out = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return torch.from_numpy(np.ascontiguousarray(out)).to(audio.device)


def get_timestamp_embeddings(audio, model: HearModel):
    """HEAR ``get_timestamp_embeddings``: embeddings at regular times, with the times in milliseconds.

    Parameters
    ----------
    audio : torch.Tensor, shape (n_sounds, n_samples)
        Mono sounds at ``model.sample_rate``.
    model : HearModel

    Returns
    -------
    embeddings : torch.Tensor, float32, shape (n_sounds, n_timestamps, model.timestamp_embedding_size)
    timestamps : torch.Tensor, float32, shape (n_sounds, n_timestamps)
        Centre of every frame in milliseconds from the start of the sound.
    """
    sounds = _check(audio, model)
    chunks = [
        np.asarray(model.extractor.embed_frames(batch), dtype=np.float32) for batch in _prepared_batches(sounds, model)
    ]
    if not chunks:
        dim = model.timestamp_embedding_size
        return torch.zeros((0, 0, dim), device=audio.device), torch.zeros((0, 0), device=audio.device)
    frames = np.concatenate(chunks)
    n_frames = frames.shape[1]
    duration = sounds.shape[1] / model.sample_rate
    times = np.asarray(model.extractor.frame_times(n_frames), dtype=np.float64)
    if n_frames == 1 and not times[0] <= duration:  # one clip-level (nan) or zero-padded frame
        times = np.array([duration / 2])
    ms = np.broadcast_to(times * 1000.0, (len(sounds), n_frames)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(frames)).to(audio.device), torch.from_numpy(ms.copy()).to(audio.device)
