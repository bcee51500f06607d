"""The CRNN protocol's folds one after the other vs. in parallel processes (issues 13/14).

Runs :func:`specfusion.models.crnn.protocol.crnn_fold_protocol` on real ESC-50 clips (``--classes`` classes, folds 1-3
development, fold 4 test; ``--folds`` of them trained) with ``n_jobs=1`` and twice with ``n_jobs=--jobs``
(the first run starts joblib's worker processes, the second reuses them), each into a fresh folder with the
spectrogram cache already there, and prints the wall times, their ratios to the sequential run, and
whether the probabilities are bit-identical.

    python benchmarks/crnn_parallel.py [--root ../shared/data/ESC-50] [--epochs 3] [--jobs 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from specfusion.data.datasets import load_esc50  # noqa: E402
from specfusion.models.crnn import torch_threads  # noqa: E402
from specfusion.models.crnn.protocol import crnn_fold_protocol  # noqa: E402
from specfusion.models.crnn.spectrograms import spectrogram_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(PROJECT.parent / "shared" / "data" / "ESC-50"))
    parser.add_argument("--classes", type=int, default=10, help="ESC-50 classes used (default 10: 320 clips)")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2], help="development folds trained")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 64])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    table = load_esc50(args.root, test_folds=(4,))
    table.classes = table.classes[: args.classes]
    table = table.subset([i for i, item in enumerate(table) if item.label in table.classes])
    params = dict(epochs=args.epochs, filters=args.filters, num_threads=1, folds=args.folds)
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "warm"
        spectrogram_set(table, clip_db=-80.0, cache_dir=first)  # the protocol's cache (esc50 variant: -80 dB)
        cache = next(first.glob("spectrograms-*.npy"))
        results, seconds = {}, {}
        # the second parallel run reuses joblib's worker processes: the difference is their start-up
        for run, n_jobs in (("one after the other", 1), ("parallel, cold", args.jobs), ("parallel, warm", args.jobs)):
            out = Path(tmp) / run.replace(" ", "-").replace(",", "")
            out.mkdir()
            shutil.copy(cache, out / cache.name)
            started = time.perf_counter()
            with torch_threads(1):
                results[run] = crnn_fold_protocol(table, out_dir=out, n_jobs=n_jobs, **params)
            seconds[run] = time.perf_counter() - started
            print(f"{run} (n_jobs={n_jobs}): {seconds[run]:.1f} s", flush=True)
    reference = results["one after the other"].predictions.scores
    same = all(np.array_equal(r.predictions.scores, reference) for r in results.values())
    ratios = ", ".join(f"{run} {seconds[run] / seconds['one after the other']:.2f}" for run in list(seconds)[1:])
    print(f"{len(table)} clips, folds {args.folds}, {args.epochs} epochs, filters {args.filters}, n_jobs={args.jobs}: "
          f"wall time / one after the other: {ratios}; probabilities bit-identical: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
