"""Helpers shared by the audio-pretrained extractors (``panns``, ``openl3``, ``aisfx``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError, WeightsError


def weights_kind(weights) -> str:
    """``"pretrained"``, ``"none"`` (random initialisation) or ``"file"`` (a checkpoint path)."""
    if isinstance(weights, (str, os.PathLike)) and str(weights) in ("pretrained", "none"):
        return str(weights)
    if isinstance(weights, (str, os.PathLike)) and str(weights):
        return "file"
    raise ConfigError(f"weights must be 'pretrained', 'none' or a checkpoint file, got {weights!r}")


def own_checkpoint(weights, weights_path) -> Path:
    """The file given as ``weights=FILE``; it must exist, and ``weights_path`` must not be given too."""
    if weights_path is not None:
        raise ConfigError("give either weights=FILE or weights_path=FILE, not both")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (weights= takes 'pretrained', 'none' or a file)")
    return path


def seeded(build: Callable, seed: int):
    """Call ``build()`` and ``reset_parameters()`` on its result with torch seeded by ``seed``.

    Runs inside :func:`torch.random.fork_rng`, so torch's global random state is restored afterwards
    and the same seed always gives the same network.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = build()
        net.reset_parameters()
    return net


def as_mono(waveform, name: str) -> np.ndarray:
    """``waveform`` as a 1-D float32 array; :class:`ConfigError` for anything else."""
    y = np.asarray(waveform, dtype=np.float32)
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 1 or y.size == 0:
        raise ConfigError(f"{name} expects one mono waveform (1-D, non-empty), got shape {y.shape}")
    return y


def in_chunks(fn: Callable, x, chunk: int):
    """Concatenate ``fn`` applied to consecutive slices of ``x`` (first axis) of at most ``chunk`` rows."""
    import torch

    if x.shape[0] <= chunk:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
