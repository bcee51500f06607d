"""Temporal pooling of frame embeddings into one clip feature, shared by the frame-based audio extractors.

``aisfx``, ``panns_cnn14``, ``openl3``, ``birdnet``, ``soundnet`` and ``yamnet`` compute one embedding per
frame (block, window, time step or patch; :meth:`embed_frames`, shape ``(n, frames, d)``) and pool them over time
with :func:`pool_frames`:

=============  ====================================  =========
``pooling``    clip feature                          length
=============  ====================================  =========
``"mean"``     mean over frames                      ``d``
``"max"``      maximum over frames                   ``d``
``"mean+max"`` mean, then maximum (concatenated)     ``2 d``
``"mean+std"`` mean, then standard deviation         ``2 d``
=============  ====================================  =========

The standard deviation is the population one (``ddof=0``): 0 for a clip of one frame.
"""

from __future__ import annotations

import numpy as np

from specfusion.errors import ConfigError

#: The pooling choices, in the order the docs list them.
POOLINGS: tuple[str, ...] = ("mean", "max", "mean+max", "mean+std")
#: How :func:`pooled_dim` changes the dimension, for listings (``Extractor.describe``).
POOLING_DIM_RULE = "x2 with pooling mean+max or mean+std"

_STATISTICS = {
    "mean": lambda x: x.mean(axis=1),
    "max": lambda x: x.max(axis=1),
    "std": lambda x: x.std(axis=1),
}


def check_pooling(pooling: str, choices: tuple[str, ...] = POOLINGS) -> str:
    """``pooling`` if it is one of ``choices``, else :class:`ConfigError` naming them."""
    if pooling not in choices:
        raise ConfigError(f"pooling must be one of {', '.join(map(repr, choices))}, got {pooling!r}")
    return pooling


def pooled_dim(pooling: str, frame_dim: int) -> int:
    """Length of the clip feature that ``pooling`` makes from frame embeddings of length ``frame_dim``."""
    return len(check_pooling(pooling).split("+")) * int(frame_dim)


def pool_frames(frames: np.ndarray, pooling: str) -> np.ndarray:
    """Pool frame embeddings over time.

    Parameters
    ----------
    frames : ndarray, shape (n, frames, d)
        Frame embeddings of ``n`` clips (at least one frame each).
    pooling : {"mean", "max", "mean+max", "mean+std"}
        See the module docstring.

    Returns
    -------
    ndarray, float32, shape (n, :func:`pooled_dim`)
        The statistics concatenated in the order of the name (``"mean+max"``: mean first).
    """
    check_pooling(pooling)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[1] < 1:
        raise ConfigError(f"pooling needs frame embeddings of shape (n, frames >= 1, d), got {frames.shape}")
    parts = [_STATISTICS[name](frames) for name in pooling.split("+")]
    return np.concatenate(parts, axis=1).astype(np.float32)
