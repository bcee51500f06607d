"""Explicit thread pools: one thread per core in total, whatever mixes BLAS, OpenMP, torch and workers.

BLAS (OpenBLAS/MKL) and OpenMP pools start one thread per core in every process by default; with
joblib workers, torch threads or another job on the machine, the cores are oversubscribed and dense
linear algebra gets many times slower (docs/performance.md). :func:`limit_threads` caps every pool
that :mod:`threadpoolctl` knows, and torch's when torch is loaded, for the duration of a block;
:func:`resolve_threads` turns a ``--threads``/``n_jobs``-style count into a number of threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys

from specfusion.errors import ConfigError

#: The thread count of the innermost :func:`limit_threads` block (None outside any).
_LIMIT: contextvars.ContextVar = contextvars.ContextVar("specfusion_thread_limit", default=None)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_limit() -> int | None:
    """The thread count of the innermost :func:`limit_threads` block; None outside any.

    For pools that the block cannot cap as it starts: those made later, each with its own size (ONNX
    Runtime's sessions, :func:`specfusion.features.runtimes.session_threads`).
    """
    return _LIMIT.get()


def resolve_threads(threads: int | None) -> int:
    """A thread count: None or -1 = every available core, -2 = all but one (joblib's convention), else ``threads``.

    Inside a :func:`limit_threads` block "every core" means the block's limit.
    """
    cores = available_cores() if _LIMIT.get() is None else min(available_cores(), _LIMIT.get())
    if threads is None:
        return cores
    threads = int(threads)
    if threads == 0:
        raise ConfigError("a thread count must not be 0 (use -1 for every core)")
    return max(1, cores + 1 + threads) if threads < 0 else threads


@contextlib.contextmanager
def limit_threads(threads: int | None):
    """Within the block: at most ``threads`` threads in every BLAS/OpenMP pool and in torch (None: no limit)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    n = resolve_threads(threads)
    torch = sys.modules.get("torch")  # only when already imported: never import torch for this
    previous = torch.get_num_threads() if torch is not None else None
    token = _LIMIT.set(n)
    with threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            _LIMIT.reset(token)
            if torch is not None:
                torch.set_num_threads(previous)
