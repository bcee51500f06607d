"""Command-line interface: a thin layer over the Python API.

Each sub-command lives in its own module under :mod:`specfusion.cli` with a ``register(subparsers)``
function that adds its parser and sets ``func`` to a callable ``func(args) -> int``.
Exit codes: 0 ok, 1 failed (a :class:`~specfusion.errors.SpecfusionError`), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from specfusion import __version__
from specfusion.errors import SpecfusionError

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "specfusion.cli.datasets",
    "specfusion.cli.melspec",
    "specfusion.cli.extract",
    "specfusion.cli.extractors",
    "specfusion.cli.export",
    "specfusion.cli.svm",
    "specfusion.cli.crnn",
    "specfusion.cli.finetune",
    "specfusion.cli.run",
    "specfusion.cli.report",
    "specfusion.cli.predict",
]

log = logging.getLogger("specfusion")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="specfusion",
        description="Audio classification by cross-modal transfer learning and decision-level fusion.",
    )
    parser.add_argument("--version", action="version", version=f"specfusion {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)


def os_error_line(err: OSError) -> str:
    """One line for an operating-system error: what was refused, where, and (for a full disk) what to do."""
    import errno

    where = f"{err.filename}: " if getattr(err, "filename", None) else ""
    text = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return f"{where}no space left on device ({text}); free some space and run the same command again"
    return f"{where}{text}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.verbose, args.quiet)
    try:
        from specfusion.threads import limit_threads

        with limit_threads(getattr(args, "threads", None)):  # --threads of the computing sub-commands
            return int(args.func(args) or 0)
    except SpecfusionError as err:
        from specfusion.cli._common import flag_hint

        print(f"specfusion: error: {err}{flag_hint(err)}", file=sys.stderr)
        return 1
    except OSError as err:  # the system refused (disk full, permission denied ...): one line, no traceback
        print(f"specfusion: error: {os_error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("specfusion: interrupted", file=sys.stderr)
        return 130
