"""DCASE corpora in their official setup-file layout.

* DCASE 2017 task 1 (TUT Acoustic Scenes 2017): development ``meta.txt`` (``file<TAB>scene<TAB>location``) and
  ``evaluation_setup/fold{1..4}_{train,evaluate,test}.txt``; evaluation set ``meta.txt`` or
  ``evaluation_setup/evaluate.txt``. 15 scenes, metric accuracy.
* DCASE 2018 task 5 (SINS): development ``meta.txt`` (``file<TAB>label<TAB>session``) and
  ``evaluation_setup/fold{1..4}_{train,test,evaluate}.txt``; evaluation set ``meta.txt`` or
  ``evaluation_setup/evaluation.txt`` (``map.txt`` maps its names to the original ones). 4-channel
  segments, sessions kept together, metric macro F1.

The root is either a development folder itself (it holds ``meta.txt``) or a folder holding the
development and evaluation folders (names containing ``dev`` and ``eval``, as the corpora unpack).
A development fold is the set of files in ``fold{k}_evaluate.txt`` (falling back to ``fold{k}_test.txt``).
Without any setup files, 4 stratified folds keeping groups (locations / sessions) together are made with a
fixed seed and this is reported in ``problems``: they are not the official folds.
"""

from __future__ import annotations

import logging
from pathlib import Path

from specfusion.data.datasets._io import check_missing_policy, missing_audio, read_tsv, summarise_problems
from specfusion.data.datasets.table import (
    DEV,
    TEST,
    TEST_FOLD,
    DatasetTable,
    Item,
    find_audio,
    index_audio_files,
    make_folds,
)
from specfusion.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

DCASE2017_SCENES = [
    "beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path", "grocery_store", "home",
    "library", "metro_station", "office", "park", "residential_area", "train", "tram",
]  # fmt: skip
DCASE2018_ACTIVITIES = [
    "absence", "cooking", "dishwashing", "eating", "other", "social_activity", "vacuum_cleaner",
    "watching_tv", "working",
]  # fmt: skip
N_FOLDS = 4
DCASE2018_CHANNELS = 4


def _split_root(root: Path) -> tuple[Path, Path | None]:
    """(development folder, evaluation folder or None)."""
    if (root / "meta.txt").is_file():
        return root, None
    children = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    dev = [p for p in children if "dev" in p.name.lower() and (p / "meta.txt").is_file()]
    ev = [
        p
        for p in children
        if "eval" in p.name.lower() and ((p / "meta.txt").is_file() or (p / "evaluation_setup").is_dir())
    ]
    if not dev:
        raise DatasetError(
            "no development set found: expected meta.txt here or in a sub-folder whose name contains 'dev'", path=root
        )
    return dev[0], (ev[0] if ev else None)


def _read_meta(path: Path, classes: list[str], *, label_column: int = 1, group_column: int | None = 2):
    """Rows of a DCASE meta file as (line, file, label, group)."""
    seen: dict[str, int] = {}
    for line, fields in read_tsv(path, min_fields=2):
        file, label = fields[0], fields[label_column] if len(fields) > label_column else ""
        group = fields[group_column] if group_column is not None and len(fields) > group_column else None
        if not label:
            raise DatasetError(f"empty label for {file}", path=path, line=line)
        if label not in classes:
            raise DatasetError(
                f"unknown label {label!r} for {file}; expected one of: {', '.join(classes)}", path=path, line=line
            )
        if file in seen:
            raise DatasetError(f"duplicate row for {file} (first on line {seen[file]})", path=path, line=line)
        seen[file] = line
        yield line, file, label, group


