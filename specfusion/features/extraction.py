"""The extraction engine: dataset -> decode -> front end -> batched network -> feature store.

Design (details and measurements in ``docs/extraction.md``):

* **Two stages, overlapped.** Worker threads decode each file (:func:`specfusion.data.audio.load_audio` at
  the extractor's rate, the table's channel policy) and run :meth:`Extractor.prepare` (spectrogram ->
  colour-mapped image, or waveform padding). numpy, soundfile and soxr release the GIL, and so does
  torch during the forward pass, so decoding of the next batch runs while the main thread runs the
  network on the current one.
* **No thread storms.** numpy/scipy's OpenBLAS is limited to one thread during a run: its thread pool,
  woken for every small matrix product of the front end, made the front end 50-70x slower on 2 busy
  cores.
* **Bounded memory.** At most ``prefetch`` files are in flight (submitted and not yet consumed), so peak
  memory depends on the batch size, not on the number of clips.
* **Deterministic batches.** A batch is the pending items among ``chunk_size`` consecutive table rows
  (the store's fixed batch size), prepared inputs of equal shape stacked together. A resumed run forms
  exactly the batches an uninterrupted run forms, so its features are bit-identical.
* **Commit per batch.** Every batch (features plus the items whose audio failed, with the reason) is one
  atomic store record (:meth:`FeatureStore.append`); finished items are skipped on a re-run, failed
  ones are tried again.
* **Runtime.** On a GPU (when torch sees one) the extractor's own torch forward; on CPU the image CNNs
  run as an exported ONNX graph on ONNX Runtime, measured fastest against torch eager, channels-last
  and TorchScript (:mod:`specfusion.features.runtimes`, figures in ``docs/extraction.md``).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from specfusion import __version__
from specfusion.data.audio import MIN_SECONDS, check_short_policy, load_audio
from specfusion.errors import AudioError, ConfigError, SpecfusionError
from specfusion.features.runtimes import select_runtime
from specfusion.features.store import DONE, FeatureStore

log = logging.getLogger(__name__)

ON_ERROR = ("record", "raise")


@dataclasses.dataclass
class ExtractionResult:
    """What an :func:`extract` run did.

    Attributes
    ----------
    store_path : Path
    n_items : int
        Items in the dataset table.
    n_done : int
        Items with features in the store after the run.
    n_extracted : int
        Items whose features this run computed.
    n_skipped : int
        Items that already had features (earlier run).
    failures : list of (uid, reason, path)
        Every item of the store whose audio could not be used, in table order.
    problems : list of str
        The dataset's own problems (rows or files left out when it was loaded: missing audio, dangling
        or looping links, ...); also kept in the store's run log.
    seconds : float
        Wall time of the run.
    batch_size, workers : int
    runtime : str
        Where and how the network ran.
    """

    store_path: Path
    n_items: int
    n_done: int
    n_extracted: int
    n_skipped: int
    failures: list[tuple[str, str, str]]
    seconds: float
    batch_size: int
    workers: int
    runtime: str
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def items_per_second(self) -> float:
        """Throughput of this run (extracted plus newly failed items per second)."""
        return (self.n_extracted + self.n_failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def all_failed(self) -> bool:
        """No item has features and at least one failed."""
        return self.n_done == 0 and self.n_failed > 0


@dataclasses.dataclass(frozen=True)
class DecodeJob:
    """One file to decode and the store rows it yields (several for the ``"each"`` channel policy)."""

    chunk: int
    path: Path
    rows: tuple[int, ...]
    channels: tuple[int | None, ...]


def default_workers() -> int:
    """Decode/front-end threads: one core's worth less than the machine has (at least 1, at most 4)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def default_batch_size(extractor) -> int:
    """16 on CPU (measured plateau of images/s for the image CNNs), 64 on a GPU."""
    device = str(getattr(extractor, "device", "cpu"))
    return 64 if device.startswith("cuda") else 16


