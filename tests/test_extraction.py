"""Extraction engine and ``specfusion extract`` on real ESC-50 clips: exact features, resume after
SIGKILL, failed items recorded, channel policy, bounded prefetch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from extraction_helpers import TinyTestCNN, make_esc50_copy, onnx_cache  # noqa: F401 (fixture)

from specfusion.cli import main
from specfusion.data.audio import load_audio
from specfusion.data.datasets import DatasetTable, Item, load_dataset
from specfusion.errors import AudioError, ConfigError
from specfusion.features import extraction
from specfusion.features.extraction import embed_grouped, extract
from specfusion.features.runtimes import select_runtime
from specfusion.features.store import FeatureStore, journal_path

TESTS_DIR = Path(__file__).resolve().parent
pytestmark = pytest.mark.usefixtures("onnx_cache")


@pytest.fixture(scope="module")
def tiny():
    return TinyTestCNN(seed=3)


@pytest.fixture(scope="module")
def esc_table(esc50_root):
    return load_dataset("esc50", esc50_root).subset(range(10))


def reference_features(table, extractor, batch: int) -> np.ndarray:
    """The features by hand: decode, front end and network per fixed batch of table rows."""
    out = []
    for start in range(0, len(table), batch):
        inputs = [
            extractor.prepare(load_audio(item.path, sr=extractor.sample_rate)[0][0])
            for item in table.items[start : start + batch]
        ]
        out.append(extractor.embed(np.stack(inputs)))
    return np.concatenate(out)


def test_features_equal_a_direct_computation_and_rerun_skips(tmp_path, esc_table, tiny):
    path = tmp_path / "esc.h5"
    result = extract(esc_table, tiny, path, batch_size=4, workers=2, runtime="torch")
    assert (result.n_done, result.n_extracted, result.n_skipped, result.n_failed) == (10, 10, 0, 0)
    arrays = FeatureStore.open(path).arrays()
    np.testing.assert_array_equal(arrays.X, reference_features(esc_table, tiny, 4))
    assert list(arrays.uids) == esc_table.uids()
    assert list(arrays.labels) == list(esc_table.labels())
    assert arrays.config == {**tiny.config(), "short": "pad"}  # the extractor's config + the short-clip policy
    again = extract(esc_table, tiny, path, batch_size=4, runtime="torch")
    assert (again.n_extracted, again.n_skipped) == (0, 10)
    np.testing.assert_array_equal(FeatureStore.open(path).arrays().X, arrays.X)
    inline = extract(esc_table, tiny, tmp_path / "inline.h5", batch_size=4, workers=0, runtime="torch")  # no threads
    assert inline.n_done == 10
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "inline.h5").arrays().X, arrays.X)


def test_a_store_is_never_resumed_under_another_short_clip_policy(tmp_path, esc_table, tiny):
    from specfusion.errors import StoreError

    path = tmp_path / "esc.h5"
    extract(esc_table.subset(range(2)), tiny, path, batch_size=2, workers=0, runtime="torch", short="pad")
    with pytest.raises(StoreError, match="short"):
        extract(esc_table.subset(range(2)), tiny, path, batch_size=2, workers=0, runtime="torch", short="error")
    assert FeatureStore.open(path).config["short"] == "pad"


def test_cpu_default_runtime_is_onnxruntime_and_matches_torch(tmp_path, esc_table, tiny, onnx_cache):
    pytest.importorskip("onnxruntime", reason="the CPU runtime needs onnxruntime (and onnx to export)")
    pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")
    result = extract(esc_table, tiny, tmp_path / "ort.h5", batch_size=4)
    assert result.runtime.startswith("onnxruntime")
    assert FeatureStore.open(tmp_path / "ort.h5").runs[-1]["runtime"] == result.runtime
    X = FeatureStore.open(tmp_path / "ort.h5").arrays().X
    reference = reference_features(esc_table, tiny, 4)
    np.testing.assert_allclose(X, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())
    assert not np.array_equal(X, np.zeros_like(X))
    assert len(list((onnx_cache / "onnx").glob("tiny_test_cnn-*.onnx"))) == 1  # exported once, then cached
    again = select_runtime(tiny)
    np.testing.assert_array_equal(again.embed(np.stack([tiny.prepare(np.ones(16000, np.float32))] * 2)),
                                  tiny_runtime_embed(tiny, np.ones(16000, np.float32)))  # fmt: skip
    assert select_runtime(tiny, "torch").name == "torch"
    with pytest.raises(ConfigError, match="waveforms"):
        select_runtime(_WaveformDummy(), "onnxruntime")


def tiny_runtime_embed(tiny, waveform):
    return select_runtime(tiny).embed(np.stack([tiny.prepare(waveform)] * 2))


class _WaveformDummy:
    name, input_kind, sample_rate, dim = "dummy", "waveform", 16000, 1

    def embed(self, batch):
        return batch[:, :1]


def test_failed_audio_is_recorded_and_the_run_goes_on(tmp_path, esc50_root, tiny):
    root = make_esc50_copy(
        esc50_root, tmp_path / "esc", 6, extra={"9-empty-A-0": b"", "9-corrupt-A-0": os.urandom(3000)}
    )
    table = load_dataset("esc50", root)
    assert len(table) == 8
    result = extract(table, tiny, tmp_path / "s.h5", batch_size=4, runtime="torch")
    assert result.n_done == 6 and result.n_failed == 2 and not result.all_failed
    reasons = {uid: reason for uid, reason, _ in result.failures}
    assert "empty" in reasons["9-empty-A-0"]
    assert "unreadable" in reasons["9-corrupt-A-0"]
    arrays = FeatureStore.open(tmp_path / "s.h5").arrays()
    good = table.subset([i for i, item in enumerate(table) if item.name.startswith("1-")])
    assert list(arrays.uids) == good.uids()
    np.testing.assert_array_equal(arrays.X[:2], reference_features(good.subset([0, 1]), tiny, 4))
    # a re-run tries the failed items again (the user may have fixed them) and keeps the rest
    rerun = extract(table, tiny, tmp_path / "s.h5", batch_size=4, runtime="torch")
    assert (rerun.n_extracted, rerun.n_skipped, rerun.n_failed) == (0, 6, 2)
    with pytest.raises(AudioError, match="empty"):
        extract(table, tiny, tmp_path / "strict.h5", batch_size=4, on_error="raise")


def _child_script(root: Path, store: Path) -> str:
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from extraction_helpers import TinyTestCNN
        from specfusion.data.datasets import load_dataset
        from specfusion.features.extraction import extract
        table = load_dataset("esc50", {str(root)!r})
        extract(table, TinyTestCNN(seed=3, delay=0.04), {str(store)!r}, batch_size=4, workers=1)
    """)


