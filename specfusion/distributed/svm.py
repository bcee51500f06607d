"""The SVM search on Dask: the independent fits of :class:`~specfusion.models.svm.LinearSVM` as Dask tasks.

Within :func:`svm_on_dask`:

* ``solver="newton"`` (the default): each split of the C search is one task -- the whole C path on that
  split's training items, warm-started C after C, all classes batched (:mod:`specfusion.models.svm_solver`),
  which is why a task is one split and not one (C, split) pair -- and the refit on all the data at the
  chosen C is one more task. The features are sent to the cluster once per search (``scatter``), the
  tasks run with one BLAS thread, as the folds of a local search with ``n_jobs`` do, and give the same
  fits; the driver only gathers scores and decision values;
* ``solver="liblinear"``: scikit-learn's ``GridSearchCV`` and the out-of-fold fits run through
  joblib's Dask backend (``joblib.parallel_config(backend="dask")``), one task per (C, split) fit.

Everything that fits a ``LinearSVM`` inside the block uses it: :func:`~specfusion.models.svm_protocol.svm_fold_protocol`,
the ``stacking-svm`` fusion and the recipe runner's SVM steps (``[run] dask``). Nothing changes outside the
block, and Dask is imported only when the block is entered.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from specfusion.models import svm_solver
from specfusion.threads import limit_threads

log = logging.getLogger(__name__)

#: Arrays of at least this many bytes go to the cluster once (``scatter``) instead of inside every task.
SCATTER_BYTES = 1 << 16


@contextlib.contextmanager
def svm_on_dask(client):
    """Within the block, the C searches and refits of ``LinearSVM`` run as tasks on ``client``'s cluster.

    Parameters
    ----------
    client : distributed.Client
        Left open.

    Examples
    --------
    >>> from specfusion.distributed.extraction import connect, close_client            # doctest: +SKIP
    >>> client = connect("local:2")                                          # doctest: +SKIP
    >>> with svm_on_dask(client):                                            # doctest: +SKIP
    ...     result = svm_from_arrays(FeatureStore.open(path).arrays())
    """
    import joblib

    with svm_solver.fit_tasks(DaskFits(client)), joblib.parallel_config(backend="dask", client=client, n_jobs=-1):
        yield


class DaskFits:
    """The runner of :func:`specfusion.models.svm_solver.fit_tasks` on a Dask client: one task per call.

    Parameters
    ----------
    client : distributed.Client
    """

    def __init__(self, client):
        self.client = client

    def __call__(self, func, shared: tuple, calls: list, *, on_done=None) -> list:
        """``[func(*shared, *args) for args in calls]``, each a Dask task with one BLAS thread, in order."""
        from distributed import as_completed

        shared = tuple(self._scatter(a) for a in shared)
        futures = [self.client.submit(_one_blas_thread, func, *shared, *args, pure=False) for args in calls]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list = [None] * len(futures)
        try:
            for future in as_completed(futures):
                i = index[future.key]
                results[i] = future.result()
                if on_done is not None:
                    on_done(i)
        finally:
            self.client.cancel([f for f in futures if not f.done()])
        return results

    def _scatter(self, value):
        if isinstance(value, np.ndarray) and value.nbytes >= SCATTER_BYTES:
            return self.client.scatter(value, hash=False)
        return value


def _one_blas_thread(func, *args):
    """``func(*args)`` with one BLAS thread (a Dask task)."""
    with limit_threads(1):
        return func(*args)
