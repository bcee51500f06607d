"""Feature store: one HDF5 file per (dataset, extractor configuration), resumable and crash-safe.

Layout of ``STORE.h5`` (see ``docs/store.md``)::

    attrs     format, format_version, package_version, created, config (JSON), config_hash,
              dataset (JSON: name, root, metric, classes, channels, n_items, fingerprint),
              dim, chunk_size, runs (JSON list, one entry per extraction run)
    items/    uid, name, label, fold, partition, channel (-1 = none), group, path   -- one row per item,
              in the dataset table's order, written when the store is created
    features  (n_items, dim) float32    -- row i belongs to items/uid[i]
    status    (n_items,) int8           -- 0 pending, 1 done, 2 failed
    failure   (n_items,) str            -- why an item failed ("" otherwise)

Crash safety. The HDF5 file is only ever written whole, to ``STORE.h5.tmp``, and moved into place with
an atomic :func:`os.replace`; a kill can therefore never leave a half-written HDF5 file. While a run is
going on, finished batches go to an append-only journal ``STORE.h5.journal`` beside it: one record per
batch (magic, length, CRC-32, then the batch's row numbers, failures and features), written with a
single ``write`` before the next batch starts (optionally ``fsync``-ed). A record cut short by a
kill fails its length or CRC check and is dropped, so a batch is either entirely in the store or not at
all. At the end of a run (or of the next one) the journal is folded into a fresh HDF5 file, which
replaces the old one before the journal is deleted; rows are keyed by their position in the dataset
table, so a journal replayed twice changes nothing. :meth:`FeatureStore.open` reads the HDF5 file plus
any journal, so an interrupted store is readable as it stands.

Batch boundaries are fixed by the table (``chunk_size`` consecutive rows, recorded at creation), so a
resumed run forms exactly the batches the uninterrupted run would have formed and yields bit-identical
features even where a network's result depends on the batch it is computed in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from specfusion import __version__
from specfusion.errors import ConfigError, StoreError
from specfusion.files import is_no_space, write_error_text
from specfusion.identity import canonical_json, rows_fingerprint, store_key

log = logging.getLogger(__name__)

FORMAT = "specfusion-feature-store"
FORMAT_VERSION = 1

#: Values of the ``status`` dataset.
PENDING, DONE, FAILED = 0, 1, 2

#: Default number of consecutive table rows per batch (the unit of a commit).
DEFAULT_CHUNK_SIZE = 16

_MAGIC = b"SFJ1"
_RECORD_HEAD = struct.Struct("<4sQI")  # magic, payload length, CRC-32 of the payload
_JSON_LEN = struct.Struct("<I")
_STR = None  # h5py.string_dtype(), created lazily so importing this module does not import h5py


def _string_dtype():
    global _STR
    if _STR is None:
        import h5py

        _STR = h5py.string_dtype("utf-8")
    return _STR


# ----------------------------------------------------------------------------------------- helpers


def journal_path(path) -> Path:
    """The journal file of the store at ``path`` (``STORE.h5.journal``)."""
    path = Path(path)
    return path.with_name(path.name + ".journal")


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@dataclasses.dataclass(frozen=True)
class ItemRows:
    """The per-item columns of a store, in the dataset table's order."""

    uids: np.ndarray
    names: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    partitions: np.ndarray
    channels: np.ndarray
    groups: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.uids)

    @classmethod
    def from_table(cls, table) -> ItemRows:
        """Columns of a :class:`~specfusion.data.datasets.DatasetTable` (or any iterable of ``Item``)."""
        return _block_rows(list(table), _table_root(table))

    def fingerprint(self) -> str:
        """SHA-256 of what identifies the items: uid, label, fold, partition, channel of every row."""
        return rows_fingerprint(_fingerprint_rows(self))


#: Table rows handled at a time when a store reads its items from a table or writes them to a file.
ITEM_BLOCK = 1 << 13

#: The string columns of ``items/`` (ItemRows attribute, HDF5 name), in the order they are written.
_STRING_COLUMNS = (("uids", "uid"), ("names", "name"), ("labels", "label"), ("partitions", "partition"),
                   ("groups", "group"), ("paths", "path"))  # fmt: skip
_INT_COLUMNS = (("folds", "fold"), ("channels", "channel"))


def _fingerprint_rows(rows: ItemRows) -> Iterator[list]:
    """The rows :meth:`ItemRows.fingerprint` hashes."""
    for u, lab, f, p, c in zip(rows.uids, rows.labels, rows.folds, rows.partitions, rows.channels):
        yield _fingerprint_row(u, lab, f, p, c)


def _fingerprint_row(uid, label, fold, partition, channel) -> list:
    """What identifies one item in a dataset fingerprint (no label: ``""``; no channel: -1)."""
    return [str(uid), str(label or ""), int(fold), str(partition), -1 if channel is None else int(channel)]


def _table_blocks(table) -> Iterator[list]:
    """The table's items in lists of at most :data:`ITEM_BLOCK`."""
    items = iter(table.items if hasattr(table, "items") else table)
    while block := list(itertools.islice(items, ITEM_BLOCK)):
        yield block