def _run_and_kill(script: str, store: Path, *, when_done: int | None, rng: random.Random) -> int:
    """Run the extraction in a subprocess; SIGKILL it once ``when_done`` items are stored (plus jitter)."""
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        if when_done is None:
            _, err = child.communicate(timeout=120)
            assert child.returncode == 0, err.decode()
            return 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if store.exists() and FeatureStore.open(store).n_done + FeatureStore.open(store).n_failed >= when_done:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.12))  # anywhere: mid-batch, mid-write, mid-consolidation
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        return child.returncode
    finally:
        if child.poll() is None:
            child.kill()


def test_sigkilled_runs_resume_to_identical_features(tmp_path, esc50_root):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 22, extra={"9-empty-A-0": b""})
    table = load_dataset("esc50", root)
    reference = extract(table, TinyTestCNN(seed=3), tmp_path / "reference.h5", batch_size=4, workers=1)
    assert reference.n_done == 22 and reference.n_failed == 1
    expected = FeatureStore.open(tmp_path / "reference.h5").arrays()

    store = tmp_path / "killed.h5"
    script = _child_script(root, store)
    rng = random.Random(0)
    states = []
    for when_done in (3, 10, 23):
        code = _run_and_kill(script, store, when_done=when_done, rng=rng)
        state = FeatureStore.open(store)
        states.append((code, state.n_done + state.n_failed))
    # killed part-way at least twice, with items done and items left: a real interruption
    assert sum(code == -signal.SIGKILL and 0 < n < 23 for code, n in states) >= 2, states
    _run_and_kill(script, store, when_done=None, rng=rng)

    final = FeatureStore.open(store)
    arrays = final.arrays()
    assert final.complete and not journal_path(store).exists()
    assert list(arrays.uids) == list(expected.uids)  # nothing lost, nothing duplicated, table order
    assert arrays.X.tobytes() == expected.X.tobytes()  # bit for bit
    assert [uid for uid, _ in final.failures()] == ["9-empty-A-0"]
    assert final.runs and final.runs[-1]["failed"] == 1  # runs that got to the end logged themselves


