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

Values too: no NaN or infinity anywhere (:func:`check_finite`; TOML allows them), and an ``svm`` table's
values as :meth:`LinearSVM.check_params` checks them (:func:`check_svm_table`: ranges, at most
:data:`~specfusion.models.svm.MAX_C_VALUES` C values).
"""

from __future__ import annotations

import difflib
import inspect
import math
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
    if isinstance(annotation, CheckedAnnotation):
        annotation.check_value(value, key=key, where=where)


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


def check_finite(data: dict, *, where: str) -> None:
    """ConfigError naming the key and its table for the first NaN or infinity anywhere in a parsed recipe.

    TOML allows ``nan`` and ``inf``, but no recipe value may be one: a model would train on it, a cache key
    or a report could not be written as JSON. ``[[systems]]`` and ``[[fusions]]`` entries are named as the
    other checks name them (``systems[3] (CRNN)``).
    """
    for key, value in data.items():
        if key in ("systems", "fusions") and isinstance(value, list):
            for i, entry in enumerate(value, start=1):
                if isinstance(entry, dict):
                    named = f" ({entry['name']})" if isinstance(entry.get("name"), str) else ""
                    _check_finite_table(entry, where=f"{where}: {key}[{i}]{named}")
                else:
                    _check_finite_value(entry, key=f"{key}[{i}]", where=f"{where}: top level")
        elif isinstance(value, dict):
            _check_finite_table(value, where=f"{where}: [{key}]")
        else:
            _check_finite_value(value, key=key, where=f"{where}: top level")


def _check_finite_table(table: dict, *, where: str) -> None:
    """Every value of ``table``; a nested table is named ``where: key``."""
    for key, value in table.items():
        if isinstance(value, dict):
            _check_finite_table(value, where=f"{where}: {key}")
        else:
            _check_finite_value(value, key=key, where=where)


def _check_finite_value(value: Any, *, key: str, where: str) -> None:
    found = _non_finite(value, key)
    if found is None:
        return
    bad, path = found
    if path == key:
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {bad}")
    raise ConfigError(f"{where}: '{key}' must hold finite numbers only, got {bad} at {path}")


def _non_finite(value: Any, path: str) -> tuple[float, str] | None:
    """(the first NaN or infinity in ``value``, where: ``lr``, ``c_grid[2]``, ``svm[1].tol``) or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (value, path)
    if isinstance(value, list):
        pairs, label = enumerate(value, start=1), "{}[{}]"
    elif isinstance(value, dict):
        pairs, label = value.items(), "{}.{}"
    else:
        return None
    for k, v in pairs:
        if isinstance(v, (float, list, dict)) and not (isinstance(v, float) and math.isfinite(v)):
            found = _non_finite(v, label.format(path, k))
            if found is not None:
                return found
    return None


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


def check_svm_table(table: Any, *, where: str) -> None:
    """A system's ``svm`` table: its keys and types, then :meth:`LinearSVM.check_params` (value ranges, the C grid).

    The C grid's size is checked before its values' types, so a grid of a million values is refused at once.
    """
    from specfusion.models.svm import LinearSVM, ParameterError, check_c_grid_size

    try:
        if isinstance(table, dict) and isinstance(table.get("c_grid"), list):
            check_c_grid_size(len(table["c_grid"]))
        check_table(table, svm_schema(), where=where)
        LinearSVM(**table).check_params()
    except ParameterError as err:
        raise ConfigError(f"{where}: {err}") from None


class CheckedAnnotation(str):
    """The annotation of an estimator parameter, whose values :func:`check_type` also checks against the
    estimator's parameter constraints (a CRNN's ``epochs = -1`` fails when the recipe is parsed).

    Parameters
    ----------
    annotation : str
        The type annotation, as :func:`accepts` reads it.
    name : str
        The parameter.
    check : callable
        ``check(name, value)``; raises :class:`ConfigError` for an invalid value.
    """

    def __new__(cls, annotation: str, name: str, check: Callable[[str, Any], None]) -> CheckedAnnotation:
        self = super().__new__(cls, annotation)
        self.name, self.check = name, check
        return self

    def check_value(self, value: Any, *, key: str, where: str) -> None:
        """ConfigError naming the table (and ``key`` when it is not the parameter, e.g. ``grid.epochs``)."""
        try:
            self.check(self.name, value)
        except ConfigError as err:
            where = where if key == self.name else f"{where}: '{key}'"
            raise ConfigError(f"{where}: {err}") from None


def crnn_schema() -> dict[str, str]:
    """Valid keys of a ``crnn`` system: :class:`CRNNClassifier`'s parameters and the fold protocol's keywords.

    The estimator's parameters are :class:`CheckedAnnotation`: their values are checked against its constraints.
    """
    from specfusion.models.crnn import CRNNClassifier
    from specfusion.models.crnn.estimator import check_parameter
    from specfusion.models.crnn.protocol import crnn_fold_protocol

    annotations, _ = signature_schema(CRNNClassifier.__init__)
    schema = {key: annotations.get(key, "") for key in CRNNClassifier().get_params(deep=False) if key not in RUNNER_SET}
    protocol, _ = signature_schema(crnn_fold_protocol)
    constrained = CRNNClassifier._parameter_constraints
    return {key: CheckedAnnotation(annotation, key, check_parameter) if key in constrained else annotation
            for key, annotation in {**schema, **protocol}.items()}  # fmt: skip


def finetune_schema() -> dict[str, str]:
    """Valid keys of a ``finetune`` system: :class:`~specfusion.models.finetune.FineTuneClassifier`'s parameters
    (checked against its constraints) and the keywords of its fold protocol."""
    from specfusion.models.finetune import FineTuneClassifier, finetune_fold_protocol
    from specfusion.models.finetune.estimator import check_parameter

    annotations, _ = signature_schema(FineTuneClassifier.__init__)
    params = FineTuneClassifier().get_params(deep=False)
    schema = {key: annotations.get(key, "") for key in params if key not in RUNNER_SET}
    protocol, _ = signature_schema(finetune_fold_protocol)
    constrained = FineTuneClassifier._parameter_constraints
    return {key: CheckedAnnotation(annotation, key, check_parameter) if key in constrained else annotation
            for key, annotation in {**schema, **protocol}.items()}  # fmt: skip


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
