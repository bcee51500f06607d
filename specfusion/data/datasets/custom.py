"""Users' own labelled audio: a class-per-folder tree, or a CSV ``path,label[,fold][,partition][,group]``.

Without folds, stratified folds are made with a fixed seed (group-aware when a group column is given),
so every dataset gives the same kind of :class:`~specfusion.data.datasets.table.DatasetTable`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from specfusion.data.datasets._io import check_missing_policy, missing_audio, read_csv_rows, summarise_problems
from specfusion.data.datasets.table import DEV, TEST, TEST_FOLD, DatasetTable, Item, index_audio_files, make_folds
from specfusion.errors import DatasetError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_PARTITION_NAMES = {
    "dev": DEV, "development": DEV, "train": DEV, "training": DEV, "devel": DEV,
    "test": TEST, "eval": TEST, "evaluation": TEST,
}  # fmt: skip


def _assign_folds(
    items: list[Item], *, n_folds: int, seed: int, use_groups: bool, source: Path | None = None
) -> list[Item]:
    """Give development items without a fold a stratified (group-aware) fold; DatasetError naming ``source``."""
    dev = [i for i, item in enumerate(items) if item.partition == DEV]
    labels = [items[i].label for i in dev]
    groups = [items[i].group or items[i].name for i in dev] if use_groups else None
    try:
        folds = make_folds(labels, n_folds=n_folds, groups=groups, seed=seed)
    except DatasetError as err:
        if source is None or err.path is not None:
            raise
        raise DatasetError(str(err), path=source) from None
    out = list(items)
    for i, fold in zip(dev, folds):
        out[i] = Item(**{**vars(items[i]), "fold": int(fold)})
    return out


def load_folder(root, *, n_folds: int = 4, seed: int = 0, metric: str = "accuracy") -> DatasetTable:
    """A class-per-folder tree: ``root/<label>/**/<file>.{wav,flac,ogg}``; everything is development data.

    Parameters
    ----------
    root : path-like
        Folder whose sub-folders are the classes.
    n_folds : int
        Number of stratified folds to make.
    seed : int
        Seed of the folds.
    metric : {"accuracy", "macro_f1"}
        Evaluation measure.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("folder not found", path=root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items, problems = [], []
    for class_dir in class_dirs:
        files = index_audio_files(class_dir, extensions=AUDIO_EXTENSIONS, problems=problems)
        if not files:
            problems.append(f"class folder {class_dir.name!r} holds no audio files: class left out")
            continue
        for key, path in files.items():
            items.append(Item(name=f"{class_dir.name}/{key}", path=path, label=class_dir.name, fold=0, partition=DEV))
    if not items:
        raise DatasetError("no audio found: expected one sub-folder per class holding .wav/.flac/.ogg files", path=root)
    classes = sorted({item.label for item in items})
    items = _assign_folds(items, n_folds=n_folds, seed=seed, use_groups=False, source=root)
    table = DatasetTable(name="folder", root=root, items=items, classes=classes, metric=metric, problems=problems)
    table.check_folds()
    return table


def load_csv(
    csv_path,
    *,
    audio_root=None,
    group_column: str | None = None,
    n_folds: int = 4,
    seed: int = 0,
    metric: str = "accuracy",
    missing: str = "error",
) -> DatasetTable:
    """A CSV with columns ``path,label`` and optionally ``fold``, ``partition`` and a group column.

    Parameters
    ----------
    csv_path : path-like
        The CSV file. ``path`` is relative to ``audio_root`` (default: the CSV's folder) or absolute.
    audio_root : path-like, optional
        Base folder of relative paths.
    group_column : str, optional
        Column whose values must stay in one fold (speaker, session); default ``group`` if present.
    n_folds, seed : int
        Folds made when there is no ``fold`` column (stratified, group-aware with a group column).
    metric : {"accuracy", "macro_f1"}
        Evaluation measure.
    missing : {"error", "report", "keep"}
        Rows whose audio is missing raise, are dropped and listed in ``problems``, or are kept and listed.

    Notes
    -----
    ``partition`` accepts dev/development/train and test/eval/evaluation; without the column, every row
    is development data. With a ``fold`` column, development rows need a positive integer fold.
    """
    check_missing_policy(missing)
    csv_path = Path(csv_path)
    base = Path(audio_root) if audio_root is not None else csv_path.parent
    items, problems = [], []
    seen: dict[str, int] = {}
    names: dict[str, tuple[str, int]] = {}  # item name (path without extension) -> (path, line)
    files: dict[str, tuple[str, int]] = {}  # the file itself (links and ".." resolved) -> (path, line)
    has_fold = has_partition = False
    rows = read_csv_rows(csv_path, required=("path", "label"))
    header: list[str] = []
    for line, row in rows:
        header = header or list(row)
        has_fold = has_fold or "fold" in row
        has_partition = has_partition or "partition" in row
        group_key = group_column or ("group" if "group" in row else None)
        if group_key is not None and group_key not in row:
            raise DatasetError(f"group column {group_key!r} not in the header", path=csv_path, line=1)
        rel, label = row["path"], row["label"]
        if not rel:
            raise DatasetError("empty path", path=csv_path, line=line)
        if not label:
            raise DatasetError(f"empty label for {rel}", path=csv_path, line=line)
        if rel in seen:
            raise DatasetError(f"duplicate row for {rel} (first on line {seen[rel]})", path=csv_path, line=line)
        seen[rel] = line
        partition = DEV
        if "partition" in row:
            partition = _PARTITION_NAMES.get(row["partition"].lower())
            if partition is None:
                raise DatasetError(f"unknown partition {row['partition']!r}; use dev or test", path=csv_path, line=line)
        fold = TEST_FOLD
        if "fold" in row and partition == DEV:
            try:
                fold = int(row["fold"])
            except ValueError:
                fold = -1
            if fold < 1:
                raise DatasetError(f"fold must be a positive integer, got {row['fold']!r}", path=csv_path, line=line)
        name = Path(rel).with_suffix("").as_posix()
        other, other_line = names.setdefault(name, (rel, line))
        if other_line != line:
            raise DatasetError(f"{rel} and {other} (line {other_line}) are one item {name!r} (same path without the "
                               "extension); keep one of them", path=csv_path, line=line)  # fmt: skip
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        same = files.setdefault(os.path.realpath(path), (rel, line))
        if same[1] != line:
            raise DatasetError(f"{rel} is the same file as {same[0]} (line {same[1]}): every file may be listed once",
                               path=csv_path, line=line)  # fmt: skip
        if not path.is_file() and not missing_audio(
            str(path), path=csv_path, line=line, missing=missing, problems=problems, audio=path
        ):
            continue
        group = row.get(group_key) if group_key else None
        items.append(Item(name=name, path=path, label=label, fold=fold, partition=partition, group=group or None))
    if not items:
        raise DatasetError("no usable rows", path=csv_path)
    classes = sorted({item.label for item in items})
    if not has_fold:
        items = _assign_folds(
            items, n_folds=n_folds, seed=seed, use_groups=any(item.group for item in items), source=csv_path
        )
    table = DatasetTable(
        name="csv", root=csv_path, items=items, classes=classes, metric=metric, problems=summarise_problems(problems)
    )
    test_labels = set(np.unique([i.label for i in items if i.partition == TEST]))
    unseen = test_labels - {i.label for i in items if i.partition == DEV}
    if unseen:
        table.problems.append(f"test label(s) never seen in development data: {', '.join(sorted(unseen))}")
    table.check_folds()
    table.check_groups()
    if group_column is None and not any(item.group for item in items):
        _warn_about_grouping_columns(table, header)
    return table


#: Column names that usually mark a grouping of items that must stay in one fold.
GROUPING_NAMES = (
    "speaker",
    "session",
    "location",
    "recording",
    "subject",
    "participant",
    "user",
    "device",
    "source",
    "group",
)


def _warn_about_grouping_columns(table: DatasetTable, header: list[str]) -> None:
    """Add a problem naming the columns that look like a grouping when none was used for the folds."""
    candidates = [c for c in header if any(word in c.lower() for word in GROUPING_NAMES)]
    if candidates:
        message = (f"column(s) {', '.join(repr(c) for c in candidates)} look like a grouping (speaker, session, recording ...) "
                   f"but no group column was given: items of one group may sit in several folds; pass group_column="
                   f"{candidates[0]!r} (recipe: [dataset] options = {{ group_column = ... }}) to keep each group in one fold")  # fmt: skip
        log.warning("%s: %s", table.name, message)
        table.problems.append(message)
