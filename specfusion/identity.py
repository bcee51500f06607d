"""The digests that name things on disk: configurations, texts, files and arrays.

Every cache key and identity check of specfusion goes through these helpers, so the same input always
hashes the same way. The truncation stays with each caller (the feature store keeps the full SHA-256,
recipe caches 12 hex digits, the ONNX graph cache 24): changing one would orphan what is already on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from specfusion.errors import ConfigError

#: Bytes read at a time when hashing a file.
FILE_CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed.

    Raises
    ------
    ConfigError
        ``obj`` holds something JSON cannot represent (an object, NaN, infinity).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"configuration is not JSON-serialisable: {err}") from None


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
    """SHA-256 of a file as lower-case hex, read in :data:`FILE_CHUNK`-byte chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(FILE_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
