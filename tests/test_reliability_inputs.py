"""Issue 15, inputs half: bad audio and metadata, short clips, per-item failures, CLI mistakes, disk full,
weights security. Every test here failed on the code before the fix (docs/reliability-inputs.md).

Real clips (ESC-50, FSDD) where the case is about real data; generated audio where the case is a
damaged file. Each test runs in seconds.
"""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from extraction_helpers import TinyTestCNN, make_esc50_copy  # noqa: F401 (registers tiny_test_cnn)

from specfusion.cli import main
from specfusion.data.audio import load_audio
from specfusion.data.datasets import DatasetTable, Item, load_csv, load_esc50, load_folder
from specfusion.errors import AudioError, DatasetError, SignalError, StoreError, WeightsError
from specfusion.features import export as export_module
from specfusion.features import store as store_module
from specfusion.features.extraction import extract, min_clip_seconds
from specfusion.features.spectrogram import MelSpecParams, melspectrogram
from specfusion.features.store import FeatureStore, journal_path
from specfusion.features.weights import WeightsSpec, gunzip_capped, load_state_dict, resolve_weights
from specfusion.models.crnn import CRNNClassifier, torch_threads
from specfusion.models.crnn.protocol import crnn_fold_protocol
from specfusion.models.crnn.spectrograms import compute_spectrograms, spectrogram_set

SR = 16000


# ----------------------------------------------------------------------------------------- helpers
def _noise(seconds: float, sr: int = SR, scale: float = 0.1, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * scale).astype(np.float32)


def _truncated_wav(path: Path, *, declared_s: float = 5.0, present_s: float = 1.7) -> Path:
    """A 16-bit WAV whose header declares ``declared_s`` seconds but whose data stops after ``present_s``."""
    full = path.with_name(path.stem + "-full.wav")
    sf.write(full, _noise(declared_s), SR, subtype="PCM_16")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: 44 + int(present_s * SR) * 2])
    return path


def _huge_wav(path: Path) -> Path:
    """A float WAV with finite samples of magnitude ~1e30: its power overflows float32."""
    sf.write(path, _noise(1.0) * np.float32(1e30), SR, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def fsdd_short(fsdd_root) -> list[Path]:
    """Real FSDD clips shorter than one 0.32-s window (8 kHz)."""
    names = ["0_george_0.wav", "0_george_31.wav", "1_george_32.wav"]
    return [fsdd_root / "recordings" / n for n in names]


# --------------------------------------------------------------------------- silent wrong results
def test_esc50_category_under_two_targets_names_file_and_line(esc50_root, tmp_path):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 3)
    meta = root / "meta" / "esc50.csv"
    rows = list(csv.DictReader(open(meta, newline="")))
    rows[2] = {**rows[2], "category": rows[0]["category"], "target": str(int(rows[0]["target"]) + 7)}
    with open(meta, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DatasetError, match=rf"esc50.csv:4: category '{rows[0]['category']}' has target") as err:
        load_esc50(root)
    assert err.value.line == 4 and err.value.path == meta


