"""Inference runtimes for the extraction engine: the extractor's own torch forward, or ONNX Runtime.

On CPU the image CNNs run markedly faster as an exported ONNX graph on ONNX Runtime than in torch
eager mode, channels-last or TorchScript (figures in ``docs/extraction.md``), so
:func:`select_runtime` picks ONNX Runtime there when it can:

* the extractor runs on the CPU and makes images (``input_kind == "image"``: fixed input shape);
* it exposes its torch network: ``extractor.embedding_module()`` (a module mapping the prepared batch to
  the features) or, for the image CNNs, ``extractor.net`` with an ``embed`` method;
* ``onnxruntime`` and ``onnx`` (used by :func:`torch.onnx.export`) are installed.

Otherwise, and always on a GPU, the extractor's own :meth:`~specfusion.features.extractors.Extractor.embed` runs.
The exported graph is checked against the torch forward when it is made and cached under
``$SPECFUSION_HOME/onnx`` (default ``~/.cache/specfusion/onnx``), keyed by the extractor's configuration
(which includes the weights' hash or seed), the input shape and the torch version: ``NAME-KEY.onnx`` (the
graph) and ``NAME-KEY.onnx.data`` (its weights, ONNX external data), and beside them
``NAME-KEY.onnx.digests.json``, the size and SHA-256 of both, written last. A cached graph is used only
when both files match that record (:func:`graph_damage`); a damaged one is exported again with a warning,
and one without a record (cached by an earlier release) is exported again. Once its session is open, an
extractor that can rebuild its torch network drops it (``extractor.release_network()``; the image CNNs
rebuild it identically on their next torch forward), so the weights are held once, by ONNX Runtime.

ONNX Runtime's intra-op threads are, in this order: the ``threads`` asked for, the limit of the enclosing
:func:`~specfusion.threads.limit_threads` block (``--threads N`` of the CLI), torch's thread count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError
from specfusion.files import write_atomic
from specfusion.identity import config_hash, file_digest, onnx_graph_key
from specfusion.threads import thread_limit

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime")
#: ONNX opset of exported graphs.
OPSET = 17
#: Let ONNX Runtime's idle worker threads spin (busy-wait) between operators.
SPINNING = False
#: Largest relative deviation of the exported graph from torch accepted when checking an export.
EXPORT_RTOL = 1e-3
#: Items per ONNX Runtime call: an engine batch is run in parts of this size. The session's arena grows with
#: the batch (VGG19: 440 MB for 16 items, 210 MB for 4) and the throughput does not; the features are the
#: same bit for bit (measured for densenet121, resnet50, vgg16/19 and efficientnet_lite0, docs/performance.md).
SESSION_BATCH = 4
#: Layout of cached graphs: 1 = one ``.onnx`` file with the weights inside; 2 = the graph in ``.onnx``,
#: its weights in ``.onnx.data`` (ONNX external data), the graph written last.
GRAPH_FORMAT = 2
#: Byte alignment of each tensor in a graph's weights file.
DATA_ALIGNMENT = 4096
#: Layout of a cached graph's record of digests (``NAME-KEY.onnx.digests.json``).
RECORD_FORMAT = 1

#: Cached graphs that matched their record in this process: graph path -> the files' (device, inode, size,
#: mtime) then. Hashing VGG16's 528 MB weights file takes about 1 s; a file is hashed again only when
#: one of these changes (or in another process).
_VERIFIED: dict[Path, tuple] = {}

#: Held for the length of an export: the exporter's shape inference is patched meanwhile (:func:`export_graph`).
_EXPORT_LOCK = threading.Lock()
#: The private ``torch._C`` function of the TorchScript exporter's ONNX shape inference.
_SHAPE_INFERENCE = "_jit_pass_onnx_graph_shape_type_inference"


@dataclasses.dataclass
class Runtime:
    """How the network of an extractor runs.

    Attributes
    ----------
    name : {"torch", "onnxruntime", "own"}
        ``own``: the extractor's own graph (:meth:`~specfusion.features.extractors.base.Extractor.own_runtime`).
    embed : callable
        ``embed(batch ndarray) -> float32 (n, dim)``.
    description : str
        For logs and the store's run log.
    """

    name: str
    embed: Callable[[np.ndarray], np.ndarray]
    description: str


def onnx_available() -> bool:
    """``onnxruntime`` and ``onnx`` are importable."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def onnx_cache_dir() -> Path:
    """``$SPECFUSION_HOME/onnx``, else ``$XDG_CACHE_HOME/specfusion/onnx`` (default ``~/.cache/...``)."""
    home = os.environ.get("SPECFUSION_HOME")
    if home:
        return Path(home).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "specfusion" / "onnx"


