"""Benchmark: the paper's Mel spectrogram on real ESC-50 clips; the filter bank as a sparse vs a dense product.

Times :func:`specfusion.features.spectrogram.melspectrogram` on ``--clips`` real 5-s clips, one clip per call and
as one batch, and the filter-bank product alone in both forms on the same power spectra: the sparse
product the code uses, and the dense BLAS product it used before (whose last bits depended on
the BLAS thread count). Each figure is the best of ``--repeats`` rounds; both forms are timed in the same
run, so their ratio holds on a shared machine. It also checks that the two products agree to float32
rounding. Usage::

    python benchmarks/melspec.py [--clips 64] [--repeats 5]
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


def best_of(repeats: int, work) -> float:
    """Shortest wall time of ``repeats`` calls of ``work()``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from specfusion.data.audio import load_audio
    from specfusion.features.spectrogram import (
        MelSpecParams,
        _power_spectrum,
        _sparse_filterbank_t,
        mel_filterbank,
        melspectrogram,
    )

    paths = sorted((Path(args.root) / "audio").glob("*.flac"))[: args.clips]
    clips = np.stack([load_audio(p)[0][0] for p in paths])
    sr, params = 16000, MelSpecParams()
    power = _power_spectrum(clips, sr, params)  # the spectra mel_power multiplies, (clips, frames, bins)
    per_clip, power = list(power), power.reshape(-1, power.shape[-1])
    key = (sr, params.fft_size(sr), params.n_mels, params.fmin, params.fmax, params.htk)
    dense, sparse = mel_filterbank(*key).T, _sparse_filterbank_t(*key)
    n = len(clips)
    figures = {
        "melspectrogram, one clip per call (ms/clip)": best_of(args.repeats, lambda: [melspectrogram(y, sr) for y in clips]),
        "melspectrogram, one batch (ms/clip)": best_of(args.repeats, lambda: melspectrogram(clips, sr)),
        "filter bank, sparse product, one clip per call (ms/clip)": best_of(args.repeats, lambda: [p @ sparse for p in per_clip]),
        "filter bank, dense BLAS product, one clip per call (ms/clip)": best_of(args.repeats, lambda: [p @ dense for p in per_clip]),
        "filter bank, sparse product, one batch (ms/clip)": best_of(args.repeats, lambda: power @ sparse),
        "filter bank, dense BLAS product, one batch (ms/clip)": best_of(args.repeats, lambda: power @ dense),
    }  # fmt: skip
    for name, seconds in figures.items():
        print(f"{name}: {1000 * seconds / n:.3f}")
    for how in ("one clip per call", "one batch"):
        ratio = (
            figures[f"filter bank, dense BLAS product, {how} (ms/clip)"]
            / figures[f"filter bank, sparse product, {how} (ms/clip)"]
        )
        print(f"dense / sparse, {how}: {ratio:.1f}x")
    print(f"load average {os.getloadavg()[0]:.1f}; {n} clips of {clips.shape[1] / sr} s")
    deviation = np.abs(power @ sparse - power @ dense).max() / np.abs(power @ dense).max()
    print(f"largest difference between the two products, relative to the largest value: {deviation:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
