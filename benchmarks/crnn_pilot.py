"""Run the ESC-50 CRNN protocol fold by fold (pilots on one fold; then the rest of the folds).

Calls :func:`specfusion.models.crnn.protocol.crnn_fold_protocol` on the ESC-50 development folds with the given
:class:`~specfusion.models.crnn.CRNNClassifier` parameters (JSON, on top of the ``esc50`` variant's defaults),
for the folds given with ``--folds`` only. Each fold's model is saved as ``OUT/fold<k>.pt``, so folds can
run in separate processes (one fold each, same ``--out``) and a later call with all folds reuses them
and writes the full out-of-fold ``predictions.csv`` and ``learning_curve.png``. Prints one line per
epoch (logging) and a final ``RESULT`` JSON line: per fold the validation accuracy of the returned
model (after the final batch-norm recalibration), the mean over the folds run (= Devel accuracy
when all folds ran: the folds have 400 clips each), seconds of training per fold and the parameters.

Usage::

    python benchmarks/crnn_pilot.py --params '{"filters": [32, 64, 128, 128]}' --folds 1 \
        --cache runs/crnn/cache --out runs/crnn/w32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import add_root_argument  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from specfusion.data.datasets import load_esc50  # noqa: E402
from specfusion.models.crnn import variant_defaults  # noqa: E402
from specfusion.models.crnn.protocol import crnn_fold_protocol  # noqa: E402
from specfusion.models.crnn.spectrograms import compute_spectrograms  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument("--params", default="{}", help="CRNNClassifier parameters as JSON")
    parser.add_argument("--folds", type=int, nargs="+", help="development folds to run (default: all)")
    parser.add_argument("--cache", help="shared spectrogram cache folder (copied into --out)")
    parser.add_argument("--out", required=True, help="protocol output folder (checkpoints, predictions)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    params = {"variant": "esc50", "num_threads": args.threads, **json.loads(args.params)}
    table = load_esc50(args.root)
    out = Path(args.out)
    if args.cache:  # one spectrogram computation for all experiments
        compute_spectrograms(table, clip_db=variant_defaults(params["variant"])["clip_db"], cache_dir=args.cache)
        out.mkdir(parents=True, exist_ok=True)
        for cached in Path(args.cache).glob("spectrograms-*.npy"):
            if not (out / cached.name).exists():
                shutil.copyfile(cached, out / cached.name)
    started = time.perf_counter()
    result = crnn_fold_protocol(table, out_dir=out, folds=args.folds, **params)
    total = time.perf_counter() - started
    folds = {k: h[-1].get("val_accuracy") for k, h in result.histories.items()}
    summary = {
        "folds": folds, "mean_accuracy": float(np.mean(list(folds.values()))), "run_s": round(total, 1),
        "train_s": {k: round(sum(r["epoch_s"] for r in h), 1) for k, h in result.histories.items()},
        "load_average": os.getloadavg(), "params": result.config["crnn"],
    }  # fmt: skip
    print("RESULT " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
