"""Every loader on the real meta files in $SPECFUSION_DATA, and clear errors for bad meta data."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from specfusion.data.datasets import (
    TEST_FOLD,
    load_csv,
    load_dataset,
    load_dcase2017,
    load_dcase2018,
    load_esc50,
    load_folder,
    make_folds,
)
from specfusion.data.datasets.dcase import DCASE2017_SCENES
from specfusion.errors import ConfigError, DatasetError


# ---------------------------------------------------------------- ESC-50
def test_esc50_development_only_copy(esc50_root):
    table = load_esc50(esc50_root)
    assert len(table) == 1600 and len(table.classes) == 50
    assert table.classes[0] == "dog" and table.classes[49] == "hand_saw"  # ESC-50's target order
    assert table.fold_ids() == [1, 2, 3, 4]
    assert len(table.test()) == 0 and len(table.dev()) == 1600
    assert all(item.path.suffix == ".flac" and item.path.is_file() for item in table)
    assert all(n == 8 for counter in table.counts().values() for n in counter.values())
    assert table.problems == [] and table.metric == "accuracy"
    split = table.predefined_split()
    assert split.get_n_splits() == 4
    for _train, test in split.split():
        assert len(test) == 400 and len(set(table.folds()[test])) == 1


def _esc50_copy(esc50_root, tmp_path, rows):
    """A small ESC-50 layout: the given csv rows (real ones), audio symlinked."""
    root = tmp_path / "esc"
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(exist_ok=True)
    lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines()
    (root / "meta" / "esc50.csv").write_text("\n".join([lines[0]] + rows) + "\n")
    for row in rows:
        stem = Path(row.split(",")[0]).stem
        src = esc50_root / "audio" / f"{stem}.flac"
        if src.exists() and not (root / "audio" / src.name).exists():
            os.symlink(src, root / "audio" / src.name)
    return root, lines


def test_esc50_fold5_is_the_test_partition(esc50_root, tmp_path):
    lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines()
    rows = [row for row in lines[1:] if row.split(",")[1] == "1"][:20] + [
        row for row in lines[1:] if row.split(",")[1] == "2"
    ][:20]
    # pretend the fold-2 rows are fold 5 of the full corpus
    rows = [row.replace(",2,", ",5,", 1) if row.split(",")[1] == "2" else row for row in rows]
    root, _ = _esc50_copy(esc50_root, tmp_path, rows)
    table = load_esc50(root)
    assert set(table.partitions()) == {"dev", "test"} and len(table.test()) == 20
    assert all(item.fold == TEST_FOLD for item in table.test())
    with pytest.raises(DatasetError, match="development items only"):
        table.predefined_split()


def test_esc50_errors_name_file_and_line(esc50_root, tmp_path):
    lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines()
    root, _ = _esc50_copy(esc50_root, tmp_path, lines[1:4] + [lines[2]])
    with pytest.raises(DatasetError, match=r"esc50.csv:5: duplicate row"):
        load_esc50(root)
    root, _ = _esc50_copy(esc50_root, tmp_path, lines[1:3] + ["1-9999-A-0.wav,1,0,dog,True,1-9999,A"])
    with pytest.raises(DatasetError, match=r"esc50.csv:4: audio file not found"):
        load_esc50(root)
    table = load_esc50(root, missing="report")
    assert len(table) == 2 and "1-9999-A-0" in table.problems[0]
    root, _ = _esc50_copy(esc50_root, tmp_path, lines[1:3] + [lines[3].replace(",1,", ",x,", 1)])
    with pytest.raises(DatasetError, match=r"esc50.csv:4: fold and target must be integers"):
        load_esc50(root)
    bad = lines[3].split(",")
    bad[3] = ""
    root, _ = _esc50_copy(esc50_root, tmp_path, lines[1:3] + [",".join(bad)])
    with pytest.raises(DatasetError, match=r"esc50.csv:4: empty label"):
        load_esc50(root)
    root, _ = _esc50_copy(esc50_root, tmp_path, lines[1:3] + ["1-100032-A-0.wav,1"])
    with pytest.raises(DatasetError, match=r"esc50.csv:4: malformed row"):
        load_esc50(root)


def test_fold_without_a_class_is_a_warning(esc50_root, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="specfusion")
    lines = (esc50_root / "meta" / "esc50.csv").read_text().splitlines()
    dogs = [row for row in lines[1:] if row.split(",")[3] == "dog"]
    roosters = [row for row in lines[1:] if row.split(",")[3] == "rooster" and row.split(",")[1] != "2"]
    root, _ = _esc50_copy(esc50_root, tmp_path, dogs + roosters)
    table = load_esc50(root)
    assert any("fold 2 has no examples of 1 class(es): rooster" in p for p in table.problems)
    assert "rooster" in caplog.text


# ---------------------------------------------------------------- DCASE 2018 task 5
def test_dcase2018_real_meta_files(dcase2018_root):
    table = load_dcase2018(dcase2018_root, missing="keep", channels="mean")
    dev, test = table.dev(), table.test()
    assert len(dev) == 72984 and len(test) == 72972
    assert table.metric == "macro_f1" and len(table.classes) == 9
    assert dev[0].group == "s100" and dev[0].label == "other"
    assert any("NOT the official folds" in p for p in table.problems)
    assert any("145956 audio file(s) not found" in p for p in table.problems)
    # generated folds keep sessions together
    sessions = {}
    for item in dev:
        sessions.setdefault(item.group, set()).add(item.fold)
    assert all(len(folds) == 1 for folds in sessions.values())
    assert dev.fold_ids() == [1, 2, 3, 4]


def test_dcase2018_missing_audio_is_an_error_by_default(dcase2018_root):
    with pytest.raises(DatasetError, match=r"meta.txt:1: audio file not found: audio/DevNode1_ex100_1.wav"):
        load_dcase2018(dcase2018_root)


def _sins_layout(dcase2018_root, formats_dir, tmp_path, n=8):
    """A DCASE 2018 task 5 development layout: real meta rows, the real 4-channel clip as audio, setup files."""
    root = tmp_path / "DCASE2018-task5-dev"
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    rows = (dcase2018_root / "dev" / "meta.txt").read_text().splitlines()[:n]
    (root / "meta.txt").write_text("\n".join(rows))
    for row in rows:
        os.symlink(formats_dir / "sins_4ch_16khz_16bit_10s.wav", root / row.split("\t")[0])
    for k in range(1, 5):
        test_rows = rows[(k - 1) * n // 4 : k * n // 4]
        train_rows = [r for r in rows if r not in test_rows]
        (root / "evaluation_setup" / f"fold{k}_train.txt").write_text("\n".join(train_rows) + "\n")
        (root / "evaluation_setup" / f"fold{k}_test.txt").write_text(
            "\n".join(r.split("\t")[0] for r in test_rows) + "\n"
        )
        (root / "evaluation_setup" / f"fold{k}_evaluate.txt").write_text(
            "\n".join("\t".join(r.split("\t")[:2]) for r in test_rows) + "\n"
        )
    return root, rows


def test_dcase2018_official_setup_files_and_channels(dcase2018_root, formats_dir, tmp_path):
    root, rows = _sins_layout(dcase2018_root, formats_dir, tmp_path)
    table = load_dcase2018(root)
    assert table.channels == "each" and len(table) == 4 * len(rows)
    assert sorted({item.channel for item in table}) == [0, 1, 2, 3]
    assert table[0].uid.endswith("@ch0") and len(set(table.uids())) == len(table)
    assert table.folds().tolist() == [1] * 8 + [2] * 8 + [3] * 8 + [4] * 8
    assert not any("NOT the official" in p for p in table.problems)
    mean = load_dcase2018(root, channels="mean")
    assert len(mean) == len(rows) and mean[0].channel is None
    # a contradiction between setup and meta is reported with file and line
    evaluate = root / "evaluation_setup" / "fold1_evaluate.txt"
    lines = evaluate.read_text().splitlines()
    lines[1] = lines[1].split("\t")[0] + "\tcooking"
    evaluate.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"fold1_evaluate.txt:2: label 'cooking' .* contradicts meta.txt"):
        load_dcase2018(root)


def test_dcase2018_unknown_label_and_malformed_row(dcase2018_root, formats_dir, tmp_path):
    root, rows = _sins_layout(dcase2018_root, formats_dir, tmp_path)
    (root / "meta.txt").write_text("\n".join(rows[:3] + [rows[3].replace("\tother\t", "\tgardening\t")]))
    with pytest.raises(DatasetError, match=r"meta.txt:4: unknown label 'gardening'"):
        load_dcase2018(root)
    (root / "meta.txt").write_text("\n".join(rows[:2] + ["audio/x.wav"]))
    with pytest.raises(DatasetError, match=r"meta.txt:3: malformed row"):
        load_dcase2018(root)
    (root / "meta.txt").write_text("\n".join(rows[:2] + [rows[1]]))
    with pytest.raises(DatasetError, match=r"meta.txt:3: duplicate row"):
        load_dcase2018(root)


# ---------------------------------------------------------------- DCASE 2017 task 1
def test_dcase2017_tut_layout_with_real_clips(formats_dir, tmp_path):
    root = tmp_path / "TUT-acoustic-scenes-2017-development"
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    scenes = ["beach", "cafe/restaurant", "tram", "home"]
    rows = []
    for i in range(8):
        scene, location = scenes[i % 4], f"b{i // 4:03d}"
        name = f"audio/{location}_{i * 10}_{i * 10 + 10}.wav"
        src = "tut_stereo_44khz_24bit_10s.wav" if i % 2 else "tut_stereo_44khz_16bit_10s.wav"
        os.symlink(formats_dir / src, root / name)
        rows.append(f"{name}\t{scene}\t{location}")
    (root / "meta.txt").write_text("\n".join(rows) + "\n")
    for k in range(1, 5):
        test = rows[(k - 1) * 2 : k * 2]
        (root / "evaluation_setup" / f"fold{k}_train.txt").write_text(
            "\n".join("\t".join(r.split("\t")[:2]) for r in rows if r not in test) + "\n"
        )
        (root / "evaluation_setup" / f"fold{k}_evaluate.txt").write_text(
            "\n".join("\t".join(r.split("\t")[:2]) for r in test) + "\n"
        )
        (root / "evaluation_setup" / f"fold{k}_test.txt").write_text("\n".join(r.split("\t")[0] for r in test) + "\n")
    evaluation = tmp_path / "TUT-acoustic-scenes-2017-evaluation"
    (evaluation / "audio").mkdir(parents=True)
    os.symlink(formats_dir / "tut_stereo_44khz_16bit_10s.wav", evaluation / "audio" / "1.wav")
    (evaluation / "meta.txt").write_text("audio/1.wav\tcafe/restaurant\n")
    table = load_dcase2017(tmp_path)
    assert table.classes == DCASE2017_SCENES and "cafe/restaurant" in table.classes
    assert len(table.dev()) == 8 and len(table.test()) == 1
    assert table.dev().folds().tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
    assert table.test()[0].label == "cafe/restaurant"
    assert table.dev()[0].group == "b000"
    assert any("no examples" in p for p in table.problems)  # 2 items per fold cannot hold 4 scenes


# ---------------------------------------------------------------- users' own data
def test_csv_with_partition_and_speaker_groups(fsdd_root):
    table = load_csv(fsdd_root / "fsdd.csv", group_column="speaker")
    assert len(table) == 3000 and table.classes == [str(d) for d in range(10)]
    assert len(table.test()) == 300 and all(i.fold == TEST_FOLD for i in table.test())
    dev = table.dev()
    assert dev.fold_ids() == [1, 2, 3, 4]
    speakers = {}
    for item in dev:
        speakers.setdefault(item.group, set()).add(item.fold)
    assert all(len(f) == 1 for f in speakers.values()) and len(speakers) == 6
    again = load_csv(fsdd_root / "fsdd.csv", group_column="speaker")
    assert again.folds().tolist() == table.folds().tolist()  # fixed seed


def test_csv_errors(fsdd_root, tmp_path):
    csv = tmp_path / "mine.csv"
    wav = fsdd_root / "recordings" / "0_jackson_0.wav"
    csv.write_text(f"path,label\n{wav},zero\n{wav},zero\n")
    with pytest.raises(DatasetError, match=r"mine.csv:3: duplicate row"):
        load_csv(csv)
    csv.write_text(f"path,label\n{wav},\n")
    with pytest.raises(DatasetError, match=r"mine.csv:2: empty label"):
        load_csv(csv)
    csv.write_text(f"file,label\n{wav},zero\n")
    with pytest.raises(DatasetError, match=r"mine.csv:1: missing column\(s\) path"):
        load_csv(csv)
    csv.write_text(f"path,label,fold\n{wav},zero,first\n")
    with pytest.raises(DatasetError, match=r"mine.csv:2: fold must be a positive integer"):
        load_csv(csv)
    csv.write_text(f"path,label,partition\n{wav},zero,holdout\n")
    with pytest.raises(DatasetError, match=r"mine.csv:2: unknown partition"):
        load_csv(csv)
    csv.write_text("path,label\nnope.wav,zero\n")
    with pytest.raises(DatasetError, match=r"mine.csv:2: audio file not found"):
        load_csv(csv)


def test_class_per_folder_tree(fsdd_root, tmp_path):
    for digit in ("3", "7"):
        (tmp_path / digit).mkdir()
        for wav in sorted((fsdd_root / "recordings").glob(f"{digit}_*_1*.wav"))[:12]:
            os.symlink(wav, tmp_path / digit / wav.name)
    (tmp_path / "empty").mkdir()
    table = load_folder(tmp_path)
    assert table.classes == ["3", "7"] and len(table) == 24
    assert any("'empty' holds no audio" in p for p in table.problems)
    folds = table.folds()
    labels = table.labels()
    for k in (1, 2, 3, 4):  # stratified: every fold has both classes equally
        assert (labels[folds == k] == "3").sum() == (labels[folds == k] == "7").sum() == 3
    with pytest.raises(DatasetError, match="no audio found"):
        load_folder(tmp_path / "empty")


def test_make_folds_and_unknown_dataset():
    labels = ["a"] * 8 + ["b"] * 8
    folds = make_folds(labels, n_folds=4, seed=3)
    assert sorted(set(folds)) == [1, 2, 3, 4] and np.array_equal(folds, make_folds(labels, n_folds=4, seed=3))
    with pytest.raises(ConfigError, match="choose one of"):
        load_dataset("librispeech", ".")


def _tiny_csv(tmp_path, header, rows):
    """A CSV of generated 0.5-s clips: ``rows`` are (label, extra column values...)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    lines = [",".join(header)]
    for i, values in enumerate(rows):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
        lines.append(",".join([path.name, *values]))
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def test_a_column_that_looks_like_a_grouping_is_named_when_unused(tmp_path, caplog):
    rows = [(label, f"spk{i % 4}") for i, label in enumerate(["a", "b"] * 8)]
    csv_path = _tiny_csv(tmp_path, ["path", "label", "Speaker_ID"], rows)
    with caplog.at_level(logging.WARNING):
        table = load_csv(csv_path, n_folds=2)
    assert any("'Speaker_ID' look like a grouping" in p and "group_column='Speaker_ID'" in p for p in table.problems)
    grouped = load_csv(csv_path, n_folds=2, group_column="Speaker_ID")
    assert not any("look like a grouping" in p for p in grouped.problems)
    (tmp_path / "plain").mkdir()
    plain = load_csv(
        _tiny_csv(tmp_path / "plain", ["path", "label", "loudness"], [(r[0], "1") for r in rows]), n_folds=2
    )
    assert not any("look like a grouping" in p for p in plain.problems)