def _block_rows(block: list, root: Path) -> ItemRows:
    """The columns of one block of table items (as :meth:`ItemRows.from_table` makes them)."""

    root_text = root.as_posix()
    prefix = root_text.rstrip("/") + "/"

    def rel(p) -> str:  # Path.relative_to, with a fast path for the usual case (10x faster)
        text = p.as_posix() if isinstance(p, PurePath) else Path(p).as_posix()
        if root_text not in ("", ".") and text.startswith(prefix):
            return text[len(prefix) :]
        p = Path(p)
        with contextlib.suppress(ValueError):
            return p.relative_to(root).as_posix()
        return p.as_posix()

    return ItemRows(
        uids=_obj([it.uid for it in block]),
        names=_obj([it.name for it in block]),
        labels=_obj([it.label or "" for it in block]),
        folds=np.array([it.fold for it in block], dtype=np.int64),
        partitions=_obj([it.partition for it in block]),
        channels=np.array([-1 if it.channel is None else it.channel for it in block], dtype=np.int64),
        groups=_obj([it.group or "" for it in block]),
        paths=_obj([rel(it.path) for it in block]),
    )


def _table_root(table) -> Path:
    return Path(getattr(table, "root", "") or "")


@dataclasses.dataclass(frozen=True)
class _TableSummary:
    """What a writer keeps of the dataset table: compact uids, the fingerprint, the item count."""

    uids: UidColumn
    fingerprint: str
    string_bytes: int  # characters of the item columns' strings (for the free-space check)


def _summarise_table(table) -> _TableSummary:
    """The table's uids (compact), fingerprint and string size, a block of items at a time.

    A first pass finds the uids' width, so the second encodes them straight into their one array.
    """
    n, width = 0, 1
    for block in _table_blocks(table):
        n += len(block)
        width = max(width, *(len(str(it.uid).encode("utf-8")) for it in block))
    uids, size = np.zeros(n, dtype=f"S{width}"), 0

    def fingerprint_rows() -> Iterator[list]:  # consumed as the blocks are read: one block in memory
        nonlocal size
        start = 0
        for block in _table_blocks(table):
            rows = [_fingerprint_row(it.uid, it.label, it.fold, it.partition, it.channel) for it in block]
            stop = start + len(rows)
            uids[start:stop] = [row[0].encode("utf-8") for row in rows]
            # an upper bound: the absolute path is at least as long as the stored relative one
            size += sum(len(row[0]) + len(row[1]) + len(row[3]) for row in rows)
            size += sum(len(str(it.name)) + len(str(it.group or "")) + len(str(it.path)) for it in block)
            start = stop
            yield from rows

    fingerprint = rows_fingerprint(fingerprint_rows())
    return _TableSummary(UidColumn(uids, copy=False), fingerprint, size)


