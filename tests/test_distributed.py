"""Distributed extraction on a Dask ``LocalCluster`` of 2 worker processes, on 16 real ESC-50 clips:
the same store as a single-process run, resume of a partly done store, a worker killed mid-shard."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip(
    "distributed", reason="distributed extraction needs the optional extra: pip install 'specfusion[dask]'"
)

from specfusion.data.datasets import load_dataset  # noqa: E402
from specfusion.distributed.client import close_client, connect  # noqa: E402
from specfusion.distributed.extraction import extract_distributed  # noqa: E402
from specfusion.errors import ConfigError  # noqa: E402
from specfusion.features.extraction import extract  # noqa: E402
from specfusion.features.extractors import get_extractor  # noqa: E402
from specfusion.features.store import FeatureStore, journal_path  # noqa: E402

#: A real image CNN, cheap to build (random weights: no weight files) and to run.
NAME, OPTIONS = "efficientnet_lite0", {"weights": "none"}


@pytest.fixture(scope="module")
def client():
    client = connect("local:2")
    yield client
    close_client(client)


@pytest.fixture(scope="module")
def table(esc50_root):
    return load_dataset("esc50", esc50_root).subset(range(16))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, table):
    """The single-process store (torch runtime, one thread: as on a single-threaded Dask worker)."""
    import torch

    path = tmp_path_factory.mktemp("reference") / "single.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(table, get_extractor(NAME, **OPTIONS), path, batch_size=4, workers=0, runtime="torch")
    finally:
        torch.set_num_threads(threads)
    return FeatureStore.open(path).arrays()


def test_distributed_store_equals_single_process_bit_for_bit(tmp_path, client, table, reference):
    path = tmp_path / "dask.h5"
    result = extract_distributed(table, NAME, path, options=OPTIONS, dask=client, batch_size=4, runtime="torch")
    assert (result.n_done, result.n_extracted, result.n_skipped, result.n_failed) == (16, 16, 0, 0)
    assert result.workers == 2 and result.runtime.startswith("torch")
    store = FeatureStore.open(path)
    arrays = store.arrays()
    assert store.complete and not journal_path(path).exists()
    assert list(arrays.uids) == list(reference.uids)
    assert arrays.config == reference.config
    assert arrays.X.tobytes() == reference.X.tobytes()  # same batches, same runtime: bit for bit
    assert store.runs[-1]["dask"].startswith("tcp://")
    again = extract_distributed(table, NAME, path, options=OPTIONS, dask=client, runtime="torch")
    assert (again.n_extracted, again.n_skipped) == (0, 16)


def test_resume_extracts_only_the_rest_and_refuses_another_configuration(tmp_path, client, table, reference):
    path = tmp_path / "partial.h5"
    store = FeatureStore.create_or_resume(
        path, config=reference.config, dim=reference.X.shape[1], table=table, chunk_size=4
    )
    store.append([str(u) for u in reference.uids[:8]], reference.X[:8])  # two shards done, then "crashed"
    store.close(consolidate=False)
    result = extract_distributed(table, NAME, path, options=OPTIONS, dask=client, runtime="torch")
    assert (result.n_extracted, result.n_skipped, result.n_done) == (8, 8, 16)
    arrays = FeatureStore.open(path).arrays()
    assert list(arrays.uids) == list(reference.uids)
    assert arrays.X.tobytes() == reference.X.tobytes()
    with pytest.raises(Exception, match="configuration|config"):
        extract_distributed(
            table, NAME, path, options={"weights": "none", "colormap": "magma"}, dask=client, runtime="torch"
        )
    assert FeatureStore.open(path).arrays().X.tobytes() == reference.X.tobytes()  # unchanged


def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(tmp_path, client, table, reference):
    path = tmp_path / "killed.h5"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = extract_distributed(table, NAME, path, options=OPTIONS, dask=client, batch_size=4,
                                                    runtime="torch", max_in_flight=2)  # fmt: skip
        except BaseException as err:  # noqa: BLE001 -- reported by the assertion below
            outcome["error"] = err

    pids = client.run(os.getpid)
    thread = threading.Thread(target=run)
    thread.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and thread.is_alive() and time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any("extract_shard" in str(k) for k in keys)]
        if busy:
            victim = busy[0]
            os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.01)
    thread.join(timeout=120)
    assert victim is not None, "no shard was seen running: nothing was killed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert (result.n_done, result.n_extracted, result.n_failed) == (16, 16, 0)
    arrays = FeatureStore.open(path).arrays()
    assert list(arrays.uids) == list(reference.uids)  # nothing lost, nothing duplicated
    assert arrays.X.tobytes() == reference.X.tobytes()


def test_bad_addresses_and_extractors_are_config_errors(tmp_path, client, table):
    with pytest.raises(ConfigError, match="local:N"):
        connect("local:0")
    with pytest.raises(ConfigError, match="scheduler address"):
        connect("somewhere")
    with pytest.raises(ConfigError, match="no_such_net"):  # raised on a worker, reported here
        extract_distributed(table, "no_such_net", tmp_path / "x.h5", dask=client)
    assert not (tmp_path / "x.h5").exists()


def test_cli_extract_with_a_scheduler_address(tmp_path, client, esc50_root, reference, capsys):
    from extraction_helpers import make_esc50_copy

    from specfusion.cli import main

    root = make_esc50_copy(esc50_root, tmp_path / "esc", 8)
    out = tmp_path / "cli.h5"
    code = main(["extract", "--dataset", "esc50", "--root", str(root), "--extractor", NAME, "--weights", "none",
                 "--batch-size", "4", "--runtime", "torch", "--dask", client.scheduler.address, "--out", str(out), "-q"])  # fmt: skip
    assert code == 0
    assert "8 of 8 items have features" in capsys.readouterr().out
    arrays = FeatureStore.open(out).arrays()
    assert list(arrays.uids) == list(reference.uids[:8])
    assert arrays.X.tobytes() == reference.X[:8].tobytes()


def test_dask_is_imported_only_for_a_distributed_run(monkeypatch):
    """Not by importing (the CRNN's Dask back-end included), nor by an SVM search without a client."""
    import subprocess
    import sys

    code = ("import sys, specfusion.cli, specfusion.cli.extract, specfusion.features.extraction, specfusion.distributed.extraction, "
            "specfusion.distributed.svm, specfusion.models.svm, specfusion.models.svm_solver, specfusion.fusion.methods, "
            "specfusion.pipeline.runner, specfusion.distributed.client, specfusion.distributed.crnn, specfusion.models.crnn, "
            "specfusion.cli.crnn\n"
            "from specfusion.models.svm import LinearSVM\n"
            "import numpy as np\n"
            "X = np.random.default_rng(0).normal(size=(40, 5)); y = np.arange(40) % 2\n"
            "LinearSVM(c_grid=[0.01, 1.0], n_jobs=2).fit(X, y, folds=np.arange(40) % 4)\n"
            "print(sorted(m for m in ('dask', 'distributed', 'joblib._dask') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"specfusion\[dask\]"):
        connect("local:2")


@pytest.mark.slow  # ~60 s on 2 loaded cores: ONNX exports and the SVM search of a whole recipe
def test_recipe_run_table_extracts_on_the_cluster(tmp_path, client, esc50_root):
    from specfusion.data.datasets import load_esc50
    from specfusion.pipeline.recipes import parse_recipe
    from specfusion.pipeline.runner import run_recipe

    rows, seen = ["path,label,fold,partition"], {}
    for item in load_esc50(esc50_root):  # 4 classes x 2 clips per fold: 24 dev (folds 1-3) + 8 test (fold 4)
        if item.label in ("dog", "rooster", "rain", "sea_waves") and seen.get((item.label, item.fold), 0) < 2:
            seen[(item.label, item.fold)] = seen.get((item.label, item.fold), 0) + 1
            test = item.fold == 4
            rows.append(f"{item.path},{item.label},{'' if test else item.fold},{'test' if test else 'dev'}")
    csv = tmp_path / "subset.csv"
    csv.write_text("\n".join(rows) + "\n")
    recipe = parse_recipe(f"""
[run]
dask = "{client.scheduler.address}"
[dataset]
kind = "csv"
[[systems]]
name = "Lite0 / None"
kind = "deepspectrum"
extractor = "{NAME}"
weights = "none"
batch_size = 8
""")  # fmt: skip
    from distributed import get_task_stream

    with get_task_stream(client) as stream:  # the scheduler's tasks, from every client
        summary = run_recipe(recipe, root=csv, out_dir=tmp_path / "run")
    assert [o.status for o in summary.outcomes] == ["ok"]
    # the SVM ran on the cluster: 3 split paths + the refit
    assert sum("one_blas_thread" in str(t["key"]) for t in stream.data) == 4
    (store_path,) = (tmp_path / "run" / "features").glob("*.h5")
    store = FeatureStore.open(store_path)
    assert store.complete and store.n_done == 32 and store.runs[-1]["dask"] == client.scheduler.address
    table = load_dataset("csv", csv)
    extract(table, get_extractor(NAME, **OPTIONS), tmp_path / "single.h5", batch_size=8)
    single = FeatureStore.open(tmp_path / "single.h5").arrays()
    assert list(store.arrays().uids) == list(single.uids)
    np.testing.assert_allclose(store.arrays().X, single.X, rtol=1e-4, atol=1e-5 * np.abs(single.X).max())


def test_worker_device_is_the_workers_own_gpu_or_the_cpu():
    from specfusion.distributed.client import worker_device

    assert worker_device(None, n_visible=0) == "cpu"
    assert worker_device("cpu", n_visible=2) == "cpu"
    # one worker per GPU: the worker's GPU is its first visible device, whatever index the driver named
    assert worker_device(None, n_visible=1) == "cuda:0"
    assert worker_device("cuda", n_visible=1) == "cuda:0"
    assert worker_device("cuda:3", n_visible=1) == "cuda:0"
    assert worker_device(None, n_visible=4) == "cuda:0"  # with a warning: start one worker per GPU
    with pytest.raises(ConfigError, match="sees no GPU"):
        worker_device("cuda:1", n_visible=0)


def test_worker_extractor_builds_on_the_workers_device(monkeypatch):
    import specfusion.distributed.extraction as distributed

    monkeypatch.setattr(distributed, "_WORKER_EXTRACTORS", {})
    spec = {"name": NAME, "options": {**OPTIONS, "device": None}, "runtime": "torch", "short": "pad"}
    extractor, _ = distributed.worker_extractor(spec)
    assert str(extractor.device) == distributed.worker_device(None)  # this machine: "cpu" (no GPU here)
    if distributed.worker_device(None) == "cpu":
        with pytest.raises(ConfigError, match="sees no GPU"):
            distributed.worker_extractor({**spec, "options": {**OPTIONS, "device": "cuda:1"}})


def test_shards_ask_for_a_gpu_only_on_a_cluster_with_gpu_workers():
    from specfusion.distributed.client import shard_resources

    cpu = {"tcp://a:1": {"resources": {}}, "tcp://b:1": {}}
    assert shard_resources(cpu) is None
    mixed = {**cpu, "tcp://c:1": {"resources": {"GPU": 1}}}
    assert shard_resources(mixed) == {"GPU": 1}
