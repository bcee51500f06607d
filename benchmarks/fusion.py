"""Benchmark: the cost of every fusion method on ESC-50-sized inputs.

``specfusion.fusion.methods.fuse`` with each of :data:`~specfusion.fusion.methods.FUSION_METHODS` -- the whole
protocol: the fusion fitted on all development items plus once without each development fold for the
honest out-of-fold Devel scores (``"auto"``: with its inner CV over the methods) -- on either

* generated scores shaped like ESC-50 (1600 items in 4 folds, 50 classes, 7 members of different
  quality: five SVM-like decision-value members, one probability member, one of pure noise), or
* the members' predictions files of a run folder (``--run-dir RUN_DIR``: every
  ``RUN_DIR/systems/*/predictions.csv``).

With ``--recipe RECIPE --run-dir RUN_DIR`` every fusion group of the recipe is measured on the
members' predictions files that exist in the run folder (``systems/<slug>/predictions.csv``; members
without one are listed as missing): the table of docs/results.md, Devel of the best member beside each
method's honest (nested) Devel.

Printed per method: seconds (wall clock), the Devel score and the method ``"auto"`` chose. Threads are
limited to ``--threads`` (default 2, the machine's cores) with threadpoolctl; the meta-SVM's C search
uses as many joblib workers. The machine's load average is printed: compare ratios within one run.

Usage::

    python benchmarks/fusion.py [--run-dir RUN_DIR] [--methods weighted auto] [--threads 2]
    python benchmarks/fusion.py --recipe recipes/esc50-offline.toml --run-dir RUN_DIR
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

from specfusion.evaluation.metrics import evaluate_predictions  # noqa: E402
from specfusion.evaluation.predictions import Predictions, read_predictions  # noqa: E402
from specfusion.fusion.methods import FUSION_METHODS, fuse  # noqa: E402


def generated_members(
    *, n_items: int = 1600, n_classes: int = 50, seed: int = 0
) -> tuple[list[Predictions], list[str]]:
    """ESC-50-shaped members: decision values of strengths 0.4-2.0, one probability member, one noise member."""
    from scipy.special import softmax

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_items // n_classes)
    folds = np.tile(np.arange(1, 5), n_items // 4)[rng.permutation(n_items)]
    classes = [f"class{c:02d}" for c in range(n_classes)]
    names = [f"item{i}" for i in range(n_items)]
    members, member_names = [], []
    for strength, kind in (
        (2.0, "decision"),
        (1.0, "decision"),
        (0.8, "decision"),
        (0.6, "decision"),
        (0.4, "decision"),
        (1.2, "proba"),
        (0.0, "decision"),
    ):
        scores = rng.normal(size=(n_items, n_classes))
        scores[np.arange(n_items), labels] += strength
        if kind == "proba":
            scores = softmax(2 * scores, axis=1)
        members.append(
            Predictions(
                names=names,
                folds=folds,
                partitions=["dev"] * n_items,
                labels=np.asarray(classes, dtype=object)[labels],
                scores=scores,
                classes=classes,
                kind=kind,
            )
        )
        member_names.append(f"{kind} {strength}")
    return members, member_names


def run_methods(members, names, methods, *, metric: str, threads: int) -> dict[str, tuple[float, float, str]]:
    """{method: (Devel %, seconds, chosen method)} of ``fuse`` on ``members``."""
    out = {}
    for method in methods:
        options = {"n_jobs": threads} if method == "stacking-svm" else {}
        start = time.perf_counter()
        result = fuse(members, method=method, system_names=names, metric=metric, **options)
        seconds = time.perf_counter() - start
        devel = evaluate_predictions(result.predictions, metric=metric)["devel"]
        chosen = result.chosen + (f" {sorted(set(result.fold_choices.values()))}" if result.fold_choices else "")
        out[method] = (devel, seconds, chosen)
    return out


def recipe_groups(recipe_path: Path, run_dir: Path, methods, *, metric: str, threads: int) -> None:
    """One Markdown row per fusion group of the recipe: best member, then every method's Devel."""
    from specfusion.pipeline.recipes import load_recipe, split_best
    from specfusion.pipeline.runner import PREDICTIONS_FILE, slug

    recipe = load_recipe(recipe_path)
    seen: dict[tuple, dict] = {}
    print("| fusion group | members (found) | best member | " + " | ".join(methods) + " |")
    print("|---|---|---:|" + "---:|" * len(methods))
    for fusion in recipe.fusions:
        specs = recipe.select(tuple(split_best(s)[1] for s in fusion.members))
        paths = {s.name: run_dir / "systems" / slug(s.name) / PREDICTIONS_FILE for s in specs}
        found = [name for name, path in paths.items() if path.is_file()]
        missing = [name for name in paths if name not in found]
        if not found:
            print(f"| {fusion.name} | none of {len(paths)} | | " + " | ".join("" for _ in methods) + " |")
            continue
        members = [read_predictions(paths[name]) for name in found]
        member_devel = {name: evaluate_predictions(p, metric=metric)["devel"] for name, p in zip(found, members)}
        top = max(member_devel, key=member_devel.get)
        key = tuple(found)
        if key not in seen:
            seen[key] = run_methods(members, found, methods, metric=metric, threads=threads)
        cells = [
            f"{seen[key][m][0]:.1f} ({seen[key][m][1]:.0f} s{', ' + seen[key][m][2] if m == 'auto' else ''})"
            for m in methods
        ]
        label = f"{len(found)} of {len(paths)}" + (f", without {', '.join(missing)}" if missing else "")
        print(f"| {fusion.name} | {label} | {member_devel[top]:.1f} ({top}) | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run-dir", type=Path, help="use RUN_DIR/systems/*/predictions.csv instead of generated scores"
    )
    parser.add_argument("--methods", nargs="+", choices=FUSION_METHODS, default=list(FUSION_METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--recipe", type=Path, help="measure every fusion group of this recipe (needs --run-dir)")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    if args.recipe:
        if not args.run_dir:
            parser.error("--recipe needs --run-dir")
        print(f"{args.recipe} on {args.run_dir}; {args.metric}; {args.threads} threads; load {os.getloadavg()[0]:.2f}")
        with threadpool_limits(args.threads):
            recipe_groups(args.recipe, args.run_dir, args.methods, metric=args.metric, threads=args.threads)
        return

    if args.run_dir:
        paths = sorted(args.run_dir.glob("systems/*/predictions.csv"))
        members, names = [read_predictions(p) for p in paths], [p.parent.name for p in paths]
    else:
        members, names = generated_members()
    n, k = members[0].scores.shape
    print(f"{len(members)} members, {n} items, {k} classes; {args.threads} threads; load {os.getloadavg()[0]:.2f}")
    print(
        "members' Devel: "
        + ", ".join(
            f"{name} {evaluate_predictions(p, metric=args.metric)['devel']:.1f}" for name, p in zip(names, members)
        )
    )
    print(f"{'method':<16} {'seconds':>8} {'Devel':>6}  chosen")
    with threadpool_limits(args.threads):
        for method in args.methods:
            devel, seconds, chosen = run_methods(members, names, [method], metric=args.metric, threads=args.threads)[
                method
            ]
            print(f"{method:<16} {seconds:8.1f} {devel:6.1f}  {chosen}", flush=True)


if __name__ == "__main__":
    main()
