"""Data: which audio files a dataset has (labels, folds, partitions) and how one file is read.

Owns :mod:`specfusion.data.audio` (loading, resampling, channel policy) and :mod:`specfusion.data.datasets`
(ESC-50, DCASE 2017/2018, a user's folder or CSV, all as one :class:`~specfusion.data.datasets.DatasetTable`).
May import: the core (``specfusion.errors``, ``specfusion.identity``, ``specfusion.threads``, ``specfusion.memory``,
``specfusion.figures``) only.
"""
