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

GPUs: one worker per GPU; a worker builds its extractor on its own GPU (:func:`worker_device`), and when
workers declare a ``GPU`` resource every shard asks for one (:func:`shard_resources`). The SVM search
runs on the same cluster within :func:`session` (:mod:`specfusion.distributed.svm`).

Dask is imported only here, and only when a distributed run is asked for (``pip install
specfusion[dask]``). Audio paths must be readable on every worker (a shared file system).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from specfusion import __version__
from specfusion.errors import AudioError, ConfigError
from specfusion.features.extraction import (
    ExtractionResult,
    _jobs,
    _prepared_stream,
    _progress_bar,
    _single_threaded_blas,
    _warn_mixed_runtime,
    check_engine_options,
    default_batch_size,
    embed_batch,
    reading_options,
    store_config,
)
from specfusion.features.store import DONE, FeatureStore
from specfusion.identity import config_hash

log = logging.getLogger(__name__)

#: Extractors (with their runtime) built in this worker process: ``key -> (extractor, runtime)``.
#: One entry at most, so a worker switching extractors does not hold two networks.
_WORKER_EXTRACTORS: dict[str, tuple] = {}

#: Retries of a shard whose task raised (a lost worker is rescheduled by the scheduler itself).
DEFAULT_RETRIES = 2


def connect(address="local"):
    """A ``dask.distributed.Client`` for ``address``.

    Parameters
    ----------
    address : str or Client
        ``"local"`` (a ``LocalCluster`` with one single-threaded worker process per core),
        ``"local:N"`` (N such workers), a scheduler address such as ``"tcp://host:8786"``, or a
        ``Client`` (returned as is).

    Returns
    -------
    client : distributed.Client
        The caller closes it (for a local address its cluster closes with it).

    Raises
    ------
    ConfigError
        Dask is not installed, or the address is malformed.
    """
    distributed = _import_distributed()
    if isinstance(address, distributed.Client):
        return address
    text = str(address).strip()
    if text == "local" or text.startswith("local:"):
        n_workers = _local_workers(text)
        cluster = distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")  # fmt: skip
        client = distributed.Client(cluster)
        client._specfusion_owns_cluster = cluster  # closed by close_client
        return client
    if "://" not in text:
        raise ConfigError(
            f"dask address must be local, local:N or a scheduler address like tcp://host:8786, got {text!r}"
        )
    return distributed.Client(text)


def close_client(client) -> None:
    """Close a client made by :func:`connect` (and its ``LocalCluster``, if it made one)."""
    cluster = getattr(client, "_specfusion_owns_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextlib.contextmanager
def session(address="local"):
    """A Dask client (:func:`connect`) on which, within the block, the SVM fits run too.

    Closed at the end when made here (an address); a ``Client`` given is left open. The recipe runner
    uses it for ``[run] dask``: extraction shards, and the C search's folds and refits of
    :class:`~specfusion.models.svm.LinearSVM` (:func:`specfusion.distributed.svm.svm_on_dask`).
    """
    from specfusion.distributed.svm import svm_on_dask

    own = not _is_client(address)
    client = connect(address)
    try:
        with svm_on_dask(client):
            yield client
    finally:
        if own:
            close_client(client)


def _local_workers(text: str) -> int:
    if text == "local":
        from specfusion.threads import available_cores

        return max(1, available_cores())
    try:
        n = int(text.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"dask address local:N needs a positive worker count, got {text!r}")
    return n


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError("distributed extraction needs Dask: pip install 'specfusion[dask]'") from None
    return distributed


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
        Where to run (:func:`connect`): ``"local"``, ``"local:N"``, ``"tcp://host:port"`` or a Client
        (left open).
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
    own = not _is_client(dask)
    client = connect(dask)
    try:
        return _run(client, table, spec, store_path, batch_size=batch_size, workers=int(workers), progress=progress,
                    on_error=on_error, fsync=fsync, retries=int(retries), max_in_flight=max_in_flight)  # fmt: skip
    finally:
        if own:
            close_client(client)


def _is_client(obj) -> bool:
    return type(obj).__name__ == "Client" and hasattr(obj, "submit")


def _run(client, table, spec, store_path, *, batch_size, workers, progress, on_error, fsync, retries, max_in_flight):
    from distributed import as_completed

    start = time.perf_counter()
    resources = shard_resources(_workers_info(client))
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
        _warn_mixed_runtime(store, about["runtime"])
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
        with _progress_bar(progress, len(pending), _Named(spec["name"])) as bar:
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
    for c, group in itertools.groupby(_jobs(table, pending, chunk), key=lambda job: job.chunk):
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

    Its torch device is this worker's own (:func:`worker_device`), whatever device the driver named.
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


def worker_device(requested: str | None = None, *, n_visible: int | None = None) -> str:
    """The torch device of a network built in this Dask worker: its own GPU, else the CPU.

    One worker per GPU: each worker process sees its GPU as the first visible CUDA device
    (``CUDA_VISIBLE_DEVICES=i`` per worker, or dask-cuda's ``LocalCUDACluster`` / ``dask cuda worker``,
    which order the visible devices so that the worker's own comes first). So the device is
    ``"cuda:0"`` when the worker sees a GPU -- also when the driver named another index, which is an
    index on the driver's machine -- and ``"cpu"`` when it sees none or ``requested`` is a CPU.

    Parameters
    ----------
    requested : str, optional
        The device the driver asked for (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or None (the default: a
        GPU when there is one).
    n_visible : int, optional
        CUDA devices this process sees (default: ``torch.cuda.device_count()``).

    Raises
    ------
    ConfigError
        ``requested`` names a GPU and the worker sees none.
    """
    text = "" if requested is None else str(requested).strip().lower()
    if text.startswith("cpu"):
        return "cpu"
    if n_visible is None:
        import torch

        n_visible = torch.cuda.device_count()
    if n_visible == 0:
        if text.startswith("cuda"):
            raise ConfigError(f"device {requested!r} was asked for, but a Dask worker sees no GPU "
                              "(start the workers on GPU machines, or leave the device unset)")  # fmt: skip
        return "cpu"
    if n_visible > 1:
        log.warning("this Dask worker sees %d GPUs and uses the first; start one worker per GPU "
                    "(CUDA_VISIBLE_DEVICES per worker, or dask-cuda), docs/distributed.md", n_visible)  # fmt: skip
    return "cuda:0"


def shard_resources(workers: dict) -> dict | None:
    """Dask resources a shard asks for: ``{"GPU": 1}`` when a worker declares a ``GPU`` resource, else None.

    ``workers`` is ``client.scheduler_info()["workers"]``. Workers started with ``--resources GPU=1``
    then run one shard at a time each, and workers without the resource (e.g. a CPU-only worker in the
    same cluster) get none.
    """
    declared = any(float((info.get("resources") or {}).get("GPU", 0)) > 0 for info in workers.values())
    return {"GPU": 1} if declared else None


def _workers_info(client) -> dict:
    """Every worker's entry of ``client.scheduler_info()`` (some Dask versions list 5 unless told otherwise)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # a Dask without the n_workers parameter lists them all
        return client.scheduler_info()["workers"]


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
    with _single_threaded_blas():
        prepared = _prepared_stream(shard["jobs"], extractor, workers=workers, prefetch=len(shard["jobs"]) + workers,
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
