"""Why the CRNN needs its batch-norm recalibration: validation accuracy of one trained fold model
with batch-norm statistics estimated in different ways (the weights never change).

For a checkpoint ``fold<k>.pt`` of :func:`specfusion.models.crnn.protocol.crnn_fold_protocol` on ESC-50, re-estimates the
running mean/variance of every batch norm on the training folds and scores the held-out fold:

* ``recalibrated``: dropout off, plain average over all training batches (what ``bn_recalibration`` does;
  the checkpoint's own statistics);
* ``dropout on, full average``: the statistics a training epoch sees, averaged over all batches
  (``momentum=None``) -- the limit any momentum (PyTorch 0.1, Keras' 0.99 = PyTorch 0.01) approaches
  when the weights stand still, so if this is low, no momentum removes the need to recalibrate;
* ``dropout on, momentum 0.01`` / ``0.1``: five / one training epochs' worth of batches with that
  momentum, starting from the full average, as the running statistics are kept during training.

Usage::

    python benchmarks/crnn_bn_probe.py runs/crnn/w32/fold1.pt --fold 1 --cache runs/crnn/cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import add_root_argument  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from specfusion.data.datasets import load_esc50  # noqa: E402
from specfusion.features.nets.crnn import FastDropout  # noqa: E402
from specfusion.models.crnn import CRNNClassifier  # noqa: E402
from specfusion.models.crnn.spectrograms import compute_spectrograms  # noqa: E402


def estimate(model, S, *, dropout: bool, momentum, passes: int = 1, reset: bool = True, seed: int = 0) -> None:
    """Re-estimate the batch-norm statistics on ``S`` (shuffled batches of the training size)."""
    net = model.network_
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        if reset:
            m.reset_running_stats()
        m.momentum = momentum
    net.train()
    for m in net.modules():
        if isinstance(m, FastDropout) and not dropout:
            m.eval()
    torch.manual_seed(seed)
    batch = model.resolved_params()["batch_size"]
    standardise = model._standardiser(torch.device("cpu"))
    with torch.no_grad(), model._autocast(torch.device("cpu")):
        for _ in range(passes):
            order = torch.randperm(len(S))
            for start in range(0, len(S), batch):
                part = order[start : start + batch]
                if len(part) > 1:
                    net(standardise(S[part]))
    net.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--fold", type=int, required=True)
    add_root_argument(parser)
    parser.add_argument("--cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = load_esc50(args.root)
    S = torch.as_tensor(compute_spectrograms(table, clip_db=-80.0, cache_dir=args.cache))
    folds, labels = table.folds(), table.labels()
    train, val = S[torch.as_tensor(folds != args.fold)], folds == args.fold
    model = CRNNClassifier.load(args.checkpoint, num_threads=1)

    def accuracy():
        return 100 * float(np.mean(model.predict(S[torch.as_tensor(val)]) == labels[val]))

    rows = [("checkpoint (recalibrated)", accuracy())]
    estimate(model, train, dropout=False, momentum=None)
    rows.append(("recalibrated again (dropout off, full average)", accuracy()))
    estimate(model, train, dropout=True, momentum=None)
    rows.append(("dropout on, full average (any momentum's limit)", accuracy()))
    estimate(model, train, dropout=True, momentum=0.01, passes=5, reset=False)
    rows.append(("dropout on, momentum 0.01 (Keras 0.99), 5 more epochs", accuracy()))
    estimate(model, train, dropout=True, momentum=0.1, reset=False)
    rows.append(("dropout on, momentum 0.1, one more epoch", accuracy()))
    print(
        f"| batch-norm statistics ({Path(args.checkpoint).name}, fold {args.fold} held out) | validation accuracy % |"
    )
    print("|---|---:|")
    for name, acc in rows:
        print(f"| {name} | {acc:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
