"""The SVM search as Dask tasks (specfusion.distributed.svm.DaskFits, handed in as the fits' backend) on a
LocalCluster of 2 worker processes: the same chosen C and decision values as in this process, on generated
features (the core contract) and on a real small feature store of ESC-50 clips (tiny CNN features); the
stacking-svm fusion of two real systems."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs the optional extra: pip install 'specfusion[dask]'")

from extraction_helpers import TinyTestCNN  # noqa: E402

from specfusion.data.datasets import load_esc50  # noqa: E402
from specfusion.distributed.client import close_client, connect, session  # noqa: E402
from specfusion.distributed.svm import DaskFits  # noqa: E402
from specfusion.evaluation.predictions import read_predictions  # noqa: E402
from specfusion.features.extraction import extract  # noqa: E402
from specfusion.features.store import FeatureStore  # noqa: E402
from specfusion.fusion.methods import fuse  # noqa: E402
from specfusion.models.svm import LinearSVM  # noqa: E402
from specfusion.models.svm_protocol import svm_fold_protocol, svm_from_arrays  # noqa: E402

#: Decision values of the two runs agree to this (they are the same fits with one BLAS thread: in practice equal).
RTOL, ATOL = 1e-9, 1e-12


@pytest.fixture(scope="module")
def client():
    client = connect("local:2")
    yield client
    close_client(client)


def generated(seed: int = 0, n_dev: int = 160, n_test: int = 40, dim: int = 48, n_classes: int = 4):
    """Separable-ish Gaussian classes, 4 development folds and a test partition."""
    rng = np.random.default_rng(seed)
    n = n_dev + n_test
    codes = rng.integers(0, n_classes, n)
    X = rng.normal(size=(n, dim)) + 0.4 * codes[:, None] * rng.normal(size=dim)
    folds = np.where(np.arange(n) < n_dev, np.arange(n) % 4 + 1, 0)
    partitions = np.where(folds > 0, "dev", "test")
    return X, np.array([f"class{c}" for c in codes], dtype=object), folds, partitions


def run_tasks(client, work):
    """``work()``'s result and the keys of the tasks the cluster ran meanwhile."""
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        result = work()
    return result, [str(t["key"]) for t in stream.data]


def assert_same(local, remote):
    assert remote.best_C == local.best_C
    assert remote.fold_C == local.fold_C
    assert list(remote.predictions.names) == list(local.predictions.names)
    np.testing.assert_allclose(remote.predictions.scores, local.predictions.scores, rtol=RTOL, atol=ATOL)
    cv = "mean_test_score"
    np.testing.assert_allclose(remote.model.cv_results_[cv], local.model.cv_results_[cv], rtol=RTOL)


@pytest.mark.parametrize("c_selection", ["global", "nested"])
def test_newton_search_on_dask_equals_the_local_search(client, c_selection):
    X, labels, folds, partitions = generated()
    names = [f"item{i}" for i in range(len(X))]
    estimator = LinearSVM(n_jobs=-1)

    def protocol(**where):
        return svm_fold_protocol(
            X, labels, folds, partitions, names=names, estimator=estimator, c_selection=c_selection, **where
        )

    local, local_keys = run_tasks(client, protocol)
    fits = []
    remote, keys = run_tasks(client, lambda: protocol(backend=DaskFits(client), progress=fits.append))
    assert_same(local, remote)
    assert local_keys == []  # without the backend nothing runs on the cluster, client or not
    # one task per split (the whole C path) plus the refit; nested: the same again for each outer fold
    n_tasks = 5 if c_selection == "global" else 5 + 4 * (3 + 1)
    assert sum("one_blas_thread" in k for k in keys) == n_tasks
    assert len(fits) == n_tasks  # the driver's progress saw every task finish


