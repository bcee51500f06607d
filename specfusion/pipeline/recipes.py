"""Recipe files (TOML): a dataset, base systems and fusion groups — parsed and validated, nothing run.

A recipe looks like::

    title = "ESC-50, offline"
    [dataset]
    kind = "esc50"                      # esc50 | dcase2017 | dcase2018 | folder | csv
    options = { missing = "error" }     # passed to the loader (optional)

    [[systems]]
    name = "DenseNet121 / ImageNet"
    kind = "deepspectrum"               # deepspectrum | audio | crnn
    extractor = "densenet121"
    weights = "imagenet"                # pretrained | none | path to a file ("imagenet": alias of pretrained)
    colormap = "viridis"
    tags = ["deepspectrum", "imagenet"]
    paper = { devel = 73.6, test = 75.0 }

    [[systems]]
    name = "CRNN"
    kind = "crnn"
    variant = "esc50"
    grid = { lr = [0.01, 0.001], batch_size = [64, 128] }   # one system per combination

    [[fusions]]
    name = "ImageNet pre-trained DEEP SPECTRUM"
    members = ["tag:imagenet"]          # names, fnmatch patterns or tag:<tag>
    best = 3                            # optional: only the 3 best members by Devel
    method = "weighted"                 # optional: a specfusion.fusion.methods.FUSION_METHODS value (default "stacking-svm")

The parsed :class:`Recipe` holds :class:`SystemSpec` and :class:`FusionSpec` objects whose
``config()`` is what caches are keyed by.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specfusion.errors import ConfigError
from specfusion.pipeline import recipe_schema as schema

SYSTEM_KINDS = ("deepspectrum", "audio", "crnn", "finetune")
#: The paper's fusion: a linear SVM stacked on the members' scores.
DEFAULT_FUSION_METHOD = "stacking-svm"
#: Options of a system entry that are not passed on to the extractor / CRNN.
_SYSTEM_META_KEYS = {"name", "kind", "tags", "paper", "block", "grid"}


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """The paper's numbers for a row of Table 3 (percent), where the recipe gives them."""

    devel: float | None = None
    test: float | None = None


@dataclasses.dataclass(frozen=True)
class SystemSpec:
    """One base system: a feature extractor + linear SVM, or a CRNN."""

    name: str
    kind: str
    options: dict[str, Any]
    tags: tuple[str, ...] = ()
    block: str = ""
    paper: PaperResult = PaperResult()

    def config(self) -> dict[str, Any]:
        """What changes this system's output (the name and paper numbers do not)."""
        return {"kind": self.kind, **self.options}