def _official_folds(dev_dir: Path, meta_files: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """File -> fold from ``evaluation_setup``; returns ({} , problems) when there are no setup files."""
    setup = dev_dir / "evaluation_setup"
    folds: dict[str, int] = {}
    problems: list[str] = []
    found_any = False
    for k in range(1, N_FOLDS + 1):
        candidates = [setup / f"fold{k}_evaluate.txt", setup / f"fold{k}_test.txt"]
        listing = next((p for p in candidates if p.is_file()), None)
        if listing is None:
            continue
        found_any = True
        for line, fields in read_tsv(listing, min_fields=1):
            file = fields[0]
            if file not in meta_files:
                raise DatasetError(f"{file} is not in meta.txt", path=listing, line=line)
            if len(fields) > 1 and fields[1] and fields[1] != meta_files[file]:
                raise DatasetError(
                    f"label {fields[1]!r} of {file} contradicts meta.txt ({meta_files[file]!r})",
                    path=listing,
                    line=line,
                )
            if file in folds and folds[file] != k:
                raise DatasetError(
                    f"{file} is in the test lists of folds {folds[file]} and {k}", path=listing, line=line
                )
            folds[file] = k
    if found_any:
        unassigned = [f for f in meta_files if f not in folds]
        if unassigned:
            problems.append(
                f"{len(unassigned)} development file(s) are in no fold's test list (e.g. {unassigned[0]}); they are left out"
            )
    return folds, problems


def _load_dcase(root, *, name: str, classes: list[str], metric: str, missing: str, seed: int) -> DatasetTable:
    check_missing_policy(missing)
    root = Path(root)
    dev_dir, eval_dir = _split_root(root)
    problems: list[str] = []
    meta_path = dev_dir / "meta.txt"
    rows = list(_read_meta(meta_path, classes))
    folds, fold_problems = _official_folds(dev_dir, {file: label for _, file, label, _ in rows})
    problems += fold_problems
    if not folds:
        generated = make_folds([r[2] for r in rows], n_folds=N_FOLDS, groups=[r[3] or r[1] for r in rows], seed=seed)
        folds = {r[1]: int(k) for r, k in zip(rows, generated)}
        problems.append(
            f"no evaluation_setup/fold*_evaluate.txt under {dev_dir}: made {N_FOLDS} stratified, group-aware folds "
            f"(seed {seed}); these are NOT the official folds"
        )
    listed = [row for row in rows if row[1] in folds]
    items = _listed_items(listed, dev_dir, meta_path, folds=folds, missing=missing, problems=problems)
    if eval_dir is not None:
        items += _eval_items(eval_dir, classes, missing=missing, problems=problems)
    if not items:
        raise DatasetError("no usable items (is the audio there? missing='report' lists what is missing)",
                           path=meta_path, parameters={"missing": "report"})  # fmt: skip
    table = DatasetTable(
        name=name, root=root, items=items, classes=list(classes), metric=metric, problems=summarise_problems(problems)
    )
    table.check_folds()
    return table


def _eval_items(eval_dir: Path, classes: list[str], *, missing: str, problems: list[str]) -> list[Item]:
    """Labelled evaluation items from ``meta.txt`` or ``evaluation_setup/evaluat{e,ion}.txt``."""
    setup = eval_dir / "evaluation_setup"
    for listing in (eval_dir / "meta.txt", setup / "evaluation.txt", setup / "evaluate.txt"):
        if listing.is_file():
            break
    else:
        problems.append(
            f"evaluation set {eval_dir} has no labelled list (meta.txt or evaluation_setup/evaluat*.txt): test partition left out"
        )
        return []
    return _listed_items(
        _read_meta(listing, classes), eval_dir, listing, folds=None, missing=missing, problems=problems
    )


def _listed_items(
    rows, folder: Path, listing: Path, *, folds: dict | None, missing: str, problems: list[str]
) -> list[Item]:
    """Items of ``(line, file, label, group)`` rows of ``listing`` whose audio is under ``folder``.

    ``folds`` maps files to development folds; None makes every item a test item. Missing audio follows
    ``missing`` (:func:`~specfusion.data.datasets._io.missing_audio`).
    """
    audio = index_audio_files(folder)
    items = []
    for line, file, label, group in rows:
        path = find_audio(file, audio)
        if path is None:
            if not missing_audio(file, path=listing, line=line, missing=missing, problems=problems):
                continue
            path = folder / file
        fold, partition = (TEST_FOLD, TEST) if folds is None else (folds[file], DEV)
        name = f"{folder.name}/{Path(file).with_suffix('').as_posix()}"
        items.append(Item(name=name, path=path, label=label, fold=fold, partition=partition, group=group))
    return items


def load_dcase2017(root, *, missing: str = "error", seed: int = 0) -> DatasetTable:
    """Load DCASE 2017 task 1 (TUT Acoustic Scenes 2017); groups are recording locations.

    Parameters
    ----------
    root : path-like
        The development folder, or a folder holding the development and evaluation folders.
    missing : {"error", "report", "keep"}
        Rows whose audio is missing raise, are dropped and listed in ``problems``, or are kept (with the
        path the file should have) and listed -- to inspect the meta files without the audio.
    seed : int
        Seed of the fallback folds used only when there are no setup files.
    """
    return _load_dcase(root, name="dcase2017", classes=DCASE2017_SCENES, metric="accuracy", missing=missing, seed=seed)


def load_dcase2018(root, *, channels: str = "each", missing: str = "error", seed: int = 0) -> DatasetTable:
    """Load DCASE 2018 task 5 (SINS domestic activities); groups are sessions.

    Parameters
    ----------
    root : path-like
        The development folder, or a folder holding the development and evaluation folders.
    channels : {"each", "mean"}
        ``"each"`` (default, as the paper and the official baseline): each of the 4 channels is its own item;
        ``"mean"``: down-mix.
    missing : {"error", "report", "keep"}
        Rows whose audio is missing raise, are dropped and listed in ``problems``, or are kept (with the
        path the file should have) and listed -- to inspect the meta files without the audio.
    seed : int
        Seed of the fallback folds used only when there are no setup files.
    """
    if channels not in ("each", "mean"):
        raise ConfigError(f"channels must be 'each' or 'mean', got {channels!r}")
    table = _load_dcase(
        root, name="dcase2018", classes=DCASE2018_ACTIVITIES, metric="macro_f1", missing=missing, seed=seed
    )
    return table.with_channels(DCASE2018_CHANNELS) if channels == "each" else table
