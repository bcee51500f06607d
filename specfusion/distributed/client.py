"""Dask clients for every distributed path: addresses, local clusters and who closes what.

A Dask target is an address (``"local"``, ``"local:N"``, ``"tcp://host:8786"``) or a
``distributed.Client``. :func:`connect` turns a target into a client; :func:`session` does so for a
block and closes the client at the end only when it made it (an address), so a client the caller passed
stays open. What runs on the client is the caller's choice: it hands the client to the back-ends of
:mod:`specfusion.distributed.extraction`, :mod:`specfusion.distributed.svm` (``DaskFits``) and
:mod:`specfusion.distributed.crnn` (:class:`~specfusion.distributed.crnn.DaskFolds`). Dask is imported only
when one of these runs (``pip install specfusion[dask]``). The workers' side: :func:`worker_device` (a
worker's own GPU) and :func:`shard_resources` (a task asks for a GPU where workers declare them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from specfusion.errors import ConfigError

log = logging.getLogger(__name__)


def import_distributed():
    """The ``distributed`` package; a ConfigError that says how to install it when it is missing."""
    try:
        import distributed
    except ImportError:
        raise ConfigError("distributed runs need Dask: pip install 'specfusion[dask]'") from None
    return distributed


def is_client(obj) -> bool:
    """Whether ``obj`` is a ``distributed.Client`` (told without importing Dask)."""
    return type(obj).__name__ == "Client" and hasattr(obj, "submit")


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
        The caller closes it with :func:`close_client` (for a local address its cluster closes with it).

    Raises
    ------
    ConfigError
        Dask is not installed, or the address is malformed.
    """
    distributed = import_distributed()
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
def session(target="local") -> Iterator:
    """A client for ``target`` within the block (:func:`connect`), closed at the end when made here.

    Parameters
    ----------
    target : str or Client
        An address (a client is made, and closed with its local cluster at the end) or a ``Client``
        (left open).

    Examples
    --------
    >>> with session("local:2") as client:                                    # doctest: +SKIP
    ...     result = crnn_fold_protocol(table, out_dir="runs/crnn", backend=DaskFolds(client))
    """
    own = not is_client(target)
    client = connect(target)
    try:
        yield client
    finally:
        if own:
            close_client(client)


# ------------------------------------------------------------------------------ workers and their resources


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


def workers_info(client) -> dict:
    """Every worker's entry of ``client.scheduler_info()`` (some Dask versions list 5 unless told otherwise)."""
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:  # a Dask without the n_workers parameter lists them all
        return client.scheduler_info()["workers"]


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
