"""Training the CRNN fold models of :func:`specfusion.models.crnn.protocol.crnn_fold_protocol` one after the other, in
parallel processes (joblib's loky backend) or as Dask tasks.

Every fold model is trained exactly as in the sequential run: the same parameters (its seed fixed by the
protocol, seed + fold), the same training and validation rows, one torch thread and one BLAS thread
unless ``num_threads`` says otherwise. Training a model is deterministic on one machine, so the
checkpoints, and the probabilities computed from them, are bit-identical whatever the backend
(``tests/test_crnn_parallel.py``).

* **Processes** (``n_jobs`` > 1): each fold is one joblib task in its own process; joblib memory-maps the
  spectrogram array once for all workers. A worker writes its fold checkpoint itself, as the sequential
  run does; the driver then loads the checkpoints.
* **Dask** (``dask`` set): each fold is one task; the spectrogram array is scattered to the cluster once
  (a worker fetches it at most once) and a task returns its checkpoint (tensors and plain values),
  which the driver writes: the workers need neither the audio nor the output folder.

Epoch progress: a worker shows no progress bar (parallel bars would garble the terminal); it logs
its epoch lines (INFO, shown with ``specfusion -v``), prefixed with the fold, to its standard error, and
the driver counts finished folds on one bar.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError
from specfusion.models.crnn.estimator import CRNNClassifier, write_checkpoint
from specfusion.models.crnn.variants import torch_threads

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FoldJob:
    """One fold model to train: its estimator parameters, its rows and where its checkpoint goes.

    Attributes
    ----------
    fold : int
    params : dict
        :class:`CRNNClassifier` parameters (``get_params()``).
    train, held_out : ndarray of int
        Rows of the spectrogram array the model trains on / is validated on.
    path : Path
        The checkpoint file.
    extra : dict
        Stored with the checkpoint (configuration and identity).
    """

    fold: int
    params: dict
    train: np.ndarray
    held_out: np.ndarray
    path: Path
    extra: dict


def default_jobs(device: str | None) -> int:
    """The command line's and the runner's ``n_jobs``: -1 (one process per core) on the CPU, 1 on a GPU."""
    import torch

    on_cpu = torch.device(device).type == "cpu" if device else not torch.cuda.is_available()
    return -1 if on_cpu else 1


def resolve_jobs(n_jobs: int, n_folds: int) -> int:
    """Processes for ``n_folds`` folds: ``n_jobs``, where -1 is one per core (-2 all but one), at most ``n_folds``."""
    from specfusion.threads import resolve_threads

    if int(n_jobs) == 0:
        raise ConfigError("n_jobs must not be 0 (1: the folds one after the other; -1: one process per core)")
    return max(1, min(resolve_threads(int(n_jobs)), n_folds))


def train_folds(
    jobs: list[FoldJob],
    S: np.ndarray,
    labels: np.ndarray,
    *,
    n_jobs: int = 1,
    dask=None,
    progress: bool = False,
    device: str | None = None,
    num_threads: int | None = None,
) -> dict:
    """Train and save every job's model; the models by fold (loaded from their checkpoints when trained elsewhere).

    Parameters
    ----------
    jobs : list of FoldJob
    S : ndarray, shape (n, n_mels, frames)
        The spectrograms the jobs' rows index.
    labels : ndarray of str, shape (n,)
    n_jobs : int
        Folds trained at once in separate processes (see :func:`resolve_jobs`); 1: one after the other here.
    dask : str or distributed.Client, optional
        Train the folds as Dask tasks on this cluster (an address as :func:`specfusion.distributed.extraction.connect`
        takes, or a client); ``n_jobs`` is then not used.
    progress : bool
        A bar counting the folds (and, one after the other, each fold's epoch bar).
    device, num_threads
        The loaded models' device and torch threads (runtime settings of prediction).

    Returns
    -------
    dict of int to CRNNClassifier
    """
    if not jobs:
        return {}
    if dask is not None:
        return _train_on_dask(jobs, S, labels, dask, progress=progress, device=device, num_threads=num_threads)
    processes = resolve_jobs(n_jobs, len(jobs))
    if processes == 1:
        return _train_here(jobs, S, labels, progress=progress)
    return _train_in_processes(jobs, S, labels, processes, progress=progress, device=device, num_threads=num_threads)


def _fold_bar(progress: bool, n: int, what: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n, desc=f"CRNN folds ({what})", unit="fold")


def _train_here(jobs, S, labels, *, progress) -> dict:
    """The folds one after the other in this process (each with its epoch bar when ``progress``)."""
    models = {}
    bar = _fold_bar(progress, len(jobs), "one after the other")
    try:
        for job in jobs:
            model = CRNNClassifier(**job.params)
            model.fit(S[job.train], labels[job.train], validation=(S[job.held_out], labels[job.held_out]))
            model.save(job.path, extra=job.extra)
            models[job.fold] = model
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return models


def _train_in_processes(jobs, S, labels, processes, *, progress, device, num_threads) -> dict:
    """One joblib (loky) task per fold; each writes its checkpoint, which is loaded here afterwards."""
    from joblib import Parallel, delayed

    level = logging.getLogger("specfusion").getEffectiveLevel()
    log.info("CRNN: training %d fold(s) in %d processes", len(jobs), processes)
    bar = _fold_bar(progress, len(jobs), f"{processes} processes")
    started = time.perf_counter()
    try:
        tasks = (delayed(train_fold)(job, S, labels, level) for job in jobs)
        for fold in Parallel(n_jobs=processes, backend="loky", return_as="generator_unordered")(tasks):
            log.info("CRNN fold %d trained (%.0f s since the start)", fold, time.perf_counter() - started)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {job.fold: CRNNClassifier.load(job.path, device=device, num_threads=num_threads) for job in jobs}


def _train_on_dask(jobs, S, labels, dask, *, progress, device, num_threads) -> dict:
    """One Dask task per fold on the spectrograms scattered once; the tasks' checkpoints are written here."""
    from specfusion.distributed.extraction import _import_distributed, _is_client, close_client, connect

    as_completed = _import_distributed().as_completed
    own = not _is_client(dask)
    client = connect(dask)
    try:
        level = logging.getLogger("specfusion").getEffectiveLevel()
        spectrograms = client.scatter(S)
        log.info("CRNN: training %d fold(s) as Dask tasks on %s", len(jobs), client.scheduler.address)
        futures = {client.submit(checkpoint_fold, job, spectrograms, labels, level, pure=False): job for job in jobs}
        bar = _fold_bar(progress, len(jobs), "Dask")
        try:
            for future in as_completed(futures):
                job = futures[future]
                write_checkpoint(future.result(), job.path)
                log.info("CRNN fold %d trained", job.fold)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            client.cancel(list(futures))
    finally:
        if own:
            close_client(client)
    return {job.fold: CRNNClassifier.load(job.path, device=device, num_threads=num_threads) for job in jobs}


def _fit_in_worker(job: FoldJob, S, labels, level: int) -> CRNNClassifier:
    """A worker's fold model: no progress bar, one torch and one BLAS thread (unless ``num_threads``)."""
    from threadpoolctl import threadpool_limits

    _worker_logging(level, job.fold)
    model = CRNNClassifier(**{**job.params, "progress": False})
    with torch_threads(1), threadpool_limits(limits=1, user_api="blas"):
        return model.fit(S[job.train], labels[job.train], validation=(S[job.held_out], labels[job.held_out]))


def train_fold(job: FoldJob, S, labels, level: int = logging.WARNING) -> int:
    """Worker task (processes): train one fold's model and write its checkpoint; returns the fold."""
    _fit_in_worker(job, S, labels, level).save(job.path, extra=job.extra)
    return job.fold


def checkpoint_fold(job: FoldJob, S, labels, level: int = logging.WARNING) -> dict:
    """Worker task (Dask): train one fold's model; returns its checkpoint (:meth:`CRNNClassifier.checkpoint`)."""
    return _fit_in_worker(job, S, labels, level).checkpoint(extra=job.extra)


#: The handler :func:`_worker_logging` adds to a worker process's ``specfusion`` logger.
_WORKER_HANDLER: list = []


def _worker_logging(level: int, fold: int) -> None:
    """In a worker process: log at the driver's level to standard error, each line prefixed with the fold.

    A handler is added to the ``specfusion`` logger once per process where logging is not set up (a
    fresh worker); the prefix follows the fold the worker trains now.
    """
    logger = logging.getLogger("specfusion")
    if not _WORKER_HANDLER:
        if logging.getLogger().handlers or logger.handlers:
            return  # logging is set up in this process (the driver's, a configured worker): leave it as it is
        handler = logging.StreamHandler()
        logger.addHandler(handler)
        _WORKER_HANDLER.append(handler)
    _WORKER_HANDLER[0].setFormatter(logging.Formatter(f"%(levelname)s: fold {fold}: %(message)s"))
    logger.setLevel(level)