def test_each_channel_is_its_own_item(tmp_path, formats_dir, tiny):
    path = formats_dir / "sins_4ch_16khz_16bit_10s.wav"
    base = DatasetTable(
        name="sins", root=formats_dir, items=[Item(name="sins", path=path, label="x", fold=1)], classes=["x"]
    )
    each = base.with_channels(4)
    extract(each, tiny, tmp_path / "each.h5", batch_size=8, runtime="torch")
    arrays = FeatureStore.open(tmp_path / "each.h5").arrays()
    assert list(arrays.uids) == [f"sins@ch{c}" for c in range(4)] and list(arrays.channels) == [0, 1, 2, 3]
    y, _ = load_audio(path, sr=16000, channels="each")
    np.testing.assert_array_equal(arrays.X, tiny.embed(np.stack([tiny.prepare(y[c]) for c in range(4)])))
    assert not np.array_equal(arrays.X[0], arrays.X[1])  # the channels really differ
    extract(base, tiny, tmp_path / "mean.h5", runtime="torch")
    mean = FeatureStore.open(tmp_path / "mean.h5").arrays()
    mono, _ = load_audio(path, sr=16000, channels="mean")
    np.testing.assert_array_equal(mean.X, tiny.embed(np.stack([tiny.prepare(mono[0])])))
    five = DatasetTable(
        name="sins", root=formats_dir, items=[Item(name="sins", path=path, label="x", fold=1, channel=4)], classes=["x"]
    )
    result = extract(five, tiny, tmp_path / "five.h5")
    assert result.all_failed and "channel 4" in result.failures[0][1]


class _ShapeRecorder:
    """A waveform extractor whose features are statistics of its input; records the batch shapes."""

    name, dim, sample_rate = "recorder", 2, 16000

    def __init__(self):
        self.batches = []

    def embed(self, batch):
        self.batches.append(batch.shape)
        return np.stack([batch.mean(axis=1), batch.shape[1] * np.ones(len(batch))], axis=1)


def test_only_equal_shapes_are_batched_together():
    recorder = _ShapeRecorder()
    rng = np.random.default_rng(0)
    lengths = [100, 80, 100, 80, 100]
    prepared = [(row, rng.standard_normal(n).astype(np.float32)) for row, n in zip([7, 3, 5, 1, 9], lengths)]
    rows, features = embed_grouped(recorder, prepared)
    assert sorted(recorder.batches) == [(2, 80), (3, 100)]
    assert rows.tolist() == [1, 3, 5, 7, 9]
    by_row = dict(prepared)
    np.testing.assert_allclose(features[:, 0], [by_row[r].mean() for r in rows.tolist()], rtol=1e-6)


def test_prefetch_bounds_the_files_in_flight(monkeypatch, esc_table, tiny):
    started, consumed, most_ahead = [0], [0], [0]
    original = extraction._prepare_job

    def counting(job, extractor, *args):
        started[0] += 1
        most_ahead[0] = max(most_ahead[0], started[0] - consumed[0])
        return original(job, extractor, *args)

    monkeypatch.setattr(extraction, "_prepare_job", counting)
    jobs = extraction.decode_jobs(esc_table, np.arange(len(esc_table)), 4)
    for _ in extraction.prepared_stream(jobs, tiny, workers=2, prefetch=3):
        consumed[0] += 1
    assert consumed[0] == 10 and most_ahead[0] <= 3


def test_cli_extract_lists_failures_and_exit_codes(tmp_path, esc50_root, capsys):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 4, extra={"9-empty-A-0": b""})
    out = tmp_path / "lite0.h5"
    args = ["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "efficientnet_lite0",
            "--weights", "imagenet", "--batch-size", "4", "--runtime", "torch", "--out", str(out), "-q"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 of 5 items have features" in printed
    assert "9-empty-A-0: empty file" in printed
    arrays = FeatureStore.open(out).arrays()
    assert arrays.X.shape == (4, 1280) and np.isfinite(arrays.X).all()
    assert arrays.config["weights"]["kind"] == "imagenet" and arrays.config["colormap"] == "viridis"
    # the same --out with another configuration is refused with advice, nothing mixed
    assert main(args[:-3] + ["--colormap", "magma", "--out", str(out), "-q"]) == 1
    assert "another extractor configuration" in capsys.readouterr().err
    # every item failing is an error
    bad = make_esc50_copy(esc50_root, tmp_path / "bad", 0, extra={"9-empty-A-0": b"", "9-short-A-0": b"\0" * 10})
    assert main(["extract", "--dataset", "esc50", "--root", str(bad), "--extractor", "tiny_test_cnn",
                 "--out", str(tmp_path / "bad.h5"), "-q"]) == 1  # fmt: skip
    assert "every item failed" in capsys.readouterr().err
    # an option the extractor does not take is refused clearly
    assert main(["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn",
                 "--clip-db", "-80", "--out", str(tmp_path / "x.h5"), "-q"]) == 1  # fmt: skip
    assert "does not take --clip-db" in capsys.readouterr().err
