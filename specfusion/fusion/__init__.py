"""Fusion: decision-level fusion of systems' predictions.

Owns the fusion methods and their protocol (:mod:`~specfusion.fusion.methods`): the paper's stacking
meta-SVM, calibrated mean, weighted log-linear pool, logistic-regression stacking, auto.
May import: the core, :mod:`specfusion.data`, :mod:`specfusion.evaluation` and :mod:`specfusion.models`.
"""
