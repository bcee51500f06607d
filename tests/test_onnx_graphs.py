"""The ONNX Runtime path: graphs with external weights, their cache, and the torch network released (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from extraction_helpers import TinyTestCNN

from specfusion.data.audio import load_audio
from specfusion.features import runtimes
from specfusion.features.extractors.base import get_extractor
from specfusion.features.runtimes import EXPORT_RTOL, OnnxEmbedder, select_runtime
from specfusion.identity import config_hash

pytest.importorskip("onnxruntime", reason="the CPU runtime needs onnxruntime (and onnx to export)")
onnx = pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")


class TinyBatchNormCNN(TinyTestCNN):
    """TinyTestCNN with a batch norm (running statistics: buffers, folded into the convolution by ONNX Runtime)."""

    def __init__(self, *, seed: int = 0):
        import torch

        super().__init__(seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 100)
            norm = torch.nn.BatchNorm2d(8)
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
            torch.nn.init.uniform_(norm.bias, -0.2, 0.2)
        self.net = torch.nn.Sequential(self.net[0], norm, *self.net[1:]).eval()

    def config(self) -> dict:
        return {**super().config(), "batch_norm": True}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def real_batch(esc50_root):
    """Four real ESC-50 clips, prepared for the tiny networks."""
    files = sorted((esc50_root / "audio").glob("*.flac"))[:4]
    extractor = TinyTestCNN()
    return np.stack([extractor.prepare(load_audio(f, sr=16000)[0][0]) for f in files])


def test_an_export_keeps_its_weights_beside_the_graph_and_reproduces_torch(home, real_batch):
    extractor = TinyBatchNormCNN(seed=2)
    engine = select_runtime(extractor, "onnxruntime")
    graph = engine.embed.cache_path
    data = graph.with_name(graph.name + ".data")
    assert graph.is_file() and data.is_file()
    model = onnx.load(str(graph), load_external_data=False)
    assert [value.name for value in model.graph.input] == ["input"]  # weights are initializers, not inputs
    weights = {tensor.name for tensor in model.graph.initializer}
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert weights <= set(extractor.net.state_dict())
    assert "1.running_var" in weights  # the batch norm's statistics are there, for ONNX Runtime to fold
    assert data.stat().st_size >= sum(p.numel() * 4 for p in extractor.net.parameters())
    got, expected = engine.embed(real_batch), extractor.embed(real_batch)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_a_cached_graph_is_reused_and_one_of_the_old_format_is_not(home, real_batch, monkeypatch):
    first = TinyTestCNN(seed=4)
    features = select_runtime(first, "onnxruntime").embed(real_batch)
    second = TinyTestCNN(seed=4)

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the graph is cached")

    with monkeypatch.context() as patch:
        patch.setattr(runtimes, "export_graph", no_export)
        again = select_runtime(second, "onnxruntime")
    np.testing.assert_array_equal(again.embed(real_batch), features)

    # a graph of format 1 (weights inside) under the key format 1 had is never read as format 2
    third = TinyTestCNN(seed=5)
    identity = {"config": third.config(), "input": [3, 64, 64], "torch": __import__("torch").__version__,
                "opset": runtimes.OPSET, "format": 1}  # fmt: skip
    old = home / "onnx" / f"{third.name}-{config_hash(identity, length=24)}.onnx"
    old.write_bytes(b"not a graph")
    embedder = OnnxEmbedder(third)
    embedder.load((3, 64, 64))
    assert embedder.cache_path != old and embedder.cache_path.is_file()
    assert old.read_bytes() == b"not a graph"
    np.testing.assert_allclose(embedder(real_batch), third.embed(real_batch), rtol=0, atol=1e-5)


def test_a_graph_without_its_weights_file_is_exported_again(home, real_batch):
    extractor = TinyTestCNN(seed=6)
    graph = select_runtime(extractor, "onnxruntime").embed.cache_path
    graph.with_name(graph.name + ".data").unlink()
    again = TinyTestCNN(seed=6)
    embedder = OnnxEmbedder(again)
    embedder.load((3, 64, 64))
    assert graph.with_name(graph.name + ".data").is_file()
    np.testing.assert_allclose(embedder(real_batch), extractor.embed(real_batch), rtol=0, atol=1e-5)


def test_an_image_cnn_releases_its_network_once_onnx_runtime_runs_it(home, esc50_root):
    extractor = get_extractor("efficientnet_lite0", weights="none", seed=3)
    files = sorted((esc50_root / "audio").glob("*.flac"))[:2]
    batch = np.stack([extractor.prepare(load_audio(f, sr=16000)[0][0]) for f in files])
    before = extractor.embed(batch)
    state = {key: value.clone() for key, value in extractor.net.state_dict().items()}
    engine = select_runtime(extractor, "onnxruntime")
    assert extractor._net is None  # released: ONNX Runtime holds the weights
    assert select_runtime(extractor, "onnxruntime") is engine and extractor._net is None  # the memo: no rebuild
    got = engine.embed(batch)
    assert np.abs(got - before).max() <= EXPORT_RTOL * np.abs(before).max()
    np.testing.assert_array_equal(extractor.embed(batch), before)  # rebuilt on use: the same weights exactly
    rebuilt = extractor.net.state_dict()
    assert all(torch_equal(rebuilt[key], value) for key, value in state.items())


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_batch_runs_in_session_sized_parts_with_the_same_features(home, real_batch, monkeypatch):
    extractor = TinyBatchNormCNN(seed=4)
    engine = select_runtime(extractor, "onnxruntime")
    batch = np.concatenate([real_batch, real_batch[::-1], real_batch[:2]])  # 10 items: parts of 4, 4 and 2
    calls = []
    session = engine.embed._session
    monkeypatch.setattr(engine.embed, "_session", _Recording(session, calls))
    parts = engine.embed(batch)
    assert calls == [4, 4, 2]
    monkeypatch.setattr(runtimes, "SESSION_BATCH", len(batch))
    whole = engine.embed(batch)
    assert calls[-1] == len(batch)
    assert parts.tobytes() == whole.tobytes()  # the same features bit for bit
    np.testing.assert_allclose(parts, extractor.embed(batch), rtol=EXPORT_RTOL, atol=1e-6)


class _Recording:
    """An ONNX Runtime session that records the batch size of each call."""

    def __init__(self, session, calls):
        self.session, self.calls = session, calls

    def run(self, outputs, feeds):
        self.calls.append(len(feeds["input"]))
        return self.session.run(outputs, feeds)


_EXPORT_PEAK = """
import contextlib, sys, tempfile
from pathlib import Path
import torch
from specfusion.features import runtimes

