"""Feature extractors: image CNNs on spectrogram images (DEEP SPECTRUM) and audio-pretrained nets."""

from specfusion.extractors.base import (
    Extractor,
    available_extractors,
    get_extractor,
    get_extractor_class,
    register,
)

__all__ = ["Extractor", "available_extractors", "get_extractor", "get_extractor_class", "register"]