class UidColumn:
    """The uids of a store's rows, compact: sorted UTF-8 bytes of one fixed width (numpy ``S``) and the permutation.

    A lookup is a binary search (:func:`numpy.searchsorted`), so the column costs the width of the
    longest uid plus 8 bytes per item (two 32-bit permutations) instead of a Python string and a dict entry. Indexing with a row
    gives its uid as ``str``; with an array of rows, an object array of ``str``.
    """

    def __init__(self, encoded: np.ndarray, *, copy: bool = True):
        encoded = np.array(encoded, dtype=np.bytes_, copy=copy)  # copy=False: sorted in place
        index = np.int32 if len(encoded) < 2**31 else np.int64
        order = np.argsort(encoded, kind="stable").astype(index)
        encoded.sort(kind="stable")  # = encoded[order], without a second copy
        self._sorted = encoded  # no ``sorter=`` in the search: numpy checks it in O(n) on every call
        self._order = order  # sorted position -> row
        self._position = np.empty(len(order), dtype=index)  # row -> sorted position
        self._position[order] = np.arange(len(order), dtype=index)

    def __len__(self) -> int:
        return len(self._sorted)

    def __getitem__(self, index):
        value = self._sorted[self._position[index]]
        if isinstance(value, bytes):
            return value.decode("utf-8")
        return _obj(v.decode("utf-8") for v in value)

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), ITEM_BLOCK):
            for value in self._sorted[self._position[start : start + ITEM_BLOCK]]:
                yield value.decode("utf-8")

    @property
    def nbytes(self) -> int:
        """Memory held by the column."""
        return self._sorted.nbytes + self._order.nbytes + self._position.nbytes

    def rows(self, uids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``uids``; KeyError (with the uid) for one that is not in the column."""
        keys = [str(u).encode("utf-8") for u in uids]
        if not keys:
            return np.zeros(0, dtype=np.int64)
        width = self._sorted.dtype.itemsize
        for key, uid in zip(keys, uids):
            if len(key) > width or key.endswith(b"\0"):  # longer than any stored uid; NUL: numpy strips it
                raise KeyError(str(uid))
        query = np.array(keys, dtype=self._sorted.dtype)  # the stored width: the search copies nothing
        where = np.minimum(np.searchsorted(self._sorted, query), len(self._sorted) - 1)
        missing = np.flatnonzero(self._sorted[where] != query)
        if len(missing):
            raise KeyError(str(uids[int(missing[0])]))
        return self._order[where].astype(np.int64)


def _obj(values: Iterable) -> np.ndarray:
    out = np.empty(len(values := list(values)), dtype=object)
    out[:] = [str(v) for v in values]
    return out


def dataset_info_from_table(table) -> dict:
    """What a store records about its dataset: name, root, metric, classes, channel policy."""
    root = Path(getattr(table, "root", "") or "")
    return {
        "name": str(getattr(table, "name", "")),
        "root": str(root),
        "root_resolved": str(root.resolve()) if str(root) else "",
        "metric": str(getattr(table, "metric", "accuracy")),
        "classes": [str(c) for c in getattr(table, "classes", [])],
        "channels": str(getattr(table, "channels", "mean")),
    }


@dataclasses.dataclass
class StoreArrays:
    """Finished items of a store, in the dataset table's order, ready for scikit-learn.

    Attributes
    ----------
    X : ndarray, shape (n, dim), float32
    labels : ndarray of str, shape (n,)
        ``""`` for unlabelled items.
    folds : ndarray of int, shape (n,)
        Development fold 1..K; 0 for the test partition.
    partitions : ndarray of str, shape (n,)
        ``"dev"`` or ``"test"``.
    names : ndarray of str, shape (n,)
        Segment (file) names; the channel items of one segment share it.
    channels : ndarray of int, shape (n,)
        Channel of a channel item, -1 where the item is a whole (down-mixed) file.
    uids : ndarray of str, shape (n,)
        Unique item keys (name, plus ``@ch<c>`` for channel items).
    groups : ndarray of str, shape (n,)
    classes : list of str
    config : dict
        The extractor configuration the features were made with.
    dataset : str
        Dataset name (``"esc50"`` ...).
    metric : str
        The dataset's evaluation measure.
    n_pending : int
        Items of the dataset still without features (interrupted run); failed items are not counted.
    n_failed : int
        Items whose audio could not be used.
    paths : ndarray of str, shape (n,)
        Audio file of each item, relative to the dataset root (as recorded when the store was created).
    """

    X: np.ndarray
    labels: np.ndarray
    folds: np.ndarray
    partitions: np.ndarray
    names: np.ndarray
    channels: np.ndarray
    uids: np.ndarray
    groups: np.ndarray
    classes: list[str]
    config: dict
    dataset: str
    metric: str
    n_pending: int = 0
    n_failed: int = 0
    paths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.X)


# ----------------------------------------------------------------------------------------- journal


def _encode_record(header: dict, features: np.ndarray | None = None) -> bytes:
    head = canonical_json(header).encode("utf-8")
    body = b"" if features is None else np.ascontiguousarray(features, dtype="<f4").tobytes()
    payload = _JSON_LEN.pack(len(head)) + head + body
    return _RECORD_HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _iter_journal(path: Path, dim: int, *, with_features: bool) -> Iterator[tuple[dict, np.ndarray | None, int]]:
    """``(header, features, end offset)`` of each valid journal record, streamed (one record in memory).

    Stops at the first record that is incomplete or fails its CRC (a write cut short by a kill).
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        size = os.fstat(handle.fileno()).st_size
        while True:
            head = handle.read(_RECORD_HEAD.size)
            if len(head) < _RECORD_HEAD.size:
                return
            magic, length, crc = _RECORD_HEAD.unpack(head)
            if magic != _MAGIC or length > size:
                return
            payload = handle.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            (json_len,) = _JSON_LEN.unpack_from(payload)
            header = json.loads(payload[_JSON_LEN.size : _JSON_LEN.size + json_len].decode("utf-8"))
            features = None
            if with_features and header.get("rows"):
                body = payload[_JSON_LEN.size + json_len :]
                features = np.frombuffer(body, dtype="<f4").reshape(len(header["rows"]), dim).astype(np.float32)
            yield header, features, handle.tell()


def _read_journal(path: Path, dim: int) -> tuple[list[dict], int, int]:
    """Headers of the valid journal records, the byte offset where they end, and the file size."""
    headers, valid_end = [], 0
    for header, _, end in _iter_journal(path, dim, with_features=False):
        headers.append(header)
        valid_end = end
    size = path.stat().st_size if path.exists() else 0
    return headers, valid_end, size


def _apply_record(header: dict, status: np.ndarray, reasons: dict[int, str]) -> None:
    for row in header.get("rows", ()):
        status[row] = DONE
        reasons.pop(row, None)
    for row, reason in header.get("failures", {}).items():
        status[int(row)] = FAILED
        reasons[int(row)] = reason


# ----------------------------------------------------------------------------------------- store


class FeatureStore:
    """A resumable feature store; create with :meth:`create_or_resume`, read with :meth:`open`.

    Use as a context manager (or call :meth:`close`) so a writable store folds its journal into the
    HDF5 file at the end.
    """

    def __init__(self, path: Path, *, attrs: dict, uids: UidColumn, status: np.ndarray, reasons: dict[int, str],
                 writable: bool, journal_fd: int | None = None, runs_pending: list | None = None,
                 fsync: bool = False):  # fmt: skip
        self.path = Path(path)
        self._attrs = attrs
        self.uids = uids
        self._items: ItemRows | None = None  # the item columns, read from the file on demand
        self._status = status
        self._reasons = reasons
        self.writable = writable
        self._fd = journal_fd
        self._fsync = fsync
        self._runs_pending = runs_pending or []
        self._dirty = False  # journal holds batches or runs not yet in the HDF5 file

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def create_or_resume(
        cls,
        path,
        *,
        config: dict,
        dim: int,
        table,
        chunk_size: int | None = None,
        fsync: bool = False,
    ) -> FeatureStore:
        """Open ``path`` for writing: create it, or resume it if it holds the same configuration.

        Parameters
        ----------
        path : path-like
            The ``.h5`` file.
        config : dict
            The extractor's :meth:`~specfusion.features.extractors.Extractor.config` (JSON-serialisable).
        dim : int
            Feature length.
        table : DatasetTable
            The items, in the order rows are kept; dataset name, root, metric, classes and channel
            policy are recorded.
        chunk_size : int, optional
            Rows per batch of a new store (default :data:`DEFAULT_CHUNK_SIZE`); an existing store keeps
            the one it was created with, so resumed batches equal those of an uninterrupted run.
        fsync : bool
            ``fsync`` the journal after every batch, so a committed batch survives a power loss too
            (a killed process loses nothing without it; the HDF5 file itself is always ``fsync``-ed).

        Raises
        ------
        StoreError
            ``path`` holds features of another configuration or dataset, is not a feature store, or is
            being written by another process. Nothing is changed then.
        """
        path = Path(path)
        dim = int(dim)
        if dim < 1:
            raise ConfigError(f"feature dimension must be positive, got {dim}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ConfigError(f"batch size must be positive, got {chunk_size}")
        summary = _summarise_table(table)
        n_items = len(summary.uids)
        if n_items == 0:
            raise StoreError(f"{path}: the dataset has no items to extract")
        digest = store_key(config)
        dataset = {**dataset_info_from_table(table), "n_items": n_items, "fingerprint": summary.fingerprint}
        jpath = journal_path(path)
        journal_existed = jpath.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_journal(jpath, path)  # the writer's lock, held from here on
        try:
            _remove(_tmp_path(path))  # an interrupted consolidation; the store itself is intact (atomic replace)
            if not path.exists():
                if os.fstat(fd).st_size:
                    log.info("emptying %s: its store %s was deleted", jpath, path)
                    os.ftruncate(fd, 0)
                attrs = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "package_version": __version__,
                    "created": _now(),
                    "config": config,
                    "config_hash": digest,
                    "dataset": dataset,
                    "dim": dim,
                    "chunk_size": int(chunk_size or DEFAULT_CHUNK_SIZE),
                    "runs": [],
                }
                _write_h5(path, attrs, _TableItems(table, n_items, summary.string_bytes), np.zeros(n_items, np.int8), {},
                          feature_blocks=())  # fmt: skip
                log.info("created feature store %s (%d items, %d-d)", path, n_items, dim)
            attrs, _, status, reasons = _read_h5(path, with_uids=False)
            _check_same(path, attrs, config, digest, dim, dataset, table)
            if chunk_size is not None and int(chunk_size) != attrs["chunk_size"]:
                log.warning("%s was created with batch size %d; keeping it so resumed batches equal an "
                            "uninterrupted run's (requested %d)", path, attrs["chunk_size"], chunk_size)  # fmt: skip
            records, valid_end, size = _read_journal(jpath, dim)
            if valid_end < size:
                log.warning("%s: dropping %d bytes of a batch cut short by an interrupted run", jpath, size - valid_end)
                os.ftruncate(fd, valid_end)
            runs = []
            for header in records:
                _check_journal_header(header, digest, jpath, path)
                _apply_record(header, status, reasons)
                if "run" in header:
                    runs.append(header["run"])
        except BaseException:
            os.close(fd)
            if not journal_existed:
                _remove(jpath)
            raise
        # the fingerprints are equal, so the table's uids are the stored ones
        store = cls(path, attrs=attrs, uids=summary.uids, status=status, reasons=reasons, writable=True,
                    journal_fd=fd, runs_pending=runs, fsync=fsync)  # fmt: skip
        store._dirty = any("open" not in header for header in records)
        if not records:
            store._write_open_record()
        return store

    @classmethod
    def open(cls, path) -> FeatureStore:
        """Open a store read-only (including the batches of an interrupted run still in its journal).

        Raises
        ------
        StoreError
            The file is missing or not a feature store.
        """
        path = Path(path)
        attrs, uids, status, reasons = _read_h5(path, with_uids=True)
        records, _, _ = _read_journal(journal_path(path), attrs["dim"])
        runs = []
        for header in records:
            _check_journal_header(header, attrs["config_hash"], journal_path(path), path)
            _apply_record(header, status, reasons)
            if "run" in header:
                runs.append(header["run"])
        return cls(path, attrs=attrs, uids=uids, status=status, reasons=reasons, writable=False, runs_pending=runs)

    # ---- properties -----------------------------------------------------------------------

    @property
    def config(self) -> dict:
        """The extractor configuration."""
        return self._attrs["config"]

    @property
    def config_hash(self) -> str:
        return self._attrs["config_hash"]

    @property
    def dataset(self) -> dict:
        """Dataset name, root, metric, classes, channel policy, item count and fingerprint."""
        return self._attrs["dataset"]

    @property
    def dim(self) -> int:
        return int(self._attrs["dim"])

    @property
    def chunk_size(self) -> int:
        """Rows per batch (fixed when the store was created)."""
        return int(self._attrs["chunk_size"])

    @property
    def runs(self) -> list[dict]:
        """One entry per extraction run (time, runtime, device, versions, counts)."""
        return list(self._attrs.get("runs", [])) + list(self._runs_pending)

    @property
    def items(self) -> ItemRows:
        """The per-item columns in table order, read from the HDF5 file.

        A read-only store keeps them once read; a writable one reads them again on every access, so
        that while writing it holds only :attr:`uids` and the status of each row.
        """
        if self._items is not None:
            return self._items
        items = _read_items(self.path)
        if not self.writable:
            self._items = items
        return items

    @property
    def n_items(self) -> int:
        return len(self.uids)

    @property
    def n_done(self) -> int:
        return int((self._status == DONE).sum())

    @property
    def n_failed(self) -> int:
        return int((self._status == FAILED).sum())

    @property
    def n_pending(self) -> int:
        return int((self._status == PENDING).sum())

    @property
    def complete(self) -> bool:
        """Every item is either done or failed."""
        return self.n_pending == 0

    def status(self) -> np.ndarray:
        """Per-row status (a copy): :data:`PENDING`, :data:`DONE` or :data:`FAILED`."""
        return self._status.copy()

    def done_uids(self) -> set[str]:
        """Uids of the items that have features."""
        return set(self.uids[np.flatnonzero(self._status == DONE)])

    def failures(self) -> list[tuple[str, str]]:
        """``(uid, reason)`` of every failed item, in table order."""
        return [(self.uids[row], self._reasons.get(int(row), "")) for row in np.flatnonzero(self._status == FAILED)]

    def failed_items(self) -> list[tuple[str, str, str]]:
        """``(uid, reason, path)`` of every failed item, in table order (path relative to the dataset root)."""
        rows = np.flatnonzero(self._status == FAILED)
        paths = self.items.paths[rows] if self._items is not None else _read_items(self.path, rows).paths
        return [(self.uids[row], self._reasons.get(int(row), ""), str(p)) for row, p in zip(rows, paths)]

    def rows_of(self, uids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``uids``; StoreError for a uid that is not in the store."""
        try:
            return self.uids.rows(uids)
        except KeyError as err:
            raise StoreError(f"{self.path}: item {err.args[0]!r} is not in this store's dataset") from None

    # ---- writing --------------------------------------------------------------------------

    def append(self, uids: Sequence[str], features: np.ndarray, *, failures: dict[str, str] | None = None) -> None:
        """Commit one batch: features of ``uids`` and, optionally, failed items with their reasons.

        The batch is written as one journal record and flushed before this returns: after a kill it is
        either entirely in the store or not at all.

        Raises
        ------
        StoreError
            Read-only store, unknown uid, an item that already has features, or a wrong shape.
        """
        self._require_writable()
        features = np.asarray(features, dtype=np.float32)
        rows = self.rows_of(uids)
        if features.shape != (len(rows), self.dim):
            raise StoreError(f"{self.path}: expected features of shape ({len(rows)}, {self.dim}), got {features.shape}")
        if len(np.unique(rows)) != len(rows):
            raise StoreError(f"{self.path}: the same item appears twice in one batch")
        already = rows[self._status[rows] == DONE]
        if len(already):
            raise StoreError(f"{self.path}: item {self.uids[already[0]]!r} already has features")
        fail_rows = {}
        for uid, reason in (failures or {}).items():
            row = int(self.rows_of([uid])[0])
            if self._status[row] == DONE or row in set(rows.tolist()):
                raise StoreError(f"{self.path}: item {uid!r} cannot both have features and fail")
            fail_rows[str(row)] = str(reason)
        if not len(rows) and not fail_rows:
            return
        header = {"rows": rows.tolist(), "failures": fail_rows}
        self._write(_encode_record(header, features if len(rows) else None))
        self._dirty = True
        _apply_record(header, self._status, self._reasons)

    def record_failure(self, uid: str, reason: str) -> None:
        """Record that item ``uid`` failed (e.g. unreadable audio), committed at once."""
        self.append([], np.zeros((0, self.dim), np.float32), failures={uid: reason})

    def note_run(self, info: dict) -> None:
        """Add an entry to the store's run log (committed like a batch)."""
        self._require_writable()
        entry = {"time": _now(), **info}
        self._write(_encode_record({"run": entry}))
        self._dirty = True
        self._runs_pending.append(entry)

    def consolidate(self) -> None:
        """Fold the journal into a new HDF5 file, replace the old one atomically, delete the journal.

        Called by :meth:`close`; a no-op when nothing was committed since the last consolidation.
        """
        self._require_writable()
        self._consolidate(reopen=True)

    def _consolidate(self, *, reopen: bool) -> None:
        jpath = journal_path(self.path)
        if self._dirty:
            attrs = dict(self._attrs)
            attrs["runs"] = self.runs
            try:
                _write_h5(self.path, attrs, _FileItems(self.path, self.n_items), self._status, self._reasons,
                          feature_blocks=_feature_blocks(self.path, jpath, self.dim, self.n_items))  # fmt: skip
            except StoreError:
                os.close(self._fd)  # the journal stays as it is: the store is readable and resumable
                self._fd = None
                raise
            self._attrs = attrs
            self._runs_pending = []
            self._dirty = False
        # after the replace: a kill in between only replays rows the HDF5 file already holds
        with contextlib.suppress(FileNotFoundError):
            jpath.unlink()
        _fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = None
        if reopen:  # a fresh journal, so further appends (and the lock) go on working
            self._fd = _open_journal(jpath, self.path)
            self._write_open_record()

    def close(self, *, consolidate: bool = True) -> None:
        """Finish writing: fold the journal into the HDF5 file (unless ``consolidate=False``, which
        leaves it for the next run; the store stays readable either way)."""
        if self._fd is None:
            return
        if consolidate:
            self._consolidate(reopen=False)
        else:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(consolidate=exc_type is None)

    def _require_writable(self) -> None:
        if not self.writable or self._fd is None:
            raise StoreError(f"{self.path} is open read-only (use FeatureStore.create_or_resume to write)")

    def _write(self, record: bytes) -> None:
        """Append one record; on a write error (a full disk) cut the journal back to where it was.

        The journal then holds exactly the batches committed before, so a re-run after freeing space
        resumes from there; the error is a :class:`StoreError` with one clear line.
        """
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(record)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as err:
            with contextlib.suppress(OSError):  # shrinking needs no space; the CRC check drops a cut record anyway
                os.ftruncate(self._fd, start)
            raise StoreError(f"{self.path}: {write_error_text(err)} while writing its journal "
                             f"{journal_path(self.path)}; every batch committed before is kept: "
                             f"{_RERUN_ADVICE}") from None  # fmt: skip

    def _write_open_record(self) -> None:
        self._write(
            _encode_record({"open": {"config_hash": self.config_hash, "fingerprint": self.dataset["fingerprint"]}})
        )

    # ---- reading --------------------------------------------------------------------------

    def features(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Features of the given rows (default: every row; rows without features are zero)."""
        X = np.zeros((self.n_items, self.dim), np.float32)
        for start, block in _feature_blocks(self.path, journal_path(self.path), self.dim, self.n_items):
            if isinstance(start, np.ndarray):  # a journal batch: its row numbers
                X[start] = block
            else:
                X[start : start + len(block)] = block
        return X if rows is None else X[rows]

    def arrays(self) -> StoreArrays:
        """The finished items in the dataset table's order (independent of the order they were computed in).

        Failed and pending items are left out; a warning is logged when items are still pending.
        """
        done = np.flatnonzero(self._status == DONE)
        if self.n_pending:
            log.warning("%s is incomplete: %d of %d items have no features yet (re-run the extraction to finish it)",
                        self.path, self.n_pending, self.n_items)  # fmt: skip
        it = self.items
        return StoreArrays(
            X=self.features(done),
            labels=it.labels[done],
            folds=it.folds[done],
            partitions=it.partitions[done],
            names=it.names[done],
            channels=it.channels[done],
            uids=it.uids[done],
            groups=it.groups[done],
            classes=list(self.dataset.get("classes", [])),
            config=self.config,
            dataset=self.dataset.get("name", ""),
            metric=self.dataset.get("metric", "accuracy"),
            n_pending=self.n_pending,
            n_failed=self.n_failed,
            paths=it.paths[done],
        )

    def summary(self) -> str:
        """A few lines: dataset, extractor, counts, failures."""
        lines = [
            f"store: {self.path}",
            f"dataset: {self.dataset.get('name')} ({self.dataset.get('root')}), {self.n_items} items",
            f"extractor: {self.config.get('extractor', self.config.get('name', '?'))}, {self.dim}-d, config {self.config_hash[:12]}",
            f"done: {self.n_done}  failed: {self.n_failed}  pending: {self.n_pending}",
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        mode = "w" if self.writable else "r"
        return f"FeatureStore({str(self.path)!r}, mode={mode!r}, done={self.n_done}/{self.n_items})"


# ----------------------------------------------------------------------------------------- HDF5 I/O


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


_JSON_ATTRS = ("config", "dataset", "runs")


def _write_h5(path: Path, attrs: dict, items: _ItemSource, status: np.ndarray, reasons: dict[int, str],
              *, feature_blocks: Iterable[tuple]) -> None:  # fmt: skip
    """Write the whole store to ``path.tmp``, fsync it, and atomically replace ``path``.

    A failed write (a full disk) removes ``path.tmp`` and raises :class:`StoreError`; ``path`` is unchanged.
    """
    tmp = _tmp_path(path)
    _check_free_space(path, _size_bound(attrs, items, status, reasons))
    failure = None
    try:
        _write_h5_file(tmp, attrs, items, status, reasons, feature_blocks=feature_blocks)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except (OSError, RuntimeError) as err:  # h5py reports a full disk as OSError or RuntimeError
        if isinstance(err, RuntimeError) and not is_no_space(err):
            raise
        failure = write_error_text(err)
        # After a failed write HDF5 cannot close the file: freeing h5py's objects crashes the process
        # (segfault). They are kept (in this exception) until the process ends; the free-space check
        # above makes this a rare race with another writer.
        _FAILED_WRITES.append(err)
    if failure is not None:
        _remove(tmp)
        raise StoreError(f"{path}: {failure} while writing {tmp}; {path} itself is unchanged and "
                         f"its journal is kept: {_RERUN_ADVICE}")  # fmt: skip
    os.replace(tmp, path)
    _fsync_dir(path.parent)


#: Errors of failed HDF5 writes, kept so h5py never frees (and crashes on) their broken file objects.
_FAILED_WRITES: list = []

#: Free space kept in reserve beyond the estimated size of a new store file.
_SPACE_MARGIN = 1 << 20


def _size_bound(attrs: dict, items: _ItemSource, status: np.ndarray, reasons: dict[int, str]) -> int:
    """An upper bound of the size in bytes of the HDF5 file :func:`_write_h5_file` writes."""
    n = items.n
    features = int(np.count_nonzero(status == DONE)) * int(attrs["dim"]) * 4
    strings = items.size_bound()
    strings += sum(len(r.encode()) + 32 for r in reasons.values()) + 32 * n
    meta = len(json.dumps(attrs, default=str).encode()) + 64 * n
    return int(1.1 * (features + strings + meta)) + _SPACE_MARGIN


def _check_free_space(path: Path, needed: int) -> None:
    """StoreError before writing when the disk holding ``path`` has less than ``needed`` bytes free.

    HDF5 cannot recover from a write that fails half-way (its file objects crash the process when
    freed), so a store file is only written when it fits.
    """
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < needed:
        raise StoreError(f"{path}: no space left on device to write the store ({needed / 2**20:.1f} MiB needed, "
                         f"{free / 2**20:.1f} MiB free); {path} and its journal are unchanged: {_RERUN_ADVICE}")  # fmt: skip


_RERUN_ADVICE = "free some space (or fix the permissions) and run the same command again to finish"


class _TableItems:
    """The item columns of a new store: written from the dataset table, a block of rows at a time."""

    def __init__(self, table, n: int, string_bytes: int):
        self.table, self.n, self._string_bytes = table, n, string_bytes

    def size_bound(self) -> int:
        return 4 * self._string_bytes + 6 * 32 * self.n + 64 * self.n  # UTF-8: at most 4 bytes per character

    def write(self, h5) -> None:
        string = _string_dtype()
        group = h5.create_group("items")
        columns = {name: group.create_dataset(name, shape=(self.n,), dtype=string) for _, name in _STRING_COLUMNS}
        columns.update({name: group.create_dataset(name, shape=(self.n,), dtype=np.int64) for _, name in _INT_COLUMNS})
        start = 0
        for block in _table_blocks(self.table):
            rows = _block_rows(block, _table_root(self.table))
            stop = start + len(rows)
            for attr, name in _STRING_COLUMNS + _INT_COLUMNS:
                columns[name][start:stop] = getattr(rows, attr)
            start = stop


class _FileItems:
    """The item columns of an existing store: copied from its HDF5 file, unchanged."""

    def __init__(self, path: Path, n: int):
        self.path, self.n = path, n

    def size_bound(self) -> int:
        import h5py

        with h5py.File(self.path, "r") as h5:  # what the file holds besides its features
            return max(0, self.path.stat().st_size - int(h5["features"].id.get_storage_size())) + 64 * self.n

    def write(self, h5) -> None:
        import h5py

        with h5py.File(self.path, "r") as old:  # a block at a time (HDF5's own copy converts whole columns)
            source, group = old["items"], h5.create_group("items")
            for _, name in _STRING_COLUMNS + _INT_COLUMNS:
                column = source[name]
                target = group.create_dataset(name, shape=column.shape, dtype=column.dtype)
                for start in range(0, self.n, ITEM_BLOCK):
                    target[start : start + ITEM_BLOCK] = column[start : start + ITEM_BLOCK]


_ItemSource = _TableItems | _FileItems


def _write_h5_file(tmp: Path, attrs: dict, items: _ItemSource, status: np.ndarray, reasons: dict[int, str],
                   *, feature_blocks: Iterable[tuple]) -> None:  # fmt: skip
    import h5py

    n, dim = items.n, int(attrs["dim"])
    string = _string_dtype()
    with h5py.File(tmp, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = canonical_json(value) if key in _JSON_ATTRS else value
        items.write(h5)
        rows_per_chunk = max(1, min(n, (1 << 20) // (4 * dim)))
        # fletcher32: HDF5 checks every chunk's checksum on read, so damaged features are an error, never read
        features = h5.create_dataset("features", shape=(n, dim), dtype="<f4", chunks=(rows_per_chunk, dim),
                                     fletcher32=True)  # fmt: skip
        for start, block in feature_blocks:
            if isinstance(start, np.ndarray):
                order = np.argsort(start)
                features[start[order]] = block[order]
            else:
                features[start : start + len(block)] = block
        h5.create_dataset("status", data=status.astype(np.int8))
        failure = h5.create_dataset("failure", shape=(n,), dtype=string)
        for start in range(0, n, ITEM_BLOCK):  # every row written, a block at a time
            stop = min(n, start + ITEM_BLOCK)
            block = [""] * (stop - start)
            for row in np.flatnonzero(status[start:stop] == FAILED):
                block[row] = reasons.get(start + int(row), "")
            failure[start:stop] = block


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: The parameters of an error that suggests writing the store elsewhere (the CLI maps them to its output flag).
_OTHER_FILE = {"store_path": None}


def _read_h5(path: Path, *, with_uids: bool):
    """Attributes, uids (a :class:`UidColumn` if ``with_uids``, else None), status and failure reasons."""
    import h5py

    if not path.is_file():
        raise StoreError(f"feature store {path} does not exist (create it with extract(..., store_path={str(path)!r}))",
                         parameters={"extract.store_path": path})  # fmt: skip
    try:
        with h5py.File(path, "r") as h5:
            raw = dict(h5.attrs)
            if raw.get("format") != FORMAT:
                raise StoreError(f"{path} is not a specfusion feature store (no '{FORMAT}' format attribute); "
                                 "choose another store_path", parameters=_OTHER_FILE)  # fmt: skip
            version = int(raw.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise StoreError(
                    f"{path} has store format {version}, newer than this specfusion reads ({FORMAT_VERSION}); upgrade specfusion"
                )
            attrs = {k: (json.loads(v) if k in _JSON_ATTRS else _plain(v)) for k, v in raw.items()}
            g = h5["items"]
            status = h5["status"][()].astype(np.int8)
            for _, name in _STRING_COLUMNS + _INT_COLUMNS:
                if g[name].shape != status.shape:
                    raise ValueError(f"items/{name} has {g[name].shape[0]} rows, status {len(status)}")
            uids = UidColumn(g["uid"][()].astype(np.bytes_)) if with_uids else None
            failed = np.flatnonzero(status == FAILED)
            failure = h5["failure"].asstr()[failed] if len(failed) else []
    except StoreError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise StoreError(f"{path} cannot be read as a feature store ({err}); delete it or choose another store_path",
                         parameters=_OTHER_FILE) from None  # fmt: skip
    reasons = {int(i): str(r) for i, r in zip(failed, failure)}
    return attrs, uids, status, reasons


def _read_items(path: Path, rows: np.ndarray | None = None) -> ItemRows:
    """The item columns of the store at ``path`` (of the sorted ``rows`` only, if given), a block at a time."""
    import h5py

    with h5py.File(path, "r") as h5:
        g = h5["items"]
        n = len(g["uid"])
        picked = {attr: [] for attr, _ in _STRING_COLUMNS + _INT_COLUMNS}
        for start in range(0, n, ITEM_BLOCK):
            stop = min(n, start + ITEM_BLOCK)
            local = None if rows is None else rows[(rows >= start) & (rows < stop)] - start
            if local is not None and not len(local):
                continue
            for attr, name in _STRING_COLUMNS:
                block = _strings(g[name], start, stop)
                picked[attr].append(block if local is None else block[local])
            for attr, name in _INT_COLUMNS:
                block = g[name][start:stop].astype(np.int64)
                picked[attr].append(block if local is None else block[local])
    return ItemRows(**{attr: _concat(blocks, attr) for attr, blocks in picked.items()})


def _concat(blocks: list[np.ndarray], attr: str) -> np.ndarray:
    if blocks:
        return np.concatenate(blocks)
    return np.zeros(0, np.int64) if attr in dict(_INT_COLUMNS) else np.empty(0, dtype=object)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def _strings(dataset, start: int = 0, stop: int | None = None) -> np.ndarray:
    stop = len(dataset) if stop is None else stop
    return _obj(dataset.asstr()[start:stop]) if stop > start else np.empty(0, dtype=object)


def _read_rows(dataset, start: int, stop: int, path: Path) -> np.ndarray:
    """Rows ``start:stop`` of the features; StoreError when a chunk fails its checksum (a damaged file)."""
    try:
        return dataset[start:stop]
    except OSError as err:
        raise StoreError(f"{path}: the features of rows {start}-{stop - 1} fail their checksum, the file is damaged "
                         f"({err}); delete it and extract again") from None  # fmt: skip


def _feature_blocks(path: Path, jpath: Path, dim: int, n: int) -> Iterator[tuple]:
    """Features of the HDF5 file in blocks of rows, then the journal's batches (rows, block)."""
    import h5py

    with h5py.File(path, "r") as h5:
        status = h5["status"][()]
        dataset = h5["features"]
        step = max(1, (64 << 20) // (4 * dim))
        for start in range(0, n, step):
            stop = min(n, start + step)
            if (status[start:stop] == DONE).any():
                yield start, _read_rows(dataset, start, stop, path)
    for header, features, _ in _iter_journal(jpath, dim, with_features=True):
        if features is not None and len(features):
            yield np.asarray(header["rows"], dtype=np.int64), features


def _open_journal(jpath: Path, store_path: Path) -> int:
    import fcntl

    fd = os.open(jpath, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"{store_path} is being written by another process (its journal {jpath} is locked); "
                         "wait for it to finish or use another store_path",
                         parameters=_OTHER_FILE) from None  # fmt: skip
    return fd


def _check_journal_header(header: dict, digest: str, jpath: Path, path: Path) -> None:
    opened = header.get("open")
    if opened is not None and opened.get("config_hash") != digest:
        raise StoreError(f"{jpath} belongs to a store of another configuration than {path}; "
                         f"delete {jpath} (it holds no features of {path})")  # fmt: skip


def _check_same(path: Path, attrs: dict, config: dict, digest: str, dim: int, dataset: dict,
                table) -> None:  # fmt: skip
    how = f"use another store_path, or delete {path} to start over"
    if attrs["config_hash"] != digest:
        changes = _diff(attrs["config"], config)
        raise StoreError(f"{path} holds features of another extractor configuration "
                         f"(differs in: {changes}); it is never mixed with a new one: {how}",
                         parameters=_OTHER_FILE)  # fmt: skip
    if int(attrs["dim"]) != dim:
        raise StoreError(
            f"{path} holds {attrs['dim']}-d features, the extractor makes {dim}-d ones: {how}", parameters=_OTHER_FILE
        )
    old = attrs["dataset"]
    if old.get("name") != dataset["name"] or old.get("fingerprint") != dataset["fingerprint"]:
        detail = f"dataset {old.get('name')!r} with {old.get('n_items')} items vs {dataset['name']!r} with {dataset['n_items']}"
        if old.get("name") == dataset["name"] and old.get("n_items") == dataset["n_items"]:
            stored, items = _read_items(path), ItemRows.from_table(table)  # only on this error path
            changed = np.flatnonzero((stored.uids != items.uids) | (stored.labels != items.labels)
                                     | (stored.folds != items.folds) | (stored.partitions != items.partitions)
                                     | (stored.channels != items.channels))  # fmt: skip
            if len(changed):
                detail += f"; first differing item: {stored.uids[changed[0]]!r} vs {items.uids[changed[0]]!r}"
        raise StoreError(f"{path} was made for another dataset or item list ({detail}): {how}", parameters=_OTHER_FILE)
    if old.get("root_resolved") and old.get("root_resolved") != dataset["root_resolved"]:
        log.info("%s: dataset root moved from %s to %s (same items)", path, old.get("root"), dataset["root"])


def _diff(old: Any, new: Any, limit: int = 6) -> str:
    """The differing leaves of two nested configurations, e.g. ``weights.seed: 0 -> 1``."""
    changes: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix[:-1] or 'value'}: {_short(a)} -> {_short(b)}")

    walk(old, new, "")
    return ", ".join(changes[:limit]) + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