@dataclasses.dataclass(frozen=True)
class FusionSpec:
    """A named fusion of base systems (``method``: one of :data:`specfusion.fusion.methods.FUSION_METHODS`)."""

    name: str
    members: tuple[str, ...]
    best: int | None = None
    block: str = "Fusion"
    paper: PaperResult = PaperResult()
    method: str = DEFAULT_FUSION_METHOD


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A parsed recipe."""

    title: str
    dataset_kind: str
    dataset_options: dict[str, Any]
    systems: tuple[SystemSpec, ...]
    fusions: tuple[FusionSpec, ...]
    path: Path | None = None
    dataset_short: str = "pad"
    #: Dask address of the extraction and SVM steps and the CRNN folds (``[run] dask``; None: this process).
    dask: str | None = None

    def system(self, name: str) -> SystemSpec:
        for spec in self.systems:
            if spec.name == name:
                return spec
        raise ConfigError(f"no system named {name!r} in the recipe")

    def subset(self, selectors: Sequence[str]) -> Recipe:
        """This recipe cut down to the systems and fusions the selectors name, and the members of those fusions.

        A selector is a system or fusion name, an fnmatch pattern of names, or ``tag:<tag>`` (systems).
        Every kept step is defined, keyed and cached exactly as in the whole recipe, so its results are the
        ones the whole recipe gives.

        Raises
        ------
        ConfigError
            A selector that matches nothing.
        """
        fusions = [f for f in self.fusions if any(fnmatch.fnmatchcase(f.name, s) for s in selectors)]
        wanted = set(selectors) | {m for f in fusions for m in f.members}
        systems = {spec.name for spec in self.select(tuple(wanted))}
        for selector in selectors:
            if not self.select((selector,)) and not any(fnmatch.fnmatchcase(f.name, selector) for f in self.fusions):
                raise ConfigError(f"selector {selector!r} matches no system or fusion of the recipe")
        return dataclasses.replace(
            self, systems=tuple(s for s in self.systems if s.name in systems), fusions=tuple(fusions)
        )

    def select(self, selectors: tuple[str, ...]) -> list[SystemSpec]:
        """Systems matched by names, fnmatch patterns or ``tag:<tag>``, in recipe order.

        A ``best:N:<selector>`` selector matches like ``<selector>`` here; the runner keeps only the N best
        of those by their development score.
        """
        chosen = []
        for spec in self.systems:
            for selector in selectors:
                selector = split_best(selector)[1]
                if selector.startswith("tag:"):
                    hit = selector[4:] in spec.tags
                else:
                    hit = fnmatch.fnmatchcase(spec.name, selector)
                if hit:
                    chosen.append(spec)
                    break
        return chosen


def split_best(selector: str) -> tuple[int | None, str]:
    """``"best:3:tag:crnn"`` -> ``(3, "tag:crnn")``; other selectors -> ``(None, selector)``."""
    if selector.startswith("best:"):
        _, n, rest = selector.split(":", 2)
        if not n.isdigit() or int(n) < 1 or not rest:
            raise ConfigError(f"selector {selector!r}: expected best:<N>:<selector>")
        return int(n), rest
    return None, selector


def slug(name: str) -> str:
    """A file-system friendly version of a system name (its folder under ``systems/`` or ``fusions/``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "system"


def _paper(entry: dict, where: str) -> PaperResult:
    paper = entry.get("paper", {})
    schema.check_table(paper, schema.PAPER_KEYS, where=f"{where}: paper")
    return PaperResult(devel=paper.get("devel"), test=paper.get("test"))


def _expand_grid(entry: dict, where: str) -> list[dict]:
    """One entry per combination of the ``grid`` values, named ``<name> (k=v, ...)``."""
    grid = entry.get("grid")
    if not grid:
        return [entry]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{where}: 'grid' must map option names to non-empty lists")
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        combo = dict(zip(keys, values))
        label = ", ".join(f"{k}={v}" for k, v in combo.items())
        out.append({**{k: v for k, v in entry.items() if k != "grid"}, **combo, "name": f"{entry['name']} ({label})"})
    return out


def _system_schema(entry: dict, where: str) -> dict[str, str]:
    """Valid keys (with annotations) of a system entry of this kind."""
    if entry["kind"] == "crnn":
        return {**schema.SYSTEM_META_KEYS, **schema.crnn_schema()}
    if entry["kind"] == "finetune":
        return {**schema.SYSTEM_META_KEYS, **schema.finetune_schema()}
    return {**schema.SYSTEM_META_KEYS, **schema.extractor_schema(entry["extractor"])}


def _check_system(entry: dict, where: str) -> None:
    """Keys, types and choices of one ``[[systems]]`` entry (before grid expansion)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table ([[systems]]), got {schema.type_name(entry)}")
    if "name" not in entry or "kind" not in entry:
        raise ConfigError(f"{where}: every system needs 'name' and 'kind'")
    for key in ("name", "kind"):
        schema.check_type(entry[key], "str", key=key, where=where)
    where = f"{where} ({entry['name']})"
    if entry["kind"] not in SYSTEM_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(SYSTEM_KINDS)}, got {entry['kind']!r}")
    if entry["kind"] in ("deepspectrum", "audio"):
        if "extractor" not in entry:
            raise ConfigError(f"{where}: needs 'extractor'")
        schema.check_type(entry["extractor"], "str", key="extractor", where=where)
        from specfusion.features.extractors import available_extractors

        schema.check_choice(entry["extractor"], available_extractors(), key="extractor", where=where)
    valid = _system_schema(entry, where)
    for key, value in entry.items():
        if key == "grid":
            continue
        if key not in valid:
            raise schema.unknown_key(key, valid, where=f"{where}: [[systems]]")
        schema.check_type(value, valid[key], key=key, where=where)
    for key, values in (entry.get("grid") or {}).items():
        if key in schema.SYSTEM_META_KEYS or key not in valid:
            raise schema.unknown_key(key, set(valid) - set(schema.SYSTEM_META_KEYS), where=f"{where}: grid")
        for value in values if isinstance(values, list) else ():
            schema.check_type(value, valid[key], key=f"grid.{key}", where=where)
    if "svm" in entry:
        schema.check_svm_table(entry["svm"], where=f"{where}: svm")
    grid_svm = (entry.get("grid") or {}).get("svm")
    for j, table in enumerate(grid_svm if isinstance(grid_svm, list) else (), start=1):
        schema.check_svm_table(table, where=f"{where}: grid.svm[{j}]")
    if any(not tag for tag in entry.get("tags", [])):
        raise ConfigError(f"{where}: 'tags' must not hold empty strings")


def _check_dataset(dataset, where: str) -> None:
    """Keys and types of the ``[dataset]`` table, and its options against the loader's keywords."""
    from specfusion.data.datasets import LOADERS

    if not isinstance(dataset, dict) or "kind" not in dataset:
        raise ConfigError(f"{where}: needs a [dataset] table with 'kind'")
    schema.check_table(dataset, schema.DATASET_KEYS, where=f"{where}: [dataset]")
    schema.check_choice(dataset["kind"], LOADERS, key="kind", where=f"{where}: [dataset]")
    if "short" in dataset:
        schema.check_choice(dataset["short"], schema.SHORT_POLICIES, key="short", where=f"{where}: [dataset]")
    valid, var_keyword = schema.dataset_schema(dataset["kind"])
    for key, value in dataset.get("options", {}).items():
        if key not in valid and not var_keyword:
            raise schema.unknown_key(key, valid, where=f"{where}: [dataset] options (kind {dataset['kind']!r})")
        schema.check_type(value, valid.get(key, ""), key=key, where=f"{where}: [dataset] options")


def _check_slugs(specs, folder: str, where: str) -> None:
    """ConfigError naming both entries when two names map to the same output folder."""
    seen: dict[str, str] = {}
    for spec in specs:
        other = seen.setdefault(slug(spec.name), spec.name)
        if other != spec.name:
            raise ConfigError(
                f"{where}: {other!r} and {spec.name!r} would share the output folder {folder}/{slug(spec.name)}; "
                "rename one (names must differ in more than case and punctuation)"
            )


def _check_members(members: tuple, where: str, recipe: Recipe, fusion_names: set[str]) -> None:
    """ConfigError for a member listed twice, naming a fusion, or matching no system (with what exists)."""
    seen = set()
    for member in members:
        if not isinstance(member, str):
            raise ConfigError(f"{where}: members must be strings (system names, patterns or tag:<tag>), got {member!r}")
        if member in seen:
            raise ConfigError(f"{where}: member {member!r} is listed twice")
        seen.add(member)
        plain = split_best(member)[1]
        if recipe.select((member,)):
            continue
        if plain in fusion_names:
            raise ConfigError(f"{where}: member {member!r} is a fusion; a fusion's members are systems "
                              "(list that fusion's members instead)")  # fmt: skip
        tags = sorted({tag for spec in recipe.systems for tag in spec.tags})
        raise ConfigError(f"{where}: member {member!r} matches no system (systems: "
                          f"{', '.join(s.name for s in recipe.systems)}; tags: {', '.join(tags) or 'none'})")  # fmt: skip


#: The report block of a system kind when its entry names none.
_DEFAULT_BLOCKS = {
    "deepspectrum": "DEEP SPECTRUM",
    "audio": "Pre-trained audio models",
    "crnn": "CRNN",
    "finetune": "Fine-tuned networks",
}


def parse_recipe(text: str, *, path: Path | None = None) -> Recipe:
    """Parse recipe TOML text; :class:`ConfigError` naming the entry for anything invalid.

    Every key and value type is checked here (:mod:`specfusion.pipeline.recipe_schema`), so a recipe error
    stops a run before any work starts.
    """
    where = str(path) if path else "recipe"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err})") from None
    schema.check_finite(data, where=where)
    schema.check_table(data, schema.TOP_KEYS, where=f"{where}: top level")
    schema.check_table(data.get("run", {}), schema.RUN_KEYS, where=f"{where}: [run]")
    dataset = data.get("dataset")
    _check_dataset(dataset, where)
    systems = _parse_systems(data.get("systems", []), where)
    recipe = Recipe(
        title=data.get("title", path.stem if path else "recipe"),
        dataset_kind=dataset["kind"],
        dataset_options=dict(dataset.get("options", {})),
        systems=tuple(systems),
        fusions=(),
        path=path,
        dataset_short=dataset.get("short", "pad"),
        dask=data.get("run", {}).get("dask"),
    )
    entries = data.get("fusions", [])
    fusion_names = {e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}
    fusions = [_parse_fusion(entry, f"{where}: fusions[{i}]", recipe, fusion_names)
               for i, entry in enumerate(entries, start=1)]  # fmt: skip
    fusion_names = [f.name for f in fusions]
    names = [s.name for s in systems]
    clash = sorted(set(fusion_names) & set(names) | {n for n in fusion_names if fusion_names.count(n) > 1})
    if clash:
        raise ConfigError(f"{where}: fusion names must be unique and differ from system names: {', '.join(clash)}")
    _check_slugs(fusions, "fusions", where)
    return dataclasses.replace(recipe, fusions=tuple(fusions))


