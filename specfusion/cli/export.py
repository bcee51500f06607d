"""``specfusion export STORE.h5 --format {csv,arff,npz} --out FILE``: a feature store for other tools.

CSV and ARFF follow DeepSpectrum's row layout (``name, neuron_0 ... neuron_{D-1}, ..., class``, ``name`` the
audio file name) plus ``fold`` and ``partition`` before ``class``, so WEKA and DeepSpectrum workflows read
them; NPZ is for numpy. See :func:`specfusion.features.export.export`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from specfusion.cli._common import add_command, check_output_file, finish_command
from specfusion.errors import ConfigError

FORMATS = ("csv", "arff", "npz")

HELP = "write a feature store as CSV, ARFF (DeepSpectrum layout) or NPZ"
DESCRIPTION = (
    "Write the finished items of a feature store as CSV or ARFF in DeepSpectrum's row layout "
    "(name = audio file name, neuron_0 ... neuron_{D-1}, fold, partition, class; rows in dataset order) or as "
    "NPZ (X, labels, folds, partitions, names, files, uids, channels, classes, config)."
)
EXAMPLE = """example:
  specfusion export features/esc50-lite0.h5 --out esc50-lite0.arff     # format from the suffix"""


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", HELP, DESCRIPTION, EXAMPLE)
    parser.add_argument("store", metavar="STORE.h5", help="feature store written by `specfusion extract`")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from the suffix of --out)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file")
    finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from specfusion.features.export import export
    from specfusion.features.store import FeatureStore

    check_output_file(args.out)
    fmt = args.format or Path(args.out).suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot tell the format from {args.out!r}; pass --format {{{','.join(FORMATS)}}}")
    store = FeatureStore.open(args.store)
    out = export(args.store, fmt, args.out)
    note = f"; {store.n_failed} failed item(s) left out" if store.n_failed else ""
    if store.n_pending:
        note += f"; {store.n_pending} item(s) not extracted yet"
    print(f"wrote {store.n_done} items x {store.dim} features to {out} ({fmt}){note}")
    return 0