def test_groups_per_fold_and_groups_shared_with_the_test_partition(tmp_path):
    rows = [(label, str(1 + i % 2), "dev", f"spk{i % 2}") for i, label in enumerate(["a", "b"] * 4)]
    rows += [("a", "", "test", "spk0"), ("b", "", "test", "spk9")]
    table = load_csv(
        _tiny_csv(tmp_path, ["path", "label", "fold", "partition", "speaker"], rows), group_column="speaker"
    )
    assert table.groups_by_fold() == {("dev", 1): ["spk0"], ("dev", 2): ["spk1"], ("test", 0): ["spk0", "spk9"]}
    assert any("test partition shares 1 group(s) with development (e.g. spk0)" in p for p in table.problems)
    summary = table.summary()
    assert (
        "groups per fold:" in summary
        and "dev/1: 1 group(s): spk0" in summary
        and "test: 2 group(s): spk0, spk9" in summary
    )


def test_a_group_split_over_development_folds_is_a_warning(tmp_path):
    rows = [("a", "1", "dev", "spk0"), ("b", "1", "dev", "spk2"), ("a", "2", "dev", "spk0"), ("b", "2", "dev", "spk1"),
            ("a", "1", "dev", "spk2"), ("b", "2", "dev", "spk1")]  # fmt: skip
    table = load_csv(
        _tiny_csv(tmp_path, ["path", "label", "fold", "partition", "speaker"], rows), group_column="speaker"
    )
    assert any("1 group(s) appear in more than one development fold (e.g. spk0)" in p for p in table.problems)


