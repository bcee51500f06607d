"""Benchmark: DEEP SPECTRUM feature extraction on real ESC-50 clips, three ways, in one run.

On the same clips and the same network (random-initialised weights: timing only):

1. **bare forward** -- the network alone on pre-computed inputs, batches of 16, in the runtime the
   engine uses (ONNX Runtime on CPU);
2. **specfusion end to end** -- :func:`specfusion.features.extraction.extract`: audio file -> decode -> Mel
   spectrogram -> colour-mapped image -> network -> features in the HDF5 store (the ONNX graph taken
   from the cache; the one-off export is timed separately);
3. **DeepSpectrum style** -- librosa Mel-spectrogram, ``librosa.display.specshow`` in a 1x1-inch
   matplotlib figure saved as PNG at 227 dpi, decoded, resized to 224x224, then a plain torch forward
   (eager, batches of 16); plots made by a process pool of ``cpu_count`` processes, as the DeepSpectrum
   toolkit does.

Targets (densenet121): (2)/(1) >= 0.9 and (2)/(3) >= 3. Also: the CPU runtimes compared on the bare
forward (torch eager, channels-last, TorchScript, ONNX Runtime), and peak memory of end-to-end runs
over N and 2N clips (fresh processes; tracemalloc peak and maximum RSS) -- it must not grow with N.

Usage::

    python benchmarks/extraction.py [--network densenet121] [--clips 320] [--memory-clips 64]

Timings on a machine shared with other work vary: the load average before and after is printed, and
each throughput is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import add_root_argument  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

BATCH = 16


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import onnxruntime
    import torch

    return (f"{model}, {os.cpu_count()} logical cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB; "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}")  # fmt: skip


def esc50_table(root: str, n: int):
    from specfusion.data.datasets import load_esc50

    table = load_esc50(root)
    return table.subset(range(n))


def make_extractor(network: str, *, device: str = "cpu"):
    from specfusion.features.extractors import get_extractor

    return get_extractor(network, weights="none", seed=0, device=device)


# ------------------------------------------------------------------------------ (1) bare forward


def prepared_inputs(table, extractor) -> np.ndarray:
    from specfusion.data.audio import load_audio

    return np.stack([extractor.prepare(load_audio(item.path, sr=extractor.sample_rate)[0][0]) for item in table])


def bare_forward(embed, inputs: np.ndarray, repeats: int) -> float:
    """Best items/s of ``embed`` over all inputs in batches of 16."""
    embed(inputs[:BATCH])  # warm-up (and, for ONNX Runtime, the session)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(inputs), BATCH):
            embed(inputs[i : i + BATCH])
        best = max(best, len(inputs) / (time.perf_counter() - start))
    return best


def runtime_table(extractor, inputs: np.ndarray, repeats: int) -> dict[str, float]:
    """Bare forward items/s of the CPU runtimes the engine can choose from (rounds interleaved, best kept)."""
    import torch

    from specfusion.features.runtimes import OnnxEmbedder, embedding_module

    module = embedding_module(extractor)

    def torch_embed(mod, memory_format):
        def run(batch):
            x = torch.from_numpy(np.ascontiguousarray(batch)).contiguous(memory_format=memory_format)
            with torch.inference_mode():
                return mod(x).numpy()

        return run

    nchw = copy.deepcopy(module).to(memory_format=torch.contiguous_format)
    module.to(memory_format=torch.channels_last)
    example = torch.from_numpy(inputs[:BATCH]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        traced = torch.jit.freeze(torch.jit.trace(module, example))
    spinning = OnnxEmbedder(extractor, spinning=True)
    quiet = OnnxEmbedder(extractor, spinning=False)
    candidates = {
        "torch eager (NCHW)": torch_embed(nchw, torch.contiguous_format),
        "torch channels-last": torch_embed(module, torch.channels_last),
        "TorchScript (trace + freeze, channels-last)": lambda b: traced(
            torch.from_numpy(np.ascontiguousarray(b)).contiguous(memory_format=torch.channels_last)
        ),
        "ONNX Runtime, spinning threads": spinning,
        "ONNX Runtime, no spinning (engine default)": quiet,
    }
    best = dict.fromkeys(candidates, 0.0)
    with torch.inference_mode():
        for _ in range(repeats):
            for name, embed in candidates.items():
                best[name] = max(best[name], bare_forward(embed, inputs, 1))
    return best


# ------------------------------------------------------------------------------ (2) specfusion


def specfusion_end_to_end(table, extractor, folder: Path, workers: int | None, tag: str) -> tuple[float, str]:
    """Items/s of one :func:`extract` run into a fresh store (the ONNX graph already cached)."""
    from specfusion.features.extraction import extract

    start = time.perf_counter()
    result = extract(table, extractor, folder / f"run-{tag}.h5", workers=workers)
    seconds = time.perf_counter() - start
    assert result.n_done == len(table), result
    return len(table) / seconds, result.runtime


# ------------------------------------------------------------------------------ (3) DeepSpectrum style


def deepspectrum_plot(path: str) -> np.ndarray:
    """One clip the DeepSpectrum way: librosa Mel spectrogram -> 1x1-inch figure -> PNG at 227 dpi -> decoded."""
    import librosa
    import librosa.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    y, sr = librosa.load(path, sr=None, mono=True)
    n_fft = int(0.32 * sr)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=n_fft // 2, n_mels=128)
    mel_db = librosa.power_to_db(mel, ref=np.max)
    fig = plt.figure(frameon=False)
    fig.set_size_inches(1, 1)
    ax = plt.Axes(fig, [0.0, 0.0, 1.0, 1.0])
    ax.set_axis_off()
    fig.add_axes(ax)
    librosa.display.specshow(mel_db, sr=sr, hop_length=n_fft // 2, y_axis="mel", x_axis="time", cmap="viridis", ax=ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=227)
    plt.close(fig)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB")  # 227 x 227
    return np.asarray(image.resize((224, 224), Image.BILINEAR))


def deepspectrum_style(table, network: str, repeats: int) -> float:
    import multiprocessing

    import torch

    from specfusion.features.images import IMAGENET_MEAN, IMAGENET_STD

    extractor = make_extractor(network)
    net = extractor.net.to(memory_format=torch.contiguous_format).eval()  # plain torch: NCHW, eager
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    paths = [str(item.path) for item in table]
    best = 0.0
    ctx = multiprocessing.get_context("fork")
    for _ in range(repeats):
        start = time.perf_counter()
        with ctx.Pool(processes=os.cpu_count()) as pool:
            images, count = [], 0
            for image in pool.imap(deepspectrum_plot, paths):
                images.append(image)
                if len(images) == BATCH or count + len(images) == len(paths):
                    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
                    with torch.inference_mode():
                        net.embed((x - mean) / std)
                    count += len(images)
                    images = []
        best = max(best, len(paths) / (time.perf_counter() - start))
    return best


# ------------------------------------------------------------------------------ memory


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (VmHWM), MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_child(root: str, n: int, network: str, store: str) -> None:
    """Peak memory of one end-to-end run over n clips (run in a fresh process, after a warm-up run)."""
    import tracemalloc

    from specfusion.features.extraction import extract

    table = esc50_table(root, n)
    extractor = make_extractor(network)
    extract(table.subset(range(BATCH)), extractor, store + ".warmup.h5")  # imports, ONNX session, caches
    rss_before = _peak_rss_mib() if not _reset_peak_rss() else _current_rss_mib()
    tracemalloc.start()
    extract(table, extractor, store)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"clips": n, "tracemalloc_peak_mib": peak / 2**20, "max_rss_mib": _peak_rss_mib(),
                      "rss_before_mib": rss_before}))  # fmt: skip


def _current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_runs(root: str, n: int, network: str) -> list[dict]:
    out = []
    with tempfile.TemporaryDirectory() as folder:
        for clips in (n, 2 * n):
            command = [sys.executable, __file__, "--root", root, "--network", network,
                       "--memory-child", str(clips), "--store", str(Path(folder) / f"m{clips}.h5")]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_root_argument(parser)
    parser.add_argument("--network", default="densenet121", help="image CNN (default densenet121)")
    parser.add_argument("--clips", type=int, default=320, help="clips timed (default 320)")
    parser.add_argument("--runtime-clips", type=int, default=64, help="clips of the runtime comparison (default 64)")
    parser.add_argument("--memory-clips", type=int, default=64, help="N of the N / 2N memory runs (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (1) and (2); the best counts (default 3)")
    parser.add_argument("--workers", type=int, help="engine worker threads (default: the engine's)")
    parser.add_argument("--skip-runtimes", action="store_true", help="do not compare the CPU runtimes")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.root, args.memory_child, args.network, args.store)
        return 0

    from threadpoolctl import threadpool_limits

    from specfusion.features.runtimes import select_runtime

    print(f"machine: {machine()}")
    print(f"load average before: {os.getloadavg()}")
    table = esc50_table(args.root, args.clips)
    extractor = make_extractor(args.network)
    runtime = select_runtime(extractor)
    start = time.perf_counter()
    runtime.embed(np.zeros((1, 3, 224, 224), np.float32))  # export once (cached) + session
    print(f"runtime used: {runtime.description}; ONNX export/load {time.perf_counter() - start:.1f} s")
    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        inputs = prepared_inputs(table, extractor)
        front_ms = (time.perf_counter() - start) / len(table) * 1000
    print(f"front end (decode + Mel + image), one thread: {front_ms:.1f} ms per clip")

    if not args.skip_runtimes:
        subset = inputs[: args.runtime_clips]
        print(
            f"CPU runtimes, bare forward on {len(subset)} clips, batches of {BATCH} (best of {args.repeats} interleaved rounds):"
        )
        for name, speed in runtime_table(extractor, subset, args.repeats).items():
            print(f"  {name}: {speed:.1f} items/s")
    # (1) and (2) in alternating rounds, so that both see the same load on a shared machine
    forwards, ends, description = [], [], ""
    with tempfile.TemporaryDirectory() as folder:
        for k in range(args.repeats):
            forwards.append(bare_forward(runtime.embed, inputs, 1))
            speed, description = specfusion_end_to_end(table, extractor, Path(folder), args.workers, str(k))
            ends.append(speed)
            print(f"  round {k + 1}: bare forward {forwards[-1]:.1f} items/s, end to end {ends[-1]:.1f} items/s, "
                  f"ratio {ends[-1] / forwards[-1]:.2f}")  # fmt: skip
    del inputs
    forward, end_to_end = max(forwards), max(ends)
    print(f"(1) bare forward ({runtime.name}): {forward:.1f} items/s (best of {args.repeats})")
    print(f"(2) specfusion end to end: {end_to_end:.1f} items/s (best of {args.repeats})  [{description}]")
    deepspectrum = deepspectrum_style(table, args.network, 1)
    print(f"(3) DeepSpectrum style: {deepspectrum:.1f} items/s")
    paired = [e / f for e, f in zip(ends, forwards)]
    print(
        f"(2)/(1) = {end_to_end / forward:.2f} (best / best; per round {', '.join(f'{r:.2f}' for r in paired)}; "
        f"target >= 0.9); (2)/(3) = {end_to_end / deepspectrum:.1f} (target >= 3)"
    )
    for entry in memory_runs(args.root, args.memory_clips, args.network):
        print(f"memory, {entry['clips']} clips: tracemalloc peak {entry['tracemalloc_peak_mib']:.1f} MiB, "
              f"peak RSS {entry['max_rss_mib']:.0f} MiB (RSS before the run {entry['rss_before_mib']:.0f} MiB)")  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
