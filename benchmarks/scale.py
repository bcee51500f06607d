"""Benchmark: scale of distributed extraction on a DCASE-2018-sized dataset (issue 14).

Four measurements in one run, figures in docs/performance.md ("Scale (issue 14)"):

1. **the table**: the real DCASE 2018 task 5 metadata (``dev/meta.txt`` and ``eval/meta.txt``: 145,956
   segments x 4 channels = 583,824 items) loaded as :func:`specfusion.data.datasets.load_dcase2018` does
   (``channels="each"``, ``missing="keep"``: no SINS audio is available here); load time and memory;
2. **throughput with 1 and 2 Dask workers** (``local:1`` and ``local:2``, single-threaded worker
   processes) on a bounded slice of that table (``--items``: real development rows, evenly spaced). Its audio
   is *mapped to a real clip*: every segment of the slice is a link to the one real 4-channel 10-s SINS
   segment in ``formats/sins_4ch_16khz_16bit_10s.wav``, so decoding, channel selection and the front
   end cost what they cost on DCASE 2018. The extractor is cheap on purpose (``scale_cheap_cnn``: the
   paper's Mel spectrogram and 224x224 viridis image, then a two-layer random CNN) so that the slice
   runs in seconds: the ratio measures the distribution, not a network. On a shared machine the wall-clock
   ratio depends on the other work, so the CPU seconds per item of the workers and of the driver (with its
   in-process scheduler) are measured too: equal per-item worker CPU with 1 and 2 workers means the
   distribution adds no work, and the speed-up on free cores is bounded by the driver's share;
3. **the driver's peak memory** while planning, sharding and committing 10k and 100k items (``--memory``),
   each in a fresh process on a DCASE table of exactly that many items (real development rows, evenly
   spaced): the real sharding (:func:`specfusion.distributed.extraction._shards`) and commit path
   (:func:`specfusion.distributed.extraction._commit` into a :class:`~specfusion.features.store.FeatureStore`), with a fake
   embed -- constant 1024-d vectors (densenet121's width) -- instead of Dask workers and networks;
   peak RSS (``VmHWM``, reset after the table is loaded) and the store's write cost per item;
4. **a projection** for the paper's DCASE 2018 grid -- DEEP SPECTRUM with densenet121, resnet50, vgg16
   and vgg19, ImageNet and random weights (8 systems), dev + eval = 583,824 images each -- on N CPU
   workers and N GPUs. CPU: the measured end-to-end densenet121 rate of docs/performance.md (59.9
   items/s on 2 quiet cores, ONNX Runtime) scaled by each network's forward cost relative to
   densenet121, measured here (torch, one thread, random weights); linear in N, and also with the 1 -> 2
   worker efficiency measured in (2) applied. GPU: an **assumed** rate (not measured: no GPU here), see
   ``GPU_RESNET50_PER_S``; the network alone, and with the measured front end on ``CORES_PER_GPU`` cores.

Usage::

    nice -n 10 python benchmarks/scale.py [--items 320] [--memory 10000 100000] [--parts 1 2 3 4]

``--parts 3`` runs only the driver-memory measurement.

The machine is shared: the load average before and after each part is printed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import data_root  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

from specfusion.features.extractors.base import _REGISTRY, Extractor, register  # noqa: E402

DATA = data_root()
DCASE = DATA / "DCASE2018-task5"
SINS_SEGMENT = DATA / "formats" / "sins_4ch_16khz_16bit_10s.wav"
#: End-to-end densenet121 extraction, 2 quiet cores, ONNX Runtime (docs/performance.md, "Extraction").
DENSENET121_ITEMS_PER_S_2_CORES = 59.9
#: ASSUMED GPU forward rate of ResNet-50 (fp32, batch 64, images/s): a V100 with TensorRT reaches about
#: 1,500 (published TensorRT benchmark, gist 1duo/efd3be1dc8eb2c45863b75f20a76f8b2); plain PyTorch fp32 is
#: taken as two thirds of that. Not measured here (no GPU). Other networks scale by their CPU cost ratio.
GPU_RESNET50_PER_S = 1000.0
#: CPU cores feeding each GPU with decoded audio and images (the front end runs on the CPU).
CORES_PER_GPU = 4
GRID = [f"{net} / {w}" for net in ("densenet121", "resnet50", "vgg16", "vgg19") for w in ("ImageNet", "None")]
FEATURE_DIM = 1024


class CheapCNN(Extractor):
    """The paper's front end (Mel spectrogram -> 224x224 viridis image) + a two-layer random CNN (16-d)."""

    input_kind = "image"

    def __init__(self, *, seed: int = 0, sample_rate: int = 16000):
        import torch

        self.seed, self.sample_rate, self.dim = int(seed), int(sample_rate), 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(8, self.dim, 3, stride=2),
                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            ).eval()  # fmt: skip

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        from specfusion.features.images import render_rgb, to_network_input
        from specfusion.features.spectrogram import MelSpecParams, melspectrogram

        mel_db = melspectrogram(np.asarray(waveform, np.float32), self.sample_rate, params=MelSpecParams())
        return to_network_input(render_rgb(mel_db, colormap="viridis", size=(224, 224)))

    def embedding_module(self):
        return self.net

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(np.asarray(batch, np.float32))).numpy()

    def config(self) -> dict:
        return {"extractor": self.name, "seed": self.seed, "sample_rate": self.sample_rate, "image_size": [224, 224]}


