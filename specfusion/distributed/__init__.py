"""Distributed: the same work on a Dask cluster (optional extra ``specfusion[dask]``).

Owns the client helpers every Dask path uses (:mod:`~specfusion.distributed.client`), extraction on Dask
(:mod:`~specfusion.distributed.extraction`, one task per store chunk), the SVM search on Dask
(:mod:`~specfusion.distributed.svm`) and the CRNN's fold models on Dask (:mod:`~specfusion.distributed.crnn`).
Nothing imports Dask until one of these runs.
May import: the core, :mod:`specfusion.data`, :mod:`specfusion.features`, :mod:`specfusion.evaluation` and
:mod:`specfusion.models`.
"""
