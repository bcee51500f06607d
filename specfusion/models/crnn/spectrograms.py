"""The dB Mel-spectrograms of a dataset table, computed once (in threads) and cached on disk.

:func:`compute_spectrograms` gives one row per table item (an unusable item is an error);
:func:`spectrogram_set` leaves unusable items out and lists them (the CRNN protocol uses it). The
Mel-spectrogram itself is :mod:`specfusion.features.spectrogram`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from specfusion import identity
from specfusion.errors import ConfigError, StoreError
from specfusion.files import write_atomic, written_whole
from specfusion.models.crnn.checkpoints import write_error

if TYPE_CHECKING:
    from specfusion.features.spectrogram import MelSpecParams

log = logging.getLogger(__name__)

#: The ``format`` of the record beside a cached array: the SHA-256 of the ``.npy`` file, its shape and dtype.
CACHE_RECORD = "specfusion-spectrogram-cache"


@dataclasses.dataclass(frozen=True)
class MelFrontEnd:
    """The paper's dB Mel-spectrogram as a front end of :func:`spectrogram_set` (the CRNN's input).

    A front end is any object with these members: ``as_dict()`` (every parameter; part of the cache key),
    ``window_s`` (the shortest clip in seconds), ``__call__(waveform, sr) -> ndarray (..., frames)`` and
    ``floor(spec)`` (the value a shorter item is padded with). Fine-tuning adds its own
    (:mod:`specfusion.models.finetune.inputs`).

    Parameters
    ----------
    params : MelSpecParams
    """

    params: MelSpecParams

    @property
    def window_s(self) -> float:
        return self.params.window_s

    def as_dict(self) -> dict:
        """The spectrogram parameters (the cache key's ``params``, as before front ends existed)."""
        return self.params.as_dict()

    def __call__(self, y: np.ndarray, sr: int) -> np.ndarray:
        from specfusion.features.spectrogram import melspectrogram

        return melspectrogram(y, sr, params=self.params)

    def floor(self, spec: np.ndarray) -> float:
        """The clipping level, or the spectrogram's minimum without clipping."""
        return self.params.clip_db if self.params.clip_db is not None else float(spec.min())


def _item_spectrogram(item, *, sr, frontend, short: str = "pad"):
    """The front end's array of one item; any problem is an :class:`AudioError` naming its file."""
    from specfusion.data.audio import load_audio
    from specfusion.errors import AudioError
    from specfusion.features.extraction import item_error

    channels = item.channel if item.channel is not None else "mean"
    y, rate = load_audio(item.path, sr=sr, channels=channels, min_seconds=frontend.window_s, short=short)
    try:
        return frontend(y[0], rate), rate
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 -- a non-finite spectrogram is this item's failure
        raise item_error(item.path, err) from None


def _file_stamps(paths) -> list:
    """(size, modification time in ns) of every distinct file, so audio replaced in place changes cache keys."""
    stamps = {}
    for path in paths:
        if path not in stamps:
            try:
                info = os.stat(path)
                stamps[path] = [info.st_size, info.st_mtime_ns]
            except OSError:
                stamps[path] = None
    return [stamps[p] for p in paths]


def spectrogram_cache_key(table, *, sr, params, n_frames, short: str = "pad") -> str:
    """Hash of everything that determines the cached spectrograms (:func:`specfusion.identity.spectrogram_cache_key`):
    items, their files (path, size, mtime), sample rate, spectrogram parameters, length, short-clip policy, version."""
    paths = [str(i.path) for i in table]
    return identity.spectrogram_cache_key(uids=table.uids(), paths=paths, stamps=_file_stamps(paths), sr=sr,
                                          params=params.as_dict(), n_frames=n_frames, short=short)  # fmt: skip


@dataclasses.dataclass
class SpectrogramSet:
    """Spectrograms of the items that could be used, and the items that could not.

    Attributes
    ----------
    S : ndarray, shape (n_ok, n_mels, frames), float32
        (n_ok, channels, bands, frames) for a front end that gives several channels.
    rows : ndarray of int, shape (n_ok,)
        Position in the table of each row of ``S`` (table order).
    failures : list of (uid, reason, path)
        Items left out, in table order, with the reason.
    """

    S: np.ndarray
    rows: np.ndarray
    failures: list

    @property
    def n_failed(self) -> int:
        return len(self.failures)


def compute_spectrograms(table, **options) -> np.ndarray:
    """The paper's dB Mel-spectrogram of every item of ``table``, shape (n, 128, frames), float32.

    Options as :func:`spectrogram_set`. Every row belongs to the table row of the same position, so an
    item that cannot be used is an error here; :func:`spectrogram_set` (used by
    :func:`specfusion.models.crnn.protocol.crnn_fold_protocol`) leaves such items out and lists them instead.

    Raises
    ------
    AudioError
        An item's audio cannot be used (naming the first such file and how many failed).
    """
    result = spectrogram_set(table, **options)
    if result.failures:
        from specfusion.errors import AudioError

        uid, reason, path = result.failures[0]
        more = f" ({result.n_failed - 1} more item(s) failed too)" if result.n_failed > 1 else ""
        raise AudioError(path, reason + more)
    return result.S


def spectrogram_set(
    table,
    *,
    clip_db: float | None = -80.0,
    sr: int | None = None,
    n_frames: int | None = None,
    cache_dir=None,
    progress: bool = False,
    workers: int | None = None,
    short: str = "pad",
    spec_params: MelSpecParams | dict | None = None,
    frontend=None,
) -> SpectrogramSet:
    """The paper's dB Mel-spectrograms of the items of ``table`` that can be used, and the items that cannot.

    Channel items (``item.channel`` set) use that channel; other items are down-mixed. Spectrograms of
    different lengths are cropped or padded at the end with the floor value (``clip_db``, or each
    spectrogram's minimum) to ``n_frames`` (default: the longest). With ``cache_dir``, the array is
    stored there as ``spectrograms-<hash>.npy`` (the hash covers items, rate, parameters and the
    short-clip policy), written whole, with the file's SHA-256, shape and dtype in ``spectrograms-<hash>.json``;
    next time it is loaded instead of recomputed when it matches that record, and recomputed with a warning
    when it does not (a damaged or altered file, or no record).

    The per-item failure policy is the extraction engine's: an item whose audio cannot be used
    (unreadable, truncated, silent, too short with ``short="error"``, a non-finite spectrogram ...) is
    left out and listed in :attr:`SpectrogramSet.failures` with its reason; the others are computed as
    usual. Only complete sets are cached, so failed items are tried again next time. The steps (the cache,
    every item's spectrogram in threads, the failures, one padded array) are this module's private functions.

    Parameters
    ----------
    table : DatasetTable
    clip_db : float or None
        Clip below this many dB.
    sr : int, optional
        Resample to this rate; default: the rate of the first file (others are resampled to it).
    n_frames : int, optional
    cache_dir : path-like, optional
    progress : bool
    workers : int, optional
        Threads decoding and transforming files (default: the CPU count).
    short : {"pad", "error"}
        Clips shorter than one window (0.32 s): zero-padded to one window, or a failure.
    spec_params : MelSpecParams or dict, optional
        The other spectrogram parameters (window, hop, n_mels, fmin, fmax; paper defaults); ``clip_db``
        above wins over theirs. Part of the cache key.
    frontend : optional
        Another front end than the paper's Mel-spectrogram (:class:`MelFrontEnd` says what one has; fine-tuning's
        are in :mod:`specfusion.models.finetune.inputs`); ``clip_db`` and ``spec_params`` are then not used. Its
        ``as_dict()`` is the cache key's parameters.

    Raises
    ------
    AudioError
        Every item failed.
    StoreError
        The cache could not be written (a full disk ...).
    """
    from specfusion.data.audio import audio_info, check_short_policy
    from specfusion.features.spectrogram import mel_params

    check_short_policy(short)
    # clip_db wins over spec_params' (None: no clipping); float(): -80 and -80.0 give one cache key
    if frontend is None:
        params = dataclasses.replace(mel_params(spec_params), clip_db=None if clip_db is None else float(clip_db))
        frontend = MelFrontEnd(params)
    if len(table) == 0:
        raise ConfigError("the table has no items")
    if sr is None:
        sr = _first_readable_rate(table, audio_info)
    cache = None
    if cache_dir is not None:
        key = spectrogram_cache_key(table, sr=sr, params=frontend, n_frames=n_frames, short=short)
        cache = Path(cache_dir) / f"spectrograms-{key}.npy"
        S = _load_cache(cache, len(table))
        if S is not None:
            return SpectrogramSet(S=S, rows=np.arange(len(table)), failures=[])
    items = list(table)
    specs = _item_spectrograms(items, sr=sr, frontend=frontend, short=short, progress=progress, workers=workers)
    rows, failures = _usable_rows(items, specs)
    S = fixed_length([specs[i] for i in rows], frontend=frontend, n_frames=n_frames)
    if cache is not None:
        _save_cache(cache, S, n_failed=len(failures))
    return SpectrogramSet(S=S, rows=rows, failures=failures)


def _record_path(cache: Path) -> Path:
    """The digest record of a cached array: ``spectrograms-<key>.json`` beside ``spectrograms-<key>.npy``."""
    return cache.with_suffix(".json")


def _load_cache(cache: Path, n_items: int) -> np.ndarray | None:
    """The cached array when ``cache`` holds one of ``n_items`` spectrograms that matches its record; else None.

    A missing cache is None without a word; one that cannot be used (unreadable, no digest record, another
    digest, shape or number of items) is named in a warning, then recomputed and overwritten.
    """
    if not cache.is_file():
        return None
    try:
        S = _verified_cache(cache, n_items)
    except StoreError as err:
        log.warning("recomputing the spectrograms: %s", err)
        return None
    log.info("spectrograms loaded from %s", cache)
    return S


def _verified_cache(cache: Path, n_items: int) -> np.ndarray:
    """The array of ``cache`` once its SHA-256, shape, dtype and number of items match its record (StoreError why not)."""
    record = _read_record(cache)
    try:
        if identity.file_digest(cache) != record["sha256"]:
            raise StoreError(f"{cache} does not match the SHA-256 recorded in {_record_path(cache).name} (a damaged "
                             "or altered cache)")  # fmt: skip
        S = np.load(cache, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise StoreError(f"{cache} cannot be read ({err})") from None
    if list(S.shape) != record["shape"] or S.dtype.str != record["dtype"] or S.ndim < 3 or len(S) != n_items:
        raise StoreError(f"{cache} holds {S.shape} {S.dtype} for {n_items} items, its record {record['shape']} "
                         f"{record['dtype']}")  # fmt: skip
    return S


def _read_record(cache: Path) -> dict:
    """The digest record of ``cache`` (:data:`CACHE_RECORD`); StoreError when it is missing or damaged."""
    path = _record_path(cache)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{cache} has no digest record ({path.name}): written by an older specfusion or "
                         "interrupted") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise StoreError(f"{path} cannot be read ({err})") from None
    fields = isinstance(record, dict) and record.get("format") == CACHE_RECORD
    if not fields or not isinstance(record.get("sha256"), str) or not isinstance(record.get("shape"), list):
        raise StoreError(f"{path} is not a spectrogram cache record (damaged)")
    return record


def _save_cache(cache: Path, S: np.ndarray, *, n_failed: int) -> None:
    """Cache a complete set, whole, with its digest record; with failed items, nothing (they are tried again).

    Raises
    ------
    StoreError
        The cache could not be written (a full disk ...); nothing is left half-written.
    """
    if n_failed:
        log.warning("spectrograms not cached: %d item(s) failed and will be tried again next time", n_failed)
        return
    try:
        with written_whole(cache) as tmp, open(tmp, "wb") as handle:
            np.save(handle, S)
        record = {"format": CACHE_RECORD, "sha256": identity.file_digest(cache), "shape": list(S.shape),
                  "dtype": S.dtype.str}  # fmt: skip
        write_atomic(_record_path(cache), json.dumps(record, indent=1) + "\n")
    except OSError as err:
        raise write_error(cache, "the spectrogram cache", err) from None
    log.info("spectrograms cached in %s", cache)


def _item_spectrograms(items: list, *, sr, frontend, short: str, progress: bool, workers: int | None) -> list:
    """Every item's spectrogram, or the :class:`AudioError` that says why it has none (in threads, in order)."""
    from specfusion.errors import AudioError

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="spectrograms", unit="file", leave=False)

    def one(item):
        try:
            spec, _ = _item_spectrogram(item, sr=sr, frontend=frontend, short=short)
        except AudioError as err:
            spec = err
        if bar is not None:
            bar.update(1)
        return spec

    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            return list(pool.map(one, items))
    finally:
        if bar is not None:
            bar.close()


