"""The repository describes the software, not how or where it was developed.

Two rules over the tracked files (``git ls-files``), so that a new page or module is covered the day it is added:

* the user-facing text (README.md, docs/ outside docs/experiments/, the package, the recipes) never speaks of
  development sessions ("session 12"): a reader cannot know what they were; the dated studies in
  docs/experiments/ carry the history;
* no tracked text file names a machine-local absolute path (a home folder, a scratch or work folder of one
  machine, a Windows user folder): it is true on one machine only. System paths that are the same everywhere
  (``/usr/bin/time``, ``/proc/self/status``, ``/dev/null``) are fine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SESSION = re.compile(r"session[ -]?[0-9]", re.IGNORECASE)
MACHINE_PATH = re.compile(
    r"(?<![\w.~-])(?:/work/|/tmp/[\w.-]|/root/|/home/[\w.-]+/|/Users/[\w.-]+/|[A-Za-z]:\\Users\\)",
)
TEXT_SUFFIXES = set(".py .md .toml .txt .cfg .ini .yml .yaml .json .sh .csv .html .in".split()) | {""}
SESSION_SCOPE = ("README.md", "docs/", "specfusion/", "recipes/")
THIS_FILE = "tests/test_repository_text.py"


def tracked_files() -> list[str]:
    """The repository's tracked files, relative to its root; skips the test outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout (or git is not installed): the tracked files cannot be listed")
    names = [name for name in listed.decode("utf-8", "replace").split("\0") if name]
    if not names:
        pytest.skip("git lists no tracked files here")
    return names


def read_text(name: str) -> str | None:
    """The file's text, or None for binary files and files deleted from the working tree."""
    path = ROOT / name
    if Path(name).suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        return None
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", "replace")


def hits(pattern: re.Pattern, names: list[str]) -> list[str]:
    """``file:line: text`` for every line of the named files that the pattern matches."""
    found = []
    for name in names:
        text = read_text(name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()[:160]}")
    return found


def in_session_scope(name: str) -> bool:
    return name.startswith(SESSION_SCOPE) and not name.startswith("docs/experiments/")


def test_user_docs_and_code_name_no_development_sessions():
    names = [name for name in tracked_files() if in_session_scope(name)]
    assert any(name.startswith("docs/") for name in names), "the docs were not found among the tracked files"
    found = hits(SESSION, names)
    assert not found, "development sessions named (describe the software; history goes to docs/experiments/):\n" + (
        "\n".join(found)
    )


def test_no_machine_local_absolute_paths():
    names = [name for name in tracked_files() if name != THIS_FILE]
    found = hits(MACHINE_PATH, names)
    assert not found, "machine-local absolute paths (use paths relative to the repository or a placeholder):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    ("line", "flagged"),
    [
        ("outputs under /work/runs/s6/main5", True),
        ("python /tmp/probe.py", True),
        ("see /root/.cache/x", True),
        ("the file /home/alice/data.wav", True),
        (r"C:\Users\bob\audio.wav", True),
        ("/usr/bin/time -v specfusion run", False),
        ("VmHWM in /proc/self/status", False),
        ("~/.cache/specfusion/weights", False),
        ("runs/esc50/report.md", False),
        ("a network/work/ folder name", False),
    ],
)
def test_machine_path_pattern(line, flagged):
    assert bool(MACHINE_PATH.search(line)) is flagged


@pytest.mark.parametrize(
    ("line", "flagged"),
    [("Session 12's machine", True), ("the session-6 run", True), ("an ONNX Runtime session", False)],
)
def test_session_pattern(line, flagged):
    assert bool(SESSION.search(line)) is flagged
