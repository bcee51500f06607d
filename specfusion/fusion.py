"""Decision-level fusion by stacking (Amiriparian et al. 2020, section 3.4).

The per-class scores of several base systems -- CRNN probabilities and SVM decision values, read from
their predictions files -- are concatenated into meta-features, and a meta linear SVM (standardisation,
C on the 1e-9...1 log grid chosen by the dataset's predefined development folds) is trained on them.

No test information reaches any choice: the meta-features of development items are the base systems'
**out-of-fold** scores, the C search and the refit use development items only, and test items are only
scored at the end. The fusion's own development number is, like every base system's, a 4-fold CV result
over out-of-fold meta-scores (:func:`specfusion.classifiers.svm_fold_protocol`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from specfusion.classifiers import FoldResult, LinearSVM, svm_fold_protocol
from specfusion.errors import ConfigError, StoreError
from specfusion.predictions import Predictions


def align_systems(systems: Sequence[Predictions], *, system_names: Sequence[str] | None = None) -> list[Predictions]:
    """The predictions of every system in the item order of the first, after checking they agree.

    Every system must cover the same items with the same folds, partitions, true labels and classes;
    otherwise a :class:`StoreError` names the first disagreeing system and item.
    """
    if not systems:
        raise ConfigError("fusion needs at least one system")
    names = system_names or [f"system {i + 1}" for i in range(len(systems))]
    reference = systems[0]
    aligned = [reference]
    for name, other in zip(names[1:], systems[1:]):
        if list(other.classes) != list(reference.classes):
            raise StoreError(f"{name}: classes differ from {names[0]}'s ({other.classes[:3]}... vs {reference.classes[:3]}...)")
        if len(other) != len(reference):
            raise StoreError(f"{name}: {len(other)} items, {names[0]} has {len(reference)}")
        other = other.align(reference.names)
        for field in ("folds", "partitions", "labels"):
            differ = np.flatnonzero(np.asarray(getattr(other, field)) != np.asarray(getattr(reference, field)))
            if differ.size:
                i = differ[0]
                raise StoreError(f"{name}: item {reference.names[i]!r} has {field[:-1]} {getattr(other, field)[i]!r}, {names[0]} has {getattr(reference, field)[i]!r}")
        aligned.append(other)
    return aligned


def meta_features(systems: Sequence[Predictions]) -> np.ndarray:
    """Concatenate the systems' score columns: shape (n_items, sum of their class counts)."""
    return np.hstack([np.asarray(p.scores, dtype=np.float64) for p in systems])


def stack(
    systems: Sequence[Predictions],
    *,
    system_names: Sequence[str] | None = None,
    metric: str = "macro_f1",
    per_decade: int = 1,
    estimator: LinearSVM | None = None,
    config: dict | None = None,
    progress: bool | str = False,
) -> FoldResult:
    """Stacking fusion of base systems' predictions with a meta linear SVM.

    Parameters
    ----------
    systems : sequence of Predictions
        Base systems' predictions (out-of-fold development scores + test scores), same items.
    system_names : sequence of str, optional
        Names for messages and the fusion's configuration.
    metric : {"macro_f1", "accuracy"}
        Criterion of the C search (the paper optimises macro F1).
    per_decade : int
        C grid density on 1e-9...1.
    estimator : LinearSVM, optional
        Meta-classifier template (overrides ``metric`` and ``per_decade``).
    config : dict, optional
        Extra configuration to record.
    progress : bool or str
        A progress bar of the meta-SVM's fits (a string: its description).

    Returns
    -------
    FoldResult
        ``predictions`` holds the fusion's out-of-fold development and test decision values.
    """
    names = list(system_names) if system_names is not None else [f"system {i + 1}" for i in range(len(systems))]
    aligned = align_systems(systems, system_names=names)
    reference = aligned[0]
    X = meta_features(aligned)
    template = estimator if estimator is not None else LinearSVM(metric=metric, per_decade=per_decade)
    fusion_config = {
        "system": "stacking",
        "members": names,
        "member_kinds": [p.kind for p in aligned],
        "member_configs": [p.config for p in aligned],
        **(config or {}),
    }
    return svm_fold_protocol(
        X, reference.labels, reference.folds, reference.partitions,
        names=list(reference.names), classes=list(reference.classes), estimator=template, config=fusion_config, progress=progress,
    )  # fmt: skip
