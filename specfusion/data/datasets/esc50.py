"""ESC-50 in its official layout: ``meta/esc50.csv`` and ``audio/``.

Folds 1-4 are the development folds for 4-fold cross-validation and fold 5 the held-out test partition
(the paper's protocol); a copy without fold 5 loads as development-only. Audio converted to another
container with the same stem (e.g. ``.flac``) is found.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specfusion.data.datasets._io import check_missing_policy, missing_audio, read_csv_rows, summarise_problems
from specfusion.data.datasets.table import DEV, TEST, TEST_FOLD, DatasetTable, Item, find_audio, index_audio_files
from specfusion.errors import DatasetError


def load_esc50(root, *, test_folds: Sequence[int] = (5,), missing: str = "error") -> DatasetTable:
    """Load ESC-50 from ``root`` (the folder holding ``meta/`` and ``audio/``).

    Parameters
    ----------
    root : path-like
        Dataset root.
    test_folds : sequence of int
        Folds forming the test partition (the paper: fold 5).
    missing : {"error", "report", "keep"}
        A row whose audio is missing raises, is dropped and listed in ``problems``, or is kept (with the
        path it should have) and listed.

    Returns
    -------
    DatasetTable
        Metric accuracy, classes ordered by ESC-50's ``target`` index.
    """
    check_missing_policy(missing)
    root = Path(root)
    csv_path = root / "meta" / "esc50.csv"
    items, problems = [], []
    audio = index_audio_files(root / "audio", problems=problems)
    names: dict[int, str] = {}
    targets: dict[str, tuple[int, int]] = {}  # category -> (target, first line)
    seen: dict[str, int] = {}
    for line, row in read_csv_rows(csv_path, required=("filename", "fold", "target", "category")):
        filename, category = row["filename"], row["category"]
        if not filename:
            raise DatasetError("empty filename", path=csv_path, line=line)
        if not category:
            raise DatasetError(f"empty label for {filename}", path=csv_path, line=line)
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError:
            raise DatasetError(
                f"fold and target must be integers, got {row['fold']!r} and {row['target']!r}", path=csv_path, line=line
            ) from None
        if names.setdefault(target, category) != category:
            raise DatasetError(
                f"target {target} is {category!r} here but {names[target]!r} earlier", path=csv_path, line=line
            )
        first_target, first_line = targets.setdefault(category, (target, line))
        if first_target != target:
            raise DatasetError(f"category {category!r} has target {target} here but target {first_target} on line {first_line}",
                               path=csv_path, line=line)  # fmt: skip
        if filename in seen:
            raise DatasetError(
                f"duplicate row for {filename} (first on line {seen[filename]})", path=csv_path, line=line
            )
        seen[filename] = line
        path = find_audio(filename, audio)
        if path is None:
            if not missing_audio(f"audio/{filename} (or the same stem with another extension)", path=csv_path, line=line, missing=missing, problems=problems,
                                 audio=root / "audio" / filename):  # fmt: skip
                continue
            path = root / "audio" / filename
        is_test = fold in test_folds
        items.append(
            Item(
                name=Path(filename).stem,
                path=path,
                label=category,
                fold=TEST_FOLD if is_test else fold,
                partition=TEST if is_test else DEV,
            )
        )
    if not items:
        raise DatasetError("no usable rows", path=csv_path)
    classes = [names[t] for t in sorted(names)]
    table = DatasetTable(
        name="esc50", root=root, items=items, classes=classes, metric="accuracy", problems=summarise_problems(problems)
    )
    table.check_folds()
    return table
