"""L3-Net audio embedding network of OpenL3 (Cramer et al., 2019), mel256 input.

The network is the audio sub-network of ``marl/openl3`` (``_construct_mel256_audio_network``) with
the front end of the released models, kapre 0.1.4's ``Melspectrogram(n_dft=2048, n_hop=242,
n_mels=256, sr=48000, power_melgram=1.0, htk=True, return_decibel_melgram=True, padding='same')``:

* 1-s frames at 48 kHz, zero-padded "same" style (982 samples either side) -> 199 STFT frames of a
  2048-point periodic Hann window, hop 242;
* power spectrum -> 256 HTK-Mel bands (0-24 kHz, Slaney area normalisation) -> square root
  (``power_melgram=1.0``, a magnitude Mel spectrogram);
* ``10 * log10(max(x, 1e-10))``, minus the frame's maximum, floored at -80 dB (kapre 0.1.4's
  ``amplitude_to_decibel``, also used by torchopenl3).

Then batch norm, four conv blocks (3x3 "same" convolutions with bias, batch norm (eps 1e-3), ReLU;
64-64, 128-128, 256-256 with 2x2 max pooling after each of the first three, then 512 and the
``audio_embedding_layer``), and max pooling of the (512, 32, 24) map: 32x24 for the 512-d embedding,
8x8 for the 6144-d one, flattened in Keras' (height, width, channel) order.

Parameter names follow the Keras layers of the released weight files (``batch_normalization_1`` ..
``_8``, ``conv2d_1`` .. ``_7``, ``audio_embedding_layer``; the same as torchopenl3's), so
:func:`keras_h5_state_dict` maps an official ``.h5`` (read with h5py, no TensorFlow) onto
:class:`L3AudioNet` one to one. The Mel matrix is a buffer (``speclayer.mel_basis``): taken from
the weight file when it stores the kapre front end, computed otherwise.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from specfusion.errors import WeightsError

#: Rate of the network input in Hz and length of one analysis frame in samples (1 s).
SAMPLE_RATE = 48000
FRAME_SAMPLES = 48000
N_DFT = 2048
N_HOP = 242
N_MELS = 256
#: Max-pooling of the final (512, 32, 24) map for each embedding size (mel256).
POOLING = {512: (32, 24), 6144: (8, 8)}
#: Batch-norm epsilon of Keras.
BN_EPS = 1e-3
#: kapre's decibel floor relative to the frame maximum.
DYNAMIC_RANGE_DB = 80.0
#: (name, in channels, out channels) of the convolutions, in network order.
CONVS = (
    ("conv2d_1", 1, 64),
    ("conv2d_2", 64, 64),
    ("conv2d_3", 64, 128),
    ("conv2d_4", 128, 128),
    ("conv2d_5", 128, 256),
    ("conv2d_6", 256, 256),
    ("conv2d_7", 256, 512),
    ("audio_embedding_layer", 512, 512),
)
#: Convolutions followed by 2x2 max pooling.
POOL_AFTER = ("conv2d_2", "conv2d_4", "conv2d_6")


def kapre_mel_basis(*, sr: int = SAMPLE_RATE, n_dft: int = N_DFT, n_mels: int = N_MELS) -> np.ndarray:
    """kapre 0.1.4's Mel matrix, (n_mels, n_dft // 2 + 1) float32.

    kapre called ``librosa.filters.mel(sr, n_dft, n_mels, fmin=0, fmax=sr / 2, htk=True, norm=1)``
    with the librosa of its time, where ``norm=1`` meant Slaney's area normalisation (today's
    ``norm="slaney"``; today's ``norm=1`` is an L1 normalisation instead).
    """
    import warnings

    import librosa

    with warnings.catch_warnings():  # the lowest HTK bands are narrower than one FFT bin, as in kapre
        warnings.filterwarnings("ignore", message="Empty filters detected")
        basis = librosa.filters.mel(sr=sr, n_fft=n_dft, n_mels=n_mels, fmin=0.0, fmax=sr / 2, htk=True, norm="slaney")
    return basis.astype(np.float32)


def same_padding(n_samples: int = FRAME_SAMPLES, *, n_dft: int = N_DFT, n_hop: int = N_HOP) -> tuple[int, int]:
    """Left/right zero padding of Keras' ``padding='same'`` strided convolution (kapre's STFT)."""
    if n_samples % n_hop == 0:
        total = max(n_dft - n_hop, 0)
    else:
        total = max(n_dft - n_samples % n_hop, 0)
    return total // 2, total - total // 2


class KapreMelSpectrogram(nn.Module):
    """kapre 0.1.4 ``Melspectrogram`` of one-second frames: (n, samples) -> (n, 1, n_mels, frames) in dB."""

    def __init__(
        self,
        *,
        sr: int = SAMPLE_RATE,
        n_dft: int = N_DFT,
        n_hop: int = N_HOP,
        n_mels: int = N_MELS,
        frame_samples: int = FRAME_SAMPLES,
    ):
        super().__init__()
        self.sr, self.n_dft, self.n_hop, self.n_mels = sr, n_dft, n_hop, n_mels
        self.padding = same_padding(frame_samples, n_dft=n_dft, n_hop=n_hop)
        self.register_buffer("mel_basis", torch.from_numpy(kapre_mel_basis(sr=sr, n_dft=n_dft, n_mels=n_mels)))
        # periodic Hann (kapre: librosa.filters.get_window("hann", n_dft, fftbins=True)); not in the state dict
        self.register_buffer("window", torch.hann_window(n_dft, periodic=True, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding)
        spec = torch.stft(
            x, n_fft=self.n_dft, hop_length=self.n_hop, window=self.window, center=False, return_complex=True
        )
        power = spec.real.square() + spec.imag.square()  # (n, freq, frames)
        mel = torch.sqrt(torch.matmul(self.mel_basis, power))  # power_melgram=1.0
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        db = db - db.amax(dim=(1, 2), keepdim=True)
        return torch.clamp(db, min=-DYNAMIC_RANGE_DB).unsqueeze(1)


class L3AudioNet(nn.Module):
    """OpenL3 audio network (mel256) with the Keras layer names of the released weights.

    Parameters
    ----------
    embedding_size : {512, 6144}
        Size of the pooled embedding (only the final max pooling differs).
    """

    def __init__(self, *, embedding_size: int = 512):
        super().__init__()
        if embedding_size not in POOLING:
            raise ValueError(f"embedding_size must be one of {sorted(POOLING)}, got {embedding_size}")
        self.embedding_size = embedding_size
        self.speclayer = KapreMelSpectrogram()
        self.batch_normalization_1 = nn.BatchNorm2d(1, eps=BN_EPS)
        for i, (name, c_in, c_out) in enumerate(CONVS):
            setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True))
            if name != "audio_embedding_layer":
                setattr(self, f"batch_normalization_{i + 2}", nn.BatchNorm2d(c_out, eps=BN_EPS))

    def reset_parameters(self) -> None:
        """Keras' initialisation of the original: He-normal kernels, zero biases, unit batch norms."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
                module.reset_running_stats()

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        """``audio_embedding_layer`` output before pooling: (n, 48000) -> (n, 512, 32, 24)."""
        x = self.batch_normalization_1(self.speclayer(frames))
        for i, (name, _, _) in enumerate(CONVS):
            x = getattr(self, name)(x)
            if name == "audio_embedding_layer":
                break
            x = F.relu(getattr(self, f"batch_normalization_{i + 2}")(x))
            if name in POOL_AFTER:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Embeddings of one-second frames: (n, 48000) -> (n, embedding_size)."""
        x = self.feature_map(frames)
        pool = POOLING[self.embedding_size]
        x = F.max_pool2d(x, kernel_size=pool, stride=pool)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # Keras flattens (height, width, channel)


# ----------------------------------------------------------------------------------------------
# Keras HDF5 weight files


#: Largest decompressed size of a ``.h5.gz`` weight file (the released mel256 file is ~18 MiB).
MAX_H5_BYTES = 1 << 30


@contextlib.contextmanager
def _open_h5(path: Path):
    """h5py file of ``path``; a gzip-compressed file (the released ``.h5.gz``) is first decompressed by
    streaming to a temporary file, at most :data:`MAX_H5_BYTES` (never into memory)."""
    import h5py

    from specfusion.features.weights import gunzip_capped

    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        with h5py.File(path, "r") as h5:
            yield h5
        return
    with tempfile.TemporaryDirectory(prefix="specfusion-h5-") as tmp:
        plain = gunzip_capped(path, Path(tmp) / "weights.h5", max_bytes=MAX_H5_BYTES)
        with h5py.File(plain, "r") as h5:
            yield h5


def _decode(names) -> list[str]:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def read_keras_weights(path: str | os.PathLike) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Weighted layers of a Keras HDF5 weight file, in model order: ``[(layer, {weight: array})]``.

    Weight names are reduced to their last component without the ``:0`` suffix (``kernel``,
    ``gamma`` ...). Works for files written by ``model.save_weights`` and ``model.save`` (Keras 2,
    TensorFlow 1 and 2).
    """
    path = Path(path)
    try:
        with _open_h5(path) as f:
            return _read_layers(f, path)
    except (OSError, EOFError, ValueError) as err:
        raise WeightsError(
            f"cannot read Keras weight file {path}: {err}. The file may be truncated or "
            "not an HDF5 file (delete it and download again)."
        ) from err