def _usable_rows(items: list, specs: list) -> tuple[np.ndarray, list]:
    """(rows of the items that have a spectrogram, [(uid, reason, path)] of the others), each logged.

    Raises
    ------
    AudioError
        No item has a spectrogram.
    """
    from specfusion.errors import AudioError

    failures = [
        (item.uid, spec.reason, str(item.path)) for item, spec in zip(items, specs) if isinstance(spec, AudioError)
    ]
    for uid, reason, path in failures:
        log.warning("%s: left out: %s [%s]", uid, reason, path)
    rows = np.asarray([i for i, spec in enumerate(specs) if not isinstance(spec, AudioError)], dtype=np.int64)
    if not len(rows):
        raise AudioError(
            failures[0][2], f"{failures[0][1]} -- and every other item failed too ({len(failures)} in all)"
        )
    return rows, failures


def fixed_length(specs: list, *, frontend, n_frames: int | None) -> np.ndarray:
    """Arrays (..., frames) of one shape but their length as one float32 array, cropped or padded to ``n_frames``.

    Padded with ``frontend.floor(spec)`` (for the Mel-spectrogram: ``clip_db``, or each spectrogram's minimum
    without clipping); ``n_frames`` defaults to the longest.
    """
    length = n_frames or max(s.shape[-1] for s in specs)
    S = np.empty((len(specs), *specs[0].shape[:-1], length), dtype=np.float32)
    for i, spec in enumerate(specs):
        used = min(length, spec.shape[-1])
        S[i, ..., :used] = spec[..., :used]
        S[i, ..., used:] = frontend.floor(spec)
    return S


def protocol_spec_params(spec_params) -> MelSpecParams:
    """The CRNN protocol's spectrogram parameters; the clipping must come from ``clip_db`` alone."""
    from specfusion.features.spectrogram import mel_params

    params = mel_params(spec_params)
    if params.clip_db is not None:
        raise ConfigError("set the CRNN's spectrogram clipping with clip_db, not spec_params.clip_db")
    return params


def _first_readable_rate(table, audio_info) -> int:
    """The sample rate of the first item whose header can be read (the default rate of the set)."""
    from specfusion.errors import AudioError

    first_error = None
    for item in table:
        try:
            return int(audio_info(item.path).samplerate)
        except AudioError as err:
            first_error = first_error or err
    raise first_error
