"""Recipe schema: every key and value type of a recipe checked before any work starts.

The valid keys of option tables are derived from the code, not listed here, so an option added to an
extractor, to :class:`~specfusion.models.svm.LinearSVM` or to
:class:`~specfusion.models.crnn.CRNNClassifier` is accepted without changing this module:

* a ``deepspectrum`` / ``audio`` system: the registered extractor class's ``__init__`` keywords, plus
  ``batch_size``, ``workers`` (extraction engine) and an ``svm`` table (``LinearSVM().get_params()``);
* a ``crnn`` system: ``CRNNClassifier().get_params()`` plus the keywords of
  :func:`~specfusion.models.crnn.protocol.crnn_fold_protocol`;
* ``[dataset] options``: the keywords of the dataset kind's loader.

Options the runner sets itself (``device``, ``progress``, ``out_dir``, ``dask`` from ``[run]`` and the
``backend`` it builds from it) are not recipe keys. Value types come from the parameters' annotations
(``int``, ``float | None``, ``Sequence[int]`` ...); an unannotated parameter accepts any value. Errors name
the key, the table and the closest valid key (:mod:`difflib`), or the expected and the actual type.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from specfusion.errors import ConfigError

#: Options the runner passes itself; a recipe may not set them.
RUNNER_SET = frozenset({"device", "progress", "out_dir", "table", "self", "dask", "backend"})
#: Extraction-engine options of a feature system (not extractor options).
ENGINE_KEYS = {"batch_size": "int", "workers": "int"}
#: The ``[dataset] short`` values (clips shorter than one analysis window).
SHORT_POLICIES = ("pad", "error")
#: Fusion methods accepted when specfusion.fusion.methods does not define FUSION_METHODS (docs/fusion.md).
DEFAULT_FUSION_METHODS = ("stacking-svm", "calibrated-mean", "weighted", "stacking-logreg", "auto")

TOP_KEYS = {"title": "str", "dataset": "dict", "systems": "list", "fusions": "list", "run": "dict"}
#: ``[run]``: where the steps run (``dask``: a Dask address for extraction and the CRNN folds, docs/distributed.md).
RUN_KEYS = {"dask": "str"}
DATASET_KEYS = {"kind": "str", "options": "dict", "short": "str"}
SYSTEM_META_KEYS = {"name": "str", "kind": "str", "tags": "list[str]", "paper": "dict", "block": "str", "grid": "dict"}
FUSION_KEYS = {"name": "str", "members": "list[str]", "best": "int", "block": "str", "paper": "dict", "method": "str"}
PAPER_KEYS = {"devel": "float", "test": "float"}

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}


def type_name(value: Any) -> str:
    """The TOML name of a value's type (``string``, ``array``, ``table`` ...)."""
    for kind, name in _TOML_TYPES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def _split_union(annotation: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in annotation:
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def _matches(part: str, value: Any) -> bool | None:
    """Whether ``value`` fits one member of an annotation; None when the annotation is not understood."""
    base = part.split("[", 1)[0].rsplit(".", 1)[-1]
    if base == "None":
        return value is None
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base in ("str", "PathLike"):
        return isinstance(value, str)
    if base in ("Sequence", "list", "tuple", "Iterable"):
        return isinstance(value, list) and _elements_match(part, value)
    if base in ("dict", "Mapping", "MelSpecParams"):
        return isinstance(value, dict)
    return None


def _elements_match(annotation: str, values: list) -> bool:
    if "[" not in annotation:
        return True
    inner = annotation[annotation.index("[") + 1 : annotation.rindex("]")]
    inner = inner.split(",")[0].strip() if annotation.startswith("tuple") else inner
    return all(accepts(inner, v) is not False for v in values)


def accepts(annotation: str, value: Any) -> bool | None:
    """Whether ``value`` fits a type annotation string; None when the annotation is not understood."""
    results = [_matches(part, value) for part in _split_union(annotation)]
    if any(r is True for r in results):
        return True
    if any(r is None for r in results):
        return None
    return False


def check_type(value: Any, annotation: str, *, key: str, where: str) -> None:
    """ConfigError naming key, expected and actual type when ``value`` does not fit ``annotation``.

    A table given for a ``MelSpecParams`` parameter (``spec_params``) has its keys and types checked too.
    """
    if annotation and accepts(annotation, value) is False:
        raise ConfigError(f"{where}: '{key}' must be {_expected(annotation)}, got {type_name(value)} {value!r}")
    if "MelSpecParams" in (annotation or "") and isinstance(value, dict):
        check_table(value, mel_params_schema(), where=f"{where}: {key}")


def mel_params_schema() -> dict[str, str]:
    """Valid keys of a spectrogram-parameters table: the fields of :class:`~specfusion.features.spectrogram.MelSpecParams`."""
    import dataclasses

    from specfusion.features.spectrogram import MelSpecParams

    return {
        f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        for f in dataclasses.fields(MelSpecParams)
    }


def _expected(annotation: str) -> str:
    words = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean (true/false)", "dict": "a table",
             "list[str]": "an array of strings", "list": "an array", "str | os.PathLike": "a string"}  # fmt: skip
    out = []
    for part in _split_union(annotation):
        if part == "None":
            continue
        if part in words:
            out.append(words[part])
        elif part.rsplit(".", 1)[-1] == "PathLike":
            out.append("a string")
        elif part.split("[")[0] in ("dict", "Mapping", "MelSpecParams"):
            out.append("a table")
        elif part.split("[")[0] in ("Sequence", "list", "tuple"):
            out.append(f"an array ({part})")
        else:
            out.append(part)
    return " or ".join(dict.fromkeys(out))


