"""Feature extractors: image CNNs on spectrogram images (DEEP SPECTRUM) and audio-pretrained nets.

Extractors are looked up by name (:func:`get_extractor`): the built-in ones are listed in
:data:`~specfusion.features.extractors.base.BUILTIN_EXTRACTORS`, other packages add theirs through the
entry-point group ``specfusion.extractors`` (see :mod:`specfusion.features.extractors.base`).
"""

from specfusion.features.extractors.base import (
    BUILTIN_EXTRACTORS,
    ENTRY_POINT_GROUP,
    Extractor,
    ExtractorInfo,
    available_extractors,
    describe_extractors,
    get_extractor,
    get_extractor_class,
    register,
)

__all__ = [
    "BUILTIN_EXTRACTORS",
    "ENTRY_POINT_GROUP",
    "Extractor",
    "ExtractorInfo",
    "available_extractors",
    "describe_extractors",
    "get_extractor",
    "get_extractor_class",
    "register",
]
