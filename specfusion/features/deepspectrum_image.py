"""DEEP SPECTRUM's own image path: a Mel-spectrogram *plotted* with matplotlib, as the paper's features were made.

specfusion's default renderer (:func:`specfusion.features.images.render_rgb`) resizes the dB Mel-spectrogram in data
space and colours it through the colour map's lookup table: fast, and close to a plot. DEEP SPECTRUM
(github.com/DeepSpectrum/DeepSpectrum, ``backend/plotting.py`` and ``backend/extractor.py``) instead draws
every clip as a figure. :func:`render_deepspectrum` repeats its steps, so that features can be compared
with DEEP SPECTRUM-made ones (``renderer="deepspectrum"`` of the image extractors):

1. digital silence (exact zeros) at both ends of the waveform is dropped (``np.trim_zeros``);
2. STFT with a periodic Hann window of ``window_s`` seconds (default: DEEP SPECTRUM's own,
   :func:`deepspectrum_stft_seconds`), hop of half the window, **not centred**;
   power Mel-spectrogram with ``n_mels`` bands (librosa's Slaney filters), ``power_to_db(ref=max,
   top_db=None)``; then, only if ``clip_db`` is given, values below it are clipped;
3. ``librosa.display.specshow(y_axis="mel", x_axis="time")`` on a 1 × 1-inch, frameless figure at
   ``size`` dpi, axes off, colour scale from the image's own minimum to maximum; saved as PNG;
4. the PNG's RGB channels resized with PIL (bicubic) to ``target`` × ``target`` pixels.

Drawing a figure per clip costs a few milliseconds more than :func:`render_rgb`; it is off by default.
"""

from __future__ import annotations

import io

import numpy as np

from specfusion.errors import ConfigError, SignalError

#: DEEP SPECTRUM's figure size in pixels (1 inch at 227 dpi) and the networks' input size.
PLOT_SIZE = 227
TARGET_SIZE = 224
#: DEEP SPECTRUM's FFT size when ``-nfft`` is not given: the next power of two of this many seconds of samples.
DEFAULT_FFT_SECONDS = 0.025


def deepspectrum_stft_seconds(sr: int) -> tuple[float, float]:
    """DEEP SPECTRUM's default STFT window and hop in seconds at rate ``sr``.

    ``plot_chunk`` uses ``nfft = next power of two of int(0.025 * sr)`` samples and a hop of ``nfft / 2``
    when no ``-nfft`` is given: 512 / 256 samples (32 / 16 ms) at 16 kHz, 2048 / 1024 (46 / 23 ms) at 44.1 kHz.

    Examples
    --------
    >>> deepspectrum_stft_seconds(16000)
    (0.032, 0.016)
    """
    if int(sr) <= 0:
        raise ConfigError(f"sample rate must be positive, got {sr}")
    n_fft = 1 << (max(int(sr * DEFAULT_FFT_SECONDS), 1) - 1).bit_length()
    return n_fft / int(sr), n_fft / 2 / int(sr)


def deepspectrum_mel_db(
    waveform: np.ndarray, sr: int, *, window_s: float | None = None, n_mels: int = 128, clip_db: float | None = None
) -> np.ndarray:
    """DEEP SPECTRUM's dB Mel-spectrogram (steps 1-2 of the module docstring), shape (n_mels, frames).

    ``window_s=None`` is DEEP SPECTRUM's default STFT window (:func:`deepspectrum_stft_seconds`).

    Raises
    ------
    SignalError
        The trimmed waveform is shorter than one window or silent.
    """
    import librosa

    audio = np.trim_zeros(np.asarray(waveform, dtype=np.float64).ravel())
    if window_s is None:
        window_s = deepspectrum_stft_seconds(sr)[0]
    n_fft = int(round(window_s * sr))
    if n_fft < 2:
        raise ConfigError(f"window_s={window_s} s at {sr} Hz is shorter than two samples")
    if len(audio) < n_fft:
        raise SignalError(
            f"{len(audio)} samples after trimming digital silence, fewer than one {window_s}-s window ({n_fft})"
        )
    spec = librosa.stft(audio, n_fft=n_fft, hop_length=n_fft // 2, center=False)
    mel = librosa.feature.melspectrogram(S=np.abs(spec) ** 2, sr=sr, n_mels=int(n_mels))
    if not np.any(mel > 0):
        raise SignalError("the Mel-spectrogram is all zeros")
    mel_db = librosa.power_to_db(mel, ref=np.max, top_db=None)
    if clip_db is not None:
        mel_db = np.maximum(mel_db, float(clip_db))
    return mel_db


def plot_deepspectrum(
    mel_db: np.ndarray, sr: int, *, hop_length: int, colormap: str = "viridis", size: int = PLOT_SIZE
) -> np.ndarray:
    """Step 3: the ``uint8`` RGB pixels of DEEP SPECTRUM's plot of ``mel_db``, shape (size, size, 3)."""
    import librosa.display
    from PIL import Image

    from specfusion.figures import new_figure

    fig = new_figure((1, 1), dpi=size)
    fig.set_frameon(False)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    librosa.display.specshow(
        mel_db, hop_length=hop_length, fmax=sr / 2, sr=sr, cmap=colormap, y_axis="mel", x_axis="time", ax=ax
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=size)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return np.array(image.convert("RGBA"))[:, :, :3]


def render_deepspectrum(
    waveform: np.ndarray,
    sr: int,
    *,
    window_s: float | None = None,
    n_mels: int = 128,
    clip_db: float | None = None,
    colormap: str = "viridis",
    size: int = PLOT_SIZE,
    target: int = TARGET_SIZE,
) -> np.ndarray:
    """The ``uint8`` RGB image DEEP SPECTRUM feeds its networks for ``waveform``, shape (target, target, 3).

    Parameters
    ----------
    waveform : ndarray
        Mono waveform at ``sr``.
    sr : int
        Sample rate in Hz.
    window_s : float, optional
        STFT window in seconds; the hop is half of it (DEEP SPECTRUM's only choice). Default: DEEP
        SPECTRUM's own (:func:`deepspectrum_stft_seconds`, 32 ms at 16 kHz).
    n_mels : int
        Mel bands.
    clip_db : float, optional
        Clip the dB spectrogram below this value (DEEP SPECTRUM does not clip).
    colormap : str
        matplotlib colour map.
    size, target : int
        Plot size (pixels of the 1-inch figure, i.e. dpi) and the network's input size.

    Returns
    -------
    ndarray of uint8, shape (target, target, 3)
    """
    from PIL import Image

    if window_s is None:
        window_s = deepspectrum_stft_seconds(sr)[0]
    mel_db = deepspectrum_mel_db(waveform, sr, window_s=window_s, n_mels=n_mels, clip_db=clip_db)
    pixels = plot_deepspectrum(mel_db, sr, hop_length=int(round(window_s * sr)) // 2, colormap=colormap, size=size)
    if pixels.shape[:2] != (target, target):
        pixels = np.array(Image.fromarray(pixels).resize((target, target), resample=Image.BICUBIC))
    return pixels
