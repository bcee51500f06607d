"""specfusion: audio classification by cross-modal transfer learning and decision-level fusion.

Implements Amiriparian et al., "Towards cross-modal pre-training and learning tempo-spatial
characteristics for audio recognition with convolutional and recurrent neural networks",
EURASIP Journal on Audio, Speech, and Music Processing 2020:19.

The stages are packages (docs/architecture.md): :mod:`specfusion.data`, :mod:`specfusion.features`,
:mod:`specfusion.evaluation`, :mod:`specfusion.models`, :mod:`specfusion.distributed`, :mod:`specfusion.fusion`
and :mod:`specfusion.pipeline`. The names most scripts need are importable from here, each loaded on first use:

>>> from specfusion import load_audio, melspectrogram, load_dataset, get_extractor, load_system  # doctest: +SKIP
"""

__version__ = "0.2.0"

#: Public name -> the module that defines it (imported on first use: no work at import time).
_PUBLIC = {
    "load_audio": "specfusion.data.audio",
    "load_dataset": "specfusion.data.datasets",
    "melspectrogram": "specfusion.features.spectrogram",
    "get_extractor": "specfusion.features.extractors",
    "load_system": "specfusion.pipeline.systems",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """The public names of :data:`_PUBLIC`, imported on first use."""
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'specfusion' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
