"""Helpers shared by the sub-commands: their parsers, common options, argument types and checks of outputs and devices.

Every check here turns a user's mistake into one clear line (``ConfigError`` -> exit 1, or argparse's
usage error -> exit 2) before any work starts, never a traceback after it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from specfusion.data.datasets import LOADERS, DatasetTable, load_dataset
from specfusion.errors import ConfigError

#: Library parameters named in error messages (``SpecfusionError.parameters``) -> the command line's way to set
#: them; ``{value}`` is the value the error suggests.
PARAMETER_FLAGS = {
    "missing": "--missing {value}",
    "short": "--short {value}",
    "allow_incomplete": "--allow-incomplete",
    "n_folds": "--folds",
    "group_column": "--group-column",
    "weights": "--weights {value}",
    "weights_path": "--weights {value}",
    "store_path": "--out",
    "extract.store_path": "`specfusion extract ... --out {value}`",
    "run_recipe.out": "`specfusion run RECIPE --out {value}`",
}


def flag_hint(err: BaseException) -> str:
    """The command-line flags for the parameters an error advises on, e.g. ``" [command line: --missing report]"``."""
    hints = []
    for name, value in getattr(err, "parameters", {}).items():
        template = PARAMETER_FLAGS.get(name)
        if template is None:
            continue
        if value is None or value is True:
            hint = template.replace(" {value}", "")
        else:
            hint = template.format(value=value)
        if hint not in hints:
            hints.append(hint)
    return f" [command line: {'; '.join(hints)}]" if hints else ""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def fold_count(text: str) -> int:
    """argparse type: a number of folds, an integer >= 2 (cross-validation needs two folds at least)."""
    return _int_at_least(text, 2, what="number of folds")


def parse_number(text: str, kind: type[int] | type[float]) -> int | float:
    """argparse helper: ``text`` as an ``int`` or a ``float``.

    Parameters
    ----------
    text : str
        The value as typed.
    kind : {int, float}
        The type to convert to.

    Returns
    -------
    int or float
        The value.

    Raises
    ------
    argparse.ArgumentTypeError
        ``text`` is no integer (``int``) or no number (``float``); argparse makes it a usage error (exit 2).
    """
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid {'integer' if kind is int else 'number'} {text!r}") from None


def _int_at_least(text: str, low: int, *, what: str = "value") -> int:
    value = parse_number(text, int)
    if value < low:
        raise argparse.ArgumentTypeError(f"{what} must be at least {low}, got {value}")
    return value


def add_short_argument(parser: argparse.ArgumentParser) -> None:
    """``--short {pad,error}``: the policy for clips shorter than one analysis window."""
    parser.add_argument("--short", choices=("pad", "error"), default="pad",
                        help="clips shorter than one analysis window (0.32 s): zero-pad them to one window "
                        "(default) or record them as failed items")  # fmt: skip


def check_device(device: str | None) -> None:
    """ConfigError unless ``device`` is a torch device this machine has (``None``: the default, fine).

    Catches ``--device nope`` and ``--device cuda`` on a CPU-only torch before any work starts.
    """
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a torch device; use e.g. cpu, cuda or cuda:0") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is built for the CPU only" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ConfigError(f"--device {device}: {build}; use --device cpu (or leave --device out)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: torch sees no MPS device; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: unsupported device type {parsed.type!r}; use cpu or cuda")


def check_output_file(path, *, option: str = "--out") -> Path:
    """ConfigError unless a file can be written at ``path`` (creating missing parent folders).

    Refused: ``path`` is a folder; a parent is a file; the nearest existing parent is not writable; an
    existing ``path`` is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out'}")
    _check_writable_parent(path, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path}: the file exists and is not writable (permission denied)")
    return path


def check_output_dir(path, *, option: str = "--out") -> Path:
    """ConfigError unless ``path`` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: the folder is not writable (permission denied)")
        return path
    _check_writable_parent(path, option)
    return path


def _check_writable_parent(path: Path, option: str) -> None:
    parent = path.absolute().parent
    while not parent.exists():
        if parent.is_symlink():
            raise ConfigError(f"{option} {path}: {parent} is a dangling symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied)")


def add_command(
    subparsers,
    name: str,
    help: str,
    description: str,
    example: str,
    *,
    formatter_class: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter,
) -> argparse.ArgumentParser:
    """Add a sub-command's parser with its help line, description and example.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``add_subparsers()`` returned: the top level's, or a command's own (``datasets inspect``).
    name : str
        The command's name on the command line.
    help : str
        One line for the list of commands in the parent's ``--help``.
    description : str
        The paragraph at the top of the command's ``--help``.
    example : str
        The epilog: ``example:`` and command lines to copy, printed as written.
    formatter_class : type, default argparse.RawDescriptionHelpFormatter
        Formats the ``--help`` output; the default keeps the description and the example as written.

    Returns
    -------
    argparse.ArgumentParser
        The command's parser: add its options, then call :func:`finish_command`.
    """
    return subparsers.add_parser(
        name, help=help, description=description, epilog=example, formatter_class=formatter_class
    )


def finish_command(parser: argparse.ArgumentParser, run) -> None:
    """Add ``-v``/``-q`` and set ``run(args) -> int`` as what :func:`specfusion.cli.main` calls.

    Called after the command's own options, so that ``--help`` lists ``-v``/``-q`` last.
    """
    add_verbosity(parser)
    parser.set_defaults(func=run)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Accept ``-v``/``-q`` after the sub-command too (``specfusion extract ... -q``)."""
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors; no progress bars"
    )


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
    group.add_argument(
        "--dataset", required=True, choices=sorted(LOADERS), help="corpus layout, or your own folder/CSV"
    )
    group.add_argument("--root", required=True, help="dataset root folder (for --dataset csv: the CSV file)")
    group.add_argument(
        "--missing",
        choices=("error", "report", "keep"),
        default=missing_default,
        help=f"rows whose audio file is missing: stop, drop and list them, or keep and list them (default {missing_default})",
    )
    group.add_argument(
        "--channels", choices=("each", "mean"), help="DCASE 2018: every channel its own item (default) or down-mix"
    )
    group.add_argument("--group-column", help="CSV: column whose values stay in one fold (e.g. speaker)")
    group.add_argument("--audio-root", help="CSV: base folder of relative paths (default: the CSV's folder)")
    group.add_argument(
        "--folds",
        type=fold_count,
        default=4,
        help="folder/CSV without folds: number of folds to make (at least 2; default 4)",
    )
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