def resident_peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

if sys.argv[1] == "unpatched":
    runtimes._shape_inference_without_weights = contextlib.nullcontext
module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 32 * 32, 8192)).eval()  # 128 MiB weight
folder = Path(tempfile.mkdtemp())
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak from here on
before = resident_peak_kib()
runtimes.export_graph(module, (4, 32, 32), folder / "g.onnx", folder / "g.onnx.data", data_name="g.onnx.data")
print(resident_peak_kib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak resident memory from /proc")
def test_an_export_does_not_copy_the_weights_for_shape_inference(tmp_path):
    def export_peak(mode):
        result = subprocess.run([sys.executable, "-c", _EXPORT_PEAK, mode], capture_output=True, text=True, check=True)
        return int(result.stdout.split()[-1]) / 1024  # MiB above the resident size before the export

    weight_mib = 4 * 32 * 32 * 8192 * 4 / 2**20
    patched, unpatched = export_peak("patched"), export_peak("unpatched")
    assert unpatched > weight_mib  # the exporter's own shape inference serialises the weight
    # without that copy, what remains is the exporter's own working memory: 26-35 MiB measured, depending on the
    # environment (a fresh virtual environment takes the most), while any copy of the weight takes 128 MiB
    assert patched < 0.5 * weight_mib, (patched, unpatched)


def test_shape_inference_without_the_weights_gives_the_same_graph(tmp_path, monkeypatch):
    import contextlib

    module = runtimes.embedding_module(TinyBatchNormCNN(seed=3))
    runtimes.export_graph(module, (3, 64, 64), tmp_path / "a.onnx", tmp_path / "a.data", data_name="w.data")
    monkeypatch.setattr(runtimes, "_shape_inference_without_weights", contextlib.nullcontext)
    runtimes.export_graph(module, (3, 64, 64), tmp_path / "b.onnx", tmp_path / "b.data", data_name="w.data")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.data").read_bytes() == (tmp_path / "b.data").read_bytes()


def _shape_inference():
    """The exporter's shape-inference function now in ``torch._C`` (skips where this torch has none)."""
    import torch

    if not hasattr(torch._C, runtimes._SHAPE_INFERENCE):
        pytest.skip("this torch has no TorchScript ONNX shape inference to patch")
    return getattr(torch._C, runtimes._SHAPE_INFERENCE)


def test_the_shape_inference_patch_is_undone_after_an_export_and_after_a_failed_one(tmp_path, monkeypatch):
    import torch

    original = _shape_inference()
    module = runtimes.embedding_module(TinyTestCNN(seed=5))
    runtimes.export_graph(module, (3, 64, 64), tmp_path / "a.onnx", tmp_path / "a.data", data_name="a.data")
    assert _shape_inference() is original and not runtimes._EXPORT_LOCK.locked()

    patched = []

    def failing_export(*args, **kwargs):
        patched.append(_shape_inference() is not original)
        raise RuntimeError("export failed")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(RuntimeError, match="export failed"):
        runtimes.export_graph(module, (3, 64, 64), tmp_path / "b.onnx", tmp_path / "b.data", data_name="b.data")
    assert patched == [True]  # the patch was in place for the export ...
    assert _shape_inference() is original and not runtimes._EXPORT_LOCK.locked()  # ... and only then


def test_an_export_waiting_for_another_puts_back_the_original():
    import threading
    import time

    original = _shape_inference()
    with runtimes._shape_inference_without_weights():
        assert _shape_inference() is not original
        waiter = threading.Thread(target=_enter_and_leave_shape_inference_patch)
        waiter.start()
        time.sleep(0.2)  # the second export waits for the lock meanwhile
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert _shape_inference() is original  # it did not take the first one's patch for the original


def _enter_and_leave_shape_inference_patch():
    with runtimes._shape_inference_without_weights():
        pass


def test_released_runtimes_free_the_session_and_a_new_one_gives_the_same_features(home, real_batch):
    import gc
    import weakref

    extractor = TinyBatchNormCNN(seed=5)
    engine = select_runtime(extractor, "onnxruntime")
    first = engine.embed(real_batch)
    session = weakref.ref(engine.embed)
    del engine
    runtimes.release_runtimes(extractor)
    gc.collect()
    assert session() is None  # nothing else kept the ONNX Runtime session alive
    again = select_runtime(extractor, "onnxruntime")  # from the graph cache
    assert again.name == "onnxruntime"
    assert again.embed(real_batch).tobytes() == first.tobytes()


# ----------------------------------------------------------------------- the cache's record of digests


@pytest.fixture()
def new_process(monkeypatch):
    """Forget which cached graphs this process has verified, as a new process would."""
    monkeypatch.setattr(runtimes, "_VERIFIED", {}, raising=False)


def _garble(file, *, at: float = 0.5, n: int = 64) -> None:
    """Invert ``n`` bytes of ``file`` from the fraction ``at`` of its length on (its size unchanged)."""
    with open(file, "r+b") as handle:
        handle.seek(int(file.stat().st_size * at))
        data = handle.read(n)
        handle.seek(-len(data), 1)
        handle.write(bytes(255 - byte for byte in data))


def _cached_files(graph):
    return graph, graph.with_name(graph.name + ".data"), graph.with_name(graph.name + ".digests.json")


def _bytes(files):
    return [file.read_bytes() for file in files]


@pytest.mark.parametrize(
    "damage",
    ["garbled weights", "truncated weights", "garbled graph", "unreadable record", "record of other files"],
)
def test_a_damaged_cached_graph_is_exported_again_with_a_warning(home, real_batch, new_process, caplog, damage):
    first = TinyBatchNormCNN(seed=7)
    features = select_runtime(first, "onnxruntime").embed(real_batch)
    graph, data, record = files = _cached_files(select_runtime(first, "onnxruntime").embed.cache_path)
    exported = _bytes(files)
    if damage == "garbled weights":
        _garble(data)
    elif damage == "truncated weights":
        data.write_bytes(exported[1][:-4096])
    elif damage == "garbled graph":
        _garble(graph, n=8)
    elif damage == "unreadable record":
        record.write_text("{")
    else:
        record.write_text(exported[2].decode().replace(data.name, "other.onnx.data"))
    runtimes._VERIFIED.clear()
    with caplog.at_level("WARNING", logger=runtimes.__name__):
        again = select_runtime(TinyBatchNormCNN(seed=7), "onnxruntime")
    assert "is damaged" in caplog.text and graph.name in caplog.text
    assert _bytes(files) == exported  # exported again: the same bytes
    assert again.embed(real_batch).tobytes() == features.tobytes()


def test_damaged_weights_change_the_features_when_the_record_is_not_checked(home, real_batch, new_process, monkeypatch):
    first = TinyBatchNormCNN(seed=8)
    features = select_runtime(first, "onnxruntime").embed(real_batch)
    graph, data, _ = _cached_files(select_runtime(first, "onnxruntime").embed.cache_path)
    _garble(data, at=0.0, n=256)  # the first convolution's weights
    monkeypatch.setattr(OnnxEmbedder, "_usable", lambda self, path: True)  # the cache before its record
    wrong = select_runtime(TinyBatchNormCNN(seed=8), "onnxruntime").embed(real_batch)
    assert not np.allclose(wrong, features, rtol=1e-3, atol=1e-6)  # what the record guards against


def test_a_graph_cached_without_a_record_is_exported_again(home, real_batch, new_process, caplog):
    first = TinyTestCNN(seed=9)
    features = select_runtime(first, "onnxruntime").embed(real_batch)
    graph, data, record = files = _cached_files(select_runtime(first, "onnxruntime").embed.cache_path)
    exported = _bytes(files)
    record.unlink()  # as an earlier release left it
    with caplog.at_level("INFO", logger=runtimes.__name__):
        again = select_runtime(TinyTestCNN(seed=9), "onnxruntime")
    assert "no record of its digests" in caplog.text and "exporting" in caplog.text
    assert _bytes(files) == exported
    assert again.embed(real_batch).tobytes() == features.tobytes()


def test_a_record_holds_the_size_and_sha256_of_the_graph_and_its_weights(home):
    import hashlib
    import json

    graph, data, record = _cached_files(select_runtime(TinyTestCNN(seed=10), "onnxruntime").embed.cache_path)
    files = json.loads(record.read_text())["files"]
    assert set(files) == {graph.name, data.name}
    for file in (graph, data):
        assert files[file.name] == {
            "size": file.stat().st_size,
            "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
        }
    assert record.stat().st_mtime_ns >= max(graph.stat().st_mtime_ns, data.stat().st_mtime_ns)  # written last


def test_a_verified_graph_is_hashed_once_per_process_while_its_files_are_unchanged(home, new_process, monkeypatch):
    import os

    select_runtime(TinyTestCNN(seed=11), "onnxruntime")
    runtimes._VERIFIED.clear()
    hashed = []
    monkeypatch.setattr(runtimes, "file_digest", lambda path: hashed.append(Path(path).name) or _digest(path))
    graph = select_runtime(TinyTestCNN(seed=11), "onnxruntime").embed.cache_path
    assert sorted(hashed) == sorted([graph.name, graph.name + ".data"])
    select_runtime(TinyTestCNN(seed=11), "onnxruntime")  # another extractor of the same configuration
    assert len(hashed) == 2
    data = graph.with_name(graph.name + ".data")
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 1))  # rewritten (or touched)
    select_runtime(TinyTestCNN(seed=11), "onnxruntime")
    assert len(hashed) == 4