def test_liblinear_search_runs_on_the_joblib_dask_backend(client):
    X, labels, folds, partitions = generated(seed=1, n_dev=80, n_test=20, dim=16, n_classes=3)
    names = [f"item{i}" for i in range(len(X))]
    estimator = LinearSVM(solver="liblinear", c_grid=[1e-3, 1e-2, 1e-1], n_jobs=-1)
    local = svm_fold_protocol(X, labels, folds, partitions, names=names, estimator=estimator)
    remote, keys = run_tasks(
        client,
        lambda: svm_fold_protocol(X, labels, folds, partitions, names=names, estimator=estimator,
                                  backend=DaskFits(client)),
    )  # fmt: skip
    assert_same(local, remote)
    assert keys and not any("one_blas_thread" in k for k in keys)  # joblib's batches, not the Newton tasks


@pytest.fixture(scope="module")
def esc50_stores(esc50_store_paths):
    return [FeatureStore.open(path).arrays() for path in esc50_store_paths]


@pytest.fixture(scope="module")
def esc50_store_paths(tmp_path_factory, esc50_root):
    """Two real feature stores (tiny CNN, two seeds) of 32 ESC-50 clips: 4 classes x 2 clips x folds 1-4
    (fold 4 = test)."""
    table = load_esc50(esc50_root, test_folds=(4,))
    seen: dict = {}
    keep = []
    for i, item in enumerate(table):
        if item.label in ("dog", "rooster", "rain", "sea_waves") and seen.get((item.label, item.fold), 0) < 2:
            seen[(item.label, item.fold)] = seen.get((item.label, item.fold), 0) + 1
            keep.append(i)
    table = table.subset(keep)
    folder = tmp_path_factory.mktemp("svm_stores")
    paths = []
    for seed in (0, 1):
        path = folder / f"tiny{seed}.h5"
        extract(table, TinyTestCNN(seed=seed), path, batch_size=8, workers=0)
        paths.append(path)
    return paths


def test_real_store_svm_and_stacking_fusion_on_dask_equal_local(client, esc50_stores):
    arrays = esc50_stores[0]
    assert len(arrays) == 32 and set(arrays.partitions) == {"dev", "test"}
    estimator = LinearSVM(n_jobs=-1)
    local = [svm_from_arrays(a, estimator=estimator) for a in esc50_stores]
    local_fusion = fuse([r.predictions for r in local], method="stacking-svm", system_names=["a", "b"], n_jobs=-1)
    with session(client) as same:  # what the recipe runner enters for [run] dask
        assert same is client
        backend = DaskFits(same)  # what the runner hands its SVM steps and its stacking-svm fusions
        remote = [svm_from_arrays(a, estimator=estimator, backend=backend) for a in esc50_stores]
        remote_fusion, keys = run_tasks(client, lambda: fuse([r.predictions for r in remote], method="stacking-svm",
                                                              system_names=["a", "b"], n_jobs=-1, backend=backend))  # fmt: skip
    assert client.status == "running"  # a client given to session() is left open
    for a, b in zip(local, remote, strict=True):
        assert_same(a, b)
    assert sum("one_blas_thread" in k for k in keys) > 0  # the meta-SVM's fits ran on the cluster
    assert list(remote_fusion.predictions.names) == list(local_fusion.predictions.names)
    np.testing.assert_allclose(remote_fusion.predictions.scores, local_fusion.predictions.scores, rtol=RTOL, atol=ATOL)


def test_svm_command_with_dask_writes_the_same_predictions(client, esc50_store_paths, tmp_path):
    from specfusion.cli import main

    store = str(esc50_store_paths[0])
    assert main(["svm", store, "--out", str(tmp_path / "local")]) == 0
    remote, keys = run_tasks(
        client, lambda: main(["svm", store, "--out", str(tmp_path / "dask"), "--dask", client.scheduler.address])
    )
    assert remote == 0
    assert sum("one_blas_thread" in k for k in keys) > 0  # the C search ran on the cluster named by --dask
    local, dask = (read_predictions(tmp_path / run / "predictions.csv") for run in ("local", "dask"))
    assert list(dask.names) == list(local.names) and list(dask.labels) == list(local.labels)
    np.testing.assert_allclose(dask.scores, local.scores, rtol=RTOL, atol=ATOL)
    assert client.status == "running"
