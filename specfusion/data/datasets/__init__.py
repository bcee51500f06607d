"""Datasets: one table type (:class:`DatasetTable`) for the three corpora and users' own data.

>>> table = load_dataset("esc50", "../shared/data/ESC-50")      # doctest: +SKIP
>>> table.dev().predefined_split()                              # doctest: +SKIP
"""

from __future__ import annotations

from specfusion.data.datasets.custom import load_csv, load_folder
from specfusion.data.datasets.dcase import load_dcase2017, load_dcase2018
from specfusion.data.datasets.esc50 import load_esc50
from specfusion.data.datasets.table import DEV, TEST, TEST_FOLD, DatasetTable, Item, make_folds
from specfusion.errors import ConfigError

LOADERS = {
    "esc50": load_esc50,
    "dcase2017": load_dcase2017,
    "dcase2018": load_dcase2018,
    "folder": load_folder,
    "csv": load_csv,
}


def load_dataset(kind: str, root, **options) -> DatasetTable:
    """Load a dataset of ``kind`` (esc50, dcase2017, dcase2018, folder, csv) from ``root``.

    ``options`` go to the loader (e.g. ``missing="report"``, ``channels="mean"``, ``group_column=...``).
    """
    try:
        loader = LOADERS[kind]
    except KeyError:
        raise ConfigError(f"unknown dataset {kind!r}; choose one of: {', '.join(LOADERS)}") from None
    return loader(root, **options)


__all__ = [
    "DEV", "TEST", "TEST_FOLD", "DatasetTable", "Item", "LOADERS", "load_csv", "load_dataset",
    "load_dcase2017", "load_dcase2018", "load_esc50", "load_folder", "make_folds",
]  # fmt: skip