def _digest(path):
    from specfusion.identity import file_digest

    return file_digest(path)


# ----------------------------------------------------------------------- threads


def test_session_threads_follow_the_argument_then_the_thread_limit_then_torch():
    import torch

    from specfusion.threads import limit_threads

    assert runtimes.session_threads() == torch.get_num_threads()
    with limit_threads(1):
        torch.set_num_threads(2)  # as when torch is first imported inside the block
        try:
            assert runtimes.session_threads() == 1
            assert runtimes.session_threads(3) == 3
        finally:
            torch.set_num_threads(1)


_THREADS_FROM_THE_CLI = """
import sys
import onnxruntime
sys.path.insert(0, sys.argv[1])
import extraction_helpers  # registers tiny_test_cnn
from specfusion.cli import main

assert "torch" not in sys.modules  # torch is first imported inside --threads' block, as in a real run
seen = []

class Recording(onnxruntime.InferenceSession):
    def __init__(self, path, options, **kwargs):
        seen.append((options.intra_op_num_threads, options.inter_op_num_threads))
        super().__init__(path, options, **kwargs)

onnxruntime.InferenceSession = Recording
code = main(["extract", "--dataset", "esc50", "--root", sys.argv[2], "--extractor", "tiny_test_cnn",
             "--runtime", "onnxruntime", "--threads", "1", "--out", sys.argv[3], "-q"])
print(code, seen)
"""


def test_the_threads_of_the_cli_reach_the_onnx_runtime_session(home, tmp_path, esc50_root):
    from extraction_helpers import make_esc50_copy

    from specfusion.features.store import FeatureStore

    root = make_esc50_copy(esc50_root, tmp_path / "esc", 2)
    out = tmp_path / "x.h5"
    tests = str(Path(__file__).parent)
    result = subprocess.run([sys.executable, "-c", _THREADS_FROM_THE_CLI, tests, str(root), str(out)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout.splitlines()[-1] == "0 [(1, 1)]", result.stdout + result.stderr  # intra-, inter-op threads
    assert ", 1 threads" in FeatureStore.open(out).runs[-1]["runtime"]
