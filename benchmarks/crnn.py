"""Benchmark: one epoch of the ESC-50 CRNN on real clips, projected to the paper's protocol.

Trains the ``esc50`` variant (documented filter counts) on development folds 2-4 of the real ESC-50
clips (1200 items) and validates on fold 1 (400 items) -- one fold of the protocol -- and times the
epochs; then the same model on random tensors of the same shape (the data path's upper bound). Prints:

* spectrogram time for the 1600 clips (computed once per protocol run, then cached);
* seconds per epoch (training + validation), real data and random tensors, after a warm-up epoch;
* throughput ratio real / random (target >= 0.7: the data path must not be the bottleneck);
* projected protocol time: spectrograms + 4 folds x 100 epochs (target <= 20 min on 2 cores).

Usage::

    python benchmarks/crnn.py [--root ../shared/data/ESC-50] [--epochs 3] [--threads 1 2]
        [--widths 16-32-64-64 32-64-128-128] [--mixed-precision] [--no-random]

Timings on a machine shared with other work vary; the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import add_root_argument  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from specfusion.data.datasets import load_esc50  # noqa: E402
from specfusion.models.crnn import CRNNClassifier, torch_threads, variant_defaults  # noqa: E402
from specfusion.models.crnn.spectrograms import compute_spectrograms  # noqa: E402

FOLDS, EPOCHS = 4, 100


def epoch_seconds(model: CRNNClassifier) -> tuple[float, float]:
    """Median (train, train + validation) seconds per epoch, the first (warm-up) epoch left out."""
    history = model.history_[1:] or model.history_
    return float(np.median([h["train_s"] for h in history])), float(np.median([h["epoch_s"] for h in history]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs timed per run, the first one as warm-up (default 3)"
    )
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time (default 1 2)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--widths", nargs="+", help="filter counts per block to time, e.g. 32-64-128-128 (default: the variant's)"
    )
    parser.add_argument(
        "--mixed-precision", action="store_true", help="also time bfloat16 autocast (mixed_precision=True)"
    )
    parser.add_argument("--no-random", action="store_true", help="skip the random-tensor runs (data-path check)")
    args = parser.parse_args(argv)

    print(f"load average before: {os.getloadavg()}")
    table = load_esc50(args.root)
    dev = table.dev()
    started = time.perf_counter()
    with torch_threads(1):
        S = compute_spectrograms(dev, clip_db=variant_defaults("esc50")["clip_db"])
    spectrogram_s = time.perf_counter() - started
    print(f"spectrograms: {len(S)} clips, shape {S.shape[1:]}, {spectrogram_s:.1f} s")
    folds, labels = dev.folds(), dev.labels()
    train, val = folds != 1, folds == 1
    rng = np.random.default_rng(0)
    S_random = rng.uniform(-80, 0, size=S.shape).astype(np.float32)
    labels_random = rng.permutation(labels)
    widths = (
        [[int(f) for f in w.split("-")] for w in args.widths]
        if args.widths
        else [list(variant_defaults("esc50")["filters"])]
    )
    precisions = [False, True] if args.mixed_precision else [False]
    rows = []
    for filters in widths:
        for amp in precisions:
            for threads in args.threads:
                common = dict(
                    variant="esc50", filters=filters, epochs=args.epochs, batch_size=args.batch_size, num_threads=threads,
                    mixed_precision=amp,
                )  # fmt: skip
                real = CRNNClassifier(**common).fit(S[train], labels[train], validation=(S[val], labels[val]))
                real_train, real_epoch = epoch_seconds(real)
                random_epoch = float("nan")
                if not args.no_random:
                    random = CRNNClassifier(**common).fit(
                        S_random[train], labels_random[train], validation=(S_random[val], labels_random[val])
                    )
                    random_epoch = epoch_seconds(random)[1]
                projected = spectrogram_s + FOLDS * EPOCHS * real_epoch
                name = "-".join(map(str, filters)) + (" bf16" if amp else "")
                rows.append(
                    (
                        name,
                        threads,
                        real_train,
                        real_epoch,
                        random_epoch,
                        random_epoch / real_epoch,
                        train.sum() / real_train,
                        projected,
                    )
                )
                print(f"  {name}, {threads} thread(s): {real_epoch:.2f} s/epoch", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print()
    print(f"ESC-50 CRNN (batch {args.batch_size}); {train.sum()} training / {val.sum()} validation clips per fold")
    print(
        "| filters | torch threads | train s/epoch | train+val s/epoch (real) | same, random tensors | real/random throughput | clips/s (train) | projected 4 folds x 100 epochs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, threads, real_train, real_epoch, random_epoch, ratio, clips, projected in rows:
        print(
            f"| {name} | {threads} | {real_train:.2f} | {real_epoch:.2f} | {random_epoch:.2f} | {ratio:.2f} | {clips:.0f} | {projected / 60:.1f} min |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
