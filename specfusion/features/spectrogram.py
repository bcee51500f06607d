"""The paper's Mel-spectrogram (Amiriparian et al. 2020, section 3.1).

Periodic Hann window of 0.32 s, hop 0.16 s, 128 Mel bands, power converted to dB and normalised so
that the maximum of each spectrogram is 0 dB, optionally clipped below a threshold (-30, -45, -60 or
-80 dB in the paper; any value here).

Choices the paper leaves open, and what we take (all configurable through :class:`MelSpecParams`):

* **FFT size** = the window length in samples (``round(0.32 * sr)``), no zero padding: this is what the
  DEEP SPECTRUM toolkit the paper used does (``n_fft = window * sr``), and it keeps the frequency
  resolution a pure function of the window.
* **Centring**: frames are centred (``center=True``, zero padding of ``n_fft // 2`` at both ends), as in
  librosa's default that DEEP SPECTRUM relies on, so frame ``t`` is centred on ``t * hop``. A clip of
  ``n`` samples gives ``1 + n // hop`` frames.
* **Mel scale**: Slaney's (librosa's default, ``htk=False``) with Slaney area normalisation of the
  filters; ``fmin = 0`` Hz, ``fmax = sr / 2``.
* **dB**: ``10 * log10(max(S, amin))`` with ``amin = 1e-10`` (librosa's), then minus the spectrogram's
  own maximum, so the maximum is exactly 0 dB; clipping sets every value below ``clip_db`` to ``clip_db``.
  A silent (all-zero) clip becomes all 0 dB, which is why :mod:`specfusion.data.audio` rejects it first.
  A non-finite power spectrogram (samples so large that the power overflows float32) raises
  :class:`~specfusion.errors.SignalError` instead of giving NaN.

The computation is vectorised over a batch: frames are strided views, one real FFT per batch
(``scipy.fft`` with all cores) and one matrix product with the Mel filter bank, which is cached per
parameter set. It matches :func:`librosa.feature.melspectrogram` followed by
``librosa.power_to_db(ref=np.max)`` to float32 precision.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import scipy.fft
import scipy.signal

from specfusion.errors import ConfigError, SignalError

#: Paper defaults.
WINDOW_SECONDS = 0.32
HOP_SECONDS = 0.16
N_MELS = 128
AMIN = 1e-10


@dataclasses.dataclass(frozen=True)
class MelSpecParams:
    """Every parameter of the Mel-spectrogram; the defaults are the paper's.

    Parameters
    ----------
    window_s : float
        Window length in seconds (periodic Hann).
    hop_s : float
        Hop between frames in seconds.
    n_mels : int
        Number of Mel bands.
    fmin, fmax : float
        Frequency range of the Mel filter bank in Hz; ``fmax=None`` means ``sr / 2``.
    clip_db : float or None
        Values below this many dB (relative to the maximum, so negative) are set to it;
        ``None`` keeps everything.
    n_fft : int or None
        FFT size in samples; ``None`` means the window length.
    center : bool
        Centre frames on ``t * hop`` with zero padding.
    htk : bool
        Use the HTK Mel formula instead of Slaney's.
    """

    window_s: float = WINDOW_SECONDS
    hop_s: float = HOP_SECONDS
    n_mels: int = N_MELS
    fmin: float = 0.0
    fmax: float | None = None
    clip_db: float | None = None
    n_fft: int | None = None
    center: bool = True
    htk: bool = False

    def __post_init__(self):
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ConfigError(f"window and hop must be positive, got {self.window_s} s and {self.hop_s} s")
        if self.n_mels < 1:
            raise ConfigError(f"n_mels must be at least 1, got {self.n_mels}")
        if self.clip_db is not None and self.clip_db >= 0:
            raise ConfigError(f"clip_db is relative to the 0-dB maximum and must be negative, got {self.clip_db}")
        if self.fmin < 0 or (self.fmax is not None and self.fmax <= self.fmin):
            raise ConfigError(f"need 0 <= fmin < fmax, got fmin {self.fmin} Hz and fmax {self.fmax} Hz")

    def win_length(self, sr: int) -> int:
        """Window length in samples at rate ``sr``."""
        return max(1, int(round(self.window_s * sr)))

    def hop_length(self, sr: int) -> int:
        """Hop in samples at rate ``sr``."""
        return max(1, int(round(self.hop_s * sr)))

    def fft_size(self, sr: int) -> int:
        """FFT size in samples at rate ``sr``."""
        return self.n_fft or self.win_length(sr)

    def n_frames(self, n_samples: int, sr: int) -> int:
        """Number of frames for a signal of ``n_samples`` samples."""
        hop = self.hop_length(sr)
        if self.center:
            return 1 + n_samples // hop
        return 1 + (n_samples - self.fft_size(sr)) // hop

    def as_dict(self) -> dict:
        """The parameters as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def mel_params(spec_params: MelSpecParams | dict | None = None, *, clip_db: float | None = None) -> MelSpecParams:
    """:class:`MelSpecParams` from a parameter object, a dict of its fields (e.g. a recipe's ``spec_params``
    table) or ``None`` (the paper's defaults); ``clip_db``, when given, overrides the clipping.

    Raises
    ------
    ConfigError
        An unknown field, a value of the wrong type or an invalid value.
    """
    if spec_params is None:
        params = MelSpecParams()
    elif isinstance(spec_params, MelSpecParams):
        params = spec_params
    elif isinstance(spec_params, dict):
        try:
            params = MelSpecParams(**spec_params)
        except TypeError as err:
            raise ConfigError(f"invalid spectrogram parameters {spec_params!r}: {err}") from None
    else:
        raise ConfigError(f"spec_params must be a MelSpecParams or a dict, got {type(spec_params).__name__}")
    if clip_db is not None:
        params = dataclasses.replace(params, clip_db=float(clip_db))
    return params