def unknown_key(key: str, valid: Iterable[str], *, where: str) -> ConfigError:
    """ConfigError naming an unknown key, the table and the closest valid key."""
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"{where}: unknown key '{key}' ({hint})")


def check_table(table: dict, schema: dict[str, str], *, where: str) -> None:
    """Every key of ``table`` known to ``schema`` (key -> annotation) and of the right type."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {type_name(table)} {table!r}")
    for key, value in table.items():
        if key not in schema:
            raise unknown_key(key, schema, where=where)
        check_type(value, schema[key], key=key, where=where)


def signature_schema(func: Callable, *, skip: Iterable[str] = ()) -> tuple[dict[str, str], bool]:
    """(keyword -> annotation string, whether it takes ``**kwargs``) of a function or class ``__init__``."""
    schema, var_keyword = {}, False
    skip = set(skip) | RUNNER_SET
    for name, param in inspect.signature(func).parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL and name not in skip:
            annotation = param.annotation
            schema[name] = (
                ""
                if annotation is inspect.Parameter.empty
                else (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", ""))
            )
    return schema, var_keyword


def extractor_schema(name: str) -> dict[str, str]:
    """Valid keys (with annotations) of a feature system using extractor ``name``."""
    from specfusion.features.extractors import get_extractor_class

    schema, _ = signature_schema(get_extractor_class(name).__init__)
    return {**schema, **ENGINE_KEYS, "svm": "dict", "extractor": "str"}


def svm_schema() -> dict[str, str]:
    """Valid keys of a system's ``svm`` table: :class:`LinearSVM`'s parameters."""
    from specfusion.models.svm import LinearSVM

    annotations, _ = signature_schema(LinearSVM.__init__)
    return {key: annotations.get(key, "") for key in LinearSVM().get_params(deep=False)}


def crnn_schema() -> dict[str, str]:
    """Valid keys of a ``crnn`` system: :class:`CRNNClassifier`'s parameters and the fold protocol's keywords."""
    from specfusion.models.crnn import CRNNClassifier
    from specfusion.models.crnn.protocol import crnn_fold_protocol

    annotations, _ = signature_schema(CRNNClassifier.__init__)
    schema = {key: annotations.get(key, "") for key in CRNNClassifier().get_params(deep=False) if key not in RUNNER_SET}
    protocol, _ = signature_schema(crnn_fold_protocol)
    return {**schema, **protocol}


def dataset_schema(kind: str) -> tuple[dict[str, str], bool]:
    """Valid ``[dataset] options`` of a dataset kind (its loader's keywords after the root)."""
    from specfusion.data.datasets import LOADERS

    loader = LOADERS[kind]
    first = next(iter(inspect.signature(loader).parameters))
    return signature_schema(loader, skip=(first,))


def fusion_methods() -> tuple[str, ...]:
    """Valid fusion ``method`` values: ``specfusion.fusion.methods.FUSION_METHODS`` where defined."""
    from specfusion.fusion import methods as fusion

    return tuple(getattr(fusion, "FUSION_METHODS", DEFAULT_FUSION_METHODS))


def check_choice(value: str, choices: Iterable[str], *, key: str, where: str) -> None:
    """ConfigError naming the choices (and the closest one) when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(choices)}, got {value!r}{hint}")
