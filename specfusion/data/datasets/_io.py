"""Reading meta files line by line with line numbers, for errors that point at the culprit."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from specfusion.errors import DatasetError

#: What to do with rows whose audio file is missing: raise; note it in ``problems`` and drop the row;
#: or note it and keep the row with the path the file should have (to inspect meta files without audio).
MISSING_POLICIES = ("error", "report", "keep")


def read_text(path: Path) -> str:
    """The text of a meta file: UTF-8, with or without a byte-order mark (as Excel writes it).

    Raises
    ------
    DatasetError
        The file is missing or not UTF-8 (e.g. Latin-1), naming the line and the byte at fault.
    """
    if not path.is_file():
        raise DatasetError("file not found", path=path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DatasetError(f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                           "save the file as UTF-8 and try again", path=path, line=line) from None  # fmt: skip


def read_tsv(path: Path, *, min_fields: int, max_fields: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of a tab-separated file, skipping blank lines."""
    with io.StringIO(read_text(path), newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split("\t")]
            if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
                expected = f"{min_fields}" if max_fields == min_fields else f"{min_fields} to {max_fields or 'more'}"
                raise DatasetError(
                    f"malformed row: expected {expected} tab-separated fields, got {len(fields)}: {line!r}",
                    path=path,
                    line=number,
                )
            yield number, fields


def read_csv_rows(path: Path, *, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, row)`` of a CSV file with a header holding every ``required`` column."""
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(
                f"missing column(s) {', '.join(missing)}; header is {', '.join(header) or '(empty)'}", path=path, line=1
            )
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(f"malformed row: expected {len(header)} fields", path=path, line=reader.line_num)
            yield reader.line_num, {k: v.strip() for k, v in row.items()}


def check_missing_policy(missing: str) -> None:
    if missing not in MISSING_POLICIES:
        from specfusion.errors import ConfigError

        raise ConfigError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")


def missing_audio(
    relative: str, *, path: Path, line: int, missing: str, problems: list[str], audio: Path | None = None
) -> bool:
    """Raise for a missing audio file, or note it in ``problems``; True if the row is to be kept anyway.

    ``audio``: the expected file, to say when it is a dangling or looping symbolic link.
    """
    message = f"audio file not found: {relative}"
    if audio is not None and audio.is_symlink():
        message += " (a dangling or looping symbolic link)"
    if missing == "error":
        raise DatasetError(message + " (pass missing='report' to list all and go on)", path=path, line=line,
                           parameters={"missing": "report"})  # fmt: skip
    problems.append(f"{path}:{line}: {message}")
    return missing == "keep"


def summarise_problems(problems: list[str], *, limit: int = 20) -> list[str]:
    """Collapse missing-audio notes into one line with a count and examples; keep ``limit`` others.

    So a meta file with 70 000 rows and no audio stays readable.
    """
    missing = [p for p in problems if "audio file not found" in p]
    others = [p for p in problems if "audio file not found" not in p]
    out = others[:limit]
    if len(others) > limit:
        out.append(f"... and {len(others) - limit} more problems")
    if missing:
        examples = "; ".join(missing[:3])
        out.append(f"{len(missing)} audio file(s) not found, e.g. {examples}")
    return out
