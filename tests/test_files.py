"""Files written whole: a failed write (a full disk) leaves the old file and no temporary file behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from specfusion.files import temporary_sibling, write_atomic, written_whole


def _full_disk(monkeypatch):
    """Make writing a file create it, write nothing, and fail as a full disk does."""

    def write_bytes(self, data):
        with open(self, "wb"):
            pass
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_write_atomic_replaces_the_file_whole(tmp_path):
    path = write_atomic(tmp_path / "sub" / "out.csv", "a,b\n")
    assert path.read_text() == "a,b\n" and write_atomic(path, b"c\n").read_bytes() == b"c\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.csv"]


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "out.csv", "old\n")
    _full_disk(monkeypatch)
    with pytest.raises(OSError) as err:
        write_atomic(path, "new\n")
    assert err.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n"
    assert not temporary_sibling(path).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_an_error_while_writing_removes_the_temporary_file(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), written_whole(path) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_predict_csv_on_a_full_disk_leaves_no_temporary_file(tmp_path, monkeypatch):
    import numpy as np

    from specfusion.cli.predict import write_csv

    out = tmp_path / "predicted.csv"
    _full_disk(monkeypatch)
    with pytest.raises(OSError):
        write_csv(out, ["a.wav"], ["dog"], np.array([[0.9, 0.1]]), ["dog", "cat"])
    assert list(tmp_path.iterdir()) == []