if "scale_cheap_cnn" not in _REGISTRY:  # once per process: Dask's spawned workers may import this file twice
    register("scale_cheap_cnn")(CheapCNN)


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ (1) the table


def dcase_table(root: Path):
    from specfusion.data.datasets import load_dcase2018

    return load_dcase2018(root, channels="each", missing="keep")


def table_part() -> dict:
    start, before = time.perf_counter(), rss_mib()
    table = dcase_table(DCASE)
    seconds = time.perf_counter() - start
    parts = {p: sum(1 for i in table.items if i.partition == p) for p in ("dev", "test")}
    out = {"items": len(table), "segments": len(table) // 4, "dev_items": parts["dev"], "eval_items": parts["test"],
           "classes": len(table.classes), "load_s": round(seconds, 1), "rss_growth_mib": round(rss_mib() - before, 1),
           "problems": [p[:140] for p in table.problems]}  # fmt: skip
    del table
    gc.collect()
    return out


def spread_meta(folder: Path, n_items: int, *, link_audio: bool) -> list[str]:
    """A DCASE 2018 development folder in ``folder`` with ``n_items / 4`` real meta rows, evenly spaced over the
    real ``dev/meta.txt`` (so that they span many sessions, as the group-aware folds need); with
    ``link_audio`` every row's audio is a link to the real SINS segment."""
    with open(DCASE / "dev" / "meta.txt") as handle:
        rows = [line.rstrip("\n") + "\n" for line in handle]
    n_rows = -(-n_items // 4)
    rows = rows[:: max(1, len(rows) // n_rows)][:n_rows]
    dev = folder / "dev"
    (dev / "audio").mkdir(parents=True, exist_ok=True)
    if link_audio:
        for line in rows:
            link = dev / line.split("\t", 1)[0]
            if not link.exists():
                os.symlink(SINS_SEGMENT.resolve(), link)
    (dev / "meta.txt").write_text("".join(rows))
    return rows


def sliced_table(n_items: int, folder: Path):
    """``n_items`` development items of real DCASE 2018 rows, each segment's audio a link to the real SINS segment."""
    from specfusion.data.datasets import load_dcase2018

    spread_meta(folder, n_items, link_audio=True)
    return load_dcase2018(folder, channels="each").subset(range(n_items))


# ------------------------------------------------------------------------------ (2) throughput


def throughput_part(n_items: int, folder: Path, batch: int, extractor: str = "scale_cheap_cnn",
                    options: dict | None = None) -> dict:  # fmt: skip
    from specfusion.distributed.client import close_client, connect
    from specfusion.distributed.extraction import extract_distributed

    table = sliced_table(n_items, folder / "slice")
    warm = table.subset(range(2 * batch))
    options = dict(options or {})
    # the cheap CNN runs in torch; a real network in the engine's default runtime (ONNX Runtime on the CPU)
    runtime = "torch" if extractor == "scale_cheap_cnn" else "auto"
    out: dict = {"items": n_items, "batch": batch, "extractor": extractor, "options": options, "runs": []}
    for n_workers in (1, 2):
        client = connect(f"local:{n_workers}")
        try:
            client.run(importlib.import_module, "scale")  # registers scale_cheap_cnn in the workers
            # builds the extractor on every worker (and exports a real network's ONNX graph once)
            for r in range(2):
                extract_distributed(warm, extractor, folder / f"warm{n_workers}-{r}.h5", dask=client, batch_size=batch,
                                    options=options, runtime=runtime)  # fmt: skip
            load_before = os.getloadavg()[0]
            workers_cpu, driver_cpu = sum(client.run(time.process_time).values()), time.process_time()
            start = time.perf_counter()
            result = extract_distributed(table, extractor, folder / f"slice{n_workers}.h5", dask=client,
                                         batch_size=batch, options=options, runtime=runtime)  # fmt: skip
            seconds = time.perf_counter() - start
            # CPU seconds (all threads) of the workers and of the driver (with its in-process scheduler)
            workers_cpu = sum(client.run(time.process_time).values()) - workers_cpu
            driver_cpu = time.process_time() - driver_cpu
        finally:
            close_client(client)
        assert result.n_done == n_items, result
        out["runs"].append({"workers": n_workers, "seconds": round(seconds, 2),
                            "items_per_s": round(n_items / seconds, 2),
                            "worker_cpu_ms_per_item": round(1000 * workers_cpu / n_items, 2),
                            "driver_cpu_ms_per_item": round(1000 * driver_cpu / n_items, 2),
                            "load_before": round(load_before, 2),
                            "load_after": round(os.getloadavg()[0], 2)})  # fmt: skip
        print(f"  {n_workers} worker(s): {n_items / seconds:.2f} items/s ({seconds:.1f} s), CPU per item: workers "
              f"{1000 * workers_cpu / n_items:.1f} ms, driver {1000 * driver_cpu / n_items:.1f} ms; {load()}",
              flush=True)  # fmt: skip
    out["speedup"] = round(out["runs"][1]["items_per_s"] / out["runs"][0]["items_per_s"], 2)
    one, two = out["runs"]
    # bound on 2 free cores from the CPU work per item: 1 worker and the driver each on a core; 2 workers and
    # the driver sharing both cores
    per_item_one = max(one["worker_cpu_ms_per_item"], one["driver_cpu_ms_per_item"])
    per_item_two = (two["worker_cpu_ms_per_item"] + two["driver_cpu_ms_per_item"]) / 2
    out["cpu_bound_speedup_2_cores"] = round(per_item_one / per_item_two, 2)
    return out


def front_end_cost(n: int = 8) -> float:
    """CPU seconds per item of decode (one channel of the 4-channel 10-s segment) + Mel + 224x224 image, one thread.

    CPU time (``process_time``), not wall time, so that the figure does not depend on the machine's load.
    """
    from threadpoolctl import threadpool_limits

    from specfusion.data.audio import load_audio

    extractor = CheapCNN()
    best = float("inf")
    with threadpool_limits(1):
        for _ in range(2):
            start = time.process_time()
            for _ in range(n):
                waveform, _ = load_audio(SINS_SEGMENT, sr=16000, channels=0)
                extractor.prepare(np.squeeze(waveform))
            best = min(best, (time.process_time() - start) / n)
    return best


# ------------------------------------------------------------------------------ (3) driver memory


def memory_child(n_items: int, folder: Path) -> dict:
    """In a fresh process: a DCASE table of ``n_items``, then plan + shard + commit fake features; peak RSS."""
    from specfusion.data.datasets import load_dcase2018
    from specfusion.distributed.extraction import _commit, _shards  # the driver's internals, measured alone
    from specfusion.features.store import DONE, FeatureStore
    from specfusion.identity import config_hash

    spread_meta(folder, n_items, link_audio=False)
    table = load_dcase2018(folder, channels="each", missing="keep").subset(range(n_items))
    gc.collect()
    rss_table = rss_mib()
    resettable = reset_peak_rss()
    config = {"extractor": "fake_constant", "dim": FEATURE_DIM, "short": "pad"}
    about = {"config": config, "config_hash": config_hash(config), "dim": FEATURE_DIM}
    vector = np.full(FEATURE_DIM, 0.5, dtype=np.float32)
    start = time.perf_counter()
    store = FeatureStore.create_or_resume(
        folder / "store.h5", config=config, dim=FEATURE_DIM, table=table, chunk_size=16
    )
    pending = np.flatnonzero(store.status() != DONE)
    planned = time.perf_counter()
    peaks = {"plan": rss_mib("VmHWM")}
    commit_s = 0.0
    for shard in _shards(table, pending, store.chunk_size, store.uids):
        rows_ = np.asarray(sorted(shard["uids"]), dtype=np.int64)
        outcome = {"config_hash": about["config_hash"], "error": None, "rows": rows_, "failures": {},
                   "features": np.broadcast_to(vector, (len(rows_), FEATURE_DIM)).copy()}  # fmt: skip
        t = time.perf_counter()
        _commit(store, outcome, about)
        commit_s += time.perf_counter() - t
    looped = time.perf_counter()
    peaks["commit"] = rss_mib("VmHWM")
    store.close(consolidate=True)
    done = time.perf_counter()
    peaks["consolidate"] = peak = rss_mib("VmHWM")
    n_done = FeatureStore.open(folder / "store.h5").n_done  # a check, after the peak is read
    return {"items": n_items, "n_done": int(n_done), "rss_after_table_mib": round(rss_table, 1),
            "peak_rss_mib": round(peak, 1), "peak_reset": resettable,
            "peak_rss_after_mib": {phase: round(v, 1) for phase, v in peaks.items()},
            "plan_s": round(planned - start, 2), "commit_us_per_item": round(1e6 * commit_s / n_items, 1),
            "shard_and_commit_us_per_item": round(1e6 * (looped - planned) / n_items, 1),
            "consolidate_us_per_item": round(1e6 * (done - looped) / n_items, 1),
            "store_mib": round((folder / "store.h5").stat().st_size / 2**20, 1)}  # fmt: skip


def memory_part(sizes: list[int], folder: Path) -> list[dict]:
    out = []
    for n in sizes:
        child = folder / f"memory{n}"
        command = [sys.executable, __file__, "--memory-child", str(n), "--folder", str(child)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"  {n} items: {out[-1]}; {load()}", flush=True)
    return out


# ------------------------------------------------------------------------------ (4) projection


def network_costs(repeats: int = 2, batch: int = 2) -> dict[str, float]:
    """CPU seconds per image of each grid network's forward pass (torch, one thread, random weights).

    CPU time (``process_time``), not wall time, so that the ratios do not depend on the machine's load.
    """
    import torch

    from specfusion.features.extractors import get_extractor

    torch.set_num_threads(1)
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    costs = {}
    for name in ("densenet121", "resnet50", "vgg16", "vgg19"):
        extractor = get_extractor(name, weights="none", device="cpu")
        extractor.embed(x[:1])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            extractor.embed(x)
            best = min(best, (time.process_time() - start) / batch)
        costs[name] = best
        print(f"  {name}: {best * 1000:.0f} CPU ms per image (one thread); {load()}", flush=True)
        del extractor
        gc.collect()
    return costs


def projection(table: dict, costs: dict[str, float], efficiency: float, front_end_s: float) -> dict:
    """Hours for the 8-system grid on N CPU workers and N GPUs."""
    images = table["items"]
    densenet_core_s = 2.0 / DENSENET121_ITEMS_PER_S_2_CORES  # core-seconds per item, end to end
    per_item_cpu = {n: densenet_core_s * costs[n] / costs["densenet121"] for n in costs}
    # GPU: the network alone at the assumed rate, and with the CPU front end of CORES_PER_GPU cores per GPU
    gpu_network = {n: costs[n] / costs["resnet50"] / GPU_RESNET50_PER_S for n in costs}
    per_item_gpu = {n: max(gpu_network[n], front_end_s / CORES_PER_GPU) for n in costs}
    core_hours = sum(2 * per_item_cpu[n] for n in costs) * images / 3600  # ImageNet + None: same cost
    gpu_network_hours = sum(2 * gpu_network[n] for n in costs) * images / 3600
    gpu_hours = sum(2 * per_item_gpu[n] for n in costs) * images / 3600
    rows = []
    for n in (1, 2, 8, 32, 128):  # CPU: linear scaling, and with the 1 -> 2 efficiency measured here
        rows.append(
            {
                "workers": n,
                "cpu_hours": round(core_hours / n, 1),
                "cpu_hours_measured_efficiency": round(core_hours / (n * efficiency), 1),
                "gpu_hours_network_only": round(gpu_network_hours / n, 2),
                "gpu_hours": round(gpu_hours / n, 2),
            }
        )
    return {
        "images_per_system": images,
        "systems": GRID,
        "cpu_core_s_per_item": {k: round(v, 4) for k, v in per_item_cpu.items()},
        "gpu_network_s_per_item": {k: round(v, 5) for k, v in gpu_network.items()},
        "gpu_s_per_item": {k: round(v, 5) for k, v in per_item_gpu.items()},
        "cpu_core_hours": round(core_hours, 1),
        "gpu_hours_1": round(gpu_hours, 2),
        "efficiency": round(efficiency, 2),
        "rows": rows,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=320, help="items of the throughput slice")
    parser.add_argument("--batch", type=int, default=16, help="items per shard")
    parser.add_argument(
        "--extractor",
        default="scale_cheap_cnn",
        help="extractor of the throughput part (default: the cheap CNN; e.g. densenet121)",
    )
    parser.add_argument(
        "--options", type=json.loads, default={}, help='its options as JSON, e.g. \'{"weights": "none"}\''
    )
    parser.add_argument("--memory", type=int, nargs="*", default=[10_000, 100_000], help="driver-memory sizes")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4],
                        help="measurements to run (default all; 4 needs 1 and 2)")  # fmt: skip
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.folder)))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    results: dict = {"machine_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="specfusion-scale-") as tmp:
        folder = Path(tmp)
        if 1 in args.parts:
            print(f"(1) DCASE 2018 table; {load()}", flush=True)
            results["table"] = table_part()
            print(f"  {results['table']}", flush=True)
        if 2 in args.parts:
            print(f"(2) throughput, 1 and 2 Dask workers, {args.items} items; {load()}", flush=True)
            results["throughput"] = throughput_part(args.items, folder, args.batch, args.extractor, args.options)
            results["front_end_s"] = round(front_end_cost(), 4)
            print(
                f"  speed-up {results['throughput']['speedup']}x (CPU-bound on 2 free cores: "
                f"{results['throughput']['cpu_bound_speedup_2_cores']}x); "
                f"front end {results['front_end_s'] * 1000:.1f} ms/item",
                flush=True,
            )
        if 3 in args.parts:
            print(f"(3) driver memory; {load()}", flush=True)
            results["memory"] = memory_part(args.memory, folder)
        if 4 in args.parts and "table" in results and "throughput" in results:
            print(f"(4) network costs; {load()}", flush=True)
            costs = network_costs()
            efficiency = min(1.0, results["throughput"]["speedup"] / 2)
            results["projection"] = projection(results["table"], costs, efficiency, results["front_end_s"])
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
