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
    weights = "imagenet"                # imagenet | none | pretrained | path to a file
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
    method = "weighted"                 # optional: a specfusion.fusion.FUSION_METHODS value (default "stacking-svm")

The parsed :class:`Recipe` holds :class:`SystemSpec` and :class:`FusionSpec` objects whose
``config()`` is what caches are keyed by.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import tomllib
from pathlib import Path
from typing import Any

from specfusion.errors import ConfigError

SYSTEM_KINDS = ("deepspectrum", "audio", "crnn")
#: Options of a system entry that are not passed on to the extractor / CRNN.
_SYSTEM_META_KEYS = {"name", "kind", "tags", "paper", "block", "grid"}


def config_hash(config: dict[str, Any]) -> str:
    """Short, stable hash of a JSON-serialisable configuration (the feature store's hash, shortened)."""
    from specfusion.store import config_hash as full_hash

    return full_hash(config)[:12]


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
    """A named fusion of base systems (``method``: one of :data:`specfusion.fusion.FUSION_METHODS`)."""

    name: str
    members: tuple[str, ...]
    best: int | None = None
    method: str = "stacking-svm"
    block: str = "Fusion"
    paper: PaperResult = PaperResult()


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A parsed recipe."""

    title: str
    dataset_kind: str
    dataset_options: dict[str, Any]
    systems: tuple[SystemSpec, ...]
    fusions: tuple[FusionSpec, ...]
    path: Path | None = None

    def system(self, name: str) -> SystemSpec:
        for spec in self.systems:
            if spec.name == name:
                return spec
        raise ConfigError(f"no system named {name!r} in the recipe")

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


def _paper(entry: dict, where: str) -> PaperResult:
    paper = entry.get("paper", {})
    if not isinstance(paper, dict) or set(paper) - {"devel", "test"}:
        raise ConfigError(f"{where}: 'paper' must be a table with 'devel' and/or 'test'")
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


def parse_recipe(text: str, *, path: Path | None = None) -> Recipe:
    """Parse recipe TOML text; :class:`ConfigError` naming the entry for anything invalid."""
    where = str(path) if path else "recipe"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err})") from None
    dataset = data.get("dataset")
    if not isinstance(dataset, dict) or "kind" not in dataset:
        raise ConfigError(f"{where}: needs a [dataset] table with 'kind'")
    systems: list[SystemSpec] = []
    for i, entry in enumerate(data.get("systems", []), start=1):
        label = f"{where}: systems[{i}]"
        if "name" not in entry or "kind" not in entry:
            raise ConfigError(f"{label}: every system needs 'name' and 'kind'")
        if entry["kind"] not in SYSTEM_KINDS:
            raise ConfigError(f"{label} ({entry['name']}): kind must be one of {', '.join(SYSTEM_KINDS)}, got {entry['kind']!r}")
        if entry["kind"] in ("deepspectrum", "audio") and "extractor" not in entry:
            raise ConfigError(f"{label} ({entry['name']}): needs 'extractor'")
        for expanded in _expand_grid(entry, label):
            options = {k: v for k, v in expanded.items() if k not in _SYSTEM_META_KEYS}
            systems.append(
                SystemSpec(
                    name=expanded["name"],
                    kind=expanded["kind"],
                    options=options,
                    tags=tuple(expanded.get("tags", ())),
                    block=expanded.get("block", {"deepspectrum": "DEEP SPECTRUM", "audio": "Pre-trained audio models", "crnn": "CRNN"}[expanded["kind"]]),
                    paper=_paper(expanded, label),
                )
            )
    names = [s.name for s in systems]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: duplicate system name(s): {', '.join(duplicates)}")
    if not systems:
        raise ConfigError(f"{where}: no [[systems]]")
    fusions: list[FusionSpec] = []
    recipe = Recipe(
        title=data.get("title", path.stem if path else "recipe"),
        dataset_kind=dataset["kind"],
        dataset_options=dict(dataset.get("options", {})),
        systems=tuple(systems),
        fusions=(),
        path=path,
    )
    for i, entry in enumerate(data.get("fusions", []), start=1):
        label = f"{where}: fusions[{i}]"
        if "name" not in entry or not entry.get("members"):
            raise ConfigError(f"{label}: every fusion needs 'name' and a non-empty 'members' list")
        members = tuple(entry["members"])
        if not recipe.select(members):
            raise ConfigError(f"{label} ({entry['name']}): members {list(members)} match no system")
        best = entry.get("best")
        if best is not None and (not isinstance(best, int) or best < 2):
            raise ConfigError(f"{label} ({entry['name']}): 'best' must be an integer >= 2")
        from specfusion.fusion import FUSION_METHODS

        method = entry.get("method", "stacking-svm")
        if method not in FUSION_METHODS:
            raise ConfigError(f"{label} ({entry['name']}): method must be one of {', '.join(FUSION_METHODS)}, got {method!r}")
        fusions.append(FusionSpec(name=entry["name"], members=members, best=best, method=method, block=entry.get("block", "Fusion"), paper=_paper(entry, label)))
    fusion_names = [f.name for f in fusions]
    clash = sorted(set(fusion_names) & set(names) | {n for n in fusion_names if fusion_names.count(n) > 1})
    if clash:
        raise ConfigError(f"{where}: fusion names must be unique and differ from system names: {', '.join(clash)}")
    return dataclasses.replace(recipe, fusions=tuple(fusions))


def load_recipe(path) -> Recipe:
    """Read and parse a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    return parse_recipe(path.read_text(encoding="utf-8"), path=path)
