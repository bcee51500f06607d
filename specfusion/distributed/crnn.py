"""The CRNN's fold models as Dask tasks: :class:`DaskFolds`, a back-end of
:func:`~specfusion.models.crnn.protocol.crnn_fold_protocol` (``backend=DaskFolds(...)``).

Each fold still to train is one task. The spectrogram array is scattered to the cluster once (a worker
fetches it at most once) and a task returns its checkpoint (tensors and plain values,
:meth:`~specfusion.models.crnn.CRNNClassifier.checkpoint`), which the driver writes: the workers need
neither the audio nor the output folder. A worker trains as the local back-ends' workers do
(:func:`specfusion.models.crnn.parallel.fit_in_worker`: one torch and one BLAS thread, its epoch lines
logged with the fold), so the checkpoints are bit for bit those of the folds one after the other
(``tests/test_crnn_parallel.py``). Dask is imported only when the folds train.
"""

from __future__ import annotations

import logging

from specfusion.distributed.client import import_distributed, session
from specfusion.models.crnn.estimator import write_checkpoint
from specfusion.models.crnn.parallel import FoldJob, fit_in_worker, fold_progress, load_fold_models

log = logging.getLogger(__name__)


class DaskFolds:
    """The fold models of the CRNN protocol as tasks on a Dask cluster.

    Parameters
    ----------
    dask : str or distributed.Client
        An address as :func:`specfusion.distributed.client.connect` takes (``"local"``, ``"local:N"``,
        ``"tcp://host:8786"``; a client is made for each :meth:`train_folds` and closed afterwards) or a
        client (left open).

    Examples
    --------
    >>> from specfusion.models.crnn import crnn_fold_protocol                          # doctest: +SKIP
    >>> result = crnn_fold_protocol(table, out_dir="runs/crnn", backend=DaskFolds("local:2"))
    """

    def __init__(self, dask="local"):
        self.dask = dask

    def __repr__(self) -> str:
        return f"DaskFolds({self.dask!r})"

    def train_folds(self, jobs: list[FoldJob], S, labels, *, progress=False, device=None, num_threads=None) -> dict:
        """Train every job's model as one Dask task and write its checkpoint here; the models by fold.

        Parameters as :meth:`specfusion.models.crnn.parallel.FoldBackend.train_folds`.
        """
        as_completed = import_distributed().as_completed
        level = logging.getLogger("specfusion").getEffectiveLevel()
        with session(self.dask) as client:
            spectrograms = client.scatter(S)
            log.info("CRNN: training %d fold(s) as Dask tasks on %s", len(jobs), client.scheduler.address)
            futures = {
                client.submit(checkpoint_fold, job, spectrograms, labels, level, pure=False): job for job in jobs
            }
            try:
                with fold_progress(progress, len(jobs), "Dask") as fold_done:
                    for future in as_completed(futures):
                        job = futures[future]
                        write_checkpoint(future.result(), job.path)
                        log.info("CRNN fold %d trained", job.fold)
                        fold_done()
            finally:
                client.cancel(list(futures))
        return load_fold_models(jobs, device=device, num_threads=num_threads)


def checkpoint_fold(job: FoldJob, S, labels, level: int = logging.WARNING) -> dict:
    """Worker task (Dask): train one fold's model; returns its checkpoint (:meth:`CRNNClassifier.checkpoint`)."""
    return fit_in_worker(job, S, labels, level).checkpoint(extra=job.extra)
