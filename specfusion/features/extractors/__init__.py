"""Feature extractors: image CNNs on spectrogram images (DEEP SPECTRUM) and audio-pretrained nets."""

from specfusion.features.extractors.base import (
    Extractor,
    ExtractorInfo,
    available_extractors,
    describe_extractors,
    get_extractor,
    get_extractor_class,
    register,
)

__all__ = [
    "Extractor",
    "ExtractorInfo",
    "available_extractors",
    "describe_extractors",
    "get_extractor",
    "get_extractor_class",
    "register",
]
