"""Cache identity in one place: every cache key, checkpoint identity and model-file digest of specfusion.

Everything that names a result on disk is built here, through one strict canonical JSON
(:func:`canonical_json`): a value it cannot encode (an object, NaN, infinity) is an error that names
where it is, never ``str()`` of it, so two different configurations can never share a key by accident.

=============================  =======================================  ===========================
what                           built by                                 digest
=============================  =======================================  ===========================
feature store                  :func:`store_key`                        SHA-256, full
a recipe's feature-store file  :func:`store_file_key`                   SHA-256, 12 hex digits
a recipe's SVM step            :func:`svm_step_key`                     SHA-256, 12
a recipe's CRNN step           :func:`crnn_step_key`                    SHA-256, 12
a recipe's fine-tuning step    :func:`finetune_step_key`                SHA-256, 12
a recipe's fusion step         :func:`fusion_step_key`                  SHA-256, 12
the dataset in those keys      :func:`dataset_identity`                 SHA-256 of the item list
a CRNN model's parameters      :func:`crnn_model_identity`              (a plain dict)
a CRNN fold checkpoint         :func:`checkpoint_identity`              (a plain dict, compared)
an ONNX graph in the cache     :func:`onnx_graph_key`                   SHA-256, 24
the CRNN's spectrogram cache   :func:`spectrogram_cache_key`            SHA-256, 16
a model file's arrays/members  :func:`model_file_digest`                SHA-256, full
a feature store's items        :func:`rows_fingerprint`                 SHA-256, full
=============================  =======================================  ===========================

The truncations are part of the keys: changing one would orphan what is already on disk.
Part of the core: it imports nothing of specfusion but :mod:`specfusion.errors`; callers pass plain values.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from specfusion.errors import ConfigError


def canonical_json(obj: Any, *, compact: bool = True) -> str:
    """JSON with sorted keys: the form that is hashed.

    Parameters
    ----------
    obj : JSON-like
        Dicts, lists, tuples, strings, numbers, booleans and None only.
    compact : bool
        No whitespace (default); ``False`` keeps :func:`json.dumps`' ``", "`` and ``": "`` separators
        and escapes non-ASCII text, the form of the keys that were always built that way
        (:func:`spectrogram_cache_key`).

    Raises
    ------
    ConfigError
        ``obj`` holds something JSON cannot represent (an object, NaN, infinity); the message names where.
    """
    options = {"separators": (",", ":"), "ensure_ascii": False} if compact else {}
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False, **options)
    except (TypeError, ValueError) as err:
        where = _unencodable(obj)
        raise ConfigError(f"configuration is not JSON-serialisable{f' at {where}' if where else ''}: {err}") from None


def _unencodable(obj: Any, path: str = "") -> str | None:
    """The dotted path of the first value JSON cannot encode (None when the whole value is fine)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _unencodable(value, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _unencodable(value, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if obj is None or isinstance(obj, (str, bool, int)):
        return None
    if isinstance(obj, float) and np.isfinite(obj):
        return None
    return path or "the top level"


def plain(value: Any) -> Any:
    """``value`` as plain JSON types, the form a checkpoint or model file gives back.

    Tuples become lists, numpy scalars and arrays Python numbers and lists, and mapping keys strings as
    JSON writes them. Anything else raises.

    Raises
    ------
    ConfigError
        ``value`` holds an object JSON cannot represent (also NaN or infinity); the message names where.
    """
    return json.loads(canonical_json(_builtin(value)))


def _builtin(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_builtin(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def _cut(digest: str, length: int | None) -> str:
    return digest if length is None else digest[:length]


def text_digest(text: str | bytes, length: int | None = None) -> str:
    """SHA-256 (lower-case hex) of a text (UTF-8) or of bytes, optionally cut to its first ``length`` digits."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return _cut(hashlib.sha256(data).hexdigest(), length)


def config_hash(config: Any, length: int | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of a configuration, optionally cut to ``length`` digits.

    The full digest names a feature store's configuration; recipes use the first 12 digits for file
    names, the ONNX graph cache the first 24.
    """
    return text_digest(canonical_json(config), length)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file as lower-case hex (:func:`hashlib.file_digest`: streamed, never read whole)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def arrays_digest(*arrays: Any, digest_size: int = 16) -> str:
    """BLAKE2b (hex, ``digest_size`` bytes) of arrays' shapes, dtypes and contents, in order.

    Fast on large feature matrices; used where a digest only has to tell data apart within a run's caches.
    """
    digest = hashlib.blake2b(digest_size=digest_size)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.data)
    return digest.hexdigest()


def items_digest(uids: Sequence[str]) -> str:
    """SHA-256 of a set of item keys (order-free); checkpoints record their training items' digest."""
    return text_digest("\n".join(sorted(uids)))


def labelled_items_digest(uids: Sequence[str], labels: Sequence[str]) -> str:
    """SHA-256 of a set of (item key, label) pairs (order-free): changes when an item or a label does."""
    return text_digest("\n".join(sorted(f"{u}\t{lab}" for u, lab in zip(uids, labels))))


def rows_digest(array: np.ndarray, mask) -> str:
    """SHA-256 of the rows ``array[mask]`` (bytes, shape and dtype), hashed in blocks to bound memory."""
    rows = np.flatnonzero(mask)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape[1:]}{len(rows)}".encode())
    for start in range(0, len(rows), 512):
        digest.update(np.ascontiguousarray(array[rows[start : start + 512]]).tobytes())
    return digest.hexdigest()


def version() -> str:
    """The installed specfusion's version, read when a key is built (every run-cache key carries it)."""
    from specfusion import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------
# the keys
# ---------------------------------------------------------------------------------------------------
def store_key(config: dict) -> str:
    """A feature store's key: the full SHA-256 of its configuration (extractor config + short-clip policy)."""
    return config_hash(config)


def rows_fingerprint(rows: Iterable[list]) -> str:
    """A feature store's dataset fingerprint, ``config_hash(list(rows))`` streamed: a JSON list is ``[`` + its items' JSON joined by ``,`` + ``]``."""
    digest = hashlib.sha256(b"[")
    rows = iter(rows)
    first = True
    while block := list(itertools.islice(rows, 4096)):
        digest.update((("" if first else ",") + canonical_json(block)[1:-1]).encode("utf-8"))
        first = False
    digest.update(b"]")
    return digest.hexdigest()


def dataset_identity(items, *, kind: str, options: dict, short: str) -> dict[str, Any]:
    """What identifies a dataset in a recipe's keys: kind, loader options, short-clip policy and its items.

    ``items`` are the table's items (``uid``, ``label``, ``fold``, ``partition``); the digest changes
    when an item, a label, a fold or a partition does.
    """
    digest = text_digest("\n".join(f"{i.uid}\t{i.label}\t{i.fold}\t{i.partition}" for i in items))
    return {"kind": kind, "options": options, "items": digest, "short": short}


def store_file_key(feature_config: dict) -> str:
    """The 12 hex digits in a recipe's feature-store file name (extractor, its config, the dataset)."""
    return config_hash(feature_config, length=12)


def svm_step_key(feature_config: dict, svm_params: dict, protocol: dict) -> str:
    """A recipe's SVM step: features, effective LinearSVM parameters, fold-protocol options, version."""
    return config_hash({**feature_config, "svm": svm_params, "protocol": protocol, "specfusion_version": version()}, 12)


def crnn_step_key(model: dict, protocol: dict, dataset: dict, metric: str) -> str:
    """A recipe's CRNN step: the model's identity (:func:`crnn_model_identity`), protocol, dataset, metric, version."""
    return config_hash(
        {"crnn": model, "protocol": protocol, "dataset": dataset, "metric": metric, "specfusion_version": version()},
        12,
    )


def finetune_step_key(model: dict, protocol: dict, dataset: dict, metric: str) -> str:
    """A recipe's fine-tuning step: the model's identity (parameters, pretrained weights' SHA-256, code version),
    protocol, dataset, metric, version."""
    return config_hash(
        {"finetune": model, "protocol": protocol, "dataset": dataset, "metric": metric,
         "specfusion_version": version()},
        12,
    )  # fmt: skip


def fusion_step_key(members: Sequence[str], method: dict, input_digests: Sequence[str]) -> str:
    """A recipe's fusion step: member names, the method with every effective parameter, the members' files."""
    return config_hash(
        {"fusion": list(members), "method": method, "inputs": list(input_digests), "specfusion_version": version()},
        12,
    )


def crnn_model_identity(params: dict, network_version: int) -> dict:
    """A CRNN's identity: every parameter that changes the trained model (effective defaults) and the network version."""
    return plain({"network_version": network_version, "params": params})


def checkpoint_identity(
    model: dict,
    *,
    fold: int,
    clip_db: float,
    sr,
    spectrograms: np.ndarray,
    train,
    uids: np.ndarray,
    labels: np.ndarray,
    spec_params: dict | None = None,
) -> dict:
    """What a CRNN fold checkpoint is reused by: its model identity, fold, spectrogram settings and training data.

    The training spectrograms (content), items and labels enter as digests; ``spec_params`` (non-default
    spectrogram parameters) only when given, so that checkpoints of the paper's spectrogram keep their identity.
    """
    return plain({
        **model, "fold": fold, "clip_db": clip_db, "sr": sr,
        "spectrogram_shape": list(spectrograms.shape[1:]), "train_spectrograms_sha256": rows_digest(spectrograms, train),
        **({"spec_params": spec_params} if spec_params else {}),
        "train_items_sha256": items_digest(uids[train]),
        "train_labels_sha256": labelled_items_digest(uids[train], labels[train]),
    })  # fmt: skip


def onnx_graph_key(
    config: dict, item_shape: Sequence[int], *, torch_version: str, opset: int, graph_format: int
) -> str:
    """An exported ONNX graph in the cache: the extractor's config, input shape, torch, opset, graph format."""
    identity = {
        "config": config,
        "input": list(item_shape),
        "torch": torch_version,
        "opset": opset,
        "format": graph_format,
    }
    return config_hash(identity, length=24)


def spectrogram_cache_key(*, uids, paths, stamps, sr, params: dict, n_frames, short: str) -> str:
    """The CRNN's cached spectrograms: items, their files (path, size, mtime), rate, parameters, length, policy, version."""
    text = canonical_json(
        {"uids": list(uids), "paths": list(paths), "files": stamps, "sr": sr, "params": params, "n_frames": n_frames,
         "short": short, "specfusion_version": version()},
        compact=False,
    )  # fmt: skip
    return text_digest(text, 16)


def model_file_digest(data: bytes) -> str:
    """SHA-256 of a model file's bytes (its arrays, a nested member), recorded in the file and checked on load."""
    return text_digest(data)
