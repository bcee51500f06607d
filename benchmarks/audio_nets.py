"""Benchmark: end-to-end throughput of the audio-pretrained extractors vs their bare network invocation.

For each extractor (aisfx, birdnet, soundnet, panns_cnn14, openl3), on the same real ESC-50 clips
resampled to the extractor's rate, in one process and one run (so the ratio is fair on a loaded
machine):

* **end to end** -- ``extractor.embed(np.stack([extractor.prepare(y) for y in clips]))``: the CPU
  front end (windowing / spectrogram / padding), the network, the temporal pooling;
* **bare network** -- the network alone on the already-prepared input of the same clips: the torch
  module (``net.embed`` / ``net(...)``) under ``torch.inference_mode()``, or for BirdNET the TFLite
  interpreter's ``set_tensor`` + ``invoke`` + ``get_tensor`` per window.

Reported: clips/s of each and their ratio (end-to-end throughput / bare throughput; 1.0 = no overhead),
median of ``--repeats`` runs after a warm-up, the two timed in turns. aisfx, birdnet and soundnet
run with their real weights; CNN14 and openl3 with random weights (their official files are not
available offline; same cost).

Usage::

    python benchmarks/audio_nets.py [--root ../shared/data/ESC-50] [--threads 2] [--repeats 5]
        [--batch 4] [--extractors aisfx birdnet soundnet panns_cnn14 openl3]

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

from specfusion.data.audio import load_audio  # noqa: E402
from specfusion.features.extractors.base import get_extractor  # noqa: E402

CLIPS = ["1-100038-A-14.flac", "1-115521-A-19.flac", "1-100210-A-36.flac", "1-101336-A-30.flac"]
OPTIONS = {
    "aisfx": {},
    "birdnet": {},
    "soundnet": {"layer": "conv7"},
    "panns_cnn14": {"weights": "none"},
    "openl3": {"weights": "none", "hop_s": 0.5},  # 10 one-second frames per 5-s clip
}


def interleaved_medians(fns, repeats: int) -> list[float]:
    """Median seconds of each callable, timed in turns (a, b, a, b, ...) after one warm-up call each.

    Taking turns exposes every callable to the same changes of load on a shared machine.
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            started = time.perf_counter()
            fn()
            record.append(time.perf_counter() - started)
    return [float(np.median(t)) for t in times]


def bare_network(ex, prepared: np.ndarray):
    """A callable that runs only the network of ``ex`` on ``prepared`` (no front end, no pooling)."""
    import torch

    name = ex.name
    if name == "birdnet":
        windows = prepared.reshape(-1, prepared.shape[-1])
        it, inp, emb = ex.interpreter, ex._input, ex._embedding

        def run():
            for w in windows:
                it.set_tensor(inp, w[None])
                it.invoke()
                it.get_tensor(emb)

        return run
    x = torch.from_numpy(
        np.ascontiguousarray(prepared.reshape(-1, *prepared.shape[2:]) if name in ("aisfx", "openl3") else prepared)
    )
    method = ex.net.embed if name in ("aisfx", "panns_cnn14") else ex.net

    def run():
        with torch.inference_mode():
            method(x.to(ex.device))

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="clips per call (default 4)")
    parser.add_argument("--extractors", nargs="+", default=list(OPTIONS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(
        f"load average before: {os.getloadavg()}; torch threads {args.threads}; device {args.device}; "
        f"{args.batch} clips per call"
    )
    print("| extractor | network input per 5-s clip | end to end (clips/s) | bare network (clips/s) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.extractors:
        options = dict(OPTIONS.get(name, {}))
        if name == "birdnet":
            options["threads"] = args.threads
        else:
            options["device"] = args.device
        ex = get_extractor(name, **options)
        waves = [load_audio(Path(args.root) / "audio" / c, sr=ex.sample_rate)[0][0] for c in CLIPS]
        waves = (waves * args.batch)[: args.batch]
        prepared = np.stack([ex.prepare(w) for w in waves])
        end_to_end, bare = interleaved_medians(
            [lambda: ex.embed(np.stack([ex.prepare(w) for w in waves])), bare_network(ex, prepared)],  # noqa: B023
            args.repeats,
        )
        n = len(waves)
        print(
            f"| `{name}` | {tuple(prepared.shape[1:])} | {n / end_to_end:.2f} | {n / bare:.2f} "
            f"| {bare / end_to_end:.2f} |",
            flush=True,
        )
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