def _parse_systems(entries: list, where: str) -> list[SystemSpec]:
    """The ``[[systems]]`` entries, grids expanded; ConfigError for duplicates, none at all or clashing folders."""
    systems: list[SystemSpec] = []
    for i, entry in enumerate(entries, start=1):
        label = f"{where}: systems[{i}]"
        _check_system(entry, label)
        for expanded in _expand_grid(entry, label):
            options = {k: v for k, v in expanded.items() if k not in _SYSTEM_META_KEYS}
            block = expanded.get("block", _DEFAULT_BLOCKS[expanded["kind"]])
            systems.append(SystemSpec(name=expanded["name"], kind=expanded["kind"], options=options,
                                      tags=tuple(expanded.get("tags", ())), block=block, paper=_paper(expanded, label)))  # fmt: skip
    names = [s.name for s in systems]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: duplicate system name(s): {', '.join(duplicates)}")
    if not systems:
        raise ConfigError(f"{where}: no [[systems]]")
    _check_slugs(systems, "systems", where)
    return systems


def _parse_fusion(entry, label: str, recipe: Recipe, fusion_names: set[str]) -> FusionSpec:
    """One ``[[fusions]]`` entry, its members checked against ``recipe``'s systems.

    Every member selector must match at least one system and be listed once; a fusion is never a member.
    """
    named = f" ({entry['name']})" if isinstance(entry, dict) and "name" in entry else ""
    schema.check_table(entry, schema.FUSION_KEYS, where=f"{label}{named}")
    if "name" not in entry or not entry.get("members"):
        raise ConfigError(f"{label}: every fusion needs 'name' and a non-empty 'members' list")
    members = tuple(entry["members"])
    _check_members(members, f"{label} ({entry['name']})", recipe, fusion_names)
    best = entry.get("best")
    if best is not None and best < 2:
        raise ConfigError(f"{label} ({entry['name']}): 'best' must be an integer >= 2")
    method = entry.get("method", DEFAULT_FUSION_METHOD)
    schema.check_choice(method, schema.fusion_methods(), key="method", where=f"{label} ({entry['name']})")
    return FusionSpec(name=entry["name"], members=members, best=best, block=entry.get("block", "Fusion"),
                      paper=_paper(entry, label), method=method)  # fmt: skip


def load_recipe(path) -> Recipe:
    """Read and parse a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); TOML recipes must be saved as UTF-8"
        ) from None
    return parse_recipe(text, path=path)
