"""One table type for every corpus: which files, their labels, folds, partitions, groups and channels."""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from specfusion.errors import DatasetError

log = logging.getLogger(__name__)

DEV, TEST = "dev", "test"
#: ``Item.fold`` of every test-partition item.
TEST_FOLD = 0


@dataclasses.dataclass(frozen=True)
class Item:
    """One labelled audio item.

    Attributes
    ----------
    name : str
        Identifier of the file (segment) inside the dataset, e.g. ``"1-100032-A-0"``.
    path : Path
        The audio file.
    label : str or None
        Class name; ``None`` for unlabelled items.
    fold : int
        Development fold ``1..K``; :data:`TEST_FOLD` (0) for the test partition.
    partition : {"dev", "test"}
        Development or held-out test partition.
    group : str or None
        Items that must stay in one fold (recording session, location, speaker).
    channel : int or None
        For the ``"each"`` channel policy: which channel of ``path`` this item is.
    """

    name: str
    path: Path
    label: str | None
    fold: int
    partition: str = DEV
    group: str | None = None
    channel: int | None = None

    @property
    def uid(self) -> str:
        """Unique key: the name, plus ``@ch<c>`` for a channel item."""
        return self.name if self.channel is None else f"{self.name}@ch{self.channel}"


@dataclasses.dataclass
class DatasetTable:
    """A dataset: items plus what applies to all of them.

    Attributes
    ----------
    name : str
        Dataset kind, e.g. ``"esc50"``.
    root : Path
        Where it was loaded from.
    items : list of Item
    classes : list of str
        Class names in a fixed order (the corpus' own order where it has one, else sorted).
    metric : {"accuracy", "macro_f1"}
        The dataset's evaluation measure.
    channels : {"mean", "each"}
        Channel policy: down-mix, or every channel its own item (then items carry ``channel``).
    problems : list of str
        Warnings found while loading (e.g. a fold without examples of a class).
    """

    name: str
    root: Path
    items: list[Item]
    classes: list[str]
    metric: str = "accuracy"
    channels: str = "mean"
    problems: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        seen = set()
        for item in self.items:
            if item.uid in seen:
                raise DatasetError(f"duplicate item {item.uid!r}", path=self.root)
            seen.add(item.uid)
            if item.label is not None and item.label not in self.classes:
                raise DatasetError(
                    f"item {item.uid!r} has label {item.label!r}, not one of the classes", path=self.root
                )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def subset(self, indices: Sequence[int] | np.ndarray) -> DatasetTable:
        """A table with the items at ``indices`` (a boolean mask works too); classes are kept."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return dataclasses.replace(self, items=[self.items[i] for i in indices], problems=list(self.problems))

    def dev(self) -> DatasetTable:
        """The development partition."""
        return self.subset(self.partitions() == DEV)

    def test(self) -> DatasetTable:
        """The held-out test partition (possibly empty)."""
        return self.subset(self.partitions() == TEST)

    def labels(self) -> np.ndarray:
        """Labels as a string array (``""`` for unlabelled items)."""
        return np.array([item.label or "" for item in self.items], dtype=object)

    def folds(self) -> np.ndarray:
        """Fold of every item (0 for the test partition)."""
        return np.array([item.fold for item in self.items], dtype=np.int64)

    def partitions(self) -> np.ndarray:
        """Partition (``"dev"`` or ``"test"``) of every item."""
        return np.array([item.partition for item in self.items], dtype=object)

    def groups(self) -> np.ndarray:
        """Group of every item (``""`` where none)."""
        return np.array([item.group or "" for item in self.items], dtype=object)

    def uids(self) -> list[str]:
        """Unique keys of every item."""
        return [item.uid for item in self.items]

    def fold_ids(self) -> list[int]:
        """The development folds present, sorted."""
        return sorted({item.fold for item in self.items if item.partition == DEV})

    def predefined_split(self):
        """:class:`sklearn.model_selection.PredefinedSplit` over this table's development items.

        The table must hold development items only (use :meth:`dev`): test items must never take part
        in choosing hyper-parameters.
        """
        from sklearn.model_selection import PredefinedSplit

        if (self.partitions() != DEV).any():
            raise DatasetError("predefined_split() needs development items only; call table.dev() first")
        folds = self.folds()
        if len(np.unique(folds)) < 2:
            raise DatasetError(f"cross-validation needs at least two development folds, found {sorted(set(folds))}")
        return PredefinedSplit(folds)

    def counts(self) -> dict[tuple[str, int], collections.Counter]:
        """Per (partition, fold): a Counter of labels, counting files (segments), not channel items."""
        out: dict[tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
        for item in self.items:
            if not item.channel:  # channel None, or the first channel of a segment
                out[(item.partition, item.fold)][item.label] += 1
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != DEV, kv[0][1])))

    def check_folds(self) -> list[str]:
        """Warnings for development folds without any example of a class (also logged and kept in :attr:`problems`)."""
        warnings = []
        for (partition, fold), counter in self.counts().items():
            if partition != DEV:
                continue
            missing = [c for c in self.classes if counter.get(c, 0) == 0]
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                warnings.append(f"fold {fold} has no examples of {len(missing)} class(es): {shown}")
        for message in warnings:
            log.warning("%s: %s", self.name, message)
            if message not in self.problems:
                self.problems.append(message)
        return warnings

    def groups_by_fold(self) -> dict[tuple[str, int], list[str]]:
        """Per (partition, fold): the sorted distinct groups (speakers, sessions, ...) of its items."""
        out: dict[tuple[str, int], set[str]] = collections.defaultdict(set)
        for item in self.items:
            if item.group:
                out[(item.partition, item.fold)].add(item.group)
        return {key: sorted(out[key]) for key in sorted(out, key=lambda k: (k[0] != DEV, k[1]))}

    def check_groups(self) -> list[str]:
        """Warnings when groups leak: a group in several development folds, or in both partitions.

        Items of one group (a speaker, a recording session) are alike; when they sit on both sides of a
        split, scores rise for reasons that do not carry over to new groups. Also logged and kept in
        :attr:`problems`.
        """
        folds_of: dict[str, set[int]] = collections.defaultdict(set)
        partitions_of: dict[str, set[str]] = collections.defaultdict(set)
        for item in self.items:
            if item.group:
                partitions_of[item.group].add(item.partition)
                if item.partition == DEV:
                    folds_of[item.group].add(item.fold)
        warnings = []
        spread = sorted(g for g, folds in folds_of.items() if len(folds) > 1)
        if spread:
            warnings.append(f"{len(spread)} group(s) appear in more than one development fold (e.g. {', '.join(spread[:5])}): "
                            "fold scores are optimistic for new groups")  # fmt: skip
        shared = sorted(g for g, parts in partitions_of.items() if len(parts) > 1)
        if shared:
            warnings.append(f"the test partition shares {len(shared)} group(s) with development (e.g. {', '.join(shared[:5])}): "
                            "test scores are optimistic for new groups")  # fmt: skip
        for message in warnings:
            log.warning("%s: %s", self.name, message)
            if message not in self.problems:
                self.problems.append(message)
        return warnings

    def with_channels(self, n_channels: int) -> DatasetTable:
        """Expand every item into ``n_channels`` channel items (the ``"each"`` policy)."""
        items = [dataclasses.replace(item, channel=c) for item in self.items for c in range(n_channels)]
        return dataclasses.replace(self, items=items, channels="each", problems=list(self.problems))

    def summary(self) -> str:
        """Human-readable summary: classes, counts per partition and fold, problems."""
        lines = [
            f"dataset: {self.name} ({self.root})",
            f"items: {len(self)}  classes: {len(self.classes)}  metric: {self.metric}  channels: {self.channels}"
            + (" (one item per channel; counts below are files)" if self.channels == "each" else ""),
            "classes: " + ", ".join(self.classes),
        ]
        counts = self.counts()
        columns = [f"{p}/{f}" if p == DEV else "test" for p, f in counts] + ["total"]
        rows = [[c] + [counts[key].get(c, 0) for key in counts] for c in self.classes]
        rows = [r + [sum(r[1:])] for r in rows]
        rows.append(["total"] + [sum(col) for col in zip(*(r[1:] for r in rows))])
        first = max(len(str(r[0])) for r in rows)
        widths = [max(len(h), 5) for h in columns]
        lines.append("")
        lines.append(f"{'class':<{first}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(columns, widths)))
        for r in rows:
            lines.append(f"{r[0]:<{first}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(r[1:], widths)))
        lines.append("")
        groups = self.groups_by_fold()
        if groups:
            lines.append("groups per fold:")
            for (partition, fold), names in groups.items():
                label = f"{partition}/{fold}" if partition == DEV else "test"
                shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                lines.append(f"  {label}: {len(names)} group(s): {shown}")
            lines.append("")
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def make_folds(
    labels: Sequence[str],
    *,
    n_folds: int = 4,
    groups: Sequence[str] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Stratified (and, with ``groups``, group-aware) folds ``1..n_folds`` with a fixed seed.

    Uses :class:`sklearn.model_selection.StratifiedKFold` or :class:`StratifiedGroupKFold`.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels, dtype=object)
    folds = np.zeros(len(labels), dtype=np.int64)
    if n_folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if len(labels) < n_folds:
        raise DatasetError(f"cannot make {n_folds} folds from {len(labels)} items")
    if groups is not None and len(set(groups)) < n_folds:
        raise DatasetError(f"cannot make {n_folds} group-aware folds from {len(set(groups))} group(s); "
                           "use fewer folds (n_folds) or another group column (group_column)",
                           parameters={"n_folds": None, "group_column": None})  # fmt: skip
    smallest = min(collections.Counter(labels).values())
    if smallest < n_folds:
        log.warning(
            "the smallest class has %d item(s), fewer than %d folds: some folds will lack it", smallest, n_folds
        )
    if groups is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels, np.asarray(groups, dtype=object))
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels)
    for k, (_, test_index) in enumerate(splits, start=1):
        folds[test_index] = k
    return folds


def audio_files(
    folder: Path, *, extensions: Sequence[str] = (".wav", ".flac", ".ogg"), problems: list[str] | None = None
) -> list[Path]:
    """Every audio file under ``folder``, sorted; one directory walk.

    Names with an audio extension that are dangling or looping symbolic links are left out and, with
    ``problems``, noted there (never skipped without a word).
    """
    if not folder.is_dir():
        return []
    exts = {e.lower() for e in extensions}
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in exts:
            continue
        if path.is_file():
            found.append(path)
        elif path.is_symlink() and problems is not None:
            problems.append(f"{path}: {broken_link_reason(path)}: left out")
    return found


def index_audio_files(
    folder: Path, *, extensions: Sequence[str] = (".wav", ".flac", ".ogg"), problems: list[str] | None = None
) -> dict[str, Path]:
    """Map every audio file's path relative to ``folder``, without its extension, to its path (:func:`audio_files`).

    One directory walk instead of a ``stat`` per item, so meta files with 70 000 rows check fast.

    Raises
    ------
    DatasetError
        Two files differ only in their extension (``x.wav`` and ``x.flac``): they would be one item, so one
        of them would be ignored; the error names both.
    """
    index: dict[str, Path] = {}
    for path in audio_files(folder, extensions=extensions, problems=problems):
        key = path.relative_to(folder).with_suffix("").as_posix()
        other = index.setdefault(key, path)
        if other != path:
            raise DatasetError(f"{other.name} and {path.name} differ only in their extension, so they would be one "
                               f"item {key!r}: keep one of them (or rename one)", path=path.parent)  # fmt: skip
    return index


def broken_link_reason(path: Path) -> str:
    """Why the symbolic link ``path`` does not lead to a file: a loop, or a missing target."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "looping symbolic link"
        return f"dangling symbolic link (target {os.readlink(path)} not found)"
    return "symbolic link to something that is not a file"


def find_audio(relative: str, index: dict[str, Path]) -> Path | None:
    """The audio file named ``relative`` (any extension, since corpora get converted) or None."""
    return index.get(Path(relative).with_suffix("").as_posix())