def test_melspec_of_huge_samples_is_an_audio_error_naming_the_file(tmp_path, capsys):
    path = _huge_wav(tmp_path / "huge.wav")
    y, sr = load_audio(path)
    assert np.isfinite(y).all()  # finite samples: only the spectrogram overflows
    with pytest.raises(SignalError, match="not finite"):
        melspectrogram(y[0], sr)
    out = tmp_path / "huge.npy"
    assert main(["melspec", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("specfusion: error:") and str(path) in err and "not finite" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_truncated_wav_is_an_error_not_a_short_clip(tmp_path):
    path = _truncated_wav(tmp_path / "cut.wav")
    assert sf.info(str(path)).frames == int(1.7 * SR)  # libsndfile alone reports a 1.7-s clip
    with pytest.raises(
        AudioError, match=r"truncated: the header declares 5\.000 s of audio, the file holds 1\.700 s"
    ) as err:
        load_audio(path)
    assert err.value.path == path
    flac = tmp_path / "cut.flac"  # a cut FLAC: libsndfile itself notices (lost sync)
    sf.write(flac, _noise(5.0), SR)
    flac.write_bytes(flac.read_bytes()[: flac.stat().st_size // 3])
    with pytest.raises(AudioError, match="truncated|unreadable"):
        load_audio(flac)


def test_silent_audio_is_an_error(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(SR, np.float32), SR)
    with pytest.raises(AudioError, match="silent: every sample is zero"):
        load_audio(path)


def test_folder_dataset_lists_dangling_and_looping_links(esc50_root, tmp_path, capsys):
    root = tmp_path / "folder"
    for label in ("dog", "rain"):
        (root / label).mkdir(parents=True)
    clips = sorted((esc50_root / "audio").glob("*.flac"))[:8]
    for k, clip in enumerate(clips):
        os.symlink(clip.resolve(), root / ("dog" if k % 2 else "rain") / clip.name)
    os.symlink(tmp_path / "gone.flac", root / "dog" / "dangling.flac")
    os.symlink(root / "rain" / "loop-b.wav", root / "rain" / "loop-a.wav")
    os.symlink(root / "rain" / "loop-a.wav", root / "rain" / "loop-b.wav")
    table = load_folder(root, n_folds=2)
    assert len(table) == 8
    text = "\n".join(table.problems)
    assert "dangling.flac: dangling symbolic link" in text
    assert "loop-a.wav: looping symbolic link" in text and "loop-b.wav: looping symbolic link" in text
    # listed at the end of an extraction too, and kept in the store's run log
    out = tmp_path / "f.h5"
    args = ["extract", "--dataset", "folder", "--root", str(root), "--folds", "2", "--extractor", "tiny_test_cnn",
            "--out", str(out), "--workers", "0", "-q"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 dataset problem(s)" in printed and "dangling.flac: dangling symbolic link" in printed
    assert any("dangling.flac" in p for p in FeatureStore.open(out).runs[-1]["dataset_problems"])


# ------------------------------------------------------------------------------------- short clips
def test_short_clips_are_padded_by_default_and_the_error_policy_records_them(fsdd_short, fsdd_root, tmp_path):
    long_clip = fsdd_root / "recordings" / "0_george_10.wav"
    assert all(sf.info(str(p)).duration < 0.32 for p in fsdd_short) and sf.info(str(long_clip)).duration > 0.32
    items = [Item(name=p.stem, path=p, label="0", fold=1 + k % 2) for k, p in enumerate([*fsdd_short, long_clip])]
    table = DatasetTable(name="csv", root=fsdd_root, items=items, classes=["0"])
    tiny = TinyTestCNN(sample_rate=8000)
    padded = extract(table, tiny, tmp_path / "pad.h5", workers=0)
    assert padded.n_done == 4 and not padded.failures
    y, _ = load_audio(fsdd_short[0], min_seconds=0.32, short="pad")
    assert y.shape[1] == int(np.ceil(0.32 * 8000)) and not y[0, int(0.298 * 8000) + 1 :].any()
    strict = extract(table, tiny, tmp_path / "error.h5", workers=0, short="error")
    assert strict.n_done == 1 and [uid for uid, _, _ in strict.failures] == [p.stem for p in fsdd_short]
    assert all("too short" in reason for _, reason, _ in strict.failures)


def test_short_limit_follows_the_configured_window(fsdd_short):
    clip = fsdd_short[2]  # 0.24 s
    with pytest.raises(AudioError, match="too short"):
        load_audio(clip, short="error")  # the default window, 0.32 s
    y, _ = load_audio(clip, min_seconds=0.04, short="error")  # a 0.04-s window: long enough
    assert y.shape[1] == sf.info(str(clip)).frames
    tiny = TinyTestCNN()
    assert min_clip_seconds(tiny) == 0.32
    tiny.spec_params = MelSpecParams(window_s=0.04, hop_s=0.02)
    assert min_clip_seconds(tiny) == 0.04


def test_cli_short_flag(fsdd_short, fsdd_root, tmp_path, capsys):
    table_csv = tmp_path / "short.csv"
    rows = [f"{p},0,{1 + k % 2}" for k, p in enumerate([*fsdd_short, fsdd_root / "recordings" / "0_george_10.wav"])]
    table_csv.write_text("path,label,fold\n" + "\n".join(rows) + "\n")
    base = [
        "extract",
        "--dataset",
        "csv",
        "--root",
        str(table_csv),
        "--extractor",
        "tiny_test_cnn",
        "--workers",
        "0",
        "-q",
    ]
    assert main(base + ["--out", str(tmp_path / "a.h5")]) == 0
    assert "4 of 4 items have features" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "b.h5"), "--short", "error"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 4 items have features" in printed and "too short" in printed


# ------------------------------------------------------------------------ one bad file never stops a run
def test_extraction_records_a_non_finite_spectrogram_and_goes_on(esc50_root, tmp_path, capsys):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 3)
    _huge_wav(root / "audio" / "9-huge-A-0.wav")
    meta = root / "meta" / "esc50.csv"
    lines = meta.read_text().splitlines()
    fields = lines[1].split(",")
    fields[0], fields[1], fields[2], fields[3] = "9-huge-A-0.wav", "1", "0", "dog"
    meta.write_text("\n".join(lines[:2] + [",".join(fields)] + lines[2:]) + "\n")
    out = tmp_path / "x.h5"
    assert main(["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn",
                 "--out", str(out), "--workers", "0", "-q"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "3 of 4 items have features" in printed and "9-huge-A-0: " in printed and "not finite" in printed
    assert dict(FeatureStore.open(out).failures())["9-huge-A-0"].startswith("the Mel power spectrogram is not finite")


@pytest.fixture(scope="module")
def mixed_table(esc50_root, fsdd_root, tmp_path_factory):
    """Real ESC-50 clips of two classes over two folds, one short FSDD clip, one truncated and one
    huge-sample file."""
    folder = tmp_path_factory.mktemp("mixed")
    table = load_esc50(esc50_root)
    chosen = [it for fold in (1, 2) for label in table.classes[:2]
              for it in [i for i in table if i.label == label and i.fold == fold][:3]]  # fmt: skip
    items = [Item(name=it.name, path=it.path, label=it.label, fold=it.fold) for it in chosen]
    label0 = table.classes[0]
    items.append(Item(name="short", path=fsdd_root / "recordings" / "1_george_32.wav", label=label0, fold=1))
    items.append(Item(name="truncated", path=_truncated_wav(folder / "truncated.wav"), label=label0, fold=2))
    items.append(Item(name="huge", path=_huge_wav(folder / "huge.wav"), label=label0, fold=1))
    return DatasetTable(name="esc50", root=folder, items=items, classes=table.classes[:2])


def test_crnn_spectrograms_skip_and_report_bad_items(mixed_table, tmp_path):
    result = spectrogram_set(mixed_table, clip_db=-80, sr=SR, cache_dir=tmp_path)
    assert [uid for uid, _, _ in result.failures] == ["truncated", "huge"]
    assert "truncated" in result.failures[0][1] and "not finite" in result.failures[1][1]
    assert len(result.S) == len(mixed_table) - 2 and result.rows.tolist() == list(range(13))
    assert np.isfinite(result.S).all()
    assert not list(tmp_path.glob("spectrograms-*.npy"))  # failed items are tried again next time
    with pytest.raises(AudioError, match="truncated.*1 more item"):
        compute_spectrograms(mixed_table, clip_db=-80, sr=SR)  # rows must align with the table: an error here


def test_crnn_protocol_trains_without_bad_items_and_says_which(mixed_table, tmp_path):
    with torch_threads(1):
        result = crnn_fold_protocol(
            mixed_table, out_dir=tmp_path, variant="esc50", sr=SR, epochs=1, batch_size=8, num_threads=1
        )
    assert [uid for uid, _, _ in result.failures] == ["truncated", "huge"]
    left_out = result.predictions.config["left_out"]
    assert (
        left_out["n"] == 2 and left_out["of"] == 15 and {i["uid"] for i in left_out["items"]} == {"truncated", "huge"}
    )
    rows = [
        line.split(",")[0]
        for line in (tmp_path / "predictions.csv").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert "short" in rows  # padded to one window and scored
    assert "truncated" not in rows and "huge" not in rows


def test_csv_duplicate_item_names_both_lines(tmp_path, esc50_root):
    clip = sorted((esc50_root / "audio").glob("*.flac"))[0]
    shutil.copy(clip, tmp_path / "x.flac")
    sf.write(tmp_path / "x.wav", _noise(1.0), SR)
    table = tmp_path / "t.csv"
    table.write_text("path,label\nx.wav,a\ny.wav,b\nx.flac,a\n")
    (tmp_path / "y.wav").write_bytes((tmp_path / "x.wav").read_bytes())
    with pytest.raises(DatasetError, match=r"t.csv:4: x.flac and x.wav \(line 2\) are one item 'x'"):
        load_csv(table)


# ------------------------------------------------------------------------------- CLI: one clear line
def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory, fsdd_root) -> Path:
    """Twelve real FSDD clips of two digits and three speakers, no folds."""
    folder = tmp_path_factory.mktemp("csv")
    rows = [f"{fsdd_root / 'recordings' / f'{d}_{s}_{i}.wav'},{d},{s}"
            for d in (0, 1) for s in ("george", "jackson", "theo") for i in (10, 11)]  # fmt: skip
    path = folder / "t.csv"
    path.write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("folds", ["0", "1"])
def test_extract_folds_below_two_is_a_usage_error(small_csv, tmp_path, folds, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["extract", "--dataset", "csv", "--root", str(small_csv), "--folds", folds, "--extractor", "tiny_test_cnn",
              "--out", str(tmp_path / "x.h5")])  # fmt: skip
    assert exit_.value.code == 2
    assert "number of folds must be at least 2" in capsys.readouterr().err


def test_bad_device_is_one_line(small_csv, tmp_path, capsys):
    base = [
        "extract",
        "--dataset",
        "csv",
        "--root",
        str(small_csv),
        "--extractor",
        "tiny_test_cnn",
        "--out",
        str(tmp_path / "x.h5"),
    ]
    assert main(base + ["--device", "nope"]) == 1
    _one_line_error(capsys, "--device 'nope' is not a torch device")
    if not torch.cuda.is_available():
        assert main(base + ["--device", "cuda"]) == 1
        _one_line_error(capsys, "--device cuda:", "--device cpu")
    assert not (tmp_path / "x.h5").exists()


def test_unwritable_out_is_one_line(small_csv, tmp_path, esc50_root, capsys, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    store = tmp_path / "s.h5"
    assert main(["extract", "--dataset", "csv", "--root", str(small_csv), "--extractor", "tiny_test_cnn",
                 "--out", str(store), "--workers", "0", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    wav = sorted((esc50_root / "audio").glob("*.flac"))[0]
    under = str(a_file / "sub" / "out.x")
    commands = {
        "extract": ["extract", "--dataset", "csv", "--root", str(small_csv), "--extractor", "tiny_test_cnn", "--out"],
        "export": ["export", str(store), "--format", "csv", "--out"],
        "svm": ["svm", str(store), "--out"],
        "melspec": ["melspec", str(wav), "--out"],
    }
    for name, args in commands.items():
        assert main(args + [under]) == 1, name
        _one_line_error(capsys, "a-file is a file, not a folder")
    for name in ("extract", "export", "melspec"):  # a folder where a file is expected
        assert main(commands[name] + [str(tmp_path)]) == 1, name
        _one_line_error(capsys, "is a folder; give a file name")
    # a read-only place (simulated: the tests may run as root, for whom every folder is writable)
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path / "ro" else real_access(p, mode, **kw)
    )
    (tmp_path / "ro").mkdir()
    for name, args in commands.items():
        assert main(args + [str(tmp_path / "ro" / "out.x")]) == 1, name
        _one_line_error(capsys, "permission denied")


def test_melspec_sr_zero_is_a_usage_error(esc50_root, tmp_path, capsys):
    wav = sorted((esc50_root / "audio").glob("*.flac"))[0]
    with pytest.raises(SystemExit) as exit_:
        main(["melspec", str(wav), "--sr", "0", "--out", str(tmp_path / "x.npy")])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    with pytest.raises(Exception, match="sample rate must be positive"):
        load_audio(wav, sr=0)


def test_fewer_groups_than_folds_is_one_line(small_csv, tmp_path, capsys):
    for command in (
        ["datasets", "inspect"],
        ["extract", "--extractor", "tiny_test_cnn", "--out", str(tmp_path / "x.h5")],
    ):
        assert (
            main(command + ["--dataset", "csv", "--root", str(small_csv), "--group-column", "speaker", "--folds", "4"])
            == 1
        )
        _one_line_error(capsys, "t.csv", "cannot make 4 group-aware folds from 3 group(s)")


def test_latin1_csv_is_one_line_and_bom_csv_is_accepted(small_csv, tmp_path, capsys):
    text = small_csv.read_text().replace(",george", ",géorge")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(text.encode("latin-1"))
    assert main(["datasets", "inspect", "--dataset", "csv", "--root", str(latin)]) == 1
    _one_line_error(capsys, "latin.csv:", "not UTF-8 text", "save the file as UTF-8")
    bom = tmp_path / "bom.csv"
    bom.write_bytes(text.encode("utf-8-sig"))
    assert (
        main(
            ["datasets", "inspect", "--dataset", "csv", "--root", str(bom), "--group-column", "speaker", "--folds", "3"]
        )
        == 0
    )
    assert len(load_csv(bom, group_column="speaker", n_folds=3)) == 12


# ------------------------------------------------------------------------------------------ disk full
def _fail_writes_after(monkeypatch, n_ok: int):
    """os.write in the store module raises ENOSPC after ``n_ok`` successful calls, once half a record is out."""
    calls = [0]
    real_write = os.write

    def write(fd, data):
        calls[0] += 1
        if calls[0] > n_ok:
            real_write(fd, bytes(data[: len(data) // 2]))  # a partial record, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store_module.os, "write", write)


def test_disk_full_while_writing_the_store(esc50_root, tmp_path, capsys, monkeypatch):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 10)
    args = ["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn", "--batch-size", "2",
            "--workers", "0", "-q"]  # fmt: skip
    clean = tmp_path / "clean.h5"
    assert main(args + ["--out", str(clean)]) == 0
    out = tmp_path / "full.h5"
    with monkeypatch.context() as patch:
        _fail_writes_after(patch, 3)  # the open record, then two batches
        assert main(args + ["--out", str(out)]) == 1
    _one_line_error(capsys, "no space left on device", "run the same command again")
    assert journal_path(out).exists()
    partial = FeatureStore.open(out)  # the journal holds exactly the committed batches
    assert partial.n_done == 4 and partial.n_pending == 6
    assert main(args + ["--out", str(out)]) == 0  # space freed: the rerun completes
    capsys.readouterr()
    done, ref = FeatureStore.open(out), FeatureStore.open(clean)
    assert done.complete and not journal_path(out).exists()
    np.testing.assert_array_equal(done.features(), ref.features())


def test_disk_full_while_consolidating_keeps_the_journal(esc50_root, tmp_path, capsys, monkeypatch):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 4)
    args = ["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn", "--workers", "0",
            "--out", str(tmp_path / "s.h5"), "-q"]  # fmt: skip
    real = store_module._write_h5_file
    state = {"calls": 0}

    def full_on_second(tmp, *a, **kw):
        state["calls"] += 1
        if state["calls"] == 2:  # the first writes the empty store; the second consolidates the run
            Path(tmp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real(tmp, *a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_write_h5_file", full_on_second)
        assert main(args) == 1
    _one_line_error(capsys, "no space left on device")
    out = tmp_path / "s.h5"
    assert journal_path(out).exists() and not out.with_name("s.h5.tmp").exists()
    assert FeatureStore.open(out).n_done == 4  # readable from the journal
    assert main(args) == 0
    assert FeatureStore.open(out).complete and not journal_path(out).exists()


def test_too_little_space_for_the_store_file_is_refused_before_hdf5_writes(esc50_root, tmp_path, capsys, monkeypatch):
    """HDF5 cannot recover from a write that fails half-way (freeing its file objects then crashes the
    process), so the store file is only written when the disk has room for it."""
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 4)
    out = tmp_path / "s.h5"
    args = ["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn", "--workers", "0",
            "--out", str(out), "-q"]  # fmt: skip
    real = shutil.disk_usage
    calls = [0]

    def nearly_full(path):
        calls[0] += 1
        usage = real(path)
        return usage._replace(free=usage.free if calls[0] == 1 else 1000)  # room to create, none to consolidate

    written = []
    real_writer = store_module._write_h5_file
    monkeypatch.setattr(store_module, "_write_h5_file", lambda *a, **kw: written.append(a[0]) or real_writer(*a, **kw))
    with monkeypatch.context() as patch:
        patch.setattr(store_module.shutil, "disk_usage", nearly_full)
        assert main(args) == 1
    _one_line_error(capsys, "no space left on device to write the store", "MiB needed")
    assert len(written) == 1  # only the empty store was written; HDF5 never saw the full disk
    assert journal_path(out).exists() and FeatureStore.open(out).n_done == 4
    assert main(args) == 0
    assert FeatureStore.open(out).complete


def test_disk_full_during_export_leaves_no_tmp(esc50_root, tmp_path, capsys, monkeypatch):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 3)
    store = tmp_path / "s.h5"
    assert main(["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn", "--workers", "0",
                 "--out", str(store), "-q"]) == 0  # fmt: skip
    capsys.readouterr()

    def full(arrays, out):
        Path(out).write_text("name,neuron_0\n1-")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "_export_csv", full)
    out = tmp_path / "x.csv"
    assert main(["export", str(store), "--out", str(out)]) == 1
    _one_line_error(capsys, "no space left on device")
    assert list(tmp_path.glob("x.csv*")) == []


# ------------------------------------------------------------------------------------------- security
def test_unpinned_downloads_are_refused_without_a_request(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path))
    requested = []
    monkeypatch.setattr("pooch.retrieve", lambda url, *args, **kwargs: requested.append(url))
    for digest in (None, "dcbb9e9d"):
        spec = WeightsSpec(name="t/x", url="http://127.0.0.1:9/x.pth", sha256=digest, filename="x.pth")
        with pytest.raises(WeightsError, match="does not download it") as err:
            resolve_weights(spec)
        message = str(err.value)
        assert "weights_path=FILE" in message and "--weights" not in message
        assert str(tmp_path / "weights" / "x.pth") in message
    assert requested == []
    from specfusion.features.extractors import image_cnns, openl3

    for spec in (openl3.OPENL3_WEIGHTS, image_cnns.IMAGE_CNNS["vgg19"].weights):
        with pytest.raises(WeightsError, match="does not download it"):
            resolve_weights(spec)
    assert requested == []


def test_gz_weights_are_streamed_to_disk_with_a_cap(tmp_path, monkeypatch):
    packed = tmp_path / "w.h5.gz"
    with gzip.open(packed, "wb") as handle:
        handle.write(b"\0" * (3 << 20))
    target = tmp_path / "w.h5"
    with pytest.raises(WeightsError, match="decompresses to more than"):
        gunzip_capped(packed, target, max_bytes=1 << 20)
    assert not target.exists() and not list(tmp_path.glob("*.part"))
    assert gunzip_capped(packed, target).stat().st_size == 3 << 20
    from specfusion.features.nets import openl3 as l3net

    monkeypatch.setattr(l3net, "MAX_H5_BYTES", 1 << 20)
    with pytest.raises(WeightsError, match="decompresses to more than"):
        l3net.read_keras_weights(packed)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_rejected_checkpoints_never_suggest_weights_only_false(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "x": _Evil()}, path)
    with pytest.raises(WeightsError) as err:
        load_state_dict(path)
    message = str(err.value)
    assert "refused" in message and "print" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "can still be loaded" not in message
    with pytest.raises(StoreError) as err:
        CRNNClassifier.load(path)
    assert "weights_only" not in str(err.value) and "can still be loaded" not in str(err.value)


def test_metrics_json_of_the_crnn_cli_lists_left_out_items(mixed_table, tmp_path, capsys):
    rows = [f"{it.path},{it.label},{it.fold}" for it in mixed_table]
    table_csv = tmp_path / "t.csv"
    table_csv.write_text("path,label,fold\n" + "\n".join(rows) + "\n")
    with torch_threads(1):
        code = main(["crnn", "--dataset", "csv", "--root", str(table_csv), "--out", str(tmp_path / "out"), "--epochs", "1",
                     "--batch-size", "8", "--sr", str(SR), "-q"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "(on 13 of 15 items)" in printed and "2 item(s) left out" in printed and "truncated" in printed
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["left_out"]["n"] == 2
    assert sorted(Path(i["path"]).stem for i in metrics["left_out"]["items"]) == ["huge", "truncated"]
