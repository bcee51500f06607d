"""Export of a feature store made from real ESC-50 clips: CSV / ARFF in DeepSpectrum's layout, NPZ."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from extraction_helpers import TinyTestCNN, make_esc50_copy, onnx_cache  # noqa: F401 (fixture)

from specfusion.cli import main
from specfusion.data.datasets import load_dataset
from specfusion.errors import ConfigError
from specfusion.features.export import export
from specfusion.features.extraction import extract
from specfusion.features.store import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory, esc50_root, onnx_cache):
    """6 real clips and one corrupt file (left out of every export)."""
    folder = tmp_path_factory.mktemp("export")
    root = make_esc50_copy(esc50_root, folder / "esc", 6, extra={"9-broken-A-0": b"RIFF0000WAVEjunk"})
    table = load_dataset("esc50", root)
    path = folder / "store.h5"
    result = extract(table, TinyTestCNN(seed=1), path, batch_size=4)
    assert result.n_done == 6 and result.n_failed == 1
    return path


def _dataset_file_names(store) -> list[str]:
    """The audio file names of the store's finished items, straight from the dataset folder."""
    table = load_dataset("esc50", store.parent / "esc")
    done = FeatureStore.open(store).done_uids()
    return [Path(it.path).name for it in table if it.uid in done]


def test_csv_has_deepspectrum_layout_and_exact_values(store, tmp_path):
    arrays = FeatureStore.open(store).arrays()
    out = export(store, "csv", tmp_path / "f.csv")
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["name", *(f"neuron_{i}" for i in range(16)), "fold", "partition", "class"]
    body = rows[1:]
    assert [r[0] for r in body] == _dataset_file_names(store)
    assert [Path(r[0]).stem for r in body] == list(arrays.names)  # the dataset's own names, no suffix of ours
    assert [r[-1] for r in body] == list(arrays.labels)
    assert [int(r[-3]) for r in body] == list(arrays.folds) and {r[-2] for r in body} == {"dev"}
    values = np.array([[float(v) for v in r[1:17]] for r in body], dtype=np.float32)
    np.testing.assert_array_equal(values, arrays.X)  # float32 survives the text round trip
    assert "9-broken-A-0" not in out.read_text()
    loaded = np.genfromtxt(out, delimiter=",", skip_header=1, usecols=range(1, 17))
    assert loaded.shape == (6, 16)


def test_csv_reads_with_pandas_without_options(store, tmp_path):
    pd = pytest.importorskip("pandas")
    arrays = FeatureStore.open(store).arrays()
    frame = pd.read_csv(export(store, "csv", tmp_path / "f.csv"))
    assert list(frame.columns[[0, -3, -2, -1]]) == ["name", "fold", "partition", "class"]
    assert frame["name"].tolist() == _dataset_file_names(store)
    assert frame["fold"].tolist() == arrays.folds.tolist() and frame["fold"].dtype.kind == "i"
    assert frame["partition"].tolist() == list(arrays.partitions)
    assert frame["class"].tolist() == list(arrays.labels)
    neurons = frame[[f"neuron_{i}" for i in range(16)]].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(neurons, arrays.X)


def test_arff_header_and_rows_read_back(store, tmp_path):
    arrays = FeatureStore.open(store).arrays()
    out = export(store, "arff", tmp_path / "f.arff")
    lines = out.read_text().splitlines()
    assert lines[0] == "@relation 'Deep Spectrum Features'"
    assert lines[2] == "@attribute name string"
    assert lines[3] == "@attribute neuron_0 numeric" and lines[18] == "@attribute neuron_15 numeric"
    assert lines[19:21] == ["@attribute fold numeric", "@attribute partition {dev,test}"]
    assert lines[21] == "@attribute class {" + ",".join(arrays.classes) + "}"
    assert arrays.classes == load_dataset("esc50", store.parent / "esc").classes  # the dataset's class list
    assert lines[23] == "@data" and len(lines) == 24 + 6
    liac = pytest.importorskip("arff", reason="liac-arff reads ARFF string attributes (scipy does not)")
    data = liac.load(out.read_text())
    assert data["relation"] == "Deep Spectrum Features"
    assert [name for name, _ in data["attributes"]][:2] == ["name", "neuron_0"]
    assert data["attributes"][-3:] == [
        ("fold", "NUMERIC"),
        ("partition", ["dev", "test"]),
        ("class", list(arrays.classes)),
    ]
    assert [row[0] for row in data["data"]] == _dataset_file_names(store)
    assert [row[-1] for row in data["data"]] == list(arrays.labels)
    assert [int(row[-3]) for row in data["data"]] == list(arrays.folds)
    assert [row[-2] for row in data["data"]] == list(arrays.partitions)
    np.testing.assert_array_equal(np.array([row[1:17] for row in data["data"]], dtype=np.float32), arrays.X)


