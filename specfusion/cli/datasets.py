"""``specfusion datasets inspect``: classes, counts per fold and partition, problems found."""

from __future__ import annotations

import argparse

from specfusion.cli._common import add_dataset_arguments, add_verbosity, load_dataset_from_args

EXAMPLE = """example:
  specfusion datasets inspect --dataset csv --root ../shared/data/FSDD/fsdd.csv --group-column speaker"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("datasets", help="inspect datasets", description="Inspect datasets.", epilog=EXAMPLE,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="print classes, counts per fold and partition, and problems found",
        description="Load a dataset's meta data and print its classes, counts per fold and partition, and problems.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_arguments(inspect, missing_default="keep")
    add_verbosity(inspect)
    inspect.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    table = load_dataset_from_args(args)
    print(table.summary())
    return 0
