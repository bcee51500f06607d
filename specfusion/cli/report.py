"""``specfusion report RUN_DIR``: re-render the report of a run from what is on disk."""

from __future__ import annotations

import argparse

from specfusion.cli._common import add_command, finish_command

HELP = "re-render report.md / report.html of a run folder"
DESCRIPTION = (
    "Re-render RUN_DIR/report.md, report.html and the best system's confusion matrix from results.json and the "
    "predictions files."
)
EXAMPLE = """example:
  specfusion report runs/esc50"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "report", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("run_dir", help="a run folder written by `specfusion run`")
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.evaluation.report import render_report

    md, page = render_report(args.run_dir)
    if not getattr(args, "quiet", False):
        print(md.read_text())
        print(f"written: {md}, {page}")
    return 0
