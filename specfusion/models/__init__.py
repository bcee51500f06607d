"""Models: the classifiers and their fold protocols.

Owns the linear SVM (:mod:`~specfusion.models.svm`, its solver :mod:`~specfusion.models.svm_solver`), the SVM
fold protocol (:mod:`~specfusion.models.svm_protocol`), the CRNN (:mod:`~specfusion.models.crnn`: estimator,
variants, its fold protocol and spectrogram cache, folds in parallel processes) and training-time
augmentation (:mod:`~specfusion.models.augment`).
May import: the core, :mod:`specfusion.data`, :mod:`specfusion.features` and :mod:`specfusion.evaluation`.
"""
