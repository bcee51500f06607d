"""Output folders replaced as a whole: a step's results never mix with leftovers of an earlier run.

A step writes its outputs into a temporary sibling folder (``.<name>.new-<random>``) and only when it
has finished is that folder swapped in for the final one (two ``os.replace`` renames in the same parent
folder, then the old folder is deleted). So a reused ``--out`` never keeps, say, an old
``confusion_test.png`` beside new results, and a step killed half-way leaves the previous outputs as
they were. If the process dies between the two renames, the previous outputs are left as
``.<name>.old-<pid>`` and the next :func:`replaced_folder` on the same folder puts them back first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from specfusion.errors import ConfigError

log = logging.getLogger(__name__)


def _leftovers(final: Path, kind: str) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.{kind}-*"))


def recover(final) -> None:
    """Tidy up after a killed swap of ``final``: restore an old folder left half-swapped, drop temporary ones."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    old = _leftovers(final, "old")
    if old and not final.exists():
        os.replace(old[-1], final)
        log.warning("%s: restored the previous outputs after an interrupted replacement", final)
        old = old[:-1]
    for leftover in old + _leftovers(final, "new"):
        shutil.rmtree(leftover, ignore_errors=True)


def swap_in(new, final) -> Path:
    """Make folder ``new`` (a sibling of ``final``) the folder ``final``, replacing what was there."""
    new, final = Path(new), Path(final)
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{final} exists and is not a folder; choose another output folder")
    if not final.exists():
        os.replace(new, final)
        return final
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def replaced_folder(final) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces the folder ``final`` as a whole.

    Parameters
    ----------
    final : path-like
        The output folder (created if missing; its parent too).

    On an exception the temporary folder is removed and ``final`` is left untouched.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise ConfigError(f"{final} exists and is not a folder; choose another output folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    new = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    swap_in(new, final)


def replace_files(folder, new, patterns: tuple[str, ...]) -> None:
    """Move every file of folder ``new`` into ``folder``; delete files of ``folder`` matching ``patterns`` first.

    For an output folder that also holds state to keep (CRNN checkpoints, spectrogram cache): the
    step's final outputs (``patterns``, e.g. ``confusion_*.png``) are replaced as a set -- an output the
    new run did not write is removed, not left behind -- while everything else stays.
    """
    folder, new = Path(folder), Path(new)
    produced = {p.name for p in new.iterdir()}
    for pattern in patterns:
        for stale in folder.glob(pattern):
            if stale.is_file() and stale.name not in produced:
                stale.unlink()
    for path in sorted(new.iterdir()):
        os.replace(path, folder / path.name)
    new.rmdir()