def extract(
    table,
    extractor,
    store_path,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    prefetch: int | None = None,
    progress: bool = False,
    on_error: str = "record",
    runtime: str = "auto",
    fsync: bool = False,
    short: str = "pad",
) -> ExtractionResult:
    """Extract features of every item of ``table`` into the store at ``store_path``; resumable.

    Parameters
    ----------
    table : DatasetTable
        Items to extract; the channel policy is the items' (``channel`` set: one item per channel).
    extractor : Extractor
        Any registered extractor (:func:`specfusion.features.extractors.get_extractor`).
    store_path : path-like
        HDF5 store; created, or resumed when it holds the same configuration and dataset.
    batch_size : int, optional
        Items per network batch for a new store (default :func:`default_batch_size`); an existing
        store keeps its own so resumed batches equal an uninterrupted run's.
    workers : int, optional
        Decode/front-end threads (default :func:`default_workers`); 0 runs them in the main thread
        (no overlap).
    prefetch : int, optional
        Files in flight at most (default two batches plus one per worker); bounds peak memory.
    progress : bool
        Show a tqdm progress bar (items/s, ETA) on stderr.
    on_error : {"record", "raise"}
        Items whose audio fails (:class:`~specfusion.errors.AudioError`): record them with the reason
        and go on, or stop at the first one. Committed batches are kept either way.
    runtime : {"auto", "torch", "onnxruntime"}
        How the network runs (:func:`specfusion.features.runtimes.select_runtime`): ``auto`` uses ONNX Runtime
        for image CNNs on CPU when installed, else the extractor's own torch forward.
    fsync : bool
        ``fsync`` the journal after every batch. Not needed for crash safety -- a killed process loses
        nothing that was written, and after a power loss the CRC-checked journal keeps every complete
        batch and drops the rest, which is recomputed -- but it makes each committed batch durable at
        once, for 1-2 % of throughput.
    short : {"pad", "error"}
        Clips shorter than one analysis window (:func:`min_clip_seconds`: the extractor's spectrogram
        window, 0.32 s by default): zero-padded to one window, or recorded as failed items.

    Returns
    -------
    ExtractionResult

    Raises
    ------
    StoreError
        The store holds another configuration or dataset (nothing is changed).
    AudioError
        With ``on_error="raise"``.
    """
    check_engine_options(on_error=on_error, short=short)
    reading = reading_options(extractor, short=short)
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    requested_batch = None if batch_size is None else int(batch_size)
    start = time.perf_counter()
    engine = select_runtime(extractor, runtime)  # before the store is touched: a bad runtime changes nothing
    runtime = engine.description
    store = FeatureStore.create_or_resume(
        store_path, config=store_config(extractor, short=short), dim=extractor.dim, table=table,
        chunk_size=requested_batch if requested_batch is not None else _default_if_new(store_path, extractor),
        fsync=fsync,
    )  # fmt: skip
    chunk = store.chunk_size
    prefetch = int(prefetch) if prefetch is not None else 2 * chunk + workers
    status = store.status()
    pending = np.flatnonzero(status != DONE)  # pending and failed (failed items are tried again)
    n_skipped = len(status) - len(pending)
    if len(pending):
        warn_mixed_runtime(store, runtime)
    log.info("%s: %d of %d items to extract (%d done), batch %d, %d worker thread(s), %s",
             store.path, len(pending), len(status), n_skipped, chunk, workers, runtime)  # fmt: skip
    n_extracted = 0
    completed = False
    try:
        with extraction_bar(progress, len(pending), extractor) as bar, single_threaded_blas():
            jobs = decode_jobs(table, pending, chunk)
            prepared = prepared_stream(jobs, extractor, workers=workers, prefetch=prefetch,
                                        contiguous=engine.name == "onnxruntime", reading=reading)  # fmt: skip
            for _, group in itertools.groupby(prepared, key=lambda pair: pair[0].chunk):
                n_ok, n_bad = _run_batch(store, extractor, group, embed=engine.embed, on_error=on_error)
                n_extracted += n_ok
                bar.update(n_ok + n_bad)
                if n_bad:
                    bar.set_postfix(failed=len(store.failures()), refresh=False)
        seconds = time.perf_counter() - start
        if len(pending):
            store.note_run({
                "package_version": __version__, "runtime": runtime, "batch_size": chunk, "workers": workers,
                "extracted": n_extracted, "failed": store.n_failed, "seconds": round(seconds, 3), "short": short,
                "dataset_problems": list(getattr(table, "problems", [])),
            })  # fmt: skip
        completed = True
    finally:
        store.close(consolidate=completed)  # an interrupted run keeps its journal: readable, resumable
    failures = store.failed_items()
    return ExtractionResult(
        store_path=Path(store_path), n_items=store.n_items, n_done=store.n_done, n_extracted=n_extracted,
        n_skipped=n_skipped, failures=failures, seconds=time.perf_counter() - start, batch_size=chunk,
        workers=workers, runtime=runtime, problems=list(getattr(table, "problems", [])),
    )  # fmt: skip


