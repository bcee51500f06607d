"""Audio input: read any WAV/FLAC/OGG, resample with soxr, apply a channel policy, pad or crop.

Every problem with a file raises :class:`~specfusion.errors.AudioError` naming the file and the reason;
the caller decides whether to skip-and-report or stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from specfusion.errors import AudioError, ConfigError

ChannelPolicy = Literal["mean", "each"] | int

#: The shortest signal accepted by default: one analysis window of the paper's spectrogram (0.32 s).
MIN_SECONDS = 0.32


def audio_info(path) -> sf._SoundFileInfo:
    """Header information (rate, channels, frames, subtype) without decoding; AudioError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from None


def _read(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from None
    return data.T, sr  # (channels, samples)


def _apply_channel_policy(y: np.ndarray, channels: ChannelPolicy, path: Path) -> np.ndarray:
    if channels == "mean":
        return y.mean(axis=0, keepdims=True)
    if channels == "each":
        return y
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        if not 0 <= channels < y.shape[0]:
            raise AudioError(path, f"channel {channels} requested but the file has {y.shape[0]} channel(s)")
        return y[channels : channels + 1]
    raise ConfigError(f"channel policy must be 'mean', 'each' or a channel index, got {channels!r}")


def fix_length(y: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop so the last axis has exactly ``n_samples`` samples."""
    if y.shape[-1] >= n_samples:
        return y[..., :n_samples]
    pad = [(0, 0)] * (y.ndim - 1) + [(0, n_samples - y.shape[-1])]
    return np.pad(y, pad)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample along the last axis with soxr (high quality); a no-op when the rates agree."""
    if orig_sr == target_sr:
        return y
    # soxr wants (samples, channels)
    out = soxr.resample(np.ascontiguousarray(y.T), orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def load_audio(
    path,
    *,
    sr: int | None = None,
    channels: ChannelPolicy = "mean",
    duration: float | None = None,
    min_seconds: float = MIN_SECONDS,
) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 in [-1, 1].

    Parameters
    ----------
    path : path-like
        WAV, FLAC or OGG file (anything libsndfile reads), any bit depth and channel count.
    sr : int, optional
        Target sample rate; ``None`` keeps the file's own.
    channels : {"mean", "each"} or int
        ``"mean"`` down-mixes to one channel, ``"each"`` keeps every channel (DCASE 2018 task 5 treats each
        as its own item), an integer keeps that one channel.
    duration : float, optional
        Fixed length in seconds: zero-padded at the end or cropped.
    min_seconds : float
        Reject signals shorter than this (default one analysis window, 0.32 s), measured before padding.

    Returns
    -------
    y : ndarray, shape (n_channels, n_samples), float32
        ``n_channels`` is 1 unless ``channels="each"``.
    sr : int
        The sample rate of ``y``.

    Raises
    ------
    AudioError
        The file is missing, unreadable, empty, has no samples, holds NaN/inf, or is too short.
    """
    path = Path(path)
    y, file_sr = _read(path)
    if y.shape[1] == 0:
        raise AudioError(path, "no audio samples (zero-length)")
    if not np.isfinite(y).all():
        raise AudioError(path, "contains NaN or infinite samples")
    if y.shape[1] < min_seconds * file_sr:
        raise AudioError(path, f"too short: {y.shape[1] / file_sr:.3f} s, shorter than one analysis window ({min_seconds} s)")
    y = _apply_channel_policy(y, channels, path)
    target_sr = file_sr if sr is None else int(sr)
    y = resample(y, file_sr, target_sr)
    if duration is not None:
        y = fix_length(y, int(round(duration * target_sr)))
    return y, target_sr
