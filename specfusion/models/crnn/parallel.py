"""Where the CRNN fold models of :func:`specfusion.models.crnn.protocol.crnn_fold_protocol` train: the back-ends.

A back-end is any object with a ``train_folds(jobs, S, labels, *, progress, device, num_threads)`` method
(:class:`FoldBackend`) that trains every :class:`FoldJob`, makes sure its checkpoint is written and returns
the models by fold. The protocol takes one explicitly (``backend=``); its default is :class:`LocalFolds`:

* **one after the other** (``n_jobs=1``): in this process, each fold with its epoch bar;
* **processes** (``n_jobs`` > 1 or -1): each fold is one joblib task in its own process (loky); joblib
  memory-maps the spectrogram array once for all workers. A worker writes its fold checkpoint itself, as
  the sequential run does; the driver then loads the checkpoints.

The Dask back-end, :class:`specfusion.distributed.crnn.DaskFolds`, lives with the other Dask code and
uses the worker-side helpers here (:func:`fit_in_worker`, :func:`fold_progress`, :func:`load_fold_models`).

Every fold model is trained exactly as in the sequential run: the same parameters (its seed fixed by the
protocol, seed + fold), the same training and validation rows, one torch thread and one BLAS thread
unless ``num_threads`` says otherwise. Training a model is deterministic on one machine, so the
checkpoints, and the probabilities computed from them, are bit-identical whatever the back-end
(``tests/test_crnn_parallel.py``).

Epoch progress: a worker shows no progress bar (parallel bars would garble the terminal); it logs
its epoch lines (INFO, shown with ``specfusion -v``), prefixed with the fold, to its standard error, and
the driver counts finished folds on one bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from specfusion.errors import ConfigError
from specfusion.models.crnn.estimator import CRNNClassifier
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
    estimator : type
        The estimator class ``params`` build (:class:`CRNNClassifier`, or fine-tuning's
        :class:`~specfusion.models.finetune.FineTuneClassifier`); a class, so a job pickles to any worker.
    """

    fold: int
    params: dict
    train: np.ndarray
    held_out: np.ndarray
    path: Path
    extra: dict
    estimator: type = CRNNClassifier


class FoldBackend(Protocol):
    """What :func:`~specfusion.models.crnn.protocol.crnn_fold_protocol` needs of a back-end (``backend=``)."""

    def train_folds(
        self, jobs: list[FoldJob], S: np.ndarray, labels: np.ndarray, *, progress: bool, device, num_threads
    ) -> dict[int, CRNNClassifier]:
        """Train every job's model and write its checkpoint (``job.path``, with ``job.extra``).

        Parameters
        ----------
        jobs : list of FoldJob
            At least one.
        S : ndarray, shape (n, n_mels, frames)
            The spectrograms the jobs' rows index.
        labels : ndarray, shape (n,)
        progress : bool
            A bar counting the folds.
        device, num_threads
            The returned models' device and torch threads (runtime settings of prediction).

        Returns
        -------
        dict of int to CRNNClassifier
            The trained models by fold.
        """
        ...


@dataclasses.dataclass(frozen=True)
class LocalFolds:
    """The default back-end: the folds in this process, or in local processes (joblib's loky backend).

    Parameters
    ----------
    n_jobs : int
        Folds trained at once, each in its own process (see :func:`resolve_jobs`): -1 one per core
        (within :func:`specfusion.threads.limit_threads`), at most the number of folds to train; 1 (default)
        one after the other in this process.
    """

    n_jobs: int = 1

    def train_folds(self, jobs, S, labels, *, progress=False, device=None, num_threads=None) -> dict:
        """Train and save every job's model (:meth:`FoldBackend.train_folds`)."""
        processes = resolve_jobs(self.n_jobs, len(jobs))
        if processes == 1:
            return _train_here(jobs, S, labels, progress=progress)
        return _train_in_processes(jobs, S, labels, processes, progress=progress, device=device,
                                   num_threads=num_threads)  # fmt: skip


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


@contextlib.contextmanager
def fold_progress(progress: bool, n: int, where: str) -> Iterator[Callable[[], None]]:
    """A bar counting ``n`` finished folds trained ``where``: yields the function to call per finished fold.

    Without ``progress`` the function does nothing.
    """
    if not progress:
        yield lambda: None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=f"fold models ({where})", unit="fold")
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()


