"""The SVM search on Dask: the independent fits of :class:`~specfusion.models.svm.LinearSVM` as Dask tasks.

:class:`DaskFits` is a :class:`~specfusion.models.svm_solver.FitBackend`: the caller hands it to
``LinearSVM.fit(..., backend=...)`` or to the protocols above it
(:func:`~specfusion.models.svm_protocol.svm_fold_protocol`, :func:`~specfusion.models.svm_protocol.svm_from_arrays`,
``fuse(..., method="stacking-svm", backend=...)``); the recipe runner and ``specfusion svm --dask`` do.

* ``solver="newton"`` (the default): each split of the C search is one task -- the whole C path on that
  split's training items, warm-started C after C, all classes batched (:mod:`specfusion.models.svm_solver`),
  which is why a task is one split and not one (C, split) pair -- and the refit on all the data at the
  chosen C is one more task. The features are sent to the cluster once per search (``scatter``), the
  tasks run with one BLAS thread, as the folds of a local search with ``n_jobs`` do, and give the same
  fits; the driver only gathers scores and decision values;
* ``solver="liblinear"``: scikit-learn's ``GridSearchCV`` and the out-of-fold fits run through
  joblib's Dask backend (:meth:`DaskFits.parallel_config`, entered around those fits only), one task
  per (C, split) fit.

Nothing is configured for anyone else, and Dask is imported only when a fit runs on it.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from specfusion.threads import limit_threads

log = logging.getLogger(__name__)

#: Arrays of at least this many bytes go to the cluster once (``scatter``) instead of inside every task.
SCATTER_BYTES = 1 << 16


class DaskFits:
    """The :class:`~specfusion.models.svm_solver.FitBackend` of a Dask client: one task per fit.

    Parameters
    ----------
    client : distributed.Client
        Left open.

    Examples
    --------
    >>> from specfusion.distributed.client import session                             # doctest: +SKIP
    >>> with session("local:2") as client:                                             # doctest: +SKIP
    ...     result = svm_from_arrays(FeatureStore.open(path).arrays(), backend=DaskFits(client))
    """

    def __init__(self, client):
        self.client = client

    def map(self, func, shared: tuple, calls, *, on_done=None) -> list:
        """``[func(*shared, *args) for args in calls]``, each a Dask task with one BLAS thread, in order.

        ``on_done(i)``, when given, is called here as task ``i`` finishes.
        """
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

    @contextlib.contextmanager
    def parallel_config(self):
        """Within the block, joblib's ``Parallel`` runs on this client's workers (joblib's Dask backend, ``n_jobs=-1``)."""
        import joblib

        # joblib.parallel_config takes effect when made, not when entered: make it here, inside the block
        with joblib.parallel_config(backend="dask", client=self.client, n_jobs=-1):
            yield

    def _scatter(self, value):
        if isinstance(value, np.ndarray) and value.nbytes >= SCATTER_BYTES:
            return self.client.scatter(value, hash=False)
        return value


def _one_blas_thread(func, *args):
    """``func(*args)`` with one BLAS thread (a Dask task)."""
    with limit_threads(1):
        return func(*args)
