"""Features: audio to feature vectors, and the stores that keep them.

Owns the paper's Mel-spectrogram (:mod:`~specfusion.features.spectrogram`), spectrogram images
(:mod:`~specfusion.features.images`, DEEP SPECTRUM's own path in :mod:`~specfusion.features.deepspectrum_image`),
the networks (:mod:`~specfusion.features.nets`) and their weights (:mod:`~specfusion.features.weights`), the
extractors (:mod:`~specfusion.features.extractors`), inference runtimes (:mod:`~specfusion.features.runtimes`),
the extraction engine (:mod:`~specfusion.features.extraction`), the feature store
(:mod:`~specfusion.features.store`) and its exports (:mod:`~specfusion.features.export`).
May import: the core and :mod:`specfusion.data`.
"""
