"""What the benchmark scripts share: where the real data are, as the tests find them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: The project folder (the benchmark scripts put it first on ``sys.path``).
PROJECT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shared data folder: ``$SPECFUSION_DATA``, else ``../shared/data`` beside the project."""
    return Path(os.environ.get("SPECFUSION_DATA", PROJECT.parent / "shared" / "data"))


def add_root_argument(parser: argparse.ArgumentParser, dataset: str = "ESC-50") -> None:
    """Add ``--root``: the data set's folder, by default ``dataset`` in :func:`data_root`."""
    parser.add_argument(
        "--root", default=str(data_root() / dataset), help=f"{dataset} root (default: $SPECFUSION_DATA/{dataset})"
    )
