"""Benchmark: DEEP SPECTRUM extraction on a GPU -- the network alone, end to end, and its features against the CPU's.

For each image CNN of the paper (random-initialised Keras weights: timing only; the ImageNet files
cannot be fetched on a machine without internet):

1. **network** -- ``extractor.embed`` on the GPU (fp32, channels-last, the engine's path there) on
   batches of 64 prepared images: images/s, median of ``--repeats`` timed rounds after a warm-up;
2. **end to end** -- :func:`specfusion.features.extraction.extract` over ``--clips`` synthetic 5-s clips at
   44.1 kHz (decode, resample, Mel spectrogram, colour-mapped image on the CPU threads; network on the
   GPU) into an HDF5 store, with the engine's default front-end threads and with ``--workers``;
3. **agreement** -- the same 16 images through the network on the GPU and on the CPU (float32): the
   largest deviation relative to the features' scale. cuDNN computes convolutions in TF32 by default
   on Ampere and later GPUs (``torch.backends.cudnn.allow_tf32``), so this is the size of the
   difference between features extracted on a GPU and on a CPU.

Prints one JSON line per network and writes them to ``--out`` (JSON lines). Usage::

    python benchmarks/gpu.py --out gpu.jsonl [--networks densenet121 resnet50 vgg16 vgg19] [--clips 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

NETWORKS = ("densenet121", "resnet50", "vgg16", "vgg19")


def synthetic_clips(root: Path, n: int, *, seconds: float = 5.0, sr: int = 44100) -> Path:
    """``n`` clips of noise and a rising tone in two class folders (content does not change the timing)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        tone = np.sin(2 * np.pi * (200 + 400 * i / n) * t * (1 + t))
        sf.write(folder / f"clip{i:04d}.wav", (0.3 * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32), sr)
    return root


def network_rate(extractor, batch: np.ndarray, repeats: int) -> float:
    """Images per second of ``extractor.embed`` on ``batch`` (median round, after one warm-up)."""
    import torch

    extractor.embed(batch)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        extractor.embed(batch)  # returns numpy: the GPU work is finished when it returns
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def check_network(name: str, table, images: np.ndarray, args) -> dict:
    import torch

    from specfusion.features.extraction import extract
    from specfusion.features.extractors import get_extractor

    on_cuda = args.device.startswith("cuda")
    result = {"network": name, "device": torch.cuda.get_device_name() if on_cuda else args.device,
              "torch": torch.__version__}  # fmt: skip
    gpu = get_extractor(name, weights="none", device=args.device)
    result["network_images_per_s"] = round(network_rate(gpu, images[: args.batch], args.repeats), 1)
    if on_cuda:
        result["max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    cpu = get_extractor(name, weights="none", device="cpu")
    on_gpu, on_cpu = gpu.embed(images[:16]), cpu.embed(images[:16])
    result["gpu_vs_cpu_max_rel"] = float(np.abs(on_gpu - on_cpu).max() / np.abs(on_cpu).max())
    for workers in (None, args.workers):
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            run = extract(table, gpu, Path(folder) / "store.h5", workers=workers)
            seconds = time.perf_counter() - started
        key = "default_workers" if workers is None else f"{workers}_workers"
        result[f"end_to_end_{key}"] = {"items_per_s": round(run.n_extracted / seconds, 1), "workers": run.workers,
                                       "batch_size": run.batch_size, "runtime": run.runtime}  # fmt: skip
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS))
    parser.add_argument("--clips", type=int, default=512, help="synthetic clips of the end-to-end runs")
    parser.add_argument("--batch", type=int, default=64, help="images per network batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=12, help="front-end threads of the second end-to-end run")
    parser.add_argument("--device", default="cuda", help="the device measured (default cuda; cpu for a dry run)")
    parser.add_argument("--out", required=True, help="JSON-lines results (appended)")
    args = parser.parse_args(argv)
    import torch

    from specfusion.data.datasets import load_folder
    from specfusion.features.extractors import get_extractor

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no GPU: torch.cuda.is_available() is False (--device cpu for a dry run)")
    with tempfile.TemporaryDirectory() as folder:
        table = load_folder(synthetic_clips(Path(folder), args.clips))
        probe = get_extractor(NETWORKS[0], weights="none", device="cpu")
        rng = np.random.default_rng(1)
        images = np.stack([probe.prepare(0.1 * rng.standard_normal(5 * probe.sample_rate).astype(np.float32))
                           for _ in range(args.batch)])  # fmt: skip
        for name in args.networks:
            try:
                result = check_network(name, table, images, args)
            except Exception as error:  # the other networks' figures still count
                result = {"network": name, "error": f"{type(error).__name__}: {error}"}
            print(json.dumps(result), flush=True)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
