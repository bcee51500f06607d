"""Typed errors. Each carries what went wrong, where (file, line, item) and, where possible, what to do.

The CLI turns every :class:`SpecfusionError` into one clear line and exit code 1; anything else is a bug.
Messages speak of the library's parameters (``missing='report'``, ``store_path``); an error that advises
on parameters names them in ``parameters``, and the CLI adds the matching command-line flags to its line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class SpecfusionError(Exception):
    """Base class of every error specfusion raises on purpose.

    Parameters
    ----------
    *args
        The message.
    parameters : mapping, optional
        The parameters the message advises on, name -> suggested value (``None``: no particular value),
        e.g. ``{"missing": "report"}``. Names are those of the library's functions (qualified as
        ``function.parameter`` where a bare name would be ambiguous); the CLI maps them to its flags.
    """

    def __init__(self, *args: Any, parameters: Mapping[str, Any] | None = None):
        super().__init__(*args)
        self.parameters = dict(parameters or {})


class AudioError(SpecfusionError):
    """An audio file cannot be used: unreadable, empty, non-finite or too short.

    Parameters
    ----------
    path : path-like
        The offending file.
    reason : str
        Why it cannot be used, in words a user understands.
    """

    def __init__(self, path, reason: str, *, parameters: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}", parameters=parameters)


class DatasetError(SpecfusionError):
    """A dataset description (meta file, CSV, folder tree) is malformed or inconsistent.

    Parameters
    ----------
    message : str
        What is wrong.
    path : path-like, optional
        The file (or folder) at fault.
    line : int, optional
        1-based line number inside ``path``.
    """

    def __init__(
        self, message: str, *, path=None, line: int | None = None, parameters: Mapping[str, Any] | None = None
    ):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message, parameters=parameters)


class WeightsError(SpecfusionError):
    """Model weights cannot be obtained or do not fit the architecture."""


class StoreError(SpecfusionError):
    """A feature store or predictions file is missing, corrupt or of another configuration."""


class ConfigError(SpecfusionError, ValueError):
    """An option, recipe entry or parameter combination is invalid.

    Also a :class:`ValueError`, as Python and scikit-learn raise for invalid arguments, so code written
    for scikit-learn estimators (``except ValueError``, its estimator checks) handles it.
    """


class SignalError(SpecfusionError, ValueError):
    """A signal cannot be transformed into usable values (e.g. its spectrogram is not finite).

    Raised where the file is not known (:mod:`specfusion.features.spectrogram`); callers that read a file turn
    it into an :class:`AudioError` naming the file, so it becomes a per-item failure.
    """


class WeightsUnavailableError(WeightsError):
    """Model weights are not present and cannot be obtained here (not cached, downloading off or failing).

    The one error :func:`specfusion.pipeline.runner.run_recipe` reports as *skipped* (an optional resource is
    missing) rather than *failed*.
    """


class ModelError(SpecfusionError):
    """A saved model file (``model.sfm``) cannot be used: not a specfusion model, another format version,
    a member missing or corrupt, or settings this installation cannot honour (another weights file ...).

    Parameters
    ----------
    path : path-like
        The model file.
    reason : str
        What is wrong and, where possible, what to do.
    """

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
