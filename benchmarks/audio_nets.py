"""Benchmark: seconds per 5-s clip of the audio-pretrained extractors (aisfx, panns_cnn14, openl3).

For each extractor, on real ESC-50 clips resampled to the extractor's rate: the CPU front end
(:meth:`prepare`) per clip, and the network (:meth:`embed`) per clip at batch size 1 and at a larger
batch, median of ``--repeats`` runs after a warm-up. aisfx runs with its real weights; CNN14 and
openl3 with random weights (their official files are not available offline; speed is the same).

Usage::

    python benchmarks/audio_nets.py [--root ../shared/data/ESC-50] [--threads 2] [--repeats 3]
        [--extractors aisfx panns_cnn14 openl3]

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

from specfusion.audio import load_audio  # noqa: E402
from specfusion.extractors.base import get_extractor  # noqa: E402

CLIPS = ["1-100038-A-14.flac", "1-115521-A-19.flac", "1-100210-A-36.flac", "1-101336-A-30.flac"]
OPTIONS = {
    "aisfx": {},
    "panns_cnn14": {"weights": "none"},
    "openl3": {"weights": "none"},  # hop 0.1 s: 46 one-second frames per 5-s clip
}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_root = Path(os.environ.get("SPECFUSION_DATA", PROJECT.parent / "shared" / "data")) / "ESC-50"
    parser.add_argument("--root", default=str(default_root))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="the larger batch size (default 4)")
    parser.add_argument("--extractors", nargs="+", default=list(OPTIONS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()}; torch threads {args.threads}; device {args.device}")
    print("| extractor | input per 5-s clip | prepare (s/clip) | embed, batch 1 (s/clip) "
          f"| embed, batch {args.batch} (s/clip) | total, batch 1 (s/clip) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.extractors:
        ex = get_extractor(name, device=args.device, **OPTIONS.get(name, {}))
        waves = [load_audio(Path(args.root) / "audio" / c, sr=ex.sample_rate)[0][0] for c in CLIPS]
        waves = (waves * args.batch)[: args.batch]
        prep_s = median_seconds(lambda: [ex.prepare(w) for w in waves], args.repeats) / len(waves)
        prepared = np.stack([ex.prepare(w) for w in waves])
        one_s = median_seconds(lambda: ex.embed(prepared[:1]), args.repeats)
        many_s = median_seconds(lambda: ex.embed(prepared), args.repeats) / len(prepared)
        print(f"| `{name}` | {tuple(prepared.shape[1:])} | {prep_s:.3f} | {one_s:.3f} | {many_s:.3f} "
              f"| {prep_s + one_s:.3f} |")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