def non_default_params(params: MelSpecParams) -> dict:
    """The fields of ``params`` that differ from the paper's defaults (``clip_db`` left out: callers record
    it on its own). Cache keys add this only when it is not empty, so keys made before the spectrogram
    parameters could be changed stay valid."""
    defaults = MelSpecParams(clip_db=params.clip_db).as_dict()
    return {k: v for k, v in params.as_dict().items() if defaults[k] != v}


@functools.lru_cache(maxsize=32)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool) -> np.ndarray:
    """Mel filter bank of shape (n_mels, n_fft // 2 + 1), float32, from :func:`librosa.filters.mel`."""
    import librosa

    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=32)
def _sparse_filterbank_t(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool):
    """:func:`mel_filterbank` transposed, (bins, n_mels), as a sparse matrix.

    Each band covers a few FFT bins (5,051 of 2561 x 128 weights are non-zero at the paper's 16-kHz
    setting), and scipy's sparse product sums them in a fixed order. A dense BLAS product, whose summation
    order and so its last bits depend on the BLAS thread count, made the spectrograms differ with
    ``OMP_NUM_THREADS``; the sparse one is also faster one clip at a time (docs/spectrogram.md).
    """
    import scipy.sparse

    return scipy.sparse.csr_array(mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk).T)


@functools.lru_cache(maxsize=32)
def _periodic_hann(win_length: int, n_fft: int) -> np.ndarray:
    window = scipy.signal.get_window("hann", win_length, fftbins=True).astype(np.float32)
    if n_fft > win_length:  # centre the window in the FFT frame, as librosa does
        left = (n_fft - win_length) // 2
        window = np.pad(window, (left, n_fft - win_length - left))
    window.setflags(write=False)
    return window


def mel_power(y: np.ndarray, sr: int, params: MelSpecParams = MelSpecParams()) -> np.ndarray:
    """Mel power spectrogram (linear scale) of one waveform or a batch.

    Parameters
    ----------
    y : ndarray, shape (..., n_samples)
        Waveform(s), float.
    sr : int
        Sample rate in Hz.
    params : MelSpecParams
        Spectrogram parameters.

    Returns
    -------
    ndarray, shape (..., n_mels, n_frames), float32
    """
    power = _power_spectrum(y, sr, params)
    fb_t = _sparse_filterbank_t(sr, params.fft_size(sr), params.n_mels, params.fmin, params.fmax, params.htk)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by power_to_db (SignalError)
        # (..., frames, bins) @ (bins, mels) -> (..., frames, mels) -> (..., mels, frames); sparse products are 2-D
        mel = (power.reshape(-1, power.shape[-1]) @ fb_t).reshape(*power.shape[:-1], fb_t.shape[1])
    return np.swapaxes(mel, -1, -2)


