"""Audio input: read any WAV/FLAC/OGG, resample with soxr, apply a channel policy, pad or crop.

Every problem with a file raises :class:`~specfusion.errors.AudioError` naming the file and the reason;
the caller decides whether to skip-and-report or stop.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import soxr

from specfusion.errors import AudioError, ConfigError

ChannelPolicy = Literal["mean", "each"] | int

#: The shortest signal accepted by default: one analysis window of the paper's spectrogram (0.32 s).
MIN_SECONDS = 0.32

#: What to do with a clip shorter than one analysis window: zero-pad it to one window (the default of
#: :func:`specfusion.features.extraction.extract` and :func:`specfusion.models.crnn.spectrograms.compute_spectrograms`), or fail it.
SHORT_POLICIES = ("pad", "error")

#: libsndfile's log line for a WAV whose ``data`` chunk is longer than the bytes present.
_DATA_CUT_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def audio_info(path) -> sf._SoundFileInfo:
    """Header information (rate, channels, frames, subtype) without decoding; AudioError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from None


def check_short_policy(short: str) -> str:
    """``short`` if it is one of :data:`SHORT_POLICIES`, else :class:`ConfigError`."""
    if short not in SHORT_POLICIES:
        raise ConfigError(f"short must be one of {', '.join(SHORT_POLICIES)}, got {short!r}")
    return short


def _read(path: Path) -> tuple[np.ndarray, int]:
    if not path.is_file():
        reason = "dangling symbolic link" if path.is_symlink() else "file not found"
        raise AudioError(path, reason)
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as handle:
            declared, sr, log = handle.frames, handle.samplerate, handle.extra_info
            data = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as err:
        raise AudioError(path, f"unreadable audio ({err})") from None
    _check_complete(path, len(data), declared, sr, log)
    return data.T, sr  # (channels, samples)


def _check_complete(path: Path, n_read: int, declared: int, sr: int, log: str) -> None:
    """AudioError for a truncated file: fewer frames decoded than the header declares.

    libsndfile sizes a WAV whose ``data`` chunk runs past the end of the file by the bytes present
    (and notes "data : N (should be M)" in its log), so such a file would otherwise read as a shorter
    clip without a word.
    """
    if n_read < declared:
        raise AudioError(
            path, f"truncated: {n_read / sr:.3f} s decoded of the {declared / sr:.3f} s the header declares"
        )
    match = _DATA_CUT_SHORT.search(log or "")
    if match and int(match.group(2)) < int(match.group(1)):
        declared_s = n_read / sr * int(match.group(1)) / max(1, int(match.group(2)))
        raise AudioError(
            path, f"truncated: the header declares {declared_s:.3f} s of audio, the file holds {n_read / sr:.3f} s"
        )


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
    short: str = "error",
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
        One analysis window (default 0.32 s): the shortest clip taken as it is, measured before padding.
    short : {"error", "pad"}
        A clip shorter than ``min_seconds``: an :class:`AudioError`, or zero-padded at the end to
        ``min_seconds`` (at the target rate). The extraction engine and the CRNN pass ``"pad"`` by default.

    Returns
    -------
    y : ndarray, shape (n_channels, n_samples), float32
        ``n_channels`` is 1 unless ``channels="each"``.
    sr : int
        The sample rate of ``y``.

    Raises
    ------
    AudioError
        The file is missing (or a dangling link), unreadable, empty, truncated (fewer frames than its
        header declares), has no samples, holds NaN/inf, is silent (every sample zero: its spectrogram
        would be constant), or is too short with ``short="error"``.
    ConfigError
        ``sr`` is not positive, or ``short`` is not a policy.
    """
    check_short_policy(short)
    if sr is not None and int(sr) <= 0:
        raise ConfigError(f"sample rate must be positive, got {sr}")
    path = Path(path)
    y, file_sr = _read(path)
    if y.shape[1] == 0:
        raise AudioError(path, "no audio samples (zero-length)")
    if not np.isfinite(y).all():
        raise AudioError(path, "contains NaN or infinite samples")
    if not y.any():
        raise AudioError(path, "silent: every sample is zero (its spectrogram and features would be constant)")
    too_short = y.shape[1] < min_seconds * file_sr
    if too_short and short == "error":
        raise AudioError(path, f"too short: {y.shape[1] / file_sr:.3f} s, shorter than one analysis window ({min_seconds} s); "
                               "short='pad' zero-pads it to one window", parameters={"short": "pad"})  # fmt: skip
    y = _apply_channel_policy(y, channels, path)
    target_sr = file_sr if sr is None else int(sr)
    y = resample(y, file_sr, target_sr)
    if too_short and duration is None:
        y = fix_length(y, max(y.shape[-1], int(math.ceil(min_seconds * target_sr))))
    if duration is not None:
        y = fix_length(y, int(round(duration * target_sr)))
    return y, target_sr