def embedding_module(extractor):
    """The torch module mapping a prepared batch to features, or ``None`` if the extractor hides it."""
    method = getattr(extractor, "embedding_module", None)
    if callable(method):
        return method()
    import torch

    net = getattr(extractor, "net", None)
    if isinstance(net, torch.nn.Module) and callable(getattr(net, "embed", None)):
        return _embed_forward(net)
    return None


def own_runtime(extractor) -> str | None:
    """The description of the graph ``extractor`` always runs, or ``None`` for a torch network."""
    method = getattr(extractor, "own_runtime", None)
    return method() if callable(method) else None


def _torch_description(extractor) -> str:
    import torch

    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    device = getattr(extractor, "device", None)
    if device is not None:
        parts.append(f"device {device}")
    if getattr(extractor, "channels_last", False):
        parts.append("channels-last")
    return ", ".join(parts)


def select_runtime(extractor, runtime: str = "auto", *, threads: int | None = None) -> Runtime:
    """Choose how ``extractor``'s network runs.

    Parameters
    ----------
    extractor : Extractor
    runtime : {"auto", "torch", "onnxruntime"}
        ``auto``: ONNX Runtime on CPU where possible (see the module docstring), else torch.
    threads : int, optional
        Intra-op threads of ONNX Runtime (default: torch's thread count).

    Raises
    ------
    ConfigError
        ``runtime="onnxruntime"`` where it cannot be used (the message says why), and ``torch`` or
        ``onnxruntime`` for an extractor that runs a graph of its own (YAMNet, BirdNET): only ``auto`` applies.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    own = own_runtime(extractor)
    if own is not None:
        if runtime != "auto":
            raise ConfigError(f"{extractor.name!r} always runs its own graph ({own}); runtime {runtime!r} "
                              "applies to torch networks only: leave it at 'auto'")  # fmt: skip
        return Runtime("own", extractor.embed, own)
    torch_runtime = Runtime("torch", extractor.embed, _torch_description(extractor))
    if runtime == "torch":
        return torch_runtime
    threads = session_threads(threads)
    memo = _memo_key(extractor, runtime, threads)
    if memo is not None and memo[1] in _SESSIONS.get(extractor, {}):
        return _SESSIONS[extractor][memo[1]]  # (before looking for the torch network: it may be released)
    reason = _onnx_unusable(extractor)
    if reason is not None:
        if runtime == "onnxruntime":
            raise ConfigError(f"cannot run {extractor.name!r} on ONNX Runtime: {reason}")
        log.debug("runtime torch for %s: %s", extractor.name, reason)
        return torch_runtime
    embedder = OnnxEmbedder(extractor, threads=threads)
    try:
        embedder.load(input_shape(extractor))
    except Exception as err:  # noqa: BLE001 - any export failure: torch still works
        if runtime == "onnxruntime":
            raise ConfigError(f"cannot run {extractor.name!r} on ONNX Runtime: {err}") from err
        log.warning("%s: ONNX Runtime not usable (%s); running the network in torch", extractor.name, err)
        return torch_runtime
    chosen = Runtime("onnxruntime", embedder, embedder.description)
    if memo is not None:  # one session per extractor: later runs with it skip loading the graph
        _SESSIONS.setdefault(extractor, {})[memo[1]] = chosen
    return chosen


#: ONNX Runtime sessions already made, per extractor object (dropped with the extractor).
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_threads(threads: int | None = None) -> int:
    """Intra-op threads of an ONNX Runtime session: ``threads``, else the limit of the enclosing
    :func:`~specfusion.threads.limit_threads` block, else torch's thread count.

    The limit is read here because ONNX Runtime's pools are made per session, out of the reach of
    :func:`~specfusion.threads.limit_threads`; torch's count alone misses it when torch was first imported
    inside the block (as under the CLI's ``--threads``).
    """
    if threads:
        return int(threads)
    limit = thread_limit()
    if limit is not None:
        return int(limit)
    import torch

    return torch.get_num_threads()


def _memo_key(extractor, runtime: str, threads: int):
    try:
        weakref.ref(extractor)
        key = (runtime, threads, SPINNING, config_hash(extractor.config()))
    except (TypeError, AttributeError, ConfigError):  # not weakly referable, or no configuration
        return None
    return extractor, key


def input_shape(extractor) -> tuple[int, ...]:
    """Shape of one prepared input (the front end run on one second of noise)."""
    noise = np.random.default_rng(0).standard_normal(int(extractor.sample_rate)).astype(np.float32) * 0.1
    return tuple(np.asarray(extractor.prepare(noise)).shape)


def _onnx_unusable(extractor) -> str | None:
    device = str(getattr(extractor, "device", "cpu"))
    if not device.startswith("cpu"):
        return f"it runs on {device} (torch is used on GPUs)"
    if getattr(extractor, "input_kind", "image") != "image":
        return "its inputs are waveforms of varying length"
    if not onnx_available():
        return "onnxruntime and onnx are not installed (pip install onnxruntime onnx)"
    if embedding_module(extractor) is None:
        return "it does not expose its torch network"
    return None


def _embed_forward(net):
    """``net.embed`` as the ``forward`` of a module (what :func:`torch.onnx.export` traces)."""
    import torch

    class EmbedForward(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.embed(x)

    return EmbedForward(net).eval()


class OnnxEmbedder:
    """Runs an extractor's network as an ONNX graph on ONNX Runtime (CPU).

    The graph is exported (or taken from the cache) on the first batch, whose shape fixes the input
    size; the batch axis is dynamic. Thread-safe for the engine's single inference thread.
    """

    def __init__(self, extractor, *, threads: int | None = None, spinning: bool | None = None):
        import onnxruntime
        import torch

        # a weak reference: the session memo (_SESSIONS, keyed weakly by the extractor) holds this
        # object, and a strong reference back to its key would keep every extractor -- torch network and
        # ONNX Runtime session, 1-2 GB for a VGG -- alive until the process ends
        self._extractor = weakref.ref(extractor)
        self.threads = session_threads(threads)
        self.spinning = SPINNING if spinning is None else bool(spinning)
        self.item_shape: tuple[int, ...] | None = None
        self._session = None
        self._lock = threading.Lock()
        self.cache_path: Path | None = None
        self.description = (f"onnxruntime {onnxruntime.__version__} CPU, {self.threads} threads "
                            f"(graph exported from torch {torch.__version__}, opset {OPSET})")  # fmt: skip

    @property
    def extractor(self):
        """The extractor whose network this runs (needed to export the graph, i.e. until :meth:`load`)."""
        extractor = self._extractor()
        if extractor is None:
            raise ConfigError("the extractor of this ONNX embedder no longer exists")
        return extractor

    def load(self, item_shape: tuple[int, ...]) -> None:
        """Export the graph for inputs of ``item_shape`` (or take it from the cache) and open a session.

        A cached graph is taken only when it and its weights file match their record (:func:`graph_damage`).
        A new export is checked against the torch forward on this one session, then recorded. The extractor's
        torch network is released (``extractor.release_network()``, where it has one) before the session
        opens: from then on it is dead weight, and the two never hold the weights at the same time.
        """
        item_shape = tuple(item_shape)
        path = self._graph_path(item_shape)
        fresh = None if self._usable(path) else self._export_new(path, item_shape)
        try:
            if fresh is not None:
                record = _digests({path.name: fresh, _data_path(path).name: _data_path(path)})  # what is checked
                batch, expected = self._torch_reference(item_shape)  # while the torch network is alive
            release_network(self.extractor)
            session = self._open(fresh if fresh is not None else path)
            if fresh is not None:
                self._check(session, batch, expected)
                os.replace(fresh, path)  # the graph after its weights: a cached graph always has them
                _write_record(path, record)  # last: a recorded graph is one that was checked
        finally:
            if fresh is not None:
                with contextlib.suppress(FileNotFoundError):
                    fresh.unlink()
        self._session = session
        self.item_shape = item_shape

    def _usable(self, path: Path) -> bool:
        """Whether the cached graph ``path`` can be used; why not is logged (a damaged one as a warning)."""
        name = self.extractor.name
        if not (path.is_file() and _data_path(path).is_file()):
            return False
        if not _record_path(path).is_file():
            log.info("%s: the cached ONNX graph %s has no record of its digests (an earlier release cached it); "
                     "exporting it again", name, path)  # fmt: skip
            return False
        damage = graph_damage(path)
        if damage is not None:
            log.warning("%s: the cached ONNX graph %s is damaged (%s); exporting it again", name, path, damage)
            return False
        log.info("ONNX graph of %s from the cache: %s", name, path)
        return True

    def _open(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not self.spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self.load(batch.shape[1:])
        parts = [self._session.run(None, {"input": batch[i : i + SESSION_BATCH]})[0]
                 for i in range(0, len(batch), SESSION_BATCH)]  # fmt: skip
        return np.asarray(parts[0] if len(parts) == 1 else np.concatenate(parts), dtype=np.float32)

    def _graph_path(self, item_shape: tuple[int, ...]) -> Path:
        """Where the graph of ``item_shape`` is cached (its weights: the same name + ``.data``)."""
        import torch

        key = onnx_graph_key(self.extractor.config(), item_shape, torch_version=torch.__version__, opset=OPSET,
                             graph_format=GRAPH_FORMAT)  # fmt: skip
        self.cache_path = onnx_cache_dir() / f"{self.extractor.name}-{key}.onnx"
        return self.cache_path

    def _export_new(self, path: Path, item_shape: tuple[int, ...]) -> Path:
        """Export into the cache: the weights file in place, the graph in a temporary file (returned)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("exporting %s to ONNX (once; cached as %s)", self.extractor.name, path)
        _record_path(path).unlink(missing_ok=True)  # until the new record: a graph without one is not used
        _VERIFIED.pop(path, None)
        tmp = _temporary(path.parent, ".onnx.tmp")
        tmp_data = _temporary(path.parent, ".onnx.data.tmp")
        try:
            export_graph(embedding_module(self.extractor), item_shape, tmp, tmp_data, data_name=_data_path(path).name)
            os.replace(tmp_data, _data_path(path))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            tmp_data.unlink(missing_ok=True)
        return tmp

    def _torch_reference(self, item_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """A random batch and its torch features, to check a new export with."""
        batch = np.random.default_rng(0).standard_normal((2, *item_shape)).astype(np.float32)
        return batch, np.asarray(self.extractor.embed(batch), dtype=np.float32)

    def _check(self, session, batch: np.ndarray, expected: np.ndarray) -> None:
        """The exported graph must reproduce the torch features of the random batch."""
        (got,) = session.run(None, {"input": batch})
        scale = max(float(np.abs(expected).max()), 1e-6)
        deviation = float(np.abs(got - expected).max()) / scale
        if got.shape != expected.shape or not deviation <= EXPORT_RTOL:
            raise ConfigError(f"the ONNX export of {self.extractor.name!r} does not reproduce its torch features "
                              f"(relative deviation {deviation:.2g}); use runtime='torch'")  # fmt: skip
        log.info("ONNX export of %s checked: relative deviation from torch %.2g", self.extractor.name, deviation)


def release_runtimes(extractor) -> None:
    """Drop what runs ``extractor``'s network: its ONNX Runtime sessions and its torch network.

    For a caller that has finished extracting but keeps the extractor for its configuration (a model
    file, a report): a VGG's session holds 0.5 GB of weights plus its arena. A later run with the same
    extractor loads the graph from the cache again (or rebuilds the torch network).
    """
    _SESSIONS.pop(extractor, None)
    release_network(extractor)


def release_network(extractor) -> None:
    """Let ``extractor`` drop its torch network (``extractor.release_network()``, where it has one)."""
    release = getattr(extractor, "release_network", None)
    if callable(release):
        release()


def _torchscript_exporter() -> dict:
    """``dynamo=False`` where :func:`torch.onnx.export` takes it (torch >= 2.5; torch 2.4 has only that exporter)."""
    import inspect

    import torch

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_graph(module, item_shape: tuple[int, ...], path: Path, data_path: Path, *, data_name: str) -> None:
    """Export ``module`` for inputs ``(batch, *item_shape)``: the graph to ``path``, its weights to ``data_path``.

    The TorchScript exporter writes the graph only (``export_params=False``): with the weights it holds
    them about three times over (its ONNX protobuf, the serialised bytes and their Python copy), 1.6 GB
    more for VGG19. The parameters it leaves as graph inputs (named as in ``module.state_dict()``) become
    initializers whose data lie in ``data_path``, written one tensor at a time; the graph names the file
    ``data_name`` (relative to the graph's folder: the name the weights file is given in the cache).
    Constant folding is left to ONNX Runtime (``do_constant_folding=False``: the exporter's folding of
    batch norms into convolutions makes unnamed tensors), which folds the same batch norms on loading.
    The exporter's shape inference is run without the weights' values (see
    :func:`_shape_inference_without_weights`).
    """
    import io

    import onnx
    import torch

    example = torch.zeros((2, *item_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), _shape_inference_without_weights():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, input_names=["input"], output_names=["features"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, opset_version=OPSET,
                          export_params=False, do_constant_folding=False, **_torchscript_exporter())  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    del buffer
    tensors = module.state_dict()
    inputs = list(model.graph.input)
    unknown = [value.name for value in inputs[1:] if value.name not in tensors]
    if inputs[0].name != "input" or unknown:
        raise ConfigError(f"the ONNX export has inputs that are not weights of the network: {unknown[:3]}")
    del model.graph.input[1:]
    with open(data_path, "wb") as handle:
        for value in inputs[1:]:
            array = np.ascontiguousarray(tensors[value.name].detach().cpu().numpy())
            offset = handle.tell() + (-handle.tell()) % DATA_ALIGNMENT
            handle.seek(offset)
            handle.write(memoryview(array).cast("B"))
            tensor = onnx.TensorProto(name=value.name, dims=array.shape)
            tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, entry in (("location", data_name), ("offset", offset), ("length", array.nbytes)):
                tensor.external_data.add(key=key, value=str(entry))
            model.graph.initializer.append(tensor)
    onnx.save(model, str(path))


@contextlib.contextmanager
def _shape_inference_without_weights():
    """Run the TorchScript exporter's ONNX shape inference on the graph's types alone, not the weights.

    The exporter hands its shape inference the parameters' values, which it serialises into an ONNX
    protobuf (twice over for the largest tensor): 0.8 GB more for VGG16/19, whose first fully connected
    weight is 411 MB, and the peak of a cold-cache run. The parameters' shapes and types are already on
    the traced graph's inputs, which is all shape inference needs for the networks here: the exported
    graphs are byte-identical either way (densenet121, resnet50, vgg16, vgg19, efficientnet_lite0), and
    every new export is checked against the torch forward.

    The function is a process-wide attribute of ``torch._C``, so the patch is scoped: taken under
    :data:`_EXPORT_LOCK` (exports are serialised; the original is read under the lock too, so that a
    waiting export never takes another's patch for the original), and the original put back in
    ``finally``, after an export that failed as after one that succeeded. Where the function is
    missing, the exporter runs unchanged.
    """
    import torch

    with _EXPORT_LOCK:
        infer = getattr(torch._C, _SHAPE_INFERENCE, None)
        if infer is None:
            yield
            return
        setattr(torch._C, _SHAPE_INFERENCE, lambda graph, params_dict, opset: infer(graph, {}, opset))
        try:
            yield
        finally:
            setattr(torch._C, _SHAPE_INFERENCE, infer)


def _data_path(path: Path) -> Path:
    """The weights file of the cached graph ``path``."""
    return path.with_name(path.name + ".data")


def _record_path(path: Path) -> Path:
    """The record of the digests of the cached graph ``path`` and its weights file."""
    return path.with_name(path.name + ".digests.json")


def graph_damage(path: Path) -> str | None:
    """What differs between the cached graph ``path`` (and its weights file) and their record; None if nothing.

    Both files must have the size and SHA-256 that :func:`_write_record` recorded when the graph was
    exported and checked against torch. A graph that matched is not hashed again in this process while
    its files keep their inode, size and modification time (:data:`_VERIFIED`).
    """
    files = (path, _data_path(path), _record_path(path))
    try:
        signature = tuple(_signature(file) for file in files)
        record = json.loads(files[2].read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        return f"{Path(err.filename).name} is missing"
    except (OSError, ValueError) as err:
        return f"its record {files[2].name} is unreadable ({err})"
    if _VERIFIED.get(path) == signature:
        return None
    for file in files[:2]:
        entry = _recorded(record, file.name)
        if entry is None:
            return f"its record {files[2].name} does not hold the size and SHA-256 of {file.name}"
        if file.stat().st_size != entry["size"]:
            return f"{file.name} has {file.stat().st_size} bytes, {entry['size']} when it was exported"
        if file_digest(file) != entry["sha256"]:
            return f"the SHA-256 of {file.name} is not the one recorded when it was exported"
    _VERIFIED[path] = signature
    return None


def _recorded(record, name: str) -> dict | None:
    """The entry ``{"size": int, "sha256": str}`` of the file ``name`` in a record, None if it has none."""
    files = record.get("files") if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None
    entry = files.get(name) if isinstance(files, dict) else None
    valid = isinstance(entry, dict) and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
    return entry if valid else None


def _digests(files: dict[str, Path]) -> dict:
    """The record of ``files`` (name in the cache -> file now): each one's size and SHA-256."""
    entries = {name: {"size": file.stat().st_size, "sha256": file_digest(file)} for name, file in files.items()}
    return {"format": RECORD_FORMAT, "files": entries}


def _write_record(path: Path, record: dict) -> None:
    """Write the record of the cached graph ``path`` whole, and count its files as verified in this process."""
    write_atomic(_record_path(path), json.dumps(record, indent=1, sort_keys=True) + "\n")
    _VERIFIED[path] = tuple(_signature(file) for file in (path, _data_path(path), _record_path(path)))


def _signature(file: Path) -> tuple[int, int, int, int]:
    """What changes when ``file`` is rewritten: device, inode, size and modification time."""
    stat = file.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _temporary(folder: Path, suffix: str) -> Path:
    with tempfile.NamedTemporaryFile(dir=folder, suffix=suffix, delete=False) as handle:
        return Path(handle.name)
