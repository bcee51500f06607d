"""The extractor protocol and registry.

An extractor turns one mono waveform into one fixed-length feature vector, in two steps so the
extraction engine can overlap them:

* :meth:`Extractor.prepare` -- CPU-side front end for one item (e.g. Mel-spectrogram -> colour-mapped
  image, or padding a waveform); runs in worker threads, must not touch the network;
* :meth:`Extractor.embed` -- the network forward pass on a stacked batch of prepared inputs.

:meth:`Extractor.prepare_audio` runs the front end on a waveform of any sample rate (soxr resampling
first); :meth:`Extractor.embed_frames` and :meth:`Extractor.frame_times` give time-varying embeddings
and their times (frame-based extractors override them; the defaults treat the clip as one frame).

Adding a network is one new module that subclasses :class:`Extractor` and decorates it with
:func:`register`; the family modules listed in ``FAMILY_MODULES`` are imported on first lookup.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError

#: Modules that define the built-in extractors; imported lazily by :func:`get_extractor`.
FAMILY_MODULES: list[str] = [
    "specfusion.features.extractors.image_cnns",
    "specfusion.features.extractors.panns",
    "specfusion.features.extractors.openl3",
    "specfusion.features.extractors.aisfx",
    "specfusion.features.extractors.birdnet",
    "specfusion.features.extractors.soundnet",
]

_REGISTRY: dict[str, type[Extractor]] = {}


@dataclasses.dataclass(frozen=True)
class WeightsOption:
    """One value of an extractor's ``weights`` choice, as listed by ``specfusion extractors``.

    Parameters
    ----------
    value : str
        The ``weights=`` value (``"imagenet"``, ``"pretrained"``, ``"none"``); ``"pretrained"`` also for
        extractors that have no ``weights`` option and always load their released file.
    licence : str
        Licence of the weights (empty for a random initialisation).
    present : bool or None
        Whether the file the extractor would load is on this machine (found where the loading code looks,
        not hash-checked, no network built); ``None`` where there is nothing to find (random initialisation).
    where : str
        The file found, else where it is looked for and how to get it.
    note : str
        Anything else needed to use it (e.g. a runtime package that is missing).
    options : str
        Other options this choice goes with, e.g. ``"variant=16k"`` (empty: any).
    """

    value: str
    licence: str = ""
    present: bool | None = None
    where: str = ""
    note: str = ""
    options: str = ""


@dataclasses.dataclass(frozen=True)
class ExtractorInfo:
    """What an extractor gives, known without building its network (:meth:`Extractor.describe`).

    Parameters
    ----------
    name : str
        Registry name.
    input_kind : {"image", "waveform"}
        What the network sees.
    dim : int
        Feature length with the default options.
    dim_rule : str
        How ``dim`` changes with the options (layer, pooling ...); empty when it never does.
    sample_rate : int
        Rate (Hz) the extractor works at by default; other rates are resampled to it.
    sample_rate_rule : str
        How the rate can change (empty when fixed).
    weights : tuple of WeightsOption
        The weights choices, the default first.
    summary : str
        One line: network and layer.
    """

    name: str
    input_kind: str
    dim: int
    dim_rule: str
    sample_rate: int
    sample_rate_rule: str
    weights: tuple[WeightsOption, ...]
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (``specfusion extractors --json``)."""
        return dataclasses.asdict(self)


