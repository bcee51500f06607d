"""``specfusion svm STORE.h5 --out DIR``: the paper's linear SVM on a feature store.

C is chosen on a log grid (1e-9 .. 1) by the store's predefined development folds; writes
``predictions.csv`` (out-of-fold development and test decision values), ``metrics.json``,
``report.md``, ``confusion_devel.png`` / ``confusion_test.png`` and ``model.sfm``, the SVM refitted on the
whole development partition with the store's extractor, for ``specfusion predict`` (docs/models.md;
left out with a warning when the extractor cannot be rebuilt from the store's configuration).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from specfusion.cli._common import add_threads, add_verbosity, check_output_dir, progress_enabled

EXAMPLE = """example:
  specfusion svm features/esc50-lite0.h5 --out runs/svm-esc50-lite0
  specfusion svm features/esc50-lite0.h5 --out runs/svm-esc50-lite0 --dask tcp://scheduler:8786"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "svm",
        help="linear SVM on a feature store: out-of-fold and test predictions, metrics, confusion matrix",
        description="Standardisation + linear SVM (liblinear); C searched on a log grid from 1e-9 to 1 by the dataset's "
        "predefined development folds, then refitted on the whole development partition. Writes DIR/predictions.csv, "
        "DIR/metrics.json, DIR/report.md, DIR/confusion_*.png and DIR/model.sfm (the refit system, for `specfusion predict`); DIR is replaced as a whole (no leftovers of an earlier run).",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    add_verbosity(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from specfusion.evaluation.coverage import refuse_incomplete, store_coverage
    from specfusion.evaluation.metrics import write_evaluation
    from specfusion.evaluation.predictions import write_predictions
    from specfusion.features.store import FeatureStore
    from specfusion.models.svm import LinearSVM
    from specfusion.models.svm_protocol import svm_from_arrays
    from specfusion.pipeline.outputs import replaced_folder
    from specfusion.pipeline.systems import MODEL_FILE

    check_output_dir(args.out)
    store = FeatureStore.open(args.store)
    coverage = store_coverage(store)
    if not args.allow_incomplete:
        refuse_incomplete(
            coverage,
            what=str(args.store),
            hint="Finish the extraction (re-run `specfusion extract`), or pass --allow-incomplete.",
        )
    arrays = store.arrays()
    estimator = LinearSVM(
        c_grid=args.c_grid,
        per_decade=args.per_decade,
        metric=args.metric,
        max_iter=args.max_iter,
        solver=args.solver,
        n_jobs=args.threads or -1,
    )
    fits_on = contextlib.nullcontext()
    if args.dask:
        from specfusion.distributed.extraction import session

        fits_on = session(args.dask)  # every LinearSVM fit inside runs on this cluster
    with fits_on:
        result = svm_from_arrays(
            arrays, estimator=estimator, c_selection=args.c_selection, combine=args.combine, allow_incomplete=args.allow_incomplete,
            config={"store": str(Path(args.store).resolve()), "coverage": coverage.as_dict()},
            progress=progress_enabled(args) and "SVM",
        )  # fmt: skip
    out = Path(args.out)
    name = args.name or Path(args.store).stem
    model = _model_bytes(store, result.model)
    with replaced_folder(out) as new:
        write_predictions(new / "predictions.csv", result.predictions)
        if model is not None:
            (new / MODEL_FILE).write_bytes(model)
        metrics = write_evaluation(
            new, result.predictions, metric=arrays.metric or "accuracy", name=name,
            extra={"best_C": result.best_C, "fold_C": {str(k): c for k, c in result.fold_C.items()}, "c_search": result.model.cv_table()},
        )  # fmt: skip
    test = f", test {metrics['test']:.1f} %" if metrics["test"] is not None else ""
    print(
        f"{name}: best C = {result.best_C:g}; devel {metrics['metric']} {metrics['devel']:.1f} %{test}; written to {out}"
    )
    if model is not None:
        print(f"{name}: fitted system saved as {out / MODEL_FILE} (specfusion predict {out / MODEL_FILE} AUDIO...)")
    if not coverage.complete:
        print(
            f"{name}: INCOMPLETE: {coverage.headline()}; missing: {coverage.short_list()} (all listed in {out / 'report.md'})"
        )
    return 0


def _model_bytes(store, svm) -> bytes | None:
    """The model file of the refit SVM with the store's extractor, or None (with a warning) when the extractor
    cannot be rebuilt from the store's configuration."""
    import logging

    from specfusion.errors import SpecfusionError
    from specfusion.pipeline.systems import extractor_from_store_config, svm_system_bytes

    config = store.config
    try:
        extractor, options = extractor_from_store_config(config, device="cpu")
        return svm_system_bytes(svm, extractor, extractor_options=options, short=config.get("short", "pad"), batch_size=store.chunk_size,
                                name=str(config.get("extractor", "")))  # fmt: skip
    except SpecfusionError as err:
        logging.getLogger(__name__).warning("no model file saved: %s", err)
        return None
