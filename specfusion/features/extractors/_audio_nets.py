"""Helpers shared by the audio-pretrained extractors: their input waveforms and batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from specfusion.errors import ConfigError


def as_mono(waveform, name: str) -> np.ndarray:
    """``waveform`` as a 1-D float32 array; :class:`ConfigError` for anything else."""
    y = np.asarray(waveform, dtype=np.float32)
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 1 or y.size == 0:
        raise ConfigError(f"{name} expects one mono waveform (1-D, non-empty), got shape {y.shape}")
    return y


def clip_batch(batch, name: str, parts: str, *shape: int) -> np.ndarray:
    """A batch of clips prepared as ``(n, parts, *shape)`` (``parts``: frames, windows ...), as float32.

    Raises
    ------
    ConfigError
        Another shape, named in the message with what ``name`` expects.
    """
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != 2 + len(shape) or batch.shape[2:] != shape:
        raise ConfigError(
            f"{name} expects a batch of prepared clips (n, {parts}, {', '.join(map(str, shape))}), "
            f"got shape {batch.shape}"
        )
    return batch


def waveform_batch(batch, name: str, min_samples: int) -> np.ndarray:
    """A batch of equal-length prepared waveforms ``(n, samples >= min_samples)``, as float32.

    Raises
    ------
    ConfigError
        Another shape, or waveforms shorter than ``min_samples``.
    """
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim != 2 or batch.shape[1] < min_samples:
        raise ConfigError(
            f"{name} expects a batch of prepared waveforms (n, samples >= {min_samples}), got shape {batch.shape}"
        )
    return batch


def in_chunks(fn: Callable, x, chunk: int):
    """Concatenate ``fn`` applied to consecutive slices of ``x`` (first axis) of at most ``chunk`` rows."""
    import torch

    if x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