def check_engine_options(*, on_error: str, short: str) -> None:
    """:class:`ConfigError` for an unknown ``on_error`` or short-clip policy, before any store is touched."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    check_short_policy(short)


def reading_options(extractor, *, short: str) -> dict:
    """How items are read for ``extractor`` (:func:`~specfusion.data.audio.load_audio` keywords): the short-clip
    policy and its limit, one analysis window."""
    return {"min_seconds": min_clip_seconds(extractor), "short": short}


def store_config(extractor, *, short: str = "pad") -> dict:
    """What a feature store is keyed by: the extractor's :meth:`~specfusion.features.extractors.Extractor.config` and the
    short-clip policy (it changes the features of clips shorter than one window), so a store is never resumed
    under another policy."""
    return {**extractor.config(), "short": short}


def min_clip_seconds(extractor) -> float:
    """One analysis window of ``extractor`` in seconds: clips shorter than this are "short".

    The spectrogram window of image-CNN extractors (``spec_params.window_s``), the front end's minimum
    of audio networks that declare one (``front_end.min_samples / sample_rate``), else
    :data:`specfusion.data.audio.MIN_SECONDS` (0.32 s, the paper's window).
    """
    params = getattr(extractor, "spec_params", None)
    if params is not None and getattr(params, "window_s", None):
        return float(params.window_s)
    front_end = getattr(extractor, "front_end", None)
    min_samples = getattr(front_end, "min_samples", None)
    if min_samples and getattr(extractor, "sample_rate", None):
        return float(min_samples) / float(extractor.sample_rate)
    return MIN_SECONDS


def single_threaded_blas():
    """numpy/scipy's OpenBLAS on one thread while the engine runs (restored afterwards).

    The front end's small matrix products (Mel filter bank, image resize) take ~3 ms per clip on one
    thread but 50-70x longer when OpenBLAS wakes its thread pool on cores that the network and the other
    workers keep busy. torch and ONNX Runtime have their own thread pools and are not affected.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _default_if_new(store_path, extractor) -> int | None:
    return None if Path(store_path).exists() else default_batch_size(extractor)


def warn_mixed_runtime(store: FeatureStore, runtime: str) -> None:
    previous = [run.get("runtime") for run in store.runs if run.get("runtime")]
    if previous and previous[-1] != runtime and store.n_done:
        log.warning("%s: resuming with another runtime (%s; before: %s); features of the two runs may differ in "
                    "the last bits", store.path, runtime, previous[-1])  # fmt: skip


def decode_jobs(table, rows: np.ndarray, chunk: int) -> Iterator[DecodeJob]:
    """Decode jobs for the pending ``rows``, in table order; channel items of one file share a job."""
    items = table.items if hasattr(table, "items") else list(table)
    current: list = []
    for row in rows.tolist():
        item = items[row]
        key = (row // chunk, Path(item.path))
        if current and (item.channel is None or current[0][0] != key or current[-1][1].channel is None):
            yield _make_job(current)
            current = []
        current.append((key, item, row))
    if current:
        yield _make_job(current)


def _make_job(group: list) -> DecodeJob:
    (chunk, path), _, _ = group[0]
    return DecodeJob(
        chunk=chunk, path=path, rows=tuple(r for _, _, r in group), channels=tuple(it.channel for _, it, _ in group)
    )


def _prepare_job(
    job: DecodeJob, extractor, contiguous: bool = False, reading: dict | None = None
) -> list[tuple[int, np.ndarray | AudioError]]:
    """Decode one file and run the extractor's front end on each of its items (worker thread).

    ``contiguous``: make each input C-contiguous here, in the worker, so that the batch the main thread
    stacks is already in the layout the runtime wants (ONNX Runtime: NCHW). ``reading``: keyword
    arguments of :func:`~specfusion.data.audio.load_audio` (short-clip policy and limit).

    Any error of one item's front end (a non-finite spectrogram, a shape the extractor refuses ...) is
    that item's failure, recorded with the file and the reason; it never stops the run.
    """
    per_channel = job.channels[0] is not None
    try:
        y, _ = load_audio(
            job.path, sr=extractor.sample_rate, channels="each" if per_channel else "mean", **(reading or {})
        )
    except AudioError as err:
        return [(row, err) for row in job.rows]
    out: list[tuple[int, np.ndarray | AudioError]] = []
    for row, channel in zip(job.rows, job.channels):
        if per_channel and channel >= y.shape[0]:
            out.append(
                (row, AudioError(job.path, f"channel {channel} requested but the file has {y.shape[0]} channel(s)"))
            )
            continue
        try:
            prepared = extractor.prepare(y[channel if per_channel else 0])
            out.append((row, np.ascontiguousarray(prepared) if contiguous else prepared))
        except AudioError as err:
            out.append((row, err))
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 -- one item's front end must not stop the run
            out.append((row, item_error(job.path, err)))
    return out


def item_error(path, err: BaseException) -> AudioError:
    """``err`` raised while transforming the audio of ``path``, as that item's :class:`AudioError`."""
    if isinstance(err, AudioError):
        return err
    text = str(err) if isinstance(err, SpecfusionError) else f"{type(err).__name__}: {err}"
    return AudioError(path, text)


def prepared_stream(jobs: Iterable[DecodeJob], extractor, *, workers: int, prefetch: int, contiguous: bool = False,
                     reading: dict | None = None):  # fmt: skip
    """``(job, prepared items)`` in job order; up to ``prefetch`` jobs run ahead in ``workers`` threads."""
    if workers == 0:
        for job in jobs:
            yield job, _prepare_job(job, extractor, contiguous, reading)
        return
    jobs = iter(jobs)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="specfusion-prepare")
    in_flight: collections.deque = collections.deque()
    try:
        for job in itertools.islice(jobs, max(1, prefetch)):
            in_flight.append((job, pool.submit(_prepare_job, job, extractor, contiguous, reading)))
        while in_flight:
            job, future = in_flight.popleft()
            result = future.result()
            following = next(jobs, None)
            if following is not None:
                in_flight.append((following, pool.submit(_prepare_job, following, extractor, contiguous, reading)))
            yield job, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_batch(store: FeatureStore, extractor, group, *, embed, on_error: str) -> tuple[int, int]:
    """Embed one batch (a chunk's prepared items) and commit it; returns (extracted, failed)."""
    uids = store.uids
    rows, features, failures = embed_batch(extractor, group, uids, embed=embed, on_error=on_error)
    store.append([str(uids[r]) for r in rows], features, failures=failures)
    return len(rows), len(failures)


def embed_batch(extractor, group, uids, *, embed, on_error: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Embed one batch of prepared jobs; the features to commit and the items that failed.

    Parameters
    ----------
    extractor : Extractor
    group : iterable of (job, prepared items)
        One chunk's output of :func:`_prepare_job`: ``(row, array or AudioError)`` per item.
    uids : indexable
        Item id of each row (the store's ``uids``, or a ``{row: uid}`` mapping).
    embed : callable
        The forward pass of the selected runtime.
    on_error : {"record", "raise"}

    Returns
    -------
    rows : ndarray of int
        Rows with finite features, sorted.
    features : ndarray, shape (len(rows), extractor.dim)
    failures : dict
        ``uid -> reason`` of the items whose audio failed or whose features are not finite.

    Raises
    ------
    AudioError
        The first failed item, with ``on_error="raise"``.
    """
    ready: list[tuple[int, np.ndarray]] = []
    failures: dict[str, str] = {}
    for _, results in group:
        for row, value in results:
            if isinstance(value, AudioError):
                if on_error == "raise":
                    raise value
                log.warning("%s: %s", uids[row], value)
                failures[str(uids[row])] = value.reason
            else:
                ready.append((row, value))
    rows, features = embed_grouped(extractor, ready, embed=embed)
    finite = np.isfinite(features).all(axis=1)
    for row in rows[~finite]:
        failures[str(uids[row])] = "the network produced non-finite features (NaN/inf)"
    return rows[finite], features[finite], failures


def embed_grouped(extractor, prepared: list[tuple[int, np.ndarray]], *, embed=None) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on prepared inputs, stacking only inputs of equal shape into one batch.

    Parameters
    ----------
    extractor : Extractor
    prepared : list of (row, ndarray)
        Outputs of :meth:`Extractor.prepare`, e.g. images of equal size, or waveforms of varying length.
    embed : callable, optional
        The forward pass (default ``extractor.embed``; the engine passes its selected runtime's).

    Returns
    -------
    rows : ndarray of int, shape (n,)
        Sorted.
    features : ndarray, shape (n, extractor.dim), float32
    """
    dim = int(extractor.dim)
    embed = extractor.embed if embed is None else embed
    if not prepared:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    for row, array in sorted(prepared, key=lambda pair: pair[0]):
        groups.setdefault((array.shape, array.dtype.str), []).append((row, array))
    rows_out, feats_out = [], []
    for members in groups.values():
        batch = np.stack([array for _, array in members])
        features = np.asarray(embed(batch), dtype=np.float32)
        if features.shape != (len(members), dim):
            raise ConfigError(f"extractor {extractor.name!r} returned features of shape {features.shape} "
                              f"for a batch of {len(members)}; expected ({len(members)}, {dim})")  # fmt: skip
        rows_out.extend(row for row, _ in members)
        feats_out.append(features)
    rows = np.asarray(rows_out, dtype=np.int64)
    features = np.concatenate(feats_out)
    order = np.argsort(rows, kind="stable")
    return rows[order], features[order]


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def extraction_bar(enabled: bool, total: int, extractor):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="item", desc=f"extract {extractor.name}", dynamic_ncols=True, smoothing=0.05)
