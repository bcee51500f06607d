"""The package tree shows the pipeline: imports run one way, from the pipeline's top down (docs/architecture.md).

Every ``import`` of a specfusion module, at module level or inside a function, is read from the sources: a
stage package may import only the core and the stages below it, so that, for example, ``models/`` never
imports ``pipeline/`` and ``features/`` never imports ``models/``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import specfusion

PACKAGE = Path(specfusion.__file__).parent
#: The layers, lowest first; a module may import its own layer and the layers before it.
LAYERS = ("core", "data", "features", "evaluation", "models", "distributed", "fusion", "pipeline", "interop", "cli")
CORE = {"errors", "identity", "files", "threads", "memory", "figures", "__version__"}
INTEROP = {"sklearn", "hear"}
STAGES = ("data", "features", "evaluation", "models", "distributed", "fusion", "pipeline")


def layer_of(module: str) -> str | None:
    """The layer of a dotted specfusion module name (None for the ``specfusion`` facade itself)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    head = parts[1]
    if head in CORE:
        return "core"
    if head in INTEROP:
        return "interop"
    if head in ("cli", "__main__"):
        return "cli"
    return head


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute specfusion import in a source file, including imports inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "specfusion":
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "specfusion" else [node.module]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "specfusion"]
    return found


def module_name(path: Path) -> str:
    return ".".join(("specfusion", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        assert name == "specfusion" or layer_of(name) in LAYERS, f"{path.relative_to(PACKAGE)}: not in a known layer"


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of(module_name(path))
        if source is None:  # the facade (specfusion/__init__.py) re-exports public names lazily
            continue
        for line, target in imported_modules(path):
            target_layer = layer_of(target)
            if target_layer is not None and LAYERS.index(target_layer) > LAYERS.index(source):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({source}) imports {target} ({target_layer})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    """The reader finds imports inside functions too (a check that cannot fail would prove nothing)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from specfusion.pipeline.runner import run_recipe\n    import specfusion.cli\n")
    assert imported_modules(module) == [(2, "specfusion.pipeline.runner"), (3, "specfusion.cli")]
    assert LAYERS.index(layer_of("specfusion.pipeline.runner")) > LAYERS.index(layer_of("specfusion.models.svm"))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_package_says_what_it_owns_and_may_import(stage):
    doc = importlib.import_module(f"specfusion.{stage}").__doc__ or ""
    assert "Owns" in doc and "May import" in doc, f"specfusion/{stage}/__init__.py: say what it owns and may import"


def test_the_architecture_page_draws_every_stage():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for stage in STAGES:
        assert f"{stage}/" in page, f"docs/architecture.md does not show {stage}/"
    assert " < ".join(LAYERS[:-2]) in page, "docs/architecture.md states the layer order"


def test_public_names_are_importable_from_the_package_without_loading_torch():
    import subprocess
    import sys

    code = (
        "import sys, specfusion\n"
        "assert 'torch' not in sys.modules\n"
        "from specfusion import load_audio, load_dataset, melspectrogram, get_extractor, load_system\n"
        "from specfusion.data.audio import load_audio as a\n"
        "from specfusion.pipeline.systems import load_system as s\n"
        "assert (load_audio, load_system) == (a, s)\n"
        "print(sorted(n for n in specfusion.__all__ if n != '__version__'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(["load_audio", "load_dataset", "melspectrogram", "get_extractor", "load_system"]))


def test_every_import_the_docs_show_works():
    """``from specfusion... import ...`` lines in README, CONTRIBUTING and docs/ name modules and names that exist."""
    import re

    pages = [PACKAGE.parent / "README.md", PACKAGE.parent / "CONTRIBUTING.md", *(PACKAGE.parent / "docs").rglob("*.md")]
    pattern = re.compile(r"^\s*from (specfusion[\w.]*) import ([\w, ]+?)\s*(?:#.*)?$", re.M)
    broken = []
    for page in pages:
        for module, names in pattern.findall(page.read_text(encoding="utf-8")):
            try:
                imported = importlib.import_module(module)
            except ImportError as err:
                broken.append(f"{page.name}: {module} ({err})")
                continue
            for name in (n.strip().split(" as ")[0] for n in names.split(",") if n.strip()):
                is_submodule = (
                    hasattr(imported, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
                )
                if not hasattr(imported, name) and not is_submodule:
                    broken.append(f"{page.name}: {module}.{name}")
    assert not broken, "imports in the docs that do not work:\n" + "\n".join(broken)


#: Functions of pipeline/ and models/ allowed past the limit, each with the reason its docstring gives.
LONG_FUNCTIONS = {"specfusion/models/crnn/estimator.py:CRNNClassifier.__init__": "one assignment per parameter"}
MAX_CODE_LINES = 60


def _code_lines(function: ast.FunctionDef) -> int:
    """Lines of a function without its docstring (numpydoc parameter lists are documentation, not code)."""
    lines = function.end_lineno - function.lineno + 1
    first = function.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_long_functions_in_the_pipeline_and_the_models():
    long = []
    for stage in ("pipeline", "models"):
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for parent in ast.walk(tree):
                body = getattr(parent, "body", None)
                for node in body if isinstance(body, list) else ():
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_CODE_LINES:
                        owner = f"{parent.name}." if isinstance(parent, ast.ClassDef) else ""
                        name = f"specfusion/{path.relative_to(PACKAGE).as_posix()}:{owner}{node.name}"
                        if name not in LONG_FUNCTIONS:
                            long.append(f"{name} ({_code_lines(node)} lines)")
    assert not long, f"functions over {MAX_CODE_LINES} lines of code (split them, or say why):\n" + "\n".join(long)