def _read_layers(f, path: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The weighted layers of an open Keras HDF5 file (see :func:`read_keras_weights`)."""
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise WeightsError(f"{path} is not a Keras weight file (no 'layer_names' attribute)")
    layers = []
    for layer in _decode(root.attrs["layer_names"]):
        group = root[layer]
        names = _decode(group.attrs.get("weight_names", []))
        if names:
            weights = {n.split("/")[-1].split(":")[0]: np.asarray(group[n]) for n in names}
            layers.append((layer, weights))
    return layers


_BN = ("gamma", "beta", "moving_mean", "moving_variance")
_CONV = ("kernel", "bias")


def _is_bn(weights: dict[str, np.ndarray]) -> bool:
    return set(weights) == set(_BN)


def _is_conv(weights: dict[str, np.ndarray]) -> bool:
    return set(weights) == set(_CONV) and weights["kernel"].ndim == 4


def keras_h5_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Translate an official OpenL3 mel256 Keras weight file into the state dict of :class:`L3AudioNet`.

    Layers are matched in model order, as Keras' own ``load_weights`` does: the network has eight
    batch norms and eight convolutions, alternating (``batch_normalization_1``, ``conv2d_1``,
    ``batch_normalization_2``, ... ``conv2d_7``, ``batch_normalization_8``,
    ``audio_embedding_layer``). A kapre front-end layer (openl3 <= 0.3 files) is recognised by its
    Mel matrix, which then becomes ``speclayer.mel_basis``; without it the matrix is computed
    (:func:`kapre_mel_basis`). Kernels go from Keras (h, w, in, out) to torch (out, in, h, w).

    Raises
    ------
    WeightsError
        The file is unreadable, or its layers do not make up this network (names the offending layers).
    """
    layers = read_keras_weights(path)
    n_freq = N_DFT // 2 + 1
    mel_basis = None
    core = []
    for layer, weights in layers:
        if _is_bn(weights) or _is_conv(weights):
            core.append((layer, weights))
            continue
        mels = [w for w in weights.values() if w.ndim == 2 and sorted(w.shape) == sorted((n_freq, N_MELS))]
        if mels and mel_basis is None and not core:
            m = mels[0]
            mel_basis = m.T if m.shape == (n_freq, N_MELS) else m
            continue
        raise WeightsError(
            f"{path}: unexpected layer {layer!r} with weights {sorted(weights)}; is this the OpenL3 mel256 audio model?"
        )
    kinds = ["bn" if _is_bn(w) else "conv" for _, w in core]
    if kinds != ["bn", "conv"] * len(CONVS):
        found = ", ".join(f"{name} ({kind})" for (name, _), kind in zip(core, kinds))
        raise WeightsError(
            f"{path}: expected {len(CONVS)} batch-norm/convolution pairs in order, found: "
            f"{found or 'no weighted layers'}. Is this the OpenL3 mel256 audio model?"
        )
    state: dict[str, torch.Tensor] = {}
    for i in range(len(CONVS)):
        bn = core[2 * i][1]
        prefix = f"batch_normalization_{i + 1}"
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(bn["gamma"], dtype=np.float32))
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(bn["beta"], dtype=np.float32))
        state[f"{prefix}.running_mean"] = torch.from_numpy(np.ascontiguousarray(bn["moving_mean"], dtype=np.float32))
        state[f"{prefix}.running_var"] = torch.from_numpy(np.ascontiguousarray(bn["moving_variance"], dtype=np.float32))
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        conv = core[2 * i + 1][1]
        name = CONVS[i][0]
        kernel = np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1)), dtype=np.float32)
        state[f"{name}.weight"] = torch.from_numpy(kernel)
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"], dtype=np.float32))
    if mel_basis is None:
        mel_basis = kapre_mel_basis()
    state["speclayer.mel_basis"] = torch.from_numpy(np.ascontiguousarray(mel_basis, dtype=np.float32))
    return state


