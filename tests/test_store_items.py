"""Feature store item bookkeeping: compact uid lookup, item columns on disk, old stores, memory per item."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from specfusion.data.datasets import DatasetTable, Item
from specfusion.errors import StoreError
from specfusion.features import store as store_module
from specfusion.features.store import DONE, FAILED, PENDING, FeatureStore, ItemRows, UidColumn
from specfusion.identity import canonical_json, config_hash, rows_fingerprint

CONFIG = {"extractor": "dummy", "weights": {"kind": "none", "seed": 0}}
DIM = 3
COLUMNS = ("uids", "names", "labels", "folds", "partitions", "channels", "groups", "paths")


def make_table(n: int, *, channels: int = 0) -> DatasetTable:
    """Items with made-up paths (the store never reads audio), varied name lengths and non-ASCII labels."""
    classes = ["café", "b", "straße/x"]
    items = [
        Item(name=f"s{i % 7}_{'x' * (i % 5)}clip{i:05d}", path=Path(f"/nowhere/d{i % 3}/clip{i:05d}.wav"),
             label=classes[i % 3], fold=0 if i % 10 == 9 else 1 + i % 4, partition="test" if i % 10 == 9 else "dev",
             group=f"g{i % 11}")
        for i in range(n)
    ]  # fmt: skip
    table = DatasetTable(name="toy", root=Path("/nowhere"), items=items, classes=classes)
    return table.with_channels(channels) if channels else table


def features_for(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)[:, None] + np.arange(DIM, dtype=np.float32)[None, :]


def assert_same_items(got: ItemRows, expected: ItemRows, rows=slice(None)) -> None:
    for column in COLUMNS:
        assert list(getattr(got, column)) == list(getattr(expected, column)[rows]), column


def test_resumed_store_finds_rows_by_uid(tmp_path):
    table = make_table(150, channels=2)  # uids "name@ch0", "name@ch1"
    uids = table.uids()
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=8) as store:
        store.append(uids[:10], features_for(range(10)))
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    order = np.random.default_rng(0).permutation(len(uids))
    assert store.rows_of([uids[i] for i in order]).tolist() == order.tolist()
    assert store.uids[17] == uids[17] and list(store.uids[[3, 1]]) == [uids[3], uids[1]]
    store.append([uids[40], uids[12]], features_for([40, 12]))
    assert np.flatnonzero(store.status() == DONE).tolist() == [*range(10), 12, 40]
    stored = uids[0]
    for unknown in (stored[:-1], stored + "0", "", "x" * 500, stored + "\0", "nope"):
        with pytest.raises(StoreError, match="is not in this store's dataset"):
            store.rows_of([uids[5], unknown])
        with pytest.raises(StoreError, match="is not in this store's dataset"):
            store.append([unknown], features_for([0]))
    store.close()
    assert FeatureStore.open(path).features(store.rows_of([uids[40]]))[0].tolist() == features_for([40])[0].tolist()


def test_uid_column_lookup_matches_a_dict():
    words = ["b", "a", "ab", "a@ch1", "ä", "zz", "a@ch10", "abc"]
    column = UidColumn(np.array([w.encode() for w in words], dtype=np.bytes_))
    assert column.rows(words[::-1]).tolist() == list(range(len(words)))[::-1]
    assert list(column) == words and len(column) == len(words)
    with pytest.raises(KeyError, match="a@ch"):
        column.rows(["a", "a@ch"])


@pytest.mark.parametrize("block", [7, 1 << 13])
def test_item_columns_read_back_equal_the_table(tmp_path, monkeypatch, block):
    monkeypatch.setattr(store_module, "ITEM_BLOCK", block)  # several blocks: streamed writing and reading
    table = make_table(40, channels=2)
    expected = ItemRows.from_table(table)
    path = tmp_path / "s.h5"
    uids = table.uids()
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=4) as store:
        assert store.dataset["fingerprint"] == expected.fingerprint()
        assert_same_items(store.items, expected)  # a writable store reads them from its file
        store.append(uids[:30], features_for(range(30)), failures={uids[33]: "bad", uids[71]: "worse"})
    resumed = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    assert resumed.failed_items() == [(uids[33], "bad", expected.paths[33]), (uids[71], "worse", expected.paths[71])]
    resumed.close()  # after consolidation: the items group was copied into the new file
    opened = FeatureStore.open(path)
    assert_same_items(opened.items, expected)
    arrays = opened.arrays()
    done = np.flatnonzero(opened.status() == DONE)
    for column in COLUMNS:
        assert list(getattr(arrays, column)) == list(getattr(expected, column)[done]), column
    assert_same_items(store_module._read_items(path, np.array([0, 8, 9, 79])), expected, [0, 8, 9, 79])


def test_streamed_fingerprint_equals_the_hash_of_the_whole_list():
    rows = [[f"u{i}", "é" if i % 2 else "", i % 5, "dev", i % 3 - 1] for i in range(10_000)]  # 3 blocks of 4096
    assert rows_fingerprint(iter(rows)) == config_hash(rows)
    assert rows_fingerprint(iter([])) == config_hash([])


def write_store_of_the_previous_code(path: Path, table: DatasetTable, dim: int, chunk_size: int) -> None:
    """A store written as the code before the compact bookkeeping wrote it (whole columns, ``data=list``)."""
    items = ItemRows.from_table(table)
    attrs = {"format": "specfusion-feature-store", "format_version": 1, "package_version": "0.0.old",
             "created": "2026-01-01T00:00:00+00:00", "config": CONFIG, "config_hash": config_hash(CONFIG),
             "dataset": {**store_module.dataset_info_from_table(table), "n_items": len(items),
                         "fingerprint": items.fingerprint()},
             "dim": dim, "chunk_size": chunk_size, "runs": []}  # fmt: skip
    string = h5py.string_dtype("utf-8")
    n = len(items)
    with h5py.File(path, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = canonical_json(value) if key in ("config", "dataset", "runs") else value
        group = h5.create_group("items")
        for column, name in (("uids", "uid"), ("names", "name"), ("labels", "label"), ("partitions", "partition"),
                             ("groups", "group"), ("paths", "path")):  # fmt: skip
            group.create_dataset(name, data=list(getattr(items, column)), dtype=string)
        group.create_dataset("fold", data=items.folds)
        group.create_dataset("channel", data=items.channels)
        features = h5.create_dataset("features", shape=(n, dim), dtype="<f4", chunks=(n, dim))
        features[:2] = features_for([0, 1])
        status = np.zeros(n, np.int8)
        status[:2], status[2] = DONE, FAILED
        h5.create_dataset("status", data=status)
        h5.create_dataset("failure", data=["", "", "gone"] + [""] * (n - 3), dtype=string)


def test_a_store_of_the_previous_code_resumes_and_keeps_its_layout(tmp_path):
    table = make_table(25)
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    write_store_of_the_previous_code(old, table, DIM, 4)
    uids = table.uids()
    with FeatureStore.create_or_resume(old, config=CONFIG, dim=DIM, table=table) as store:
        assert store.status()[:4].tolist() == [DONE, DONE, FAILED, PENDING]
        assert store.failures() == [(uids[2], "gone")]
        store.append(uids[2:25], features_for(range(2, 25)))
    with FeatureStore.create_or_resume(new, config=CONFIG, dim=DIM, table=table, chunk_size=4) as store:
        store.append(uids, features_for(range(25)))
    with h5py.File(old, "r") as a, h5py.File(new, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and sorted(a["items"].keys()) == sorted(b["items"].keys())
        for name in a["items"]:
            x, y = a["items"][name], b["items"][name]
            assert (x.dtype, x.shape) == (y.dtype, y.shape), name
            assert x[()].tolist() == y[()].tolist(), name
        assert a["features"][()].tolist() == b["features"][()].tolist()
        assert a["status"][()].tolist() == b["status"][()].tolist() == [DONE] * 25


def kept_by_a_new_store(path: Path, table: DatasetTable) -> tuple[int, FeatureStore]:
    """Bytes the Python heap holds more after ``create_or_resume`` (numpy's buffers included)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
        return tracemalloc.get_traced_memory()[0] - before, store
    finally:
        tracemalloc.stop()


def test_a_writable_store_keeps_little_per_item(tmp_path):
    small, large = make_table(250, channels=2), make_table(1500, channels=2)  # 500 and 3,000 items
    kept_small, store_small = kept_by_a_new_store(tmp_path / "small.h5", small)
    kept_large, store_large = kept_by_a_new_store(tmp_path / "large.h5", large)
    try:
        # uid bytes (24 wide here) + two int32 permutations + status: ~33 bytes; the item columns as Python
        # strings and a uid -> row dict (the code before) kept ~1 KiB per item
        per_item = (kept_large - kept_small) / 2500
        assert per_item < 200, f"{per_item:.0f} bytes per item"
        assert store_large.uids.nbytes < 40 * len(store_large.uids)
    finally:
        store_small.close()
        store_large.close()