class Extractor(abc.ABC):
    """Base class of every feature extractor.

    Subclasses set the class attributes, take their hyper-parameters as keyword-only arguments in
    ``__init__`` and implement :meth:`prepare`, :meth:`embed` and :meth:`config`.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"vgg16"``.
    input_kind : {"image", "waveform"}
        What :meth:`prepare` produces: a normalised CHW image or a waveform.
    sample_rate : int
        Rate (Hz) of the mono waveform :meth:`prepare` expects.
    dim : int
        Length of each feature vector.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "image"
    sample_rate: int
    dim: int

    @abc.abstractmethod
    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """Front end for one mono float32 waveform at :attr:`sample_rate`; returns the network input."""

    @abc.abstractmethod
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Forward a stacked batch of prepared inputs; returns float32 features of shape (n, dim)."""

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Everything that changes the output (JSON-serialisable); hashed into the feature store."""

    @property
    def frame_dim(self) -> int:
        """Length of each frame embedding of :meth:`embed_frames` (default: :attr:`dim`; frame-based
        extractors whose pooling changes the clip dimension set it in ``__init__``)."""
        try:
            return self._frame_dim
        except AttributeError:
            return int(self.dim)

    @frame_dim.setter
    def frame_dim(self, value: int) -> None:
        self._frame_dim = int(value)

    def prepare_audio(self, waveform, sr: int) -> np.ndarray:
        """:meth:`prepare` for a mono waveform at any rate ``sr``: resampled with soxr to :attr:`sample_rate` first.

        Parameters
        ----------
        waveform : array-like, shape (samples,)
            Mono audio.
        sr : int
            Its sample rate in Hz.

        Raises
        ------
        ConfigError
            ``sr`` is not a positive integer.
        """
        from specfusion.data.audio import resample

        if (
            isinstance(sr, bool)
            or not isinstance(sr, (int, np.integer, float, np.floating))
            or sr <= 0
            or sr != int(sr)
        ):
            raise ConfigError(f"{self.name}: the sample rate must be a positive integer number of Hz, got {sr!r}")
        y = np.asarray(waveform, dtype=np.float32)
        return self.prepare(np.ascontiguousarray(resample(y, int(sr), int(self.sample_rate)), dtype=np.float32))

    def embed_frames(self, batch: np.ndarray) -> np.ndarray:
        """Time-varying embeddings of a batch of prepared inputs: float32 (n, frames, :attr:`frame_dim`).

        Default, for clip-level extractors: the clip embedding of :meth:`embed` as a single frame.
        """
        return np.asarray(self.embed(batch), dtype=np.float32)[:, None, :]

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Centre of each of the ``n_frames`` frames of :meth:`embed_frames`, in seconds from the clip start.

        Default (one frame for the whole clip): ``[nan]``, the time is the clip's centre, which only the
        caller knows (:mod:`specfusion.hear` puts it there). Frame-based extractors override this.
        """
        if int(n_frames) != 1:
            raise ConfigError(f"{self.name} gives one embedding per clip, not {n_frames} frames")
        return np.full(1, np.nan)

    @classmethod
    def describe(cls) -> ExtractorInfo:
        """Dimension, rate and weights of this extractor, without building its network or reading weights.

        Built-in extractors override this; the default reads class attributes ``dim`` and ``sample_rate``
        (0 when a subclass sets them only in ``__init__``) and lists no weights.
        """
        return ExtractorInfo(
            name=cls.name,
            input_kind=cls.input_kind,
            dim=int(getattr(cls, "dim", 0) or 0),
            dim_rule="",
            sample_rate=int(getattr(cls, "sample_rate", 0) or 0),
            sample_rate_rule="",
            weights=(),
            summary=(cls.__doc__ or "").strip().split("\n")[0],
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()!r})"


def register(name: str):
    """Class decorator that registers an :class:`Extractor` subclass under ``name``."""

    def decorator(cls: type[Extractor]) -> type[Extractor]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"extractor name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_families() -> None:
    for module in FAMILY_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a family not (yet) present in this installation
            if err.name != module:
                raise


def available_extractors() -> list[str]:
    """Names of every registered extractor, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def get_extractor_class(name: str) -> type[Extractor]:
    """The class registered under ``name``; :class:`ConfigError` naming the choices if unknown."""
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown extractor {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None


def weights_found(
    value: str, spec, *, packaged=None, how: str = "", note: str = "", options: str = ""
) -> WeightsOption:
    """A :class:`WeightsOption` for the file of ``spec`` (:class:`~specfusion.features.weights.WeightsSpec`): present
    when :func:`~specfusion.features.weights.local_weights_file` finds it (``packaged`` or the cache); ``how`` says
    how to get it otherwise (default: downloaded on first use)."""
    from specfusion.features.weights import cache_dir, is_pinned, local_weights_file

    path = local_weights_file(spec, packaged=packaged)
    if path is not None:
        where = str(path)
    else:
        how = how or (f"downloaded on first use from {spec.url}" if is_pinned(spec) else f"get it from {spec.url}")
        where = f"{how}, or put {spec.filename} in {cache_dir()}"
    return WeightsOption(value, spec.licence, path is not None, where, note, options)


#: The ``weights="none"`` choice: a random initialisation, nothing to find.
RANDOM_WEIGHTS = WeightsOption("none", "", None, "random initialisation from seed")


def describe_extractors() -> list[ExtractorInfo]:
    """:meth:`Extractor.describe` of every registered extractor, sorted by name (no network is built)."""
    return [get_extractor_class(name).describe() for name in available_extractors()]


def get_extractor(name: str, **kwargs) -> Extractor:
    """Instantiate the extractor registered under ``name`` with keyword-only options ``kwargs``."""
    return get_extractor_class(name)(**kwargs)


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def place_network(net, device, *, channels_last: bool):
    """``net`` in eval mode on ``device``, its weights in channels-last memory format if asked."""
    import torch

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(device=device, memory_format=memory_format).eval()
