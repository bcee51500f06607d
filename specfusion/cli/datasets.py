"""``specfusion datasets inspect``: classes, counts per fold and partition, problems found."""

from __future__ import annotations

import argparse

from specfusion.cli._common import add_command, add_dataset_arguments, finish_command, load_dataset_from_args

INSPECT_HELP = "print classes, counts per fold and partition, and problems found"
INSPECT_DESCRIPTION = "Load a dataset's meta data and print its classes, counts per fold and partition, and problems."
EXAMPLE = """example:
  specfusion datasets inspect --dataset csv --root ../shared/data/FSDD/fsdd.csv --group-column speaker"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "datasets", "inspect datasets", "Inspect datasets.", EXAMPLE)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = add_command(actions, "inspect", INSPECT_HELP, INSPECT_DESCRIPTION, EXAMPLE)
    add_dataset_arguments(inspect, missing_default="keep")
    finish_command(inspect, run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    table = load_dataset_from_args(args)
    print(table.summary())
    return 0
