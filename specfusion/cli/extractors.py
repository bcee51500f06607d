"""``specfusion extractors``: every registered extractor with its dimension, rate, weights and licence.

Nothing is built or loaded: the facts come from each extractor class's
:meth:`~specfusion.features.extractors.base.Extractor.describe`, and "present" only says whether the weights file
is where the loading code looks for it (installed package or weights cache).
"""

from __future__ import annotations

import argparse
import json

from specfusion.cli._common import add_command, finish_command

HELP = "list the feature extractors: dimension, sample rate, weights, licence, weights present here"
DESCRIPTION = (
    "List every registered extractor (the names --extractor and a recipe's 'extractor' take) with "
    "its feature dimension, sample rate, weights choices, the licence of the weights and whether the weights "
    "file is on this machine (installed package or weights cache; no network is built, no file is hashed)."
)
EXAMPLE = """example:
  specfusion extractors --json     # machine-readable; without --json: a table"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "extractors", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.features.extractors.base import describe_extractors

    infos = describe_extractors()
    if args.json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
    else:
        print(format_table(infos))
    return 0


def _present(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def format_table(infos) -> str:
    """The listing: one row per extractor and weights choice, then each extractor's rules and file locations."""
    header = ("NAME", "INPUT", "DIM", "RATE (Hz)", "WEIGHTS", "PRESENT", "LICENCE OF THE WEIGHTS")
    rows = []
    for info in infos:
        dim = f"{info.dim}*" if info.dim_rule else str(info.dim)
        rate = f"{info.sample_rate}*" if info.sample_rate_rule else str(info.sample_rate)
        for i, option in enumerate(info.weights or [None]):
            first = i == 0
            value = "" if option is None else option.value + (f" ({option.options})" if option.options else "")
            rows.append((info.name if first else "", info.input_kind if first else "", dim if first else "",
                         rate if first else "", value, _present(None if option is None else option.present),
                         "" if option is None else option.licence))  # fmt: skip
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header) - 1)]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    ]
    lines += ["", "* varies with the options:"]
    for info in infos:
        for rule in (info.dim_rule, info.sample_rate_rule):
            if rule:
                lines.append(f"  {info.name}: {rule}")
    lines += ["", "weights files (PRESENT: found where the extractor looks; not hash-checked):"]
    for info in infos:
        for option in info.weights:
            if option.present is not None:
                note = f" [{option.note}]" if option.note else ""
                options = f" ({option.options})" if option.options else ""
                lines.append(f"  {info.name} {option.value}{options}: {option.where}{note}")
    return "\n".join(line.rstrip() for line in lines)
