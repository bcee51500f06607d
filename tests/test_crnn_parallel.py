"""The CRNN protocol's folds trained in parallel (issues 13/14): processes (joblib) and Dask tasks give the
same fold checkpoints and the same probabilities, bit for bit, as the folds one after the other; the
back-end is passed in (``backend=``), never imported by the models.

A tiny network on 26 real ESC-50 clips (2 classes, folds 1-3 development, fold 4 test): seconds per run.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import numpy as np
import pytest
import torch
from extraction_helpers import small_esc50

from specfusion.errors import ConfigError
from specfusion.models.crnn import CRNNClassifier, torch_threads
from specfusion.models.crnn.parallel import WORKER_RESTART_WARNING, LocalFolds, quiet_worker_restarts, resolve_jobs
from specfusion.models.crnn.protocol import crnn_fold_protocol

TINY = dict(variant="esc50", epochs=2, batch_size=8, filters=[4, 4, 4, 4], gru_units=8, gru_layers=1, num_threads=1)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def table(esc50_root):
    """2 classes x 4 clips per development fold (1-3), 1 test clip per class (fold 4): 26 real clips."""
    return small_esc50(esc50_root, 2)


@pytest.fixture(scope="module")
def sequential(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("sequential")
    return out, crnn_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=1, **TINY)


def _weights(path):
    return CRNNClassifier.load(path).network_.state_dict()


def _assert_same(result, reference, out, reference_out):
    assert np.array_equal(result.predictions.scores, reference.predictions.scores)  # bit for bit
    assert result.predictions.config == reference.predictions.config
    for k in (1, 2):
        mine, theirs = _weights(out / f"fold{k}.pt"), _weights(reference_out / f"fold{k}.pt")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)
        strip = [{key: v for key, v in r.items() if not key.endswith("_s")} for r in result.histories[k]]  # not times
        assert strip == [{key: v for key, v in r.items() if not key.endswith("_s")} for r in reference.histories[k]]
        saved = torch.load(out / f"fold{k}.pt", weights_only=True)["extra"]
        assert saved == torch.load(reference_out / f"fold{k}.pt", weights_only=True)["extra"]  # identity and config


def test_folds_in_two_processes_equal_the_sequential_run(table, sequential, tmp_path):
    out = tmp_path / "processes"
    result = crnn_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=2, **TINY)
    _assert_same(result, sequential[1], out, sequential[0])
    assert sorted(result.checkpoints) == [1, 2] and (out / "predictions.csv").is_file()
    stamps = {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2)}
    again = crnn_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=1, **TINY)  # n_jobs is not in the identity
    assert {k: (out / f"fold{k}.pt").stat().st_mtime_ns for k in (1, 2)} == stamps
    assert np.array_equal(again.predictions.scores, sequential[1].predictions.scores)


def test_only_the_missing_fold_is_trained_in_parallel(table, sequential, tmp_path, caplog):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(sequential[0], out)
    (out / "fold2.pt").unlink()
    stamp = (out / "fold1.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="specfusion"):
        result = crnn_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=-1, **TINY)
    assert (out / "fold1.pt").stat().st_mtime_ns == stamp  # reused, not retrained
    assert "using the finished model" in caplog.text
    _assert_same(result, sequential[1], out, sequential[0])


def test_jobs_resolve_to_cores_capped_by_the_folds():
    from specfusion.threads import available_cores, limit_threads

    assert resolve_jobs(1, 4) == 1 and resolve_jobs(8, 3) == 3
    assert resolve_jobs(-1, 64) == available_cores()
    with limit_threads(1):
        assert resolve_jobs(-1, 4) == 1  # specfusion run --threads 1: the folds one after the other
    with pytest.raises(ConfigError, match="n_jobs"):
        resolve_jobs(0, 4)


def test_folds_as_dask_tasks_equal_the_sequential_run(table, sequential, tmp_path):
    pytest.importorskip("distributed", reason="Dask folds need the optional extra: pip install 'specfusion[dask]'")
    from specfusion.distributed.client import session
    from specfusion.distributed.crnn import DaskFolds

    with session("local:2") as client:
        out = tmp_path / "dask"
        result = crnn_fold_protocol(table, out_dir=out, folds=[1, 2], backend=DaskFolds(client), **TINY)
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.status == "running"  # a client given is left open
    _assert_same(result, sequential[1], out, sequential[0])


def test_the_protocol_trains_on_the_backend_it_is_given(table, sequential, tmp_path):
    class Recording:
        """A back-end (any object with ``train_folds``): the local one, recording what it is asked to train."""

        def __init__(self):
            self.asked = []

        def train_folds(self, jobs, S, labels, **runtime):
            self.asked.append(sorted(job.fold for job in jobs))
            return LocalFolds(n_jobs=1).train_folds(jobs, S, labels, **runtime)

    out = tmp_path / "given"
    backend = Recording()
    result = crnn_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=2, backend=backend, **TINY)
    assert backend.asked == [[1, 2]]  # n_jobs is the default back-end's; a back-end given is used instead
    _assert_same(result, sequential[1], out, sequential[0])
    crnn_fold_protocol(table, out_dir=out, folds=[1, 2], backend=backend, **TINY)
    assert backend.asked == [[1, 2]]  # nothing left to train: the back-end is not called


def test_models_never_import_the_distributed_package():
    """The stage order: models/ comes before distributed/ (its back-end is passed in, never imported)."""
    import ast
    from pathlib import Path

    import specfusion.models

    root = Path(specfusion.models.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            later = ("specfusion.distributed", "specfusion.fusion", "specfusion.pipeline", "specfusion.cli")
            assert not any(n.startswith(later) for n in names), f"{path.name} imports {names}"


def test_the_runner_trains_in_parallel_without_changing_its_cache_key(table, tmp_path):
    from specfusion.pipeline.recipes import parse_recipe
    from specfusion.pipeline.runner import RecipeRunner

    text = "[dataset]\nkind='csv'\n[[systems]]\nname='C'\nkind='crnn'\nn_jobs=2\n"
    runner = RecipeRunner(parse_recipe(text), root=tmp_path, out_dir=tmp_path / "run")  # n_jobs: a valid crnn key
    runner._table = table
    assert runner.crnn_key({"n_jobs": 2}) == runner.crnn_key({}) == runner.crnn_key({"n_jobs": 1})
    with pytest.raises(ConfigError, match="dask"):  # the runner passes [run] dask itself
        parse_recipe("[dataset]\nkind='csv'\n[[systems]]\nname='C'\nkind='crnn'\ndask='local'\n")


_GROWN = []
TASKS = 6  # two workers, three tasks each: loky measures a worker after its first task, retires it after a later one


def _grow_and_wait(i: int) -> int:
    """A loky task that leaves its worker 400 MB larger, as training a fold model leaves its process."""
    import time

    _GROWN.append(np.ones(50_000_000))  # kept: loky retires the worker once it has grown by more than 300 MB
    time.sleep(1.2)  # past loky's one-second interval between memory checks
    return i


def _warnings_of_growing_tasks(quiet: bool) -> list[str]:
    from joblib import Parallel, delayed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_worker_restarts() if quiet else contextlib.nullcontext():
            done = Parallel(n_jobs=2, backend="loky")(delayed(_grow_and_wait)(i) for i in range(TASKS))
            warnings.warn("another warning", UserWarning, stacklevel=1)
    assert sorted(done) == list(range(TASKS))
    return [str(w.message) for w in caught]


def test_worker_restarts_after_a_grown_task_are_not_reported_other_warnings_are():
    pytest.importorskip("psutil", reason="loky measures its workers' memory with psutil")
    loud = _warnings_of_growing_tasks(quiet=False)
    assert any(m.startswith(WORKER_RESTART_WARNING) for m in loud)  # what loky says without the block
    quiet = _warnings_of_growing_tasks(quiet=True)
    assert not any(m.startswith(WORKER_RESTART_WARNING) for m in quiet) and "another warning" in quiet
