"""Helpers shared by the sub-commands."""

from __future__ import annotations

import argparse

from specfusion.datasets import LOADERS, DatasetTable, load_dataset


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v``/``-q`` after the sub-command too (``specfusion extract ... -q``)."""
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors; no progress bars")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: every thread pool of the command together uses at most N threads (see cli.main)."""
    parser.add_argument(
        "--threads", type=int, metavar="N",
        help="threads in all: BLAS, OpenMP, torch/ONNX Runtime and parallel SVM fits together (default: every core)",
    )  # fmt: skip


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars unless ``-q`` was given."""
    return not getattr(args, "quiet", False)


def add_dataset_arguments(parser: argparse.ArgumentParser, *, missing_default: str = "error") -> None:
    """``--dataset``, ``--root`` and the loaders' options."""
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, choices=sorted(LOADERS), help="corpus layout, or your own folder/CSV")
    group.add_argument("--root", required=True, help="dataset root folder (for --dataset csv: the CSV file)")
    group.add_argument(
        "--missing",
        choices=("error", "report", "keep"),
        default=missing_default,
        help=f"rows whose audio file is missing: stop, drop and list them, or keep and list them (default {missing_default})",
    )
    group.add_argument("--channels", choices=("each", "mean"), help="DCASE 2018: every channel its own item (default) or down-mix")
    group.add_argument("--group-column", help="CSV: column whose values stay in one fold (e.g. speaker)")
    group.add_argument("--audio-root", help="CSV: base folder of relative paths (default: the CSV's folder)")
    group.add_argument("--folds", type=int, default=4, help="folder/CSV without folds: number of folds to make (default 4)")
    group.add_argument("--seed", type=int, default=0, help="seed of generated folds (default 0)")


def load_dataset_from_args(args: argparse.Namespace) -> DatasetTable:
    """Load the dataset named by :func:`add_dataset_arguments`' options."""
    options: dict = {}
    if args.dataset in ("esc50", "dcase2017", "dcase2018", "csv"):
        options["missing"] = args.missing
    if args.dataset in ("dcase2017", "dcase2018", "folder", "csv"):
        options["seed"] = args.seed
    if args.dataset in ("folder", "csv"):
        options["n_folds"] = args.folds
    if args.dataset == "dcase2018" and args.channels:
        options["channels"] = args.channels
    if args.dataset == "csv":
        options["group_column"] = args.group_column
        options["audio_root"] = args.audio_root
    return load_dataset(args.dataset, args.root, **options)
