"""Feature store: round trip in table order, configuration checks, crash-safe journal, locking."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from specfusion.data.datasets import DatasetTable, Item
from specfusion.errors import StoreError
from specfusion.features.store import DONE, FAILED, PENDING, FeatureStore, journal_path
from specfusion.identity import config_hash

CONFIG = {"extractor": "dummy", "weights": {"kind": "none", "seed": 0}, "colormap": "viridis",
          "spectrogram": {"n_mels": 128, "window_s": 0.32}}  # fmt: skip
DIM = 5


def make_table(n: int = 10, *, channels: int = 0) -> DatasetTable:
    """Items with made-up paths: the store never reads audio."""
    classes = ["a", "b", "c"]
    items = [
        Item(name=f"clip{i:02d}", path=Path(f"/nowhere/clip{i:02d}.wav"), label=classes[i % 3],
             fold=0 if i >= n - 2 else 1 + i % 4, partition="test" if i >= n - 2 else "dev")
        for i in range(n)
    ]  # fmt: skip
    table = DatasetTable(name="toy", root=Path("/nowhere"), items=items, classes=classes)
    return table.with_channels(channels) if channels else table


def features_for(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows[:, None] * 10 + np.arange(DIM, dtype=np.float32)[None, :]


def test_round_trip_in_table_order_with_failures(tmp_path):
    table = make_table(10)
    uids = table.uids()
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=4) as store:
        store.append(uids[6:9], features_for([6, 7, 8]))  # completed out of table order
        store.append(uids[0:3], features_for([0, 1, 2]), failures={uids[3]: "empty file (0 bytes)"})
        store.record_failure(uids[9], "unreadable audio")
        store.append([uids[4], uids[5]], features_for([4, 5]))
        assert store.n_done == 8 and store.n_failed == 2 and store.complete
    assert not journal_path(path).exists()  # folded into the HDF5 file on close
    store = FeatureStore.open(path)
    arrays = store.arrays()
    keep = [0, 1, 2, 4, 5, 6, 7, 8]
    np.testing.assert_array_equal(arrays.X, features_for(keep))
    assert arrays.X.dtype == np.float32
    assert list(arrays.uids) == [uids[i] for i in keep]
    assert list(arrays.labels) == [table.items[i].label for i in keep]
    assert list(arrays.folds) == [table.items[i].fold for i in keep]
    assert list(arrays.partitions) == [table.items[i].partition for i in keep]
    assert list(arrays.channels) == [-1] * len(keep)
    assert arrays.classes == ["a", "b", "c"] and arrays.dataset == "toy" and arrays.metric == "accuracy"
    assert arrays.config == CONFIG
    assert store.failures() == [(uids[3], "empty file (0 bytes)"), (uids[9], "unreadable audio")]
    with h5py.File(path, "r") as h5:  # the configuration is in the file, readable without specfusion
        assert h5.attrs["config_hash"] == config_hash(CONFIG)
        assert '"colormap":"viridis"' in h5.attrs["config"]
        assert h5.attrs["package_version"]
        assert h5["features"].shape == (10, DIM)


def test_channel_items_keep_names_and_channels(tmp_path):
    table = make_table(3, channels=4)
    with FeatureStore.create_or_resume(tmp_path / "s.h5", config=CONFIG, dim=DIM, table=table) as store:
        store.append(table.uids(), features_for(range(12)))
    arrays = FeatureStore.open(tmp_path / "s.h5").arrays()
    assert list(arrays.channels) == [0, 1, 2, 3] * 3
    assert list(arrays.names[:4]) == ["clip00"] * 4
    assert list(arrays.uids[:2]) == ["clip00@ch0", "clip00@ch1"]


def test_other_configuration_is_refused_and_store_untouched(tmp_path):
    table = make_table(6)
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table) as store:
        store.append(table.uids()[:2], features_for([0, 1]))
    before = path.read_bytes()
    other = {**CONFIG, "weights": {"kind": "none", "seed": 1}}
    with pytest.raises(StoreError) as err:
        FeatureStore.create_or_resume(path, config=other, dim=DIM, table=table)
    message = str(err.value)
    assert "weights.seed: 0 -> 1" in message and "delete" in message
    assert "another store_path" in message and "--out" not in message  # the CLI adds its flag
    with pytest.raises(StoreError, match="another dataset"):
        FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=make_table(7))
    relabelled = make_table(6)
    relabelled.items[2] = Item(**{**relabelled.items[2].__dict__, "fold": 4})
    with pytest.raises(StoreError, match="clip02"):
        FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=relabelled)
    with pytest.raises(StoreError, match="5-d features"):
        FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM + 1, table=table)
    assert path.read_bytes() == before
    assert not journal_path(path).exists()


def test_not_a_store_is_refused(tmp_path):
    garbage = tmp_path / "x.h5"
    garbage.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(StoreError, match="cannot be read"):
        FeatureStore.open(garbage)
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["data"] = np.zeros(3)
    with pytest.raises(StoreError, match="not a specfusion feature store"):
        FeatureStore.create_or_resume(tmp_path / "other.h5", config=CONFIG, dim=DIM, table=make_table())
    with pytest.raises(StoreError, match="does not exist"):
        FeatureStore.open(tmp_path / "missing.h5")


def test_resume_skips_done_and_keeps_chunk_size(tmp_path):
    table = make_table(10)
    path = tmp_path / "s.h5"
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=4)
    store.append(table.uids()[:4], features_for(range(4)))
    store.close(consolidate=False)  # as if the process had stopped: batches only in the journal
    assert journal_path(path).exists()
    assert FeatureStore.open(path).n_done == 4  # readable as it stands
    resumed = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=8)
    assert resumed.chunk_size == 4
    assert resumed.done_uids() == set(table.uids()[:4])
    with pytest.raises(StoreError, match="already has features"):
        resumed.append(table.uids()[3:5], features_for([3, 4]))
    resumed.append(table.uids()[4:], features_for(range(4, 10)))
    resumed.close()
    np.testing.assert_array_equal(FeatureStore.open(path).arrays().X, features_for(range(10)))


def test_write_cut_short_is_dropped(tmp_path):
    """A kill in the middle of writing a batch leaves a partial record: it is dropped, the rest kept."""
    table = make_table(8)
    path = tmp_path / "s.h5"
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=2)
    store.append(table.uids()[:2], features_for([0, 1]))
    size_after_first = journal_path(path).stat().st_size
    store.append(table.uids()[2:4], features_for([2, 3]))
    store.close(consolidate=False)
    full = journal_path(path).read_bytes()
    for cut in (size_after_first + 5, len(full) - 1):  # inside the header, inside the features
        journal_path(path).write_bytes(full[:cut])
        assert FeatureStore.open(path).done_uids() == set(table.uids()[:2])
    corrupt = bytearray(full)
    corrupt[-3] ^= 0xFF  # same length, wrong CRC
    journal_path(path).write_bytes(bytes(corrupt))
    resumed = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    assert resumed.status()[:4].tolist() == [DONE, DONE, PENDING, PENDING]
    resumed.append(table.uids()[2:], features_for(range(2, 8)))
    resumed.close()
    arrays = FeatureStore.open(path).arrays()
    np.testing.assert_array_equal(arrays.X, features_for(range(8)))
    assert len(set(arrays.uids)) == 8


def test_journal_replayed_after_consolidation_changes_nothing(tmp_path):
    """A kill between replacing the HDF5 file and deleting the journal replays identical rows."""
    table = make_table(6)
    path = tmp_path / "s.h5"
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    store.append(table.uids()[:3], features_for(range(3)), failures={table.uids()[3]: "bad"})
    saved = journal_path(path).read_bytes()
    store.close()
    journal_path(path).write_bytes(saved)
    reopened = FeatureStore.open(path)
    assert reopened.n_done == 3 and reopened.n_failed == 1
    np.testing.assert_array_equal(reopened.arrays().X, features_for(range(3)))
    resumed = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    resumed.append(table.uids()[3:], features_for(range(3, 6)))  # the failed item, retried, and the rest
    resumed.close()
    final = FeatureStore.open(path)
    assert final.n_done == 6 and final.failures() == []
    np.testing.assert_array_equal(final.arrays().X, features_for(range(6)))


def test_leftovers_of_deleted_store_are_ignored(tmp_path):
    table = make_table(4)
    path = tmp_path / "s.h5"
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
    store.append(table.uids()[:2], features_for([0, 1]))
    store.close(consolidate=False)
    shutil.copy(path, tmp_path / "s.h5.tmp")  # an interrupted consolidation
    path.unlink()  # the user deletes the store, as the mismatch message suggests
    other = {**CONFIG, "colormap": "magma"}
    with FeatureStore.create_or_resume(path, config=other, dim=DIM, table=table) as fresh:
        assert fresh.n_done == 0
    assert not (tmp_path / "s.h5.tmp").exists()


def test_second_writer_is_refused(tmp_path):
    table = make_table(4)
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table):
        with pytest.raises(StoreError, match="another process"):
            FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table)
        with pytest.raises(StoreError, match="read-only"):
            FeatureStore.open(path).append(table.uids()[:1], features_for([0]))


def test_bad_batches_are_refused(tmp_path):
    table = make_table(4)
    with FeatureStore.create_or_resume(tmp_path / "s.h5", config=CONFIG, dim=DIM, table=table) as store:
        with pytest.raises(StoreError, match="shape"):
            store.append(table.uids()[:2], np.zeros((2, DIM + 1)))
        with pytest.raises(StoreError, match="not in this store"):
            store.append(["nope"], np.zeros((1, DIM)))
        with pytest.raises(StoreError, match="twice"):
            store.append([table.uids()[0]] * 2, np.zeros((2, DIM)))
        assert store.status().tolist() == [PENDING] * 4
        store.record_failure(table.uids()[1], "bad")
        assert store.status()[1] == FAILED


def test_fsync_off_still_commits(tmp_path):
    table = make_table(3)
    path = tmp_path / "s.h5"
    store = FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, fsync=False)
    store.append(table.uids(), features_for(range(3)))
    store.close(consolidate=False)
    assert os.path.getsize(journal_path(path)) > 0
    np.testing.assert_array_equal(FeatureStore.open(path).arrays().X, features_for(range(3)))


def test_damaged_features_are_an_error_never_read(tmp_path):
    """Every feature chunk carries a checksum: garbled bytes in the file are refused, not read as features."""
    table = make_table(10)
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config=CONFIG, dim=DIM, table=table, chunk_size=4) as store:
        store.append(table.uids(), features_for(range(10)))
    np.testing.assert_array_equal(FeatureStore.open(path).arrays().X, features_for(range(10)))
    with h5py.File(path, "r") as h5:
        offset = h5["features"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as handle:  # one float of row 1 garbled, the file otherwise intact
        handle.seek(offset + 4 * DIM + 8)
        handle.write(np.float32(1234.5).tobytes())
    with pytest.raises(StoreError, match="fail their checksum, the file is damaged"):
        FeatureStore.open(path).arrays()
