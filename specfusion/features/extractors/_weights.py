"""How the torch extractors choose, find and record their weights (``weights=``, ``weights_path=``).

Every network that offers a choice takes the same vocabulary: ``"pretrained"`` (the published file),
``"none"`` (a random initialisation from ``seed``) or the path of a checkpoint of the same layout.
:func:`checkpoint_file` turns that choice into the file to load, and :func:`checkpoint_record` into the
``weights`` part of the extractor's ``config()``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from specfusion.errors import ConfigError, WeightsError


def weights_kind(weights, aliases: Mapping[str, str] | None = None) -> str:
    """``"pretrained"``, ``"none"`` (random initialisation) or ``"file"`` (a checkpoint path).

    ``aliases`` maps other accepted spellings to ``"pretrained"`` or ``"none"`` (the image CNNs'
    ``"imagenet"``).
    """
    aliases = aliases or {}
    if isinstance(weights, (str, os.PathLike)) and str(weights) in aliases:
        return aliases[str(weights)]
    if isinstance(weights, (str, os.PathLike)) and str(weights) in ("pretrained", "none"):
        return str(weights)
    if isinstance(weights, (str, os.PathLike)) and str(weights):
        return "file"
    spelled = "".join(f" (alias {alias!r})" for alias, value in aliases.items() if value == "pretrained")
    raise ConfigError(f"weights must be 'pretrained'{spelled}, 'none' or a checkpoint file, got {weights!r}")


def checkpoint_file(kind: str, weights, weights_path, *, resolve: Callable[[], Path]) -> Path | None:
    """The file that ``weights`` of ``kind`` (:func:`weights_kind`) loads.

    ``None`` for a random initialisation (which takes no ``weights_path``), ``resolve()`` for the published
    file (``weights_path`` being a local copy of it), else the user's own file.

    Raises
    ------
    ConfigError
        ``weights_path`` given with ``weights="none"`` or with ``weights=FILE``.
    WeightsError
        The user's file does not exist.
    """
    if kind == "none":
        if weights_path is not None:
            raise ConfigError(
                "weights_path is only used with weights='pretrained'; for your own file pass weights=FILE"
            )
        return None
    if kind == "pretrained":
        return resolve()
    if weights_path is not None:
        raise ConfigError("give either weights=FILE or weights_path=FILE, not both")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (weights= takes 'pretrained', 'none' or a file)")
    return path


def checkpoint_record(kind: str, path: Path, spec) -> dict[str, str]:
    """The ``weights`` entry of ``config()`` for a loaded checkpoint: kind, file name, SHA-256, source.

    A user's file whose digest is the published one of ``spec`` (a
    :class:`~specfusion.features.weights.WeightsSpec`) is recorded as ``"pretrained"``: same features,
    same record (and store key).
    """
    from specfusion.features.weights import sha256_file

    digest = sha256_file(path)
    if kind == "file" and spec.sha256 and digest.startswith(spec.sha256):
        kind = "pretrained"
    source = spec.url if kind == "pretrained" else str(path)
    return {"kind": kind, "file": Path(path).name, "sha256": digest, "source": source}


def seeded(build: Callable, seed: int):
    """Call ``build()`` and ``reset_parameters()`` on its result with torch seeded by ``seed``.

    Runs inside :func:`torch.random.fork_rng`, so torch's global random state is restored afterwards
    and the same seed always gives the same network.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = build()
        net.reset_parameters()
    return net


def packaged_file(package: str, *parts: str) -> Path | None:
    """The file ``parts`` (relative path) inside the installed ``package``, found without importing it.

    ``None`` when the package or the file is not there.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None