def load_fold_models(jobs: list[FoldJob], *, device, num_threads) -> dict[int, CRNNClassifier]:
    """The jobs' models read back from their checkpoints, by fold."""
    return {job.fold: job.estimator.load(job.path, device=device, num_threads=num_threads) for job in jobs}


def _train_here(jobs: list[FoldJob], S, labels, *, progress: bool) -> dict[int, CRNNClassifier]:
    """The folds one after the other in this process (each with its epoch bar when ``progress``)."""
    models = {}
    with fold_progress(progress, len(jobs), "one after the other") as fold_done:
        for job in jobs:
            model = job.estimator(**job.params)
            model.fit(S[job.train], labels[job.train], validation=(S[job.held_out], labels[job.held_out]))
            model.save(job.path, extra=job.extra)
            models[job.fold] = model
            fold_done()
    return models


def _train_in_processes(jobs, S, labels, processes: int, *, progress, device, num_threads) -> dict:
    """One joblib (loky) task per fold; each writes its checkpoint, which is loaded here afterwards."""
    from joblib import Parallel, delayed

    level = logging.getLogger("specfusion").getEffectiveLevel()
    log.info("CRNN: training %d fold(s) in %d processes", len(jobs), processes)
    started = time.perf_counter()
    with fold_progress(progress, len(jobs), f"{processes} processes") as fold_done, quiet_worker_restarts():
        tasks = (delayed(train_fold)(job, S, labels, level) for job in jobs)
        for fold in Parallel(n_jobs=processes, backend="loky", return_as="generator_unordered")(tasks):
            log.info("CRNN fold %d trained (%.0f s since the start)", fold, time.perf_counter() - started)
            fold_done()
    return load_fold_models(jobs, device=device, num_threads=num_threads)


#: What loky warns when a worker it retired for having grown is replaced while folds are still queued.
WORKER_RESTART_WARNING = "A worker stopped while some jobs were given to the executor"


@contextlib.contextmanager
def quiet_worker_restarts() -> Iterator[None]:
    """Silence loky's warning that a worker stopped, for the length of the block.

    loky retires a worker whose memory has grown by more than 300 MB since its first task and starts
    another; a process that has trained fold models has (torch's allocator keeps its memory), so the warning
    would come with the folds still queued and say nothing about the results. Other warnings pass.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=WORKER_RESTART_WARNING, category=UserWarning)
        yield


# ------------------------------------------------------------------------------ worker side


def fit_in_worker(job: FoldJob, S, labels, level: int) -> CRNNClassifier:
    """A worker's fold model: no progress bar, one torch and one BLAS thread (unless ``num_threads``).

    ``level`` is the driver's logging level (:func:`_worker_logging`).
    """
    from threadpoolctl import threadpool_limits

    _worker_logging(level, job.fold)
    model = job.estimator(**{**job.params, "progress": False})
    with torch_threads(1), threadpool_limits(limits=1, user_api="blas"):
        return model.fit(S[job.train], labels[job.train], validation=(S[job.held_out], labels[job.held_out]))


def train_fold(job: FoldJob, S, labels, level: int = logging.WARNING) -> int:
    """Worker task (processes): train one fold's model and write its checkpoint; returns the fold."""
    fit_in_worker(job, S, labels, level).save(job.path, extra=job.extra)
    return job.fold


class _FoldLogHandler(logging.StreamHandler):
    """The handler :func:`_worker_logging` adds to a worker process's ``specfusion`` logger (once per process)."""


def _worker_logging(level: int, fold: int) -> None:
    """In a worker process: log at the driver's level to standard error, each line prefixed with the fold.

    A handler is added to the ``specfusion`` logger once per process where logging is not set up (a
    fresh worker); the prefix follows the fold the worker trains now.
    """
    logger = logging.getLogger("specfusion")
    handler = next((h for h in logger.handlers if isinstance(h, _FoldLogHandler)), None)
    if handler is None:
        if logging.getLogger().handlers or logger.handlers:
            return  # logging is set up in this process (the driver's, a configured worker): leave it as it is
        handler = _FoldLogHandler()
        logger.addHandler(handler)
    handler.setFormatter(logging.Formatter(f"%(levelname)s: fold {fold}: %(message)s"))
    logger.setLevel(level)
