"""A driver of `specfusion extract --dask local:2` killed with SIGKILL mid-run resumes: the rerun finishes
the store, which then equals the single-process store (20 real ESC-50 clips, no duplicated rows)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs the optional extra: pip install 'specfusion[dask]'")

from extraction_helpers import make_esc50_copy  # noqa: E402

from specfusion.data.datasets import load_dataset  # noqa: E402
from specfusion.errors import StoreError  # noqa: E402
from specfusion.features.extraction import extract  # noqa: E402
from specfusion.features.extractors import get_extractor  # noqa: E402
from specfusion.features.store import FeatureStore, journal_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code the subprocess runs
NAME, N_CLIPS, BATCH = "efficientnet_lite0", 20, 2


def extract_command(root: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "specfusion",
        "extract",
        "--dataset",
        "esc50",
        "--root",
        str(root),
        "--extractor",
        NAME,
        "--weights",
        "none",
        "--batch-size",
        str(BATCH),
        "--runtime",
        "torch",
        "--dask",
        "local:2",
        "--out",
        str(out),
        "-q",
    ]


def n_done(path: Path) -> int:
    """Items with features in the store as it stands (HDF5 + journal); 0 while it does not exist yet."""
    try:
        return FeatureStore.open(path).n_done
    except (StoreError, OSError):
        return 0


@pytest.mark.slow  # 72 s on 2 cores at load 9.6 (~15 s of it per CLI start: torch + a LocalCluster of 2 workers)
def test_a_driver_killed_with_sigkill_resumes_to_the_single_process_store(tmp_path, esc50_root):
    import torch

    root = make_esc50_copy(esc50_root, tmp_path / "esc", N_CLIPS)
    out = tmp_path / "dask.h5"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(extract_command(root, out), cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline, done_at_kill = time.monotonic() + 60, 0
        while driver.poll() is None and time.monotonic() < deadline:
            if journal_path(out).exists() and (done_at_kill := n_done(out)) > 0:
                os.kill(driver.pid, signal.SIGKILL)  # the driver only: its workers are left to notice
                break
            time.sleep(0.02)
        assert driver.wait(timeout=30) == -signal.SIGKILL, driver.stderr.read().decode()[-2000:]
    finally:
        _kill_group(driver)
    assert 0 < done_at_kill < N_CLIPS, "the driver was not killed mid-run"
    assert journal_path(out).exists()  # an interrupted store: HDF5 + journal
    committed = n_done(out)
    assert done_at_kill <= committed < N_CLIPS

    rerun = subprocess.run(extract_command(root, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{N_CLIPS} of {N_CLIPS} items have features" in rerun.stdout

    reference = tmp_path / "single.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on a single-threaded Dask worker
    try:
        table = load_dataset("esc50", root)
        extract(table, get_extractor(NAME, weights="none"), reference, batch_size=BATCH, runtime="torch")
    finally:
        torch.set_num_threads(threads)
    store, single = FeatureStore.open(out), FeatureStore.open(reference).arrays()
    arrays = store.arrays()
    assert store.complete and not journal_path(out).exists()
    assert len(set(arrays.uids.tolist())) == len(arrays.uids) == N_CLIPS  # no duplicated rows
    assert list(arrays.uids) == list(single.uids)
    assert arrays.config == single.config
    np.testing.assert_allclose(arrays.X, single.X, rtol=1e-4, atol=1e-5 * np.abs(single.X).max())
    assert store.runs[-1]["extracted"] == N_CLIPS - committed  # the rerun extracted only the rest


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL what is left of the killed driver's process group (its Dask worker processes), if anything."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
