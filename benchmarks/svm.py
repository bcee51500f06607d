"""Benchmark: the linear SVM's C search -- the Newton solver against liblinear -- and liblinear's settings.

Two modes on feature stores (e.g. those ``specfusion run`` writes under ``RUN_DIR/features/``):

``--protocol`` (the issue-13 check), per store, side by side in one run:

* the whole SVM protocol of a system (C search on the predefined folds over 1e-9..1, out-of-fold
  scores, refit: :func:`specfusion.models.svm_protocol.svm_from_arrays`) with ``solver="newton"`` and with
  ``solver="liblinear"`` -- today's runner settings otherwise (macro F1, ``n_jobs=-1``); printed: seconds,
  their ratio, the chosen C and the Devel score of each;
* exactness: at the Newton search's chosen C, fold ``--fold`` held out, the Correlation and largest
  difference of the validation items' decision values between the Newton fit and a converged liblinear
  fit (dual, ``--reference-max-iter`` iterations, tolerance 1e-6, row-space projection).

Without ``--protocol`` (the first measurement): one fit per C on the training items of one
development fold, for each liblinear setting (``rowspace``: the default, features projected onto the
span of the training items when they outnumber them; ``plain``: without; ``auto``: ``dual="auto"``,
10000 iterations) and ``newton``; printed per C and setting: seconds, validation accuracy, whether the
solver stopped at its limit, and the largest difference of decision values from ``plain``.

Ratios measured in one run are what to compare; the machine's load average is printed.

Usage::

    python benchmarks/svm.py STORE.h5 [STORE.h5 ...] --protocol [--solvers newton liblinear] [--jobs -1]
    python benchmarks/svm.py STORE.h5 [--fold 1] [--c 1e-4 1e-2 1] [--settings plain rowspace newton]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from specfusion.evaluation.metrics import evaluate_predictions  # noqa: E402
from specfusion.features.store import FeatureStore  # noqa: E402
from specfusion.models.svm import LinearSVM  # noqa: E402
from specfusion.models.svm_protocol import svm_from_arrays  # noqa: E402

SETTINGS = {
    "rowspace": {"solver": "liblinear"},
    "plain": {"solver": "liblinear", "rowspace": False},
    "auto": {"solver": "liblinear", "rowspace": False, "dual": "auto", "max_iter": 10000},
    "newton": {"solver": "newton"},
}


def load(path: Path):
    arrays = FeatureStore.open(path).arrays()
    dev = np.asarray(arrays.partitions) == "dev"
    X = np.asarray(arrays.X, dtype=np.float64)[dev]
    return arrays, X, np.asarray(arrays.labels, dtype=object)[dev], np.asarray(arrays.folds)[dev]


def per_c(args) -> None:
    arrays, X, y, folds = load(args.store[0])
    train, valid = folds != args.fold, folds == args.fold
    print(
        f"{args.store[0].name}: {int(train.sum())} training items x {X.shape[1]} features, {len(set(y))} classes; load {os.getloadavg()[0]:.2f}"
    )
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
            print(
                f"C={C:<8g} {name:<9} {seconds:7.1f} s  accuracy {accuracy:.4f}  {stopped:<19}  max |diff| {diff:.1e}",
                flush=True,
            )
    print("total over the C values: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in totals.items()))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (joblib workers once shut down)."""
    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


def shut_down_workers() -> None:
    """Stop joblib's reusable worker processes, so that their CPU time is counted (RUSAGE_CHILDREN)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def protocol(args) -> None:
    for path in args.store:
        arrays, X, y, folds = load(path)
        print(
            f"\n{path.name}: {len(X)} development items x {X.shape[1]} features, {len(set(y))} classes; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        runs = {}
        for solver in args.solvers:
            start, cpu = time.perf_counter(), cpu_seconds()
            result = svm_from_arrays(arrays, estimator=LinearSVM(metric="macro_f1", n_jobs=args.jobs, solver=solver))
            seconds = time.perf_counter() - start
            shut_down_workers()
            cpu = cpu_seconds() - cpu
            devel = evaluate_predictions(result.predictions, metric=arrays.metric)["devel"]
            runs[solver] = (seconds, result.best_C, devel, cpu)
            print(f"  {solver:<9} protocol {seconds:7.1f} s wall, {cpu:7.1f} s CPU  best C {result.best_C:g}  Devel {devel:.2f} %  "
                  f"not converged {result.model.n_not_converged_}  load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        if "newton" in runs and "liblinear" in runs:
            print(f"  speed-up newton vs liblinear: {runs['liblinear'][0] / runs['newton'][0]:.1f}x wall, "
                  f"{runs['liblinear'][3] / runs['newton'][3]:.1f}x CPU; same C: {runs['newton'][1] == runs['liblinear'][1]}; "
                  f"Devel difference {runs['newton'][2] - runs['liblinear'][2]:+.2f} points")  # fmt: skip
        if args.reference_max_iter:
            C = runs["newton"][1] if "newton" in runs else runs[args.solvers[0]][1]
            train, valid = folds != args.fold, folds == args.fold
            newton = LinearSVM(c_grid=[C]).fit(X[train], y[train]).decision_function(X[valid])
            start = time.perf_counter()
            ref_model = LinearSVM(c_grid=[C], solver="liblinear", max_iter=args.reference_max_iter, tol=1e-6).fit(
                X[train], y[train]
            )
            reference = ref_model.decision_function(X[valid])
            corr = float(np.corrcoef(newton.ravel(), reference.ravel())[0, 1])
            agree = float(np.mean(newton.argmax(axis=1) == reference.argmax(axis=1)))
            print(f"  exactness at C={C:g} (fold {args.fold} held out): correlation {corr:.6f}, max |diff| "
                  f"{np.abs(newton - reference).max():.2e} (scale {np.abs(reference).max():.2f}), same prediction {agree:.4f}; "
                  f"reference liblinear {time.perf_counter() - start:.1f} s, converged: {ref_model.n_not_converged_ == 0}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path, nargs="+")
    parser.add_argument("--protocol", action="store_true", help="whole SVM protocol per solver + exactness (issue 13)")
    parser.add_argument("--solvers", nargs="+", choices=("newton", "liblinear"), default=["newton", "liblinear"])
    parser.add_argument("--jobs", type=int, default=-1, help="n_jobs of LinearSVM (default -1, as the runner)")
    parser.add_argument(
        "--reference-max-iter", type=int, default=100000, help="iterations of the converged liblinear fit (0: skip)"
    )
    parser.add_argument("--fold", type=int, default=1, help="development fold held out for validation")
    parser.add_argument("--c", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["plain", "rowspace"])
    args = parser.parse_args()
    print(f"load {os.getloadavg()[0]:.2f}")
    protocol(args) if args.protocol else per_c(args)
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
