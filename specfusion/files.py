"""Files written whole: to a temporary sibling first, then moved into place with an atomic replace.

A reader never sees a half-written file, and a failed write (a full disk, a kill, an error while
writing) leaves the previous file as it was and no temporary file behind. Part of the core: predictions,
reports, model files, exports and the CLI's outputs are all written this way.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """Where :func:`written_whole` writes ``path`` first: a hidden ``.<name>.tmp`` in the same folder."""
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def written_whole(path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    The folder is created when missing. The temporary file sits in the same folder, so the final
    :func:`os.replace` is atomic.

    Examples
    --------
    >>> with written_whole("out/table.csv") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("a,b\\n")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole (:func:`written_whole`); return ``path``."""
    with written_whole(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def is_no_space(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full (``ENOSPC``, or a library's message that quotes it)."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)


def write_error_text(err: BaseException) -> str:
    """``"no space left on device"`` for a full disk, else the system's short reason: a failed write in one line."""
    if is_no_space(err):
        return "no space left on device"
    text = getattr(err, "strerror", None) or str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
