"""Distributed: the same work on a Dask cluster (optional extra ``specfusion[dask]``).

Owns extraction on Dask (:mod:`~specfusion.distributed.extraction`, one task per store chunk, plus the
client helpers every Dask path uses) and the SVM search on Dask (:mod:`~specfusion.distributed.svm`).
Nothing imports Dask until one of these runs.
May import: the core, :mod:`specfusion.data`, :mod:`specfusion.features`, :mod:`specfusion.evaluation` and
:mod:`specfusion.models`.
"""
