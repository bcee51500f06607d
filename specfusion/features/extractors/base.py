"""The extractor protocol and registry.

An extractor turns one mono waveform into one fixed-length feature vector, in two steps so the
extraction engine can overlap them:

* :meth:`Extractor.prepare` -- CPU-side front end for one item (e.g. Mel-spectrogram -> colour-mapped
  image, or padding a waveform); runs in worker threads, must not touch the network;
* :meth:`Extractor.embed` -- the network forward pass on a stacked batch of prepared inputs.

:meth:`Extractor.prepare_audio` runs the front end on a waveform of any sample rate (soxr resampling
first); :meth:`Extractor.embed_frames` and :meth:`Extractor.frame_times` give time-varying embeddings
and their times (frame-based extractors override them; the defaults treat the clip as one frame).

The registry (:func:`get_extractor`, :func:`available_extractors`) knows three kinds of names, looked up
in this order:

1. the built-in extractors, listed in :data:`BUILTIN_EXTRACTORS` (their modules are imported on the first
   lookup of one of their names, so importing this module imports no network code);
2. classes defined in code (a test, a benchmark, a notebook) and added with :func:`register`;
3. extractors of other installed packages, declared as entry points of the group
   :data:`ENTRY_POINT_GROUP` (``specfusion.extractors``), each named by its extractor name. An entry point
   is loaded only when its name is looked up; one that cannot be loaded is a :class:`ConfigError` naming it
   (and :func:`describe_extractors` leaves it out with a warning), so it never breaks other extractors.

A built-in name cannot be taken: :func:`register` refuses it, and an entry point with a built-in name is
ignored with a warning. An entry point names the extractor class, or a function that takes the name and
returns the class (as the image CNNs, one class for seven networks, do).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.metadata
import logging
from typing import Any, ClassVar

import numpy as np

from specfusion.errors import ConfigError

logger = logging.getLogger(__name__)

_IMAGE_CNNS = "specfusion.features.extractors.image_cnns:image_cnn_class"

#: The built-in extractors: name -> ``"module:object"``, the object being the extractor class or a function
#: of the name that returns it. A module is imported on the first lookup of one of its names.
BUILTIN_EXTRACTORS: dict[str, str] = {
    "aisfx": "specfusion.features.extractors.aisfx:AisfxExtractor",
    "birdnet": "specfusion.features.extractors.birdnet:BirdNetExtractor",
    "densenet121": _IMAGE_CNNS,
    "efficientnet_lite0": _IMAGE_CNNS,
    "efficientnet_lite1": _IMAGE_CNNS,
    "efficientnet_lite2": _IMAGE_CNNS,
    "openl3": "specfusion.features.extractors.openl3:OpenL3Extractor",
    "panns_cnn14": "specfusion.features.extractors.panns:PannsCnn14Extractor",
    "resnet50": _IMAGE_CNNS,
    "soundnet": "specfusion.features.extractors.soundnet:SoundNetExtractor",
    "vgg16": _IMAGE_CNNS,
    "vgg19": _IMAGE_CNNS,
    "yamnet": "specfusion.features.extractors.yamnet:YamnetExtractor",
}

#: Modules of the built-in extractors.
FAMILY_MODULES: tuple[str, ...] = tuple(sorted({target.partition(":")[0] for target in BUILTIN_EXTRACTORS.values()}))

#: Entry-point group through which installed packages add extractors (``name = "module:object"``).
ENTRY_POINT_GROUP = "specfusion.extractors"

#: Extractors defined in code and added with :func:`register` (none of the built-in ones).
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

    def own_runtime(self) -> str | None:
        """How :meth:`embed` runs when it is not a torch network, for logs and the store's run log.

        ``None`` (the default): :meth:`embed` is a torch forward, which
        :func:`~specfusion.features.runtimes.select_runtime` may run in torch or on ONNX Runtime. Extractors
        that run a graph of their own (an 8-bit ONNX graph, a TFLite model) return its description.
        """
        return None

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
    """Class decorator that adds an :class:`Extractor` subclass defined in code under ``name``.

    For classes that belong to no installed package (a test, a benchmark, a notebook); a package declares
    its extractors as entry points instead (see the module docstring). Sets the class's ``name``.

    Raises
    ------
    ConfigError
        ``name`` is a built-in extractor, or another class was registered under it.
    """
    if name in BUILTIN_EXTRACTORS:
        raise ConfigError(f"extractor name {name!r} is built in ({BUILTIN_EXTRACTORS[name]})")

    def decorator(cls: type[Extractor]) -> type[Extractor]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ConfigError(f"extractor name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_extractors() -> list[str]:
    """Names of every extractor: built in, registered in code and declared by installed packages, sorted.

    Nothing is imported: entry points are listed by name, not loaded.
    """
    return sorted({*BUILTIN_EXTRACTORS, *_REGISTRY, *_entry_points()})


def get_extractor_class(name: str) -> type[Extractor]:
    """The extractor class of ``name``, imported now if it was not yet.

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the choices), or an entry point that cannot be loaded or does
        not give an :class:`Extractor` subclass named ``name`` (the message names the entry point).
    """
    if name in BUILTIN_EXTRACTORS:
        module, _, attribute = BUILTIN_EXTRACTORS[name].partition(":")
        return _extractor_class(getattr(importlib.import_module(module), attribute), name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    entries = _entry_points().get(name)
    if not entries:
        raise ConfigError(f"unknown extractor {name!r}; choose one of: {', '.join(available_extractors())}")
    return _load_entry_point(name, entries)


def get_extractor(name: str, **kwargs) -> Extractor:
    """Instantiate the extractor ``name`` with keyword-only options ``kwargs``."""
    return get_extractor_class(name)(**kwargs)


def describe_extractors() -> list[ExtractorInfo]:
    """:meth:`Extractor.describe` of every extractor, sorted by name (no network is built).

    An entry point that cannot be loaded is left out, with a warning that names it.
    """
    infos = []
    for name in available_extractors():
        try:
            cls = get_extractor_class(name)
        except ConfigError as err:  # only an entry point fails here: the others are still listed
            logger.warning("%s", err)
            continue
        infos.append(cls.describe())
    return infos


def _entry_points() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """The entry points of :data:`ENTRY_POINT_GROUP` by name, without those a built-in name shadows."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in BUILTIN_EXTRACTORS:
            logger.warning("%s is ignored: %r is a built-in extractor", _describe_entry_point(entry), entry.name)
        else:
            found.setdefault(entry.name, []).append(entry)
    return found


