"""``specfusion crnn --dataset NAME --root DIR --out DIR``: the paper's CRNN, one model per development fold.

Writes ``spectrograms-<hash>.npy`` (cache), ``fold<k>.pt`` checkpoints (a re-run skips finished folds),
``predictions.csv`` (out-of-fold development and mean-fused test probabilities), ``metrics.json``,
``report.md``, ``confusion_devel.png`` / ``confusion_test.png`` and ``model.sfm`` (the fold models, for
``specfusion predict``; docs/models.md). The final outputs are replaced as a set
(an output this run does not write is removed, never left from an earlier run); checkpoints whose
identity differs from this run's (items, labels, parameters, code) are retrained, never reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specfusion.cli._common import (
    add_command,
    add_dataset_arguments,
    add_short_argument,
    check_device,
    check_output_dir,
    finish_command,
    load_dataset_from_args,
    progress_enabled,
)
from specfusion.cli._spectrogram import add_spectrogram_arguments, spectrogram_options
from specfusion.errors import ConfigError

#: How many left-out items the summary lists before abbreviating.
MAX_LISTED = 50
#: The flag of each option :func:`check_options` checks that has one of its own (for the error line).
FLAGS = {"epochs": "--epochs", "lr": "--lr", "decay": "--decay", "batch_size": "--batch-size", "filters": "--filters",
         "average_epochs": "--average-epochs", "num_threads": "--threads", "seed": "--crnn-seed", "n_jobs": "--jobs"}  # fmt: skip

HELP = "train the paper's CRNN per development fold: predictions, metrics, confusion matrix"
DESCRIPTION = (
    "Train the paper's CRNN on Mel-spectrograms, one model per development fold (trained on the other "
    "folds); out-of-fold probabilities are the development predictions, the mean of the fold models' "
    "probabilities the test predictions. Also saves DIR/model.sfm (the fold models) for `specfusion predict`. "
    "Defaults per variant: see docs/crnn.md."
)
EXAMPLE = """example:
  specfusion crnn --dataset esc50 --root ../shared/data/ESC-50 --out runs/crnn-esc50 --epochs 30 --hop 0.08"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "crnn", HELP, DESCRIPTION, EXAMPLE)
    add_dataset_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder (cache, checkpoints, predictions, metrics)")
    parser.add_argument(
        "--variant",
        choices=("esc50", "dcase2017", "dcase2018"),
        help="architecture and defaults (default: the dataset's, else esc50)",
    )
    parser.add_argument("--epochs", type=int, help="epochs per fold (default: 100 esc50, 50 dcase2017, 30 dcase2018)")
    parser.add_argument(
        "--clip-db", type=float, help="clip spectrograms below this many dB (default -80; dcase2018 -60)"
    )
    parser.add_argument("--lr", type=float, help="initial learning rate (default 0.001; dcase2018 0.01)")
    parser.add_argument("--decay", type=float, default=0.002, help="per-update decay, lr/(1+decay*t) (default 0.002)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    parser.add_argument(
        "--filters", type=int, nargs="+", help="filters per convolutional block (default: docs/crnn.md)"
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="train with time shift, SpecAugment and mixup (not the paper's; measured with --epochs 150; "
        "docs/crnn.md#augmentation)",
    )
    parser.add_argument(
        "--average-epochs",
        type=int,
        default=0,
        metavar="N",
        help="return the average of the weights of the last N epochs (not the paper's; default 0: off)",
    )
    parser.add_argument(
        "--readout",
        choices=("last", "mean", "max"),
        help="GRU output -> class scores (default: the variant's; mean for esc50 and dcase2017, last for dcase2018)",
    )
    parser.add_argument(
        "--standardize",
        choices=("global", "band", "none"),
        help="input standardisation with the training folds' statistics: one mean/deviation, one per Mel band, "
        "or none (default: the variant's; band for esc50 and dcase2017, global for dcase2018)",
    )
    parser.add_argument(
        "--combine",
        choices=("mean", "max", "none"),
        default="mean",
        help="channel probabilities -> segment (default mean)",
    )
    parser.add_argument(
        "--only-folds", type=int, nargs="+", metavar="K", help="run only these development folds (quick checks)"
    )
    parser.add_argument("--sr", type=int, help="resample audio to this rate (default: the files' rate)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    # dest torch_threads: threads per fold model, not the command's total (cli.main's limit would cap --jobs to it)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        dest="torch_threads",
        help="CPU threads for torch per fold model (default 1: fastest on a shared 2-core machine)",
    )
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="folds trained at once, one process each (-1: one per core; 1: one after the other; "
                        "default: -1 on the CPU, 1 on a GPU); the results are the same bit for bit")  # fmt: skip
    parser.add_argument("--dask", metavar="ADDRESS",
                        help="train the folds as tasks on a Dask cluster (pip install 'specfusion[dask]'): local, "
                        "local:N or a scheduler address such as tcp://host:8786 (docs/distributed.md)")  # fmt: skip
    parser.add_argument("--name", default="CRNN", help="system name in the report")
    # --seed is the dataset option (generated folds); the CRNN seed is separate
    parser.add_argument("--crnn-seed", type=int, default=0, help="base seed; fold k uses seed + k (default 0)")
    add_spectrogram_arguments(parser)
    add_short_argument(parser)
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.models.crnn.parallel import default_jobs
    from specfusion.pipeline.steps import train_crnn_system

    check_output_dir(args.out)
    check_device(args.device)
    options = {
        "epochs": args.epochs, "lr": args.lr, "decay": args.decay, "batch_size": args.batch_size, "readout": args.readout,
        "average_epochs": args.average_epochs, "device": args.device, "num_threads": args.torch_threads,
        "seed": args.crnn_seed, "standardize": {"global": True, "none": False}.get(args.standardize, args.standardize),
        "n_jobs": args.jobs if args.jobs is not None else default_jobs(args.device),
    }  # fmt: skip
    if args.filters:
        options["filters"] = args.filters
    if args.augment:
        from specfusion.models.crnn import AUGMENTED

        options.update(AUGMENTED)
    check_options(options)
    table = load_dataset_from_args(args)
    variant = args.variant or (table.name if table.name in ("esc50", "dcase2017", "dcase2018") else "esc50")
    out = Path(args.out)
    step = train_crnn_system(
        table, out, name=args.name, variant=variant, clip_db=args.clip_db, sr=args.sr, combine=args.combine,
        folds=args.only_folds, progress=progress_enabled(args), short=args.short,
        spec_params=spectrogram_options(args) or None, dask=args.dask, **options,
    )  # fmt: skip
    metrics, left_out = step.metrics, step.metrics["left_out"]
    test = f", test {metrics['test']:.1f} %" if metrics["test"] is not None else ""
    scored = f" (on {left_out['of'] - left_out['n']} of {left_out['of']} items)" if left_out["n"] else ""
    print(
        f"{args.name} ({variant}): devel {metrics['metric']} {metrics['devel']:.1f} %{test}{scored}; written to {out}"
    )
    print(left_out_summary(step.fit.failures), end="")
    return 0


def check_options(options: dict) -> None:
    """The estimator's parameter constraints on the options' values, before any work starts.

    Raises
    ------
    ConfigError
        The first invalid value, its flag named at the start of the line.
    """
    from specfusion.models.crnn import CRNNClassifier
    from specfusion.models.crnn.estimator import check_parameter
    from specfusion.models.crnn.parallel import resolve_jobs

    for name, value in options.items():
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        try:
            if name == "n_jobs":
                resolve_jobs(value, 1)
            elif name in CRNNClassifier._parameter_constraints:
                check_parameter(name, value)
        except ConfigError as err:
            raise ConfigError(f"{FLAGS.get(name, name)} {shown}: {err}") from None


def left_out_summary(failures) -> str:
    """Lines listing the items left out (no spectrogram) with their reasons; empty when none."""
    if not failures:
        return ""
    lines = [f"{len(failures)} item(s) left out (their audio cannot be used; fix or remove them and re-run):"]
    lines += [f"  {uid}: {reason} [{path}]" for uid, reason, path in failures[:MAX_LISTED]]
    if len(failures) > MAX_LISTED:
        lines.append(f"  ... and {len(failures) - MAX_LISTED} more (metrics.json, left_out)")
    return "\n".join(lines) + "\n"