def write_keras_h5(
    path: str | os.PathLike,
    state_dict: dict[str, Any],
    *,
    with_front_end: bool = False,
    layer_names: list[str] | None = None,
) -> None:
    """Write ``state_dict`` of :class:`L3AudioNet` in the Keras HDF5 layout of the released files.

    The inverse of :func:`keras_h5_state_dict`, for tests and for exporting one's own weights.
    ``with_front_end`` adds a kapre-like ``melspectrogram_1`` layer holding the Mel matrix (as the
    openl3 <= 0.3 files do); ``layer_names`` renames the 16 network layers.
    """
    import h5py

    default = []
    for i, (name, _, _) in enumerate(CONVS):
        default += [f"batch_normalization_{i + 1}", name]
    names = layer_names or default
    with h5py.File(path, "w") as f:
        order = []
        if with_front_end:
            g = f.create_group("melspectrogram_1")
            mel = np.asarray(state_dict["speclayer.mel_basis"], dtype=np.float32).T  # kapre: (freq, mels)
            g.create_dataset("melspectrogram_1/Variable:0", data=mel)
            g.attrs["weight_names"] = np.array([b"melspectrogram_1/Variable:0"])
            order.append("melspectrogram_1")
        for i, (name, _, _) in enumerate(CONVS):
            bn_name, conv_name = names[2 * i], names[2 * i + 1]
            prefix = f"batch_normalization_{i + 1}"
            g = f.create_group(bn_name)
            wn = []
            for keras, ours in zip(_BN, ("weight", "bias", "running_mean", "running_var")):
                key = f"{bn_name}/{keras}:0"
                g.create_dataset(key, data=np.asarray(state_dict[f"{prefix}.{ours}"], dtype=np.float32))
                wn.append(key.encode())
            g.attrs["weight_names"] = np.array(wn)
            g = f.create_group(conv_name)
            kernel = np.transpose(np.asarray(state_dict[f"{name}.weight"], dtype=np.float32), (2, 3, 1, 0))
            g.create_dataset(f"{conv_name}/kernel:0", data=kernel)
            g.create_dataset(f"{conv_name}/bias:0", data=np.asarray(state_dict[f"{name}.bias"], dtype=np.float32))
            g.attrs["weight_names"] = np.array([f"{conv_name}/kernel:0".encode(), f"{conv_name}/bias:0".encode()])
            order += [bn_name, conv_name]
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        f.attrs["layer_names"] = np.array([n.encode() for n in ["input_1", *order]])  # as Keras: fixed-length bytes
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