def test_fsdd_speakers_fall_in_one_fold_each(fsdd_root):
    table = load_csv(fsdd_root / "fsdd.csv", group_column="speaker")
    dev_groups = [g for (partition, _), groups in table.groups_by_fold().items() if partition == "dev" for g in groups]
    assert len(dev_groups) == len(set(dev_groups)) == 6  # each speaker in exactly one development fold
    assert any(
        "test partition shares 6 group(s)" in p for p in table.problems
    )  # FSDD's official split is by take, not speaker


def _write_clip(path: Path, seed: int = 0) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(seed).standard_normal(8000)).astype(np.float32), 16000)
    return path


def test_csv_naming_one_file_twice_through_another_path_is_an_error(tmp_path):
    """``audio/x.flac`` and ``audio/../audio/x.flac`` are one recording: accepting both would leak test data."""
    _write_clip(tmp_path / "audio" / "x.flac")
    _write_clip(tmp_path / "audio" / "y.flac", seed=1)
    rows = ["path,label,fold", "audio/x.flac,dog,1", "audio/y.flac,cat,1", "audio/../audio/x.flac,dog,2"]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        DatasetError, match=r"audio/\.\./audio/x\.flac is the same file as audio/x\.flac \(line 2\)"
    ) as err:
        load_csv(tmp_path / "data.csv")
    assert err.value.line == 4
    # through a symbolic link too
    rows[-1] = "link/x.flac,dog,2"
    (tmp_path / "link").symlink_to(tmp_path / "audio")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="is the same file as audio/x.flac"):
        load_csv(tmp_path / "data.csv")


def test_a_folder_with_one_name_in_two_formats_is_an_error_naming_both(tmp_path):
    for label in ("dog", "cat"):
        for i in range(4):
            _write_clip(tmp_path / label / f"{label}{i}.wav", seed=i)
    _write_clip(tmp_path / "dog" / "dog0.flac", seed=9)  # never silently one of the two
    with pytest.raises(DatasetError, match=r"dog0\.flac and dog0\.wav differ only in their extension"):
        load_folder(tmp_path)
    (tmp_path / "dog" / "dog0.flac").unlink()
    assert len(load_folder(tmp_path, n_folds=2)) == 8


def test_predict_uses_both_files_of_one_name_in_two_formats(tmp_path):
    """``specfusion predict DIR`` scores every file: x.wav and x.flac are two inputs, none dropped."""
    from specfusion.cli.predict import audio_paths

    for name in ("x.wav", "x.flac", "y.wav"):
        _write_clip(tmp_path / name)
    paths, problems = audio_paths([str(tmp_path)])
    assert sorted(p.name for p in paths) == ["x.flac", "x.wav", "y.wav"] and problems == []
