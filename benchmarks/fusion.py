"""Benchmark: the cost of every fusion method on ESC-50-sized inputs.

``specfusion.fusion.fuse`` with each of :data:`~specfusion.fusion.FUSION_METHODS` -- the whole
protocol: the fusion fitted on all development items plus once without each development fold for the
honest out-of-fold Devel scores (``"auto"``: with its inner CV over the methods) -- on either

* generated scores shaped like ESC-50 (1600 items in 4 folds, 50 classes, 7 members of different
  quality: five SVM-like decision-value members, one probability member, one of pure noise), or
* the members' predictions files of a run folder (``--run-dir RUN_DIR``: every
  ``RUN_DIR/systems/*/predictions.csv``).

Printed per method: seconds (wall clock), the Devel score and the method ``"auto"`` chose. Threads are
limited to ``--threads`` (default 2, the machine's cores) with threadpoolctl; the meta-SVM's C search
uses as many joblib workers. The machine's load average is printed: compare ratios within one run.

Usage::

    python benchmarks/fusion.py [--run-dir RUN_DIR] [--methods weighted auto] [--threads 2]
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

from specfusion.evaluation import evaluate_predictions  # noqa: E402
from specfusion.fusion import FUSION_METHODS, fuse  # noqa: E402
from specfusion.predictions import Predictions, read_predictions  # noqa: E402


def generated_members(*, n_items: int = 1600, n_classes: int = 50, seed: int = 0) -> tuple[list[Predictions], list[str]]:
    """ESC-50-shaped members: decision values of strengths 0.4-2.0, one probability member, one noise member."""
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_items // n_classes)
    folds = np.tile(np.arange(1, 5), n_items // 4)[rng.permutation(n_items)]
    classes = [f"class{c:02d}" for c in range(n_classes)]
    names = [f"item{i}" for i in range(n_items)]
    members, member_names = [], []
    for strength, kind in ((2.0, "decision"), (1.0, "decision"), (0.8, "decision"), (0.6, "decision"), (0.4, "decision"), (1.2, "proba"), (0.0, "decision")):
        scores = rng.normal(size=(n_items, n_classes))
        scores[np.arange(n_items), labels] += strength
        if kind == "proba":
            scores = softmax(2 * scores, axis=1)
        members.append(Predictions(names=names, folds=folds, partitions=["dev"] * n_items, labels=np.asarray(classes, dtype=object)[labels], scores=scores, classes=classes, kind=kind))
        member_names.append(f"{kind} {strength}")
    return members, member_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="use RUN_DIR/systems/*/predictions.csv instead of generated scores")
    parser.add_argument("--methods", nargs="+", choices=FUSION_METHODS, default=list(FUSION_METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    if args.run_dir:
        paths = sorted(args.run_dir.glob("systems/*/predictions.csv"))
        members, names = [read_predictions(p) for p in paths], [p.parent.name for p in paths]
    else:
        members, names = generated_members()
    n, k = members[0].scores.shape
    print(f"{len(members)} members, {n} items, {k} classes; {args.threads} threads; load {os.getloadavg()[0]:.2f}")
    print(f"{'method':<16} {'seconds':>8} {'Devel':>6}  chosen")
    with threadpool_limits(args.threads):
        for method in args.methods:
            options = {"n_jobs": args.threads} if method == "stacking-svm" else {}
            start = time.perf_counter()
            result = fuse(members, method=method, system_names=names, metric=args.metric, **options)
            seconds = time.perf_counter() - start
            devel = evaluate_predictions(result.predictions, metric=args.metric)["devel"]
            print(f"{method:<16} {seconds:8.1f} {devel:6.1f}  {result.chosen} {result.fold_choices or ''}", flush=True)


if __name__ == "__main__":
    main()
