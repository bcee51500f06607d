"""``specfusion svm STORE.h5 --out DIR``: the paper's linear SVM on a feature store.

C is chosen on a log grid (1e-9 .. 1) by the store's predefined development folds; writes
``predictions.csv`` (out-of-fold development and test decision values), ``metrics.json``,
``report.md``, ``confusion_devel.png`` / ``confusion_test.png`` and ``model.sfm``, the SVM refitted on the
whole development partition with the store's extractor, for ``specfusion predict`` (docs/models.md;
left out with a warning when the extractor cannot be rebuilt from the store's configuration).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specfusion.cli._common import add_command, add_threads, check_output_dir, finish_command, progress_enabled

HELP = "linear SVM on a feature store: out-of-fold and test predictions, metrics, confusion matrix"
DESCRIPTION = (
    "Standardisation + linear SVM (liblinear); C searched on a log grid from 1e-9 to 1 by the dataset's "
    "predefined development folds, then refitted on the whole development partition. Writes DIR/predictions.csv, "
    "DIR/metrics.json, DIR/report.md, DIR/confusion_*.png and DIR/model.sfm (the refit system, for "
    "`specfusion predict`); DIR is replaced as a whole (no leftovers of an earlier run)."
)
EXAMPLE = """example:
  specfusion svm features/esc50-lite0.h5 --out runs/svm-esc50-lite0
  specfusion svm features/esc50-lite0.h5 --out runs/svm-esc50-lite0 --dask tcp://scheduler:8786"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "svm", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("store", help="feature store (HDF5) written by `specfusion extract`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--metric", choices=("macro_f1", "accuracy"), default="macro_f1",
        help="criterion of the C search (default macro_f1, as the paper); the reported metric is the dataset's",
    )  # fmt: skip
    parser.add_argument("--c-grid", type=float, nargs="+", metavar="C", help="explicit C values (default: 1e-9 .. 1)")
    parser.add_argument(
        "--per-decade", type=int, default=1, help="grid values per decade of the default grid (default 1)"
    )
    parser.add_argument(
        "--c-selection", choices=("global", "nested"), default="global",
        help="C of the out-of-fold scores: chosen once on all development folds (paper) or per outer fold (nested)",
    )  # fmt: skip
    parser.add_argument(
        "--combine",
        choices=("mean", "max", "none"),
        default="mean",
        help="channel scores -> segment scores (default mean)",
    )
    parser.add_argument("--max-iter", type=int, default=1000, help="liblinear iteration limit (default 1000)")
    parser.add_argument(
        "--solver",
        choices=("newton", "liblinear"),
        default="newton",
        help="SVM solver (default newton: exact, fast; liblinear: the reference)",
    )
    parser.add_argument("--name", help="system name in the report (default: the store's file name)")
    parser.add_argument(
        "--allow-incomplete", action="store_true",
        help="score a store with pending or failed items on the items that have features (refused by default); "
        "every output then says how many items were scored and lists the missing ones",
    )  # fmt: skip
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="run the C search's fits and the refit as tasks on a Dask cluster (pip install "
                        "'specfusion[dask]'): local, local:N or a scheduler address such as tcp://host:8786 "
                        "(docs/distributed.md); the result is the same")  # fmt: skip
    add_threads(parser)
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.evaluation.coverage import Coverage
    from specfusion.models.svm import LinearSVM
    from specfusion.pipeline.steps import score_svm_system
    from specfusion.pipeline.systems import MODEL_FILE

    check_output_dir(args.out)
    estimator = LinearSVM(
        c_grid=args.c_grid,
        per_decade=args.per_decade,
        metric=args.metric,
        max_iter=args.max_iter,
        solver=args.solver,
        n_jobs=args.threads or -1,
    )
    estimator.check_params()  # a bad grid or parameter is one line before the store is opened
    out = Path(args.out)
    name = args.name or Path(args.store).stem
    step = score_svm_system(
        args.store, out, estimator=estimator, name=name, c_selection=args.c_selection, combine=args.combine,
        allow_incomplete=args.allow_incomplete,
        refusal_hint="Finish the extraction (re-run `specfusion extract`), or pass --allow-incomplete.",
        config={"store": str(Path(args.store).resolve())}, progress=progress_enabled(args) and "SVM", dask=args.dask or None,
    )  # fmt: skip
    metrics = step.metrics
    test = f", test {metrics['test']:.1f} %" if metrics["test"] is not None else ""
    print(
        f"{name}: best C = {step.fit.best_C:g}; devel {metrics['metric']} {metrics['devel']:.1f} %{test}; written to {out}"
    )
    if step.model_saved:
        print(f"{name}: fitted system saved as {out / MODEL_FILE} (specfusion predict {out / MODEL_FILE} AUDIO...)")
    coverage = Coverage.from_dict(step.predictions.config["coverage"])
    if not coverage.complete:
        print(
            f"{name}: INCOMPLETE: {coverage.headline()}; missing: {coverage.short_list()} (all listed in {out / 'report.md'})"
        )
    return 0
