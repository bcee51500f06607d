"""Many ESC-50 CRNN protocol runs at once: configurations x base seeds x folds, in worker processes.

A seed study needs many trainings, and one CRNN is far too small to fill a GPU, so the fold models
are trained by ``--workers`` processes sharing one device (or the CPU cores), each taking the next job
from one queue. A job is one fold model of :func:`specfusion.models.crnn.protocol.crnn_fold_protocol`: for base
seed ``s`` and development fold ``k`` it trains on the other folds with seed ``s + k`` (the protocol's
seed rule) and scores the held-out fold after the final batch-norm recalibration, exactly as the
protocol does; the Devel accuracy of a (configuration, base seed) is the mean over its four folds.

Two steps, so that the device machine needs neither the audio nor librosa's spectrogram front end::

    # here: the paper's spectrograms of the four development folds, one file (26 MB)
    python benchmarks/crnn_grid.py export --root ../shared/data/ESC-50 --to .gpu/esc50-dev.npz
    # anywhere: the grid (a JSON list of {"name", "params", "seeds"}), results as JSON lines
    python benchmarks/crnn_grid.py run --spectrograms .gpu/esc50-dev.npz --grid grid.json \\
        --workers 8 --deadline 300 --out grid.jsonl
    python benchmarks/crnn_grid.py summary grid.jsonl --reference paper

Jobs run in the order (seed, configuration, fold), so that a run stopped by ``--deadline`` (no job is
started that would end after it, judged by the configuration's slowest finished job) leaves as many
complete (configuration, seed) Devel figures as it can. ``summary`` prints each configuration's Devel
accuracy per base seed, their mean and standard deviation, and the mean paired difference from the
reference configuration over the seeds both completed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue as queue_module
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from _common import add_root_argument  # noqa: E402  (benchmarks/, the script's folder, is on sys.path)

FOLDS = (1, 2, 3, 4)


def export(root: str, to: str, cache: str | None = None) -> None:
    """Write the ESC-50 development spectrograms (-80 dB clipping), labels and folds to one ``.npz``."""
    from specfusion.data.datasets import load_esc50
    from specfusion.models.crnn import variant_defaults
    from specfusion.models.crnn.spectrograms import compute_spectrograms

    table = load_esc50(root)
    S = compute_spectrograms(table, clip_db=variant_defaults("esc50")["clip_db"], cache_dir=cache)
    Path(to).parent.mkdir(parents=True, exist_ok=True)
    np.savez(to, S=S.astype(np.float32), labels=np.asarray(table.labels(), dtype=str),
             folds=np.asarray(table.folds(), dtype=int), uids=np.asarray(table.uids(), dtype=str),
             classes=np.asarray(table.classes, dtype=str))  # fmt: skip
    print(f"{to}: {S.shape[0]} clips, spectrograms {S.shape[1:]}")


def grid_jobs(grid: list[dict], folds=FOLDS) -> list[dict]:
    """The jobs of a grid in run order: base seed, then configuration, then fold."""
    seeds = sorted({s for entry in grid for s in entry["seeds"]})
    return [{"name": entry["name"], "params": entry.get("params", {}), "seed": s, "fold": k}
            for s in seeds for entry in grid if s in entry["seeds"] for k in folds]  # fmt: skip


def train_job(job: dict, data: dict, device: str | None) -> dict:
    """Train one fold model as the protocol does; its held-out accuracy and validation curve."""
    import torch

    from specfusion.models.crnn import CRNNClassifier
    from specfusion.models.crnn.protocol import fold_seed

    train, held_out = data["folds"] != job["fold"], data["folds"] == job["fold"]
    S, labels = data["S"], data["labels"].astype(object)
    model = CRNNClassifier(
        variant="esc50",
        device=device,
        seed=fold_seed(job["seed"], job["fold"]),
        classes=list(data["classes"]),
        **job["params"],
    )
    started = time.perf_counter()
    model.fit(S[train], labels[train], validation=(S[held_out], labels[held_out]))
    seconds = time.perf_counter() - started
    history, where = model.history_, next(model.network_.parameters()).device
    curve = [[r["epoch"], round(r["val_accuracy"], 4), round(r["val_loss"], 4)] for r in history if "val_accuracy" in r]
    result = {
        **job, "accuracy": history[-1]["val_accuracy"], "seconds": round(seconds, 2),
        "train_s": round(sum(r["train_s"] for r in history), 2), "epochs": len(history),
        "device": str(where), "curve": curve,
    }  # fmt: skip
    if where.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
        result["max_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _worker(queue, results, durations, data_path, device, deadline, started, out) -> None:
    import torch

    torch.set_num_threads(1)
    with np.load(data_path) as archive:
        data = {key: archive[key] for key in archive.files}
    while True:
        job = queue.get()
        if job is None:
            return
        known = durations.get(job["name"])
        estimate = known if known is not None else 3 * max(durations.values(), default=0.0)
        if time.time() + estimate > started + deadline:
            results.put({**job, "skipped": "deadline"})
            continue
        try:
            result = train_job(job, data, device)
        except Exception as error:  # one broken configuration must not lose the others' results
            result = {**job, "error": f"{type(error).__name__}: {error}"}
        else:
            durations[job["name"]] = max(durations.get(job["name"], 0.0), result["seconds"])
        with open(out, "a") as handle:
            handle.write(json.dumps(result) + "\n")
        results.put(result)


def run(args) -> None:
    grid = json.loads(Path(args.grid).read_text()) if Path(args.grid).exists() else json.loads(args.grid)
    jobs = grid_jobs(grid, args.folds or FOLDS)
    context = multiprocessing.get_context("spawn")
    manager = context.Manager()
    queue, results, durations = context.Queue(), context.Queue(), manager.dict()
    for job in jobs:
        queue.put(job)
    for _ in range(args.workers):
        queue.put(None)
    started = time.time()
    workers = [context.Process(target=_worker, args=(queue, results, durations, args.spectrograms, args.device,
                                                     args.deadline, started, args.out))  # fmt: skip
               for _ in range(args.workers)]  # fmt: skip
    for process in workers:
        process.start()
    done = 0
    while done < len(jobs):
        try:
            result = results.get(timeout=5)
        except queue_module.Empty:
            if not any(process.is_alive() for process in workers):
                print(f"the workers stopped after {done} of {len(jobs)} jobs", flush=True)
                break
            continue
        done += 1
        status = (
            result.get("skipped") or result.get("error") or f"{100 * result['accuracy']:.2f}% {result['seconds']} s"
        )
        print(f"[{done}/{len(jobs)} {time.time() - started:.0f} s] {result['name']} seed {result['seed']} "
              f"fold {result['fold']}: {status}", flush=True)  # fmt: skip
    for process in workers:
        process.join()


def summary(path: str, reference: str | None) -> dict:
    """Devel accuracy (mean of the 4 folds) per configuration and base seed; mean, sd and paired differences."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    folds: dict = {}
    for row in rows:
        if "accuracy" in row:
            folds.setdefault(row["name"], {}).setdefault(row["seed"], {})[row["fold"]] = 100 * row["accuracy"]
    devel = {name: {s: float(np.mean(list(f.values()))) for s, f in seeds.items() if len(f) == len(FOLDS)}
             for name, seeds in folds.items()}  # fmt: skip
    table = {}
    for name, seeds in devel.items():
        values = np.array(list(seeds.values()))
        entry = {"seeds": {s: round(v, 2) for s, v in sorted(seeds.items())}, "n": len(values),
                 "mean": round(float(values.mean()), 2) if len(values) else None,
                 "sd": round(float(values.std(ddof=1)), 2) if len(values) > 1 else None}  # fmt: skip
        if reference in devel and name != reference:
            common = sorted(set(seeds) & set(devel[reference]))
            diffs = np.array([seeds[s] - devel[reference][s] for s in common])
            if len(diffs):
                entry["paired_diff"] = round(float(diffs.mean()), 2)
                entry["paired_sd"] = round(float(diffs.std(ddof=1)), 2) if len(diffs) > 1 else None
                entry["paired_n"] = len(diffs)
        table[name] = entry
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("export", help="ESC-50 development spectrograms, labels and folds to one .npz")
    add_root_argument(p)
    p.add_argument("--to", required=True)
    p.add_argument("--cache", help="spectrogram cache folder (compute_spectrograms' cache_dir)")
    p = commands.add_parser("run", help="train the grid's fold models")
    p.add_argument("--spectrograms", required=True, help=".npz written by export")
    p.add_argument("--grid", required=True, help="JSON file or text: a list of {name, params, seeds}")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (default all four)")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the device")
    p.add_argument("--device", help="torch device (default: CUDA when torch sees one)")
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no job starts")
    p.add_argument("--out", required=True, help="JSON-lines results (appended)")
    p = commands.add_parser("summary", help="Devel accuracies of a results file")
    p.add_argument("results")
    p.add_argument("--reference", help="configuration the others are compared with, seed by seed")
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.root, args.to, args.cache)
    elif args.command == "run":
        run(args)
    else:
        print(json.dumps(summary(args.results, args.reference), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
