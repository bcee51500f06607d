"""Distributed extraction on Dask (``dask.distributed``): a laptop, an HPC scheduler or Kubernetes.

The dataset is cut into **shards**: one shard is one chunk of the feature store (``chunk_size``
consecutive table rows, their pending items), i.e. exactly one batch of the single-process engine
(:func:`specfusion.features.extraction.extract`). Each shard is one Dask task: a worker decodes its files,
runs the front end and the network (the same :func:`~specfusion.features.extraction._prepare_job` and
:func:`~specfusion.features.extraction.embed_batch` as the single-process engine), and sends back the rows, the
features and the failed items. The extractor is built once per worker process and kept there
(:data:`_WORKER_EXTRACTORS`, keyed by name, options and runtime).

Only the **driver** writes: it commits each returned shard through the ordinary
:class:`~specfusion.features.store.FeatureStore` (HDF5 + journal), once per item. Hence:

* resume after a crash, exactly-once rows and the configuration check are the store's, as in a
  single-process run; shards already done are not submitted again;
* a worker lost mid-shard: the scheduler runs the shard again on another worker (``retries`` covers
  errors raised inside a task); its rows were never committed, so nothing is lost or duplicated;
* the batches equal the single-process engine's, so with the same runtime the features are the same.

GPUs: one worker per GPU; a worker builds its extractor on its own GPU
(:func:`~specfusion.distributed.client.worker_device`), and when workers declare a ``GPU`` resource every
shard asks for one (:func:`~specfusion.distributed.client.shard_resources`). The SVM search
runs on the same cluster when its caller hands it :class:`specfusion.distributed.svm.DaskFits` of the client.

Dask is imported only when a distributed run is asked for (``pip install specfusion[dask]``); the
clients come from :mod:`specfusion.distributed.client` (``connect``, ``close_client``, ``session``). Audio paths must be readable on every worker (a shared file system).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from specfusion import __version__
from specfusion.distributed.client import (
    session,
    shard_resources,
    worker_device,
    workers_info,
)
from specfusion.errors import AudioError, ConfigError
from specfusion.features.extraction import (
    ExtractionResult,
    check_engine_options,
    decode_jobs,
    default_batch_size,
    embed_batch,
    extraction_bar,
    prepared_stream,
    reading_options,
    single_threaded_blas,
    store_config,
    warn_mixed_runtime,
)
from specfusion.features.store import DONE, FeatureStore
from specfusion.identity import config_hash

log = logging.getLogger(__name__)

#: Extractors (with their runtime) built in this worker process: ``key -> (extractor, runtime)``.
#: One entry at most, so a worker switching extractors does not hold two networks.
_WORKER_EXTRACTORS: dict[str, tuple] = {}

#: Retries of a shard whose task raised (a lost worker is rescheduled by the scheduler itself).
DEFAULT_RETRIES = 2


def extract_distributed(
    table,
    extractor: str,
    store_path,
    *,
    options: dict | None = None,
    dask="local",
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    on_error: str = "record",
    runtime: str = "auto",
    fsync: bool = False,
    short: str = "pad",
    retries: int = DEFAULT_RETRIES,
    max_in_flight: int | None = None,
) -> ExtractionResult:
    """Extract features of every item of ``table`` on a Dask cluster into the store at ``store_path``.

    Same store, same resume and same result as :func:`specfusion.features.extraction.extract`; the network runs
    on the cluster's workers, the store is written by this process only.

    Parameters
    ----------
    table : DatasetTable
    extractor : str
        Registered extractor name (:func:`specfusion.features.extractors.get_extractor_class`); each worker
        builds it once with ``options`` and keeps it.
    store_path : path-like
    options : dict, optional
        Keyword arguments of the extractor (e.g. ``{"weights": "none"}``).
    dask : str or Client
        Where to run (:func:`~specfusion.distributed.client.connect`): ``"local"``, ``"local:N"``,
        ``"tcp://host:port"`` or a Client (left open).
    batch_size : int, optional
        Items per batch (= per shard) for a new store; an existing store keeps its own.
    workers : int
        Decode/front-end threads inside each Dask task (default 0: the worker's own thread; Dask
        workers are single-threaded processes).
    progress, on_error, runtime, fsync, short
        As in :func:`~specfusion.features.extraction.extract`.
    retries : int
        Times a shard whose task raised is tried again (on any worker).
    max_in_flight : int, optional
        Shards submitted and not yet committed (default twice the cluster's worker threads); bounds
        the driver's memory.

    Returns
    -------
    ExtractionResult
        ``workers`` is the number of Dask worker threads; ``runtime`` the workers' runtime.

    Raises
    ------
    ConfigError
        Dask missing, a bad address or option, or workers that build another configuration.
    StoreError
        The store holds another configuration or dataset (nothing is changed).
    AudioError
        With ``on_error="raise"``.
    """
    check_engine_options(on_error=on_error, short=short)
    spec = {"name": str(extractor), "options": dict(options or {}), "runtime": runtime, "short": short}
    with session(dask) as client:
        return _run(client, table, spec, store_path, batch_size=batch_size, workers=int(workers), progress=progress,
                    on_error=on_error, fsync=fsync, retries=int(retries), max_in_flight=max_in_flight)  # fmt: skip


def _run(client, table, spec, store_path, *, batch_size, workers, progress, on_error, fsync, retries, max_in_flight):
    from distributed import as_completed

    start = time.perf_counter()
    resources = shard_resources(workers_info(client))
    # the extractor is built on a worker (and kept there): the driver never loads a network
    about = client.submit(describe_extractor, spec, pure=False, resources=resources).result()
    store = FeatureStore.create_or_resume(
        store_path, config=about["config"], dim=about["dim"], table=table,
        chunk_size=batch_size if batch_size is not None else (None if Path(store_path).exists() else about["batch_size"]),
        fsync=fsync,
    )  # fmt: skip
    chunk = store.chunk_size
    status = store.status()
    pending = np.flatnonzero(status != DONE)
    n_skipped = len(status) - len(pending)
    if len(pending):
        warn_mixed_runtime(store, about["runtime"])
    n_threads = max(1, sum(client.nthreads().values()))
    limit = max(1, int(max_in_flight) if max_in_flight is not None else 2 * n_threads)
    log.info("%s: %d of %d items to extract (%d done), shards of %d, %d Dask worker thread(s), %s",
             store.path, len(pending), len(status), n_skipped, chunk, n_threads, about["runtime"])  # fmt: skip
    uids = store.uids
    shards = _shards(table, pending, chunk, uids)
    n_extracted = 0
    completed = False
    in_flight: set = set()
    try:
        with extraction_bar(progress, len(pending), _Named(spec["name"])) as bar:
            queue = as_completed()

            def submit_next() -> bool:
                shard = next(shards, None)
                if shard is None:
                    return False
                # positional: submit's own keywords (workers=, retries=) are Dask's placement and retry options
                future = client.submit(extract_shard, spec, shard, workers, on_error, retries=retries, pure=False,
                                       resources=resources)  # fmt: skip
                in_flight.add(future)
                queue.add(future)
                return True

            for _ in range(limit):
                if not submit_next():
                    break
            for future in queue:
                outcome = future.result()
                in_flight.discard(future)
                future.release()
                n_ok, n_bad = _commit(store, outcome, about)
                n_extracted += n_ok
                bar.update(n_ok + n_bad)
                submit_next()
        seconds = time.perf_counter() - start
        if len(pending):
            store.note_run({
                "package_version": __version__, "runtime": about["runtime"], "batch_size": chunk, "workers": n_threads,
                "extracted": n_extracted, "failed": store.n_failed, "seconds": round(seconds, 3), "short": spec["short"],
                "dataset_problems": list(getattr(table, "problems", [])), "dask": str(client.scheduler.address),
            })  # fmt: skip
        completed = True
    finally:
        if in_flight:  # stopped early (an error, --fail-fast, Ctrl-C): the cluster drops the rest
            client.cancel(list(in_flight))
        store.close(consolidate=completed)
    failures = store.failed_items()
    return ExtractionResult(
        store_path=Path(store_path), n_items=store.n_items, n_done=store.n_done, n_extracted=n_extracted,
        n_skipped=n_skipped, failures=failures, seconds=time.perf_counter() - start, batch_size=chunk,
        workers=n_threads, runtime=about["runtime"], problems=list(getattr(table, "problems", [])),
    )  # fmt: skip


class _Named:
    """What the progress bar needs of an extractor (its name), without building one on the driver."""

    def __init__(self, name: str):
        self.name = name


def _shards(table, pending: np.ndarray, chunk: int, uids) -> Iterator[dict]:
    """The pending rows as shards, lazily: one per store chunk, with its decode jobs and ``{row: uid}``."""
    for c, group in itertools.groupby(decode_jobs(table, pending, chunk), key=lambda job: job.chunk):
        jobs = list(group)
        yield {"chunk": c, "jobs": jobs, "uids": {row: str(uids[row]) for job in jobs for row in job.rows}}


def _commit(store: FeatureStore, outcome: dict, about: dict) -> tuple[int, int]:
    """Commit one shard's outcome (once: the store refuses an item that already has features)."""
    if outcome["config_hash"] != about["config_hash"]:
        raise ConfigError(f"a Dask worker built another extractor configuration ({outcome['config_hash'][:12]} "
                          f"instead of {about['config_hash'][:12]}); are the workers' packages the same?")  # fmt: skip
    if outcome.get("error") is not None:
        path, reason = outcome["error"]
        raise AudioError(path, reason)
    uids = store.uids
    rows = np.asarray(outcome["rows"], dtype=np.int64)
    store.append([str(uids[r]) for r in rows], outcome["features"], failures=outcome["failures"])
    return len(rows), len(outcome["failures"])


# ------------------------------------------------------------------------------ worker side


def worker_extractor(spec: dict):
    """The extractor and runtime of ``spec`` in this process: built on first use, then kept.

    Its torch device is this worker's own (:func:`~specfusion.distributed.client.worker_device`), whatever
    device the driver named.
    """
    from specfusion.features.extractors import get_extractor_class
    from specfusion.features.runtimes import select_runtime

    key = repr((spec["name"], sorted(spec["options"].items()), spec["runtime"]))
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS.clear()
        cls = get_extractor_class(spec["name"])
        options = dict(spec["options"])
        if "device" in inspect.signature(cls.__init__).parameters:
            options["device"] = worker_device(options.get("device"))
        extractor = cls(**options)
        _WORKER_EXTRACTORS[key] = (extractor, select_runtime(extractor, spec["runtime"]))
    return _WORKER_EXTRACTORS[key]


def describe_extractor(spec: dict) -> dict:
    """What the driver needs to open the store (a Dask task: the driver never loads a network)."""
    extractor, engine = worker_extractor(spec)
    config = store_config(extractor, short=spec["short"])
    return {"config": config, "config_hash": config_hash(config), "dim": int(extractor.dim),
            "batch_size": default_batch_size(extractor), "runtime": engine.description}  # fmt: skip


def extract_shard(spec: dict, shard: dict, workers: int = 0, on_error: str = "record") -> dict:
    """Decode, prepare and embed one shard (a Dask task); nothing is written here.

    Returns
    -------
    dict
        ``rows`` and ``features`` (finite features, table rows), ``failures`` (uid -> reason),
        ``error`` ((path, reason) of the first failed item with ``on_error="raise"``, else None) and
        ``config_hash`` of the worker's extractor.
    """
    extractor, engine = worker_extractor(spec)
    reading = reading_options(extractor, short=spec["short"])
    outcome = {"config_hash": config_hash(store_config(extractor, short=spec["short"])), "error": None}
    with single_threaded_blas():
        prepared = prepared_stream(shard["jobs"], extractor, workers=workers, prefetch=len(shard["jobs"]) + workers,
                                    contiguous=engine.name == "onnxruntime", reading=reading)  # fmt: skip
        try:
            rows, features, failures = embed_batch(
                extractor, prepared, shard["uids"], embed=engine.embed, on_error=on_error
            )
        except AudioError as err:  # AudioError does not pickle; the driver raises it again
            outcome["error"] = (str(err.path), err.reason)
            rows, features, failures = np.zeros(0, np.int64), np.zeros((0, extractor.dim), np.float32), {}
    outcome.update(rows=rows, features=features, failures=failures)
    return outcome