def test_arff_numeric_part_reads_with_scipy(store, tmp_path):
    """scipy.io.arff has no string attributes: with the name column declared nominal it reads the rest."""
    from scipy.io import arff

    arrays = FeatureStore.open(store).arrays()
    text = export(store, "arff", tmp_path / "f.arff").read_text()
    names = _dataset_file_names(store)
    text = text.replace("@attribute name string", "@attribute name {" + ",".join(names) + "}")
    (tmp_path / "nominal.arff").write_text(text)
    data, meta = arff.loadarff(tmp_path / "nominal.arff")
    assert meta.names()[-1] == "class" and meta.types()[1] == "numeric"
    X = np.array([[row[f"neuron_{i}"] for i in range(16)] for row in data], dtype=np.float32)
    np.testing.assert_array_equal(X, arrays.X)
    assert [row["class"].decode() for row in data] == list(arrays.labels)


def test_npz_round_trip(store, tmp_path):
    arrays = FeatureStore.open(store).arrays()
    out = export(store, "npz", tmp_path / "f.npz")
    with np.load(out, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["X"], arrays.X)
        assert npz["X"].dtype == np.float32
        assert npz["labels"].tolist() == list(arrays.labels)
        assert npz["folds"].tolist() == list(arrays.folds)
        assert npz["uids"].tolist() == list(arrays.uids)
        assert npz["files"].tolist() == _dataset_file_names(store)
        assert npz["classes"].tolist() == arrays.classes
        assert json.loads(str(npz["config"])) == arrays.config
        assert str(npz["dataset"]) == "esc50"


def test_cli_export_and_unknown_format(store, tmp_path, capsys):
    assert main(["export", str(store), "--format", "csv", "--out", str(tmp_path / "a.csv"), "-q"]) == 0
    assert "wrote 6 items x 16 features" in capsys.readouterr().out
    assert main(["export", str(store), "--out", str(tmp_path / "b.arff"), "-q"]) == 0  # format from the suffix
    assert (tmp_path / "b.arff").read_text().startswith("@relation")
    assert main(["export", str(store), "--out", str(tmp_path / "c.txt"), "-q"]) == 1
    assert main(["export", str(tmp_path / "none.h5"), "--out", str(tmp_path / "d.csv"), "-q"]) == 1
    with pytest.raises(ConfigError):
        export(store, "xlsx", tmp_path / "e.xlsx")


def test_channel_items_and_odd_names_on_generated_data(tmp_path):
    """Channel items share their file's name and get a channel column; unlabelled and quoted values survive."""
    from specfusion.data.datasets import DatasetTable, Item

    classes = ["cafe/restaurant", "home"]
    items = [Item(name=f"audio/{stem}", path=tmp_path / "audio" / f"{stem}.wav", label=label, fold=fold, partition=part)
             for stem, label, fold, part in [("a b", classes[0], 1, "dev"), ("it's", classes[1], 2, "dev"),
                                             ("c", None, 0, "test")]]  # fmt: skip
    table = DatasetTable(name="toy", root=tmp_path, items=items, classes=classes).with_channels(2)
    X = np.arange(len(table) * 3, dtype=np.float32).reshape(len(table), 3) / 7
    path = tmp_path / "s.h5"
    with FeatureStore.create_or_resume(path, config={"extractor": "toy"}, dim=3, table=table) as store:
        store.append(table.uids(), X)
    names = [f"{stem}.wav" for stem in ("a b", "a b", "it's", "it's", "c", "c")]

    rows = list(csv.reader(export(path, "csv", tmp_path / "f.csv").read_text().splitlines()))
    assert rows[0] == ["name", "neuron_0", "neuron_1", "neuron_2", "fold", "partition", "channel", "class"]
    assert [r[0] for r in rows[1:]] == names
    assert [r[-2] for r in rows[1:]] == ["0", "1"] * 3
    assert [r[-1] for r in rows[1:]] == [classes[0]] * 2 + [classes[1]] * 2 + ["", ""]
    np.testing.assert_array_equal(np.array([r[1:4] for r in rows[1:]], dtype=np.float32), X)

    liac = pytest.importorskip("arff")
    data = liac.load(export(path, "arff", tmp_path / "f.arff").read_text())
    assert [a for a, _ in data["attributes"]][-4:] == ["fold", "partition", "channel", "class"]
    assert [row[0] for row in data["data"]] == names
    assert [row[-1] for row in data["data"]] == [classes[0]] * 2 + [classes[1]] * 2 + [None, None]
    assert [row[-3] for row in data["data"]] == ["dev"] * 4 + ["test"] * 2
    np.testing.assert_array_equal(np.array([row[1:4] for row in data["data"]], dtype=np.float32), X)
