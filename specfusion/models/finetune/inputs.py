"""The inputs fine-tuning trains on: each network's front end, as a front end of the fold protocol's input cache.

Every front end gives an array (bands, frames), or (channels, bands, frames), per clip, cached on disk by
:func:`specfusion.models.crnn.spectrograms.spectrogram_set` like the CRNN's spectrograms (its ``as_dict()`` is
the cache key's parameters):

* ``"yamnet"`` (:class:`YamnetLogMel`): YAMNet's own log-Mel spectrogram of the 16-kHz waveform, 64 bands,
  10-ms hop (:func:`specfusion.features.yamnet_frontend.log_mel`, padded as YAMNet pads), as (64, frames);
  the whole clip is one input (YAMNet is fully convolutional in time);
* ``"mel"`` (:data:`IMAGE_MEL`): the paper's dB Mel-spectrogram (:mod:`specfusion.features.spectrogram`)
  with 128 bands and a 40-ms window every 20 ms (a 5-s clip: 128 x 250), clipped at -80 dB, one channel;
* ``"multires"`` (:class:`MultiResolutionMel`): Palanisamy et al. (2020)'s three-channel input: three Mel
  spectrograms with windows of 25, 50 and 100 ms and hops of 10, 25 and 50 ms, each resized in time to the
  first's frames (linear interpolation), stacked as the image network's three channels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from specfusion.errors import ConfigError

#: The input kinds (``inputs``) and the networks' defaults.
INPUTS = ("yamnet", "mel", "multires")
#: The paper's Mel-spectrogram with a finer time grid for the image networks (window, hop in seconds).
IMAGE_MEL = {"window_s": 0.04, "hop_s": 0.02, "n_mels": 128}
#: Palanisamy et al. (2020), "Rethinking CNN models for audio classification": windows and hops (ms).
MULTIRES_WINDOWS_MS = (25, 50, 100)
MULTIRES_HOPS_MS = (10, 25, 50)
#: The clipping of the image networks' dB spectrograms.
CLIP_DB = -80.0


def default_inputs(network: str) -> str:
    """``"yamnet"`` for YAMNet, ``"mel"`` for the image networks."""
    return "yamnet" if network == "yamnet" else "mel"


def check_inputs(network: str, inputs: str) -> None:
    """ConfigError for an unknown input kind, or one the network cannot read."""
    if inputs not in INPUTS:
        raise ConfigError(f"unknown inputs {inputs!r}; choose one of {', '.join(INPUTS)}")
    if (network == "yamnet") != (inputs == "yamnet"):
        raise ConfigError(f"network {network!r} cannot read inputs {inputs!r} (YAMNet reads its own log-Mel "
                          "spectrogram, inputs='yamnet'; the image networks read 'mel' or 'multires')")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class YamnetLogMel:
    """YAMNet's log-Mel front end: (64, frames) per clip at 16 kHz, padded with ``log(0.001)`` (silence)."""

    @property
    def sample_rate(self) -> int:
        from specfusion.features.yamnet_frontend import SAMPLE_RATE

        return SAMPLE_RATE

    @property
    def window_s(self) -> float:
        from specfusion.features.yamnet_frontend import SAMPLE_RATE, WINDOW_SAMPLES

        return WINDOW_SAMPLES / SAMPLE_RATE

    def as_dict(self) -> dict:
        from specfusion.features.yamnet_frontend import PARAMS

        return {"frontend": "yamnet", **dict(PARAMS)}

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        from specfusion.features.yamnet_frontend import log_mel

        return np.ascontiguousarray(log_mel(y, sr).T, dtype=np.float32)

    def floor(self, spec: np.ndarray) -> float:
        from specfusion.features.yamnet_frontend import LOG_OFFSET

        return float(np.float32(math.log(LOG_OFFSET)))


@dataclasses.dataclass(frozen=True)
class MelInput:
    """The paper's dB Mel-spectrogram (:data:`IMAGE_MEL` by default) as one input channel: (n_mels, frames)."""

    spec_params: tuple = tuple(sorted(IMAGE_MEL.items()))
    sample_rate: int | None = None

    def params(self):
        from specfusion.features.spectrogram import mel_params

        return mel_params(dict(self.spec_params), clip_db=CLIP_DB)

    @property
    def window_s(self) -> float:
        return self.params().window_s

    def as_dict(self) -> dict:
        return {"frontend": "mel", **self.params().as_dict()}

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        from specfusion.features.spectrogram import melspectrogram

        return melspectrogram(y, sr, params=self.params())

    def floor(self, spec: np.ndarray) -> float:
        return CLIP_DB


@dataclasses.dataclass(frozen=True)
class MultiResolutionMel:
    """Three dB Mel-spectrograms of different windows and hops (:data:`MULTIRES_WINDOWS_MS`, :data:`MULTIRES_HOPS_MS`),
    each resized in time to the first one's frames: (3, n_mels, frames)."""

    n_mels: int = 128
    sample_rate: int | None = None

    def params(self) -> list:
        from specfusion.features.spectrogram import mel_params

        return [mel_params({"window_s": w / 1000, "hop_s": h / 1000, "n_mels": self.n_mels}, clip_db=CLIP_DB)
                for w, h in zip(MULTIRES_WINDOWS_MS, MULTIRES_HOPS_MS)]  # fmt: skip

    @property
    def window_s(self) -> float:
        return max(p.window_s for p in self.params())

    def as_dict(self) -> dict:
        return {"frontend": "multires", "channels": [p.as_dict() for p in self.params()], "resize": "linear in time"}

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        from specfusion.features.spectrogram import melspectrogram

        specs = [melspectrogram(y, sr, params=p) for p in self.params()]
        frames = specs[0].shape[1]
        return np.stack([_resize_time(s, frames) for s in specs]).astype(np.float32)

    def floor(self, spec: np.ndarray) -> float:
        return CLIP_DB


def _resize_time(spec: np.ndarray, frames: int) -> np.ndarray:
    """``spec`` (bands, t) linearly interpolated to (bands, frames) over the same time span."""
    if spec.shape[1] == frames:
        return spec
    old = np.linspace(0.0, 1.0, spec.shape[1])
    new = np.linspace(0.0, 1.0, frames)
    return np.stack([np.interp(new, old, band) for band in spec])


def frontend(inputs: str, *, sample_rate: int | None = None):
    """The front end of an input kind (:data:`INPUTS`)."""
    if inputs == "yamnet":
        return YamnetLogMel()
    if inputs == "mel":
        return MelInput(sample_rate=sample_rate)
    if inputs == "multires":
        return MultiResolutionMel(sample_rate=sample_rate)
    raise ConfigError(f"unknown inputs {inputs!r}; choose one of {', '.join(INPUTS)}")