def _power_spectrum(y: np.ndarray, sr: int, params: MelSpecParams) -> np.ndarray:
    """Power spectrum of the windowed frames, float32, shape (..., n_frames, n_fft // 2 + 1)."""
    y = np.asarray(y, dtype=np.float32)
    n_fft = params.fft_size(sr)
    win = params.win_length(sr)
    if win > n_fft:
        raise ConfigError(f"window ({win} samples) longer than FFT size ({n_fft})")
    hop = params.hop_length(sr)
    if params.center:
        pad = [(0, 0)] * (y.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        y = np.pad(y, pad)
    if y.shape[-1] < n_fft:
        raise ConfigError(f"signal of {y.shape[-1]} samples is shorter than one FFT frame ({n_fft} samples)")
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft, axis=-1)[..., ::hop, :]
    spectrum = scipy.fft.rfft(frames * _periodic_hann(win, n_fft), axis=-1, workers=os.cpu_count())
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by power_to_db (SignalError)
        return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def power_to_db(power: np.ndarray, *, clip_db: float | None = None) -> np.ndarray:
    """Convert Mel power to dB relative to each spectrogram's maximum (max = 0 dB), then clip.

    Parameters
    ----------
    power : ndarray, shape (..., n_mels, n_frames)
        Non-negative power values.
    clip_db : float or None
        Lower limit in dB (negative); ``None`` for no clipping.

    Returns
    -------
    ndarray, same shape, float32

    Raises
    ------
    SignalError
        ``power`` holds NaN or inf (e.g. samples of magnitude 1e30 overflow float32): the dB values
        would all be NaN.
    """
    if not np.isfinite(power).all():
        raise SignalError("the Mel power spectrogram is not finite (samples so large that their power overflows "
                          "float32, or NaN/inf in the signal)")  # fmt: skip
    db = 10.0 * np.log10(np.maximum(power, AMIN))
    db -= db.max(axis=(-2, -1), keepdims=True)
    if clip_db is not None:
        np.maximum(db, clip_db, out=db)
    return db.astype(np.float32, copy=False)


def melspectrogram(
    y: np.ndarray,
    sr: int,
    *,
    window_s: float = WINDOW_SECONDS,
    hop_s: float = HOP_SECONDS,
    n_mels: int = N_MELS,
    clip_db: float | None = None,
    fmin: float = 0.0,
    fmax: float | None = None,
    params: MelSpecParams | None = None,
) -> np.ndarray:
    """The paper's dB Mel-spectrogram of one waveform or a batch of equal-length waveforms.

    Parameters
    ----------
    y : ndarray, shape (..., n_samples)
        Waveform(s).
    sr : int
        Sample rate in Hz.
    window_s, hop_s : float
        Window and hop in seconds (0.32 s and 0.16 s).
    n_mels : int
        Mel bands (128).
    clip_db : float or None
        Clip below this many dB, e.g. ``-80``; ``None`` for no clipping.
    fmin, fmax : float
        Mel filter bank range; ``fmax=None`` is ``sr / 2``.
    params : MelSpecParams, optional
        All parameters at once; when given, the keyword options above are ignored.

    Returns
    -------
    ndarray, shape (..., n_mels, n_frames), float32
        dB values, maximum exactly 0 per spectrogram.

    Examples
    --------
    >>> import numpy as np
    >>> S = melspectrogram(np.random.default_rng(0).standard_normal(16000), 16000, clip_db=-80)
    >>> S.shape, float(S.max()), float(S.min()) >= -80
    ((128, 7), 0.0, True)
    """
    if params is None:
        params = MelSpecParams(window_s=window_s, hop_s=hop_s, n_mels=n_mels, clip_db=clip_db, fmin=fmin, fmax=fmax)
    return power_to_db(mel_power(y, sr, params), clip_db=params.clip_db)


def frame_times(n_frames: int, sr: int, params: MelSpecParams = MelSpecParams()) -> np.ndarray:
    """Centre time in seconds of each frame."""
    offset = 0 if params.center else params.fft_size(sr) / 2
    return (np.arange(n_frames) * params.hop_length(sr) + offset) / sr


def mel_band_frequencies(sr: int, params: MelSpecParams = MelSpecParams()) -> np.ndarray:
    """Centre frequency in Hz of each Mel band."""
    import librosa

    fmax = params.fmax if params.fmax is not None else sr / 2
    return librosa.mel_frequencies(n_mels=params.n_mels + 2, fmin=params.fmin, fmax=fmax, htk=params.htk)[1:-1]
