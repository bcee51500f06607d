"""Benchmark: the linear SVM's fits over the paper's C grid, liblinear settings and the row-space projection.

On a feature store (e.g. one written by ``specfusion run`` under ``RUN_DIR/features/``), one fit of
:class:`specfusion.classifiers.LinearSVM` per C on the training items of one development fold, scored
on that fold, for each setting:

* ``rowspace``: the default (dual liblinear, at most 1000 iterations; features projected onto the
  span of the training items when they outnumber them);
* ``plain``: the same without the projection;
* ``auto``: ``dual="auto"`` and 10000 iterations (the first session's settings).

Printed per C and setting: seconds, validation accuracy, whether liblinear stopped at ``max_iter``,
and the largest difference of decision values from ``plain`` (the projection must not change them).
Ratios between settings measured in one run are what to compare; the machine's load average is printed.

Usage::

    python benchmarks/svm.py STORE.h5 [--fold 1] [--c 1e-4 1e-2 1] [--settings rowspace plain auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from specfusion.classifiers import LinearSVM  # noqa: E402
from specfusion.store import FeatureStore  # noqa: E402

SETTINGS = {
    "rowspace": {},
    "plain": {"rowspace": False},
    "auto": {"rowspace": False, "dual": "auto", "max_iter": 10000},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--fold", type=int, default=1, help="development fold held out for validation")
    parser.add_argument("--c", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["plain", "rowspace"])
    args = parser.parse_args()

    arrays = FeatureStore.open(args.store).arrays()
    dev = np.asarray(arrays.partitions) == "dev"
    X = np.asarray(arrays.X, dtype=np.float64)[dev]
    y, folds = np.asarray(arrays.labels, dtype=object)[dev], np.asarray(arrays.folds)[dev]
    train, valid = folds != args.fold, folds == args.fold
    print(f"{args.store.name}: {int(train.sum())} training items x {X.shape[1]} features, {len(set(y))} classes; load {os.getloadavg()[0]:.2f}")
    settings = sorted(args.settings, key=lambda name: name != "plain")  # plain first: the reference
    totals = dict.fromkeys(settings, 0.0)
    for C in args.c:
        reference = None
        for name in settings:
            start = time.perf_counter()
            model = LinearSVM(c_grid=[C], **SETTINGS[name]).fit(X[train], y[train])
            seconds = time.perf_counter() - start
            totals[name] += seconds
            scores = model.decision_function(X[valid])
            accuracy = float(np.mean(model.classes_[scores.argmax(axis=1)] == y[valid]))
            reference = scores if reference is None else reference
            diff = float(np.abs(scores - reference).max())
            stopped = "stopped at max_iter" if model.n_not_converged_ else "converged"
            print(f"C={C:<8g} {name:<9} {seconds:7.1f} s  accuracy {accuracy:.4f}  {stopped:<19}  max |diff| {diff:.1e}", flush=True)
    print("total over the C values: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