def _load_entry_point(name: str, entries: list[importlib.metadata.EntryPoint]) -> type[Extractor]:
    if len(entries) > 1:
        declared = "; ".join(map(_describe_entry_point, entries))
        raise ConfigError(f"extractor {name!r} is declared by more than one installed package: {declared}")
    entry = entries[0]
    try:
        return _extractor_class(entry.load(), name)
    except Exception as err:  # anything a broken package raises: one line that names it
        raise ConfigError(
            f"extractor {name!r} cannot be loaded from {_describe_entry_point(entry)}: {type(err).__name__}: {err}"
        ) from err


def _extractor_class(target, name: str) -> type[Extractor]:
    """``target`` (a class, or a function of the name returning one) checked to be the extractor ``name``."""
    cls = target if isinstance(target, type) else target(name)
    if not (isinstance(cls, type) and issubclass(cls, Extractor)):
        raise TypeError(f"{cls!r} is not a subclass of {Extractor.__module__}.Extractor")
    if cls.name != name:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__}.name is {cls.name!r}, not {name!r}")
    return cls


def _describe_entry_point(entry: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    package = f" of the package {dist.name} {dist.version}" if dist else ""
    return f"the entry point {entry.name} = {entry.value!r}{package} (group {ENTRY_POINT_GROUP})"


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


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def place_network(net, device, *, channels_last: bool):
    """``net`` in eval mode on ``device``, its weights in channels-last memory format if asked."""
    import torch

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(device=device, memory_format=memory_format).eval()


def torch_device(device: str | None):
    """``device`` as a :class:`torch.device`; ``None``: :func:`default_device`."""
    import torch

    return torch.device(device or default_device())
