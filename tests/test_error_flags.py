"""Library error messages speak of parameters; the CLI adds its flags to its one line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from extraction_helpers import make_esc50_copy

import specfusion
from specfusion.cli import main
from specfusion.cli._common import PARAMETER_FLAGS, flag_hint
from specfusion.data.datasets import load_dataset
from specfusion.errors import DatasetError, StoreError
from specfusion.evaluation.report import read_results
from specfusion.features.store import FeatureStore

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
PACKAGE = Path(specfusion.__file__).parent


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def _raised_texts(path: Path):
    """The string pieces of every ``raise ...(...)`` in a module, with their line numbers."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for piece in ast.walk(node.exc):
                if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                    yield node.lineno, piece.value


def test_no_library_error_message_names_a_cli_flag():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for line, text in _raised_texts(path):
            text = text.replace("pip install --no-deps", "pip install")  # installing a package is not a flag of ours
            if FLAG.search(text):
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text}")
    assert found == []


def test_missing_audio_says_the_parameter_and_the_cli_says_the_flag(esc50_root, tmp_path, capsys):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 3)
    (root / "audio" / sorted(p.name for p in (root / "audio").iterdir())[0]).unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("esc50", root)
    assert "missing='report'" in str(err.value) and not FLAG.search(str(err.value))
    assert err.value.parameters == {"missing": "report"}
    assert main(["datasets", "inspect", "--dataset", "esc50", "--root", str(root), "--missing", "error"]) == 1
    line = _one_line(capsys)
    assert "missing='report'" in line and line.endswith("[command line: --missing report]")


def test_store_and_report_hints(tmp_path, capsys):
    with pytest.raises(StoreError) as err:
        FeatureStore.open(tmp_path / "none.h5")
    assert "store_path=" in str(err.value) and not FLAG.search(str(err.value))
    assert main(["export", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x.csv")]) == 1
    assert "[command line: `specfusion extract ... --out " in _one_line(capsys)
    with pytest.raises(StoreError) as err:
        read_results(tmp_path)
    assert "out=" in str(err.value) and not FLAG.search(str(err.value))
    assert main(["report", str(tmp_path)]) == 1
    assert f"[command line: `specfusion run RECIPE --out {tmp_path}`]" in _one_line(capsys)


def test_flag_hint_formats_values_and_ignores_unknown_parameters():
    assert flag_hint(StoreError("x", parameters={"allow_incomplete": True})) == " [command line: --allow-incomplete]"
    both = StoreError("x", parameters={"n_folds": None, "group_column": None})
    assert flag_hint(both) == " [command line: --folds; --group-column]"
    assert flag_hint(StoreError("x", parameters={"not_a_flag": 1})) == ""
    assert flag_hint(ValueError("x")) == ""
    assert all(flag.lstrip("`").startswith(("--", "specfusion ")) for flag in PARAMETER_FLAGS.values())
