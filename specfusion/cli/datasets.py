"""``specfusion datasets inspect``: classes, counts per fold and partition, problems found."""

from __future__ import annotations

import argparse

from specfusion.cli._common import add_dataset_arguments, add_verbosity, load_dataset_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("datasets", help="inspect datasets", description="Inspect datasets.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="print classes, counts per fold and partition, and problems found",
        description="Load a dataset's meta data and print its classes, counts per fold and partition, and problems.",
    )
    add_dataset_arguments(inspect, missing_default="keep")
    add_verbosity(inspect)
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    table = load_dataset_from_args(args)
    print(table.summary())
    return 0
