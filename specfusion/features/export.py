"""Export of a feature store for other tools: CSV and ARFF in DEEP SPECTRUM's layout, NPZ for numpy.

DEEP SPECTRUM (``deepspectrum/tools/feature_writer.py``) writes one row per file: ``name`` (the audio
file's base name), ``neuron_0 ... neuron_{D-1}``, then the label column(s) (``class`` when the labels
come from the folder structure). The CSV and ARFF written here keep that order, so a DEEP SPECTRUM user
joins on ``name`` and slices the neurons at the same columns, and add the protocol's ``fold`` and
``partition`` (plus ``channel`` for a store of channel items) just before ``class``. See
``docs/store.md`` ("Export layouts").
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError, StoreError
from specfusion.features.store import FeatureStore, StoreArrays
from specfusion.files import write_error_text, written_whole
from specfusion.identity import canonical_json

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("csv", "arff", "npz")
#: Relation name DEEP SPECTRUM writes into its ARFF files.
ARFF_RELATION = "Deep Spectrum Features"
_BLOCK = 1024  # rows formatted at a time


def export(store_path, fmt: str, out) -> Path:
    """Write a store's finished items as CSV, ARFF or NPZ.

    Parameters
    ----------
    store_path : path-like
        The feature store.
    fmt : {"csv", "arff", "npz"}
        ``csv`` and ``arff``: one row per item in dataset order, columns
        ``name, neuron_0 ... neuron_{D-1}, fold, partition[, channel], class``. ``name`` is the audio
        file's name as in the dataset (base name with extension, e.g. ``1-100032-A-0.wav``), as DEEP
        SPECTRUM writes it; ``fold`` is 1..K (0 for the test partition); ``partition`` is ``dev`` or
        ``test``; ``channel`` appears only in a store of channel items; ``class`` is the label (empty in
        CSV, ``?`` in ARFF for unlabelled items). The ARFF header declares ``name`` a string, the neurons
        and ``fold``/``channel`` numeric, ``partition`` nominal over ``{dev,test}`` and ``class`` nominal over
        the dataset's classes, under the relation ``'Deep Spectrum Features'``. ``npz`` holds ``X``,
        ``labels``, ``folds``, ``partitions``, ``names``, ``files``, ``uids``, ``channels``, ``groups``,
        ``classes``, the configuration as JSON (``config``), ``dataset`` and ``metric``, loadable with
        ``numpy.load(..., allow_pickle=False)``.
    out : path-like
        Output file; written to a temporary sibling and moved into place, so no partial file is left.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        ``fmt`` is not one of :data:`EXPORT_FORMATS`.
    StoreError
        The store cannot be read, or ``out`` cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    arrays = FeatureStore.open(store_path).arrays()
    out = Path(out)
    try:
        with written_whole(out) as tmp:  # never a partial file left behind
            {"csv": _export_csv, "arff": _export_arff, "npz": _export_npz}[fmt](arrays, tmp)
    except OSError as err:
        raise StoreError(f"cannot write {out}: {write_error_text(err)}; nothing was written") from None
    log.info("wrote %d items x %d features to %s", len(arrays), arrays.X.shape[1], out)
    return out


def file_names(arrays: StoreArrays) -> np.ndarray:
    """Each item's audio file name as in the dataset (base name with extension), DEEP SPECTRUM's ``name``."""
    if arrays.paths is None:
        return arrays.names.astype(str)
    return np.array([Path(str(p)).name for p in arrays.paths], dtype=str)


def _has_channels(arrays: StoreArrays) -> bool:
    return bool((arrays.channels >= 0).any())


def _float_text(X: np.ndarray) -> np.ndarray:
    # 9 significant digits: every float32 reads back exactly
    return np.char.mod("%.9g", X.astype(np.float64)) if X.size else np.empty(X.shape, dtype=str)


def _header(arrays: StoreArrays) -> list[str]:
    meta = ["fold", "partition", *(["channel"] if _has_channels(arrays) else [])]
    return ["name", *(f"neuron_{i}" for i in range(arrays.X.shape[1])), *meta, "class"]


def _rows(arrays: StoreArrays):
    """(name, neuron texts, [fold, partition(, channel)], label) per item, formatted a block at a time."""
    names = file_names(arrays)
    channels = _has_channels(arrays)
    for start in range(0, len(arrays), _BLOCK):
        stop = start + _BLOCK
        text = _float_text(arrays.X[start:stop])
        for i, values in enumerate(text, start):
            meta = [str(int(arrays.folds[i])), str(arrays.partitions[i])]
            if channels:
                meta.append(str(int(arrays.channels[i])))
            yield str(names[i]), values, meta, str(arrays.labels[i])


def _export_csv(arrays: StoreArrays, out: Path) -> None:
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_header(arrays))
        for name, values, meta, label in _rows(arrays):
            writer.writerow([name, *values, *meta, label])


_ARFF_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _arff_quote(value: str) -> str:
    if value and _ARFF_PLAIN.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _export_arff(arrays: StoreArrays, out: Path) -> None:
    dim = arrays.X.shape[1]
    classes = list(arrays.classes) or sorted({str(v) for v in arrays.labels if v})
    with open(out, "w", newline="\n", encoding="utf-8") as handle:
        handle.write(f"@relation '{ARFF_RELATION}'\n\n")
        handle.write("@attribute name string\n")
        for i in range(dim):
            handle.write(f"@attribute neuron_{i} numeric\n")
        handle.write("@attribute fold numeric\n")
        handle.write("@attribute partition {dev,test}\n")
        if _has_channels(arrays):
            handle.write("@attribute channel numeric\n")
        handle.write("@attribute class {" + ",".join(_arff_quote(c) for c in classes) + "}\n\n")
        handle.write("@data\n")
        for name, values, meta, label in _rows(arrays):
            cells = [_arff_quote(name), *values, *meta, _arff_quote(label) if label else "?"]
            handle.write(",".join(cells) + "\n")


def _export_npz(arrays: StoreArrays, out: Path) -> None:
    with open(out, "wb") as handle:
        np.savez(
            handle,
            X=arrays.X,
            labels=arrays.labels.astype(str),
            folds=arrays.folds,
            partitions=arrays.partitions.astype(str),
            names=arrays.names.astype(str),
            files=file_names(arrays),
            uids=arrays.uids.astype(str),
            channels=arrays.channels,
            groups=arrays.groups.astype(str),
            classes=np.array(arrays.classes, dtype=str),
            config=np.array(canonical_json(arrays.config)),
            dataset=np.array(arrays.dataset),
            metric=np.array(arrays.metric),
        )
