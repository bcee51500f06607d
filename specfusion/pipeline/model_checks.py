"""Load-time validation of model files (``model.sfm``, read by :mod:`specfusion.pipeline.systems`).

The rule: **the model-file loader validates everything before allocating anything**, so nothing in a model
file can make it allocate more than the model's own metadata implies. In order, for the file and for each
nested member:

1. zip structure: the central directory is at most :data:`MAX_DIRECTORY_BYTES` (read from the end record
   before the directory itself), entry names are unique and entries do not overlap; ``model.json`` is at most
   :data:`MAX_DESCRIPTION_BYTES` (its zip entry's ``file_size``), strict JSON (no NaN, no infinity), and equal
   to the digest recorded in it (:func:`description_digest`; files of the previous release have none);
2. the system description is checked and the shape of every array derived from it (:func:`array_specs`):
   an SVM's weights, intercepts and scaler from its classes and feature dimension, a CRNN's state dict from
   its recorded network parameters (the network built on PyTorch's ``meta`` device, which allocates
   nothing), a fusion's weights from its members and classes; values that size what prediction allocates but
   that no array ties down are bounded (:data:`MAX_SAMPLE_RATE`, :data:`MAX_SPECTROGRAM_VALUES`,
   :data:`MAX_WINDOW_OVERLAP`);
3. ``arrays.npz`` is read only when its zip entry's ``file_size`` is at most what those shapes take
   (:func:`npz_bound`), and must match its recorded SHA-256; the ``.npy`` header of every array in it is read
   (shape and dtype) and compared with its derived shape, and its entry must be exactly as long as the header
   says; only then are the arrays read, each exactly its validated size, and parameters must be finite.

A member is read only when its entry's ``file_size`` is its recorded ``size`` (files of the previous release: at
most :data:`MAX_MEMBER_EXPANSION` times its compressed size), from its own entry, at most
:data:`MAX_MEMBER_DEPTH` deep. After the systems are built, an SVM's or a fusion's fitted estimator is applied
once to two rows of zeros (:func:`check_scores`), so weights that do not fit together are refused on load rather
than at prediction.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from specfusion.errors import ConfigError, ModelError
from specfusion.identity import config_hash, plain
from specfusion.models.crnn.checkpoints import ARCHITECTURE, meta_shapes

#: Largest ``model.json`` read (its zip entry's uncompressed size); a 10-fold CRNN's is below 200 kB.
MAX_DESCRIPTION_BYTES = 8 << 20
#: Largest zip central directory read (the model file's, a member's, ``arrays.npz``'s): ~24,000 entries of a
#: CRNN's array names; a 10-fold CRNN's ``arrays.npz`` has 760 entries (~70 kB).
MAX_DIRECTORY_BYTES = 2 << 20
#: Deepest nesting of member files (a fusion of systems is 1 deep; recipes' fusions take systems only).
MAX_MEMBER_DEPTH = 3
#: A member without a recorded size (previous release) may expand at most this many times its compressed size
#: (a model file is compressed data: its members expand by less than 1.1).
MAX_MEMBER_EXPANSION = 16
#: Highest sample rate (Hz) a model may resample its input to.
MAX_SAMPLE_RATE = 384_000
#: Largest spectrogram a model may make per clip, and largest Mel filter bank: n_mels x frames (a CRNN's
#: input, 64 MiB of float32: 128 Mel bands x 131,072 frames) or n_mels x FFT bins.
MAX_SPECTROGRAM_VALUES = 1 << 24
#: Largest ratio of a spectrogram's FFT size to its hop (the paper's is 2), which bounds the STFT of a clip.
MAX_WINDOW_OVERLAP = 64
#: Arrays that scikit-learn keeps for diagnostics only (``LogisticRegressionCV.coefs_paths_`` ...) may hold at
#: most this many times the system's (features + 1) x classes values (LogisticRegressionCV's hold folds x C grid
#: times that).
DIAGNOSTIC_FACTOR = 256
#: The key of ``model.json`` holding :func:`description_digest`.
DESCRIPTION_DIGEST = "description_sha256"

MODEL_JSON = "model.json"
ARRAYS_FILE = "arrays.npz"
#: Room in ``arrays.npz`` besides the array values: per array its ``.npy`` header (numpy reads at most 10,000
#: bytes of it) and zip records; per archive its end records.
_ENTRY_SLACK = 10_240
_ARCHIVE_SLACK = 1 << 16
_EOCD = struct.Struct("<4s4H2LH")  # zip end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_LOCAL_HEADER_SIZE = 30
_FITTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*_\Z")
#: The estimator each fusion method saves.
FUSION_ESTIMATORS = {
    "stacking-svm": "LinearSVM", "calibrated-mean": "CalibratedMean", "weighted": "WeightedFusion",
    "stacking-logreg": "LogRegStacking", "auto": "AutoFusion",
}  # fmt: skip
_MEMBER_FUSIONS = ("CalibratedMean", "WeightedFusion", "LogRegStacking", "_CalibratedSVM", "AutoFusion")
_ESTIMATORS = ("StandardScaler", "PCA", "LinearSVC", "LogisticRegression", "LinearSVM", *_MEMBER_FUSIONS)


# ---------------------------------------------------------------------------------------------------
# zip structure and description
# ---------------------------------------------------------------------------------------------------
@contextmanager
def readable(where, what: str) -> Iterator[None]:
    """Turn the errors of a damaged zip or ``.npy`` stream into a :class:`ModelError` naming ``what``."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as err:
        raise ModelError(where, f"{what} is damaged or not a readable archive ({err})") from None


def open_zip(stream, where, *, what: str) -> zipfile.ZipFile:
    """The zip archive of a seekable binary ``stream``, its directory size, names and entry ranges checked first."""
    with readable(where, what):
        size = _directory_bytes(stream)
        if size > MAX_DIRECTORY_BYTES:
            raise ModelError(where, f"{what} declares a zip directory of {size} bytes, more than the "
                             f"{MAX_DIRECTORY_BYTES} a model file may have (MAX_DIRECTORY_BYTES)")  # fmt: skip
        stream.seek(0)
        zf = zipfile.ZipFile(stream)
    _check_entries(zf, where, what)
    return zf


def _directory_bytes(stream) -> int:
    """The size of a zip's central directory as its end record (or zip64 end record) declares it."""
    end = stream.seek(0, io.SEEK_END)
    start = max(0, end - _EOCD.size - 0xFFFF)
    stream.seek(start)
    tail = stream.read(end - start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        raise zipfile.BadZipFile("no end of central directory record")
    size = _EOCD.unpack_from(tail, at)[5]
    locator = at - _EOCD64_LOCATOR.size
    if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
        stream.seek(_EOCD64_LOCATOR.unpack_from(tail, locator)[2])
        record = stream.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            raise zipfile.BadZipFile("damaged zip64 end of central directory record")
        size = _EOCD64.unpack(record)[8]
    return size


def _check_entries(zf: zipfile.ZipFile, where, what: str) -> None:
    """Entry names are unique and entries do not overlap (each entry's data is its own)."""
    infos = zf.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ModelError(where, f"{what} has two entries named {twice!r}")
    ordered = sorted(infos, key=lambda info: info.header_offset)
    limits = [info.header_offset for info in ordered[1:]] + [zf.start_dir]
    for info, limit in zip(ordered, limits, strict=True):
        # the smallest extent an entry can have: the local header's fixed part, its name, its data
        if info.header_offset + _LOCAL_HEADER_SIZE + len(info.filename) + info.compress_size > limit:
            raise ModelError(where, f"{what}: entry {info.filename!r} overlaps the next one (a crafted archive)")


def read_description(zf: zipfile.ZipFile, where) -> dict:
    """``model.json`` of a model file: at most :data:`MAX_DESCRIPTION_BYTES`, strict JSON (no NaN or infinity)."""
    try:
        info = zf.getinfo(MODEL_JSON)
    except KeyError:
        raise ModelError(where, f"not a specfusion model file (no {MODEL_JSON} inside)") from None
    if info.file_size > MAX_DESCRIPTION_BYTES:
        raise ModelError(where, f"{MODEL_JSON} declares {info.file_size} bytes, more than the "
                         f"{MAX_DESCRIPTION_BYTES} a model description may have (MAX_DESCRIPTION_BYTES)")  # fmt: skip
    with readable(where, MODEL_JSON):
        raw = zf.read(info)
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelError(where, f"not a readable specfusion model file ({MODEL_JSON}: {err})") from None
    return meta


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a model file may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def description_digest(meta: dict) -> str:
    """SHA-256 of a model file's description: the canonical JSON of ``model.json`` without this digest."""
    return config_hash(plain({k: v for k, v in meta.items() if k != DESCRIPTION_DIGEST}))


def check_description_digest(meta: dict, where) -> bool:
    """Whether ``model.json`` records its digest (files of the previous release do not); refused when it differs."""
    if DESCRIPTION_DIGEST not in meta:
        return False
    try:
        same = description_digest(meta) == meta[DESCRIPTION_DIGEST]
    except ConfigError as err:
        raise ModelError(where, f"{MODEL_JSON} cannot be digested ({err})") from None
    if not same:
        raise ModelError(where, f"{MODEL_JSON} does not match its recorded digest ({DESCRIPTION_DIGEST}): "
                         "a damaged or altered file; save the model again")  # fmt: skip
    return True


# ---------------------------------------------------------------------------------------------------
# arrays: headers first, data only once validated
# ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What the ``.npy`` header of an array in ``arrays.npz`` declares, and its zip entry."""

    shape: tuple[int, ...]
    dtype: np.dtype
    info: zipfile.ZipInfo


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype an array of a model file must have, derived from the file's description.

    Attributes
    ----------
    dims : tuple of (int, bool), or None
        Per dimension its size and whether that size is exact (else an upper bound); None: any shape of at
        most ``max_size`` values.
    what : str
        What implies the shape, for messages.
    kinds : str
        Allowed dtype kinds (``"f"`` floats, ``"iu"`` integers).
    finite : bool
        A parameter: its values must be finite.
    max_size : int
        Most values it may hold when ``dims`` is None.
    codes_below : int or None
        Class codes: strictly increasing integers in ``[0, codes_below)``.
    """

    dims: tuple[tuple[int, bool], ...] | None
    what: str
    kinds: str = "f"
    finite: bool = True
    max_size: int = 0
    codes_below: int | None = None

    def describe(self) -> str:
        if self.dims is None:
            return f"at most {self.max_size} values"
        dims = [f"{n}" if exact else f"<={n}" for n, exact in self.dims]
        return f"shape ({', '.join(dims)}{',' if len(dims) == 1 else ''})"

    @property
    def max_values(self) -> int:
        return self.max_size if self.dims is None else math.prod(n for n, _ in self.dims)

    def fits(self, shape: tuple[int, ...]) -> bool:
        if self.dims is None:
            return math.prod(shape) <= self.max_size
        return len(shape) == len(self.dims) and all(
            s == n if exact else s <= n for s, (n, exact) in zip(shape, self.dims, strict=True)
        )


def npz_bound(specs: dict[str, ArraySpec]) -> int:
    """Most bytes an ``arrays.npz`` of arrays of ``specs`` takes: 8 bytes a value, headers and zip records."""
    return _ARCHIVE_SLACK + sum(8 * spec.max_values + _ENTRY_SLACK + 2 * len(key) for key, spec in specs.items())


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where, *, what: str, implied: str) -> bytes:
    """The bytes of a zip entry whose declared ``file_size`` is at most ``limit`` (``implied`` says by what)."""
    if info.file_size > limit:
        raise ModelError(where, f"{what} declares {info.file_size} bytes, more than the {limit} {implied}")
    with readable(where, what):
        return zf.read(info)


def npz_headers(stream, where) -> tuple[zipfile.ZipFile, dict[str, NpyHeader]]:
    """The archive of ``arrays.npz`` and every array's ``.npy`` header; no array data is read.

    Refused: an entry that is not a ``.npy`` array, a dtype that is not plain numbers (objects, strings,
    records), an entry longer or shorter than its header declares.
    """
    npz = open_zip(stream, where, what=ARRAYS_FILE)
    headers = {}
    for info in sorted(npz.infolist(), key=lambda i: i.header_offset):
        if not info.filename.endswith(".npy"):
            raise ModelError(where, f"{ARRAYS_FILE} is not a plain numeric archive (entry {info.filename!r})")
        with readable(where, ARRAYS_FILE), npz.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = handle.tell()
        key = info.filename[: -len(".npy")]
        if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise ModelError(where, f"{ARRAYS_FILE} is not a plain numeric archive (array {key!r} has dtype {dtype})")
        if info.file_size != offset + math.prod(shape) * dtype.itemsize:
            raise ModelError(where, f"{ARRAYS_FILE}: the entry of array {key!r} holds {info.file_size - offset} "
                             f"bytes of data, its header declares {shape} of {dtype}")  # fmt: skip
        headers[key] = NpyHeader(tuple(shape), dtype, info)
    return npz, headers


def check_headers(headers: dict[str, NpyHeader], specs: dict[str, ArraySpec], where) -> None:
    """Every array the description names is present with the shape and dtype it implies; no other array is."""
    missing = [key for key in specs if key not in headers]
    if missing:
        raise ModelError(where, f"array {missing[0]!r} is missing from {ARRAYS_FILE}")
    extra = [key for key in headers if key not in specs]
    if extra:
        raise ModelError(where, f"{ARRAYS_FILE} holds an array its description does not name ({extra[0]!r})")
    for key, spec in specs.items():
        header = headers[key]
        if header.dtype.kind not in spec.kinds:
            raise ModelError(where, f"array {key!r} has dtype {header.dtype} where the description implies one of "
                             f"kind {spec.kinds!r} ({spec.what})")  # fmt: skip
        if not spec.fits(header.shape):
            raise ModelError(where, f"array {key!r} has shape {header.shape} where the description implies "
                             f"{spec.describe()} ({spec.what})")  # fmt: skip


def load_arrays(npz: zipfile.ZipFile, headers: dict[str, NpyHeader], specs: dict[str, ArraySpec], where) -> dict:
    """The arrays, read in archive order after :func:`check_headers`; parameters must be finite."""
    arrays = {}
    for key, header in sorted(headers.items(), key=lambda item: item[1].info.header_offset):
        with readable(where, ARRAYS_FILE), npz.open(header.info) as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
        spec = specs[key]
        if spec.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ModelError(where, f"array {key!r} holds NaN or infinite values (a damaged or altered model)")
        if spec.codes_below is not None:
            codes = array.astype(np.int64, copy=False)
            if codes.ndim != 1 or np.any(codes < 0) or np.any(codes >= spec.codes_below) or np.any(np.diff(codes) <= 0):
                raise ModelError(where, f"array {key!r} must hold increasing class codes below {spec.codes_below}")
        arrays[key] = array
    return arrays


# ---------------------------------------------------------------------------------------------------
# what the description implies
# ---------------------------------------------------------------------------------------------------
def array_specs(node, where) -> dict[str, ArraySpec]:
    """Check a system description (``model.json``'s ``system``) and derive every array's :class:`ArraySpec`.

    Raises
    ------
    ModelError
        A value of the wrong type or out of bounds, class lists that disagree, a CRNN whose parameters cannot
        build its network; the message names the entry.
    """
    if not isinstance(node, dict):
        raise ModelError(where, f"{MODEL_JSON} holds no system")
    kind = node.get("type")
    checks = {"svm": _svm_specs, "crnn": _crnn_specs, "fusion": _fusion_specs, "finetune": _finetune_specs}
    if not isinstance(kind, str) or kind not in checks:
        raise ModelError(where, f"unknown system type {kind!r}")
    try:
        return checks[kind](node, where)
    except (KeyError, TypeError, AttributeError) as err:  # an entry of another type than the checks expect
        raise ModelError(where, f"{MODEL_JSON} holds an entry this specfusion cannot read ({err!r})") from None


def _positive(value, what: str, where, *, at_most: int | None = None, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(where, f"{what} must be a positive integer, got {value!r}")
    if at_most is not None and value > at_most:
        raise ModelError(where, f"{what} is {value}, more than {at_most}{why}")
    return value


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _choice(value, choices: tuple, what: str, where) -> None:
    if value not in choices:
        raise ModelError(where, f"{what} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _classes(node: dict, where) -> list[str]:
    classes = node.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelError(where, f"the class list must be a non-empty list of names, got {str(classes)[:80]}")
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        raise ModelError(where, f"the class list names {twice!r} twice")
    return classes


def _dict(node: dict, key: str, where) -> dict:
    value = node.get(key)
    if not isinstance(value, dict):
        raise ModelError(where, f"{MODEL_JSON} lacks the entry {key!r} (a table) this specfusion needs")
    return value


def _svm_specs(node: dict, where) -> dict[str, ArraySpec]:
    classes = _classes(node, where)
    extractor = _dict(node, "extractor", where)
    if not isinstance(extractor.get("name"), str) or not isinstance(extractor.get("options", {}), dict):
        raise ModelError(where, "the extractor entry needs a name and a table of options")
    check_extractor_config(_dict(extractor, "config", where), where)
    _choice(node.get("short", "pad"), ("pad", "error"), "short", where)
    _choice(node.get("channels", "mean"), ("mean", "each"), "channels", where)
    _choice(node.get("combine", "mean"), ("mean", "max", "none"), "combine", where)
    if node.get("batch_size") is not None:
        _positive(node["batch_size"], "batch_size", where)
    from specfusion.features.runtimes import RUNTIMES

    _choice(node.get("runtime", "auto"), RUNTIMES, "runtime", where)
    classifier = _dict(node, "classifier", where)
    if classifier.get("type") != "LinearSVM":
        raise ModelError(where, f"the classifier must be a LinearSVM, got {classifier.get('type')!r}")
    width = _positive(_dict(classifier, "attrs", where).get("n_features_in_"), "the SVM's n_features_in_", where)
    specs: dict[str, ArraySpec] = {}
    _estimator_specs(classifier, _Context(classes, 0, width), specs, where)
    return specs


def check_extractor_config(config: dict, where) -> None:
    """The sizes an extractor's configuration records are bounded: sample rate, spectrogram, image size."""
    rate = config.get("sample_rate")
    if rate is not None:
        _positive(rate, "the extractor's sample_rate", where, at_most=MAX_SAMPLE_RATE, why=" Hz (MAX_SAMPLE_RATE)")
        if isinstance(config.get("spectrogram"), dict):
            spectrogram_params(config["spectrogram"], rate, where)
    size = config.get("image_size")
    if isinstance(size, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        if math.prod(size) > MAX_SPECTROGRAM_VALUES or min(size, default=1) < 1:
            raise ModelError(where, f"the extractor's image_size {size} is out of bounds (MAX_SPECTROGRAM_VALUES)")


def spectrogram_params(spec_params, sr: int, where, *, clip_db=None):
    """The :class:`~specfusion.features.spectrogram.MelSpecParams` of a model, its sizes at rate ``sr`` bounded."""
    from specfusion.features.spectrogram import mel_params

    if not isinstance(spec_params, dict):
        raise ModelError(where, f"spectrogram parameters must be a table, got {spec_params!r}")
    try:
        params = mel_params(spec_params, clip_db=clip_db)
        n_fft, hop = params.fft_size(sr), params.hop_length(sr)
        bins = int(n_fft) // 2 + 1
    except (ConfigError, TypeError, ValueError, OverflowError) as err:
        raise ModelError(where, f"invalid spectrogram parameters ({err})") from None
    if not isinstance(params.n_mels, int) or isinstance(params.n_mels, bool):
        raise ModelError(where, f"spectrogram n_mels must be an integer, got {params.n_mels!r}")
    if params.n_mels * bins > MAX_SPECTROGRAM_VALUES:
        raise ModelError(where, f"a Mel filter bank of {params.n_mels} x {bins} values at {sr} Hz is more than "
                         f"{MAX_SPECTROGRAM_VALUES} (MAX_SPECTROGRAM_VALUES)")  # fmt: skip
    if n_fft > MAX_WINDOW_OVERLAP * hop:
        raise ModelError(where, f"an FFT of {n_fft} samples every {hop} samples overlaps more than "
                         f"{MAX_WINDOW_OVERLAP} times (MAX_WINDOW_OVERLAP)")  # fmt: skip
    return params


def _crnn_specs(node: dict, where) -> dict[str, ArraySpec]:
    classes = _classes(node, where)
    n_mels = _positive(node.get("n_mels"), "n_mels", where)
    sr = _positive(node.get("sr"), "sr", where, at_most=MAX_SAMPLE_RATE, why=" Hz (MAX_SAMPLE_RATE)")
    clip_db = node.get("clip_db")
    if clip_db is not None and not _number(clip_db):
        raise ModelError(where, f"clip_db must be a number or null, got {clip_db!r}")
    _choice(node.get("short", "pad"), ("pad", "error"), "short", where)
    _choice(node.get("channels", "mean"), ("mean", "each"), "channels", where)
    _choice(node.get("combine", "mean"), ("mean", "max", "none"), "combine", where)
    spec = spectrogram_params(node.get("spec_params") or {}, sr, where, clip_db=clip_db)
    if spec.n_mels != n_mels:
        raise ModelError(where, f"n_mels is {n_mels} but the spectrogram parameters make {spec.n_mels} Mel bands")
    n_frames = _positive(node.get("n_frames"), "n_frames", where, at_most=MAX_SPECTROGRAM_VALUES // n_mels,
                         why=f" for {n_mels} Mel bands (MAX_SPECTROGRAM_VALUES)")  # fmt: skip
    folds = node.get("folds")
    if not isinstance(folds, list) or not folds or not all(isinstance(f, dict) for f in folds):
        raise ModelError(where, "a CRNN model needs a non-empty list of folds")
    states = [_dict(fold, "state_dict", where) for fold in folds]
    shapes = _network_shapes(_dict(node, "params", where), len(classes), n_mels, n_frames, len(states[0]), where)
    specs: dict[str, ArraySpec] = {}
    for fold, state in zip(folds, states, strict=True):
        label = f"fold {fold.get('fold')}"
        _check_statistics(fold, n_mels, label, where)
        if set(state) != set(shapes):
            odd = sorted(set(state) ^ set(shapes))[0]
            raise ModelError(where, f"{label}: the state dict does not match the recorded network parameters "
                             f"(parameter {odd!r})")  # fmt: skip
        for name, key in state.items():
            if not isinstance(key, str) or key in specs:
                raise ModelError(where, f"{label}: {name} must name an array of its own, got {key!r}")
            dims, kinds = shapes[name]
            specs[key] = ArraySpec(tuple((n, True) for n in dims), f"{label}'s {name} for {len(classes)} classes and "
                                   "the recorded network parameters", kinds=kinds)  # fmt: skip
    return specs


def _network_shapes(params: dict, n_classes: int, n_mels: int, n_frames: int, n_state: int, where) -> dict:
    """Name -> (shape, dtype kinds) of the state dict of the network ``params`` describe; allocates nothing."""
    missing = [k for k in ARCHITECTURE if k not in params]
    if missing:
        raise ModelError(where, f"the CRNN parameters lack {missing[0]!r}")
    blocks = params["filters"]
    for key in ("kernels", "filters", "pools"):
        value = params[key]
        if not isinstance(value, list) or not 1 <= len(value) <= n_state or len(value) != len(blocks):
            raise ModelError(where, f"CRNN {key} must list one entry per block, got {str(value)[:80]}")
    for k in params["kernels"] + params["filters"] + [p for pool in params["pools"] for p in _pair(pool, where)]:
        _positive(k, "every CRNN kernel, filter count and pool size", where)
    _positive(params["gru_units"], "gru_units", where)
    _positive(params["gru_layers"], "gru_layers", where, at_most=n_state, why=" (more than the state dict holds)")
    if not all(_number(params[k]) for k in ("dropout", "bn_momentum")) or not 0 <= params["dropout"] < 1:
        raise ModelError(where, "the CRNN's dropout must be in [0, 1) and bn_momentum a number")
    steps = n_frames
    for _, time_pool in params["pools"]:
        steps //= time_pool
    if steps < 1:
        raise ModelError(where, f"the time pools {[p[1] for p in params['pools']]} reduce {n_frames} frames to nothing")
    try:
        shapes = meta_shapes(n_classes, n_mels, params)  # shapes only: no parameter is allocated
    except (ConfigError, ValueError, TypeError, RuntimeError) as err:
        raise ModelError(where, f"the CRNN parameters do not build a network ({err})") from None
    return {name: (shape, "f" if floating else "iu") for name, (shape, floating) in shapes.items()}


def _pair(pool, where) -> list:
    if not isinstance(pool, list) or len(pool) != 2:
        raise ModelError(where, f"every CRNN pool must be a (frequency, time) pair, got {pool!r}")
    return pool


def _check_statistics(fold: dict, n_mels: int, label: str, where) -> None:
    """A fold's input standardisation: two numbers, or two lists of one number per Mel band; deviations positive."""
    if isinstance(fold.get("input_mean"), list) != isinstance(fold.get("input_std"), list):
        raise ModelError(where, f"{label}: input_mean and input_std must both be numbers or both lists per Mel band")
    for name in ("input_mean", "input_std"):
        value = fold.get(name)
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) != n_mels:
            raise ModelError(where, f"{label}: {name} has {len(value)} values for {n_mels} Mel bands")
        if not all(_number(v) for v in values) or (name == "input_std" and min(values) <= 0):
            raise ModelError(where, f"{label}: {name} must hold finite numbers (a positive deviation)")


def _finetune_specs(node: dict, where) -> dict[str, ArraySpec]:
    """A fine-tuned system's arrays (:func:`specfusion.pipeline.finetune_files.finetune_specs`)."""
    from specfusion.pipeline.finetune_files import finetune_specs

    return finetune_specs(node, where)


def _fusion_specs(node: dict, where) -> dict[str, ArraySpec]:
    classes = _classes(node, where)
    method = node.get("method")
    _choice(method, tuple(FUSION_ESTIMATORS), "the fusion method", where)
    members = node.get("members")
    if not isinstance(members, list) or not members:
        raise ModelError(where, "a fusion needs a non-empty list of members")
    files: dict[str, str] = {}
    for member in members:
        fields = (member.get(k) if isinstance(member, dict) else None for k in ("name", "file", "sha256"))
        if not all(isinstance(v, str) for v in fields):
            raise ModelError(where, f"every member needs a name, a file and a sha256, got {str(member)[:80]}")
        if "size" in member:
            _positive(member["size"], f"member {member['name']!r}'s size", where)
        if member["file"] in files or member["file"] in (MODEL_JSON, ARRAYS_FILE):
            raise ModelError(where, f"members {files.get(member['file'])!r} and {member['name']!r} both name the "
                             f"entry {member['file']!r}; each member must be a file of its own")  # fmt: skip
        files[member["file"]] = member["name"]
    estimator = _dict(node, "estimator", where)
    if estimator.get("type") != FUSION_ESTIMATORS[method]:
        raise ModelError(where, f"a {method} fusion saves a {FUSION_ESTIMATORS[method]}, "
                         f"not a {estimator.get('type')!r}")  # fmt: skip
    specs: dict[str, ArraySpec] = {}
    _estimator_specs(estimator, _Context(classes, len(members), len(members) * len(classes)), specs, where)
    return specs


@dataclasses.dataclass(frozen=True)
class _Context:
    """What a system's fitted estimators are sized by: its classes, its members, its input width."""

    classes: list[str]
    n_members: int
    width: int


def _estimator_specs(node, context: _Context, specs: dict, where) -> None:
    """Check a fitted-estimator node (:func:`~specfusion.pipeline.systems.encode_estimator`) and add its arrays' specs."""
    if not isinstance(node, dict):
        raise ModelError(where, f"a fitted estimator must be a table, got {str(node)[:80]}")
    if node.get("type") == "Pipeline":
        steps = node.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ModelError(where, "a fitted pipeline needs a list of steps")
        for step in steps:
            if not (isinstance(step, list) and len(step) == 2 and isinstance(step[0], str)):
                raise ModelError(where, f"a pipeline step must be a (name, estimator) pair, got {str(step)[:80]}")
            _estimator_specs(step[1], context, specs, where)
        return
    type_name = node.get("type")
    if type_name not in _ESTIMATORS:
        raise ModelError(where, f"unknown estimator type {type_name!r} (not one specfusion saves)")
    parts = {part: node.get(part, {}) for part in ("params", "attrs", "arrays", "texts", "children")}
    if not all(isinstance(value, dict) for value in parts.values()):
        raise ModelError(where, f"{type_name}: params, attrs, arrays, texts and children must be tables")
    names = [name for part in ("attrs", "arrays", "texts", "children") for name in parts[part]]
    bad = [n for n in names if not _FITTED.match(n)] or [n for n in names if names.count(n) > 1]
    if bad:
        raise ModelError(where, f"{type_name}: {bad[0]!r} is not a fitted attribute of its own")
    _check_texts(type_name, parts["texts"], context, where)
    rules = _rules(type_name, parts["attrs"], context, where) if parts["arrays"] else {}
    for name, key in parts["arrays"].items():
        if not isinstance(key, str) or key in specs:
            raise ModelError(where, f"{type_name}.{name} must name an array of its own, got {key!r}")
        specs[key] = rules.get(name) or _diagnostic(context)
    for child in parts["children"].values():
        _estimator_specs(child, context, specs, where)


def _check_texts(type_name: str, texts: dict, context: _Context, where) -> None:
    for name, text in texts.items():
        values = text.get("values") if isinstance(text, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ModelError(where, f"{type_name}.{name} must be a list of names")
        if name == "classes_" and type_name in ("LinearSVM", *_MEMBER_FUSIONS) and values != context.classes:
            raise ModelError(where, f"the class list {context.classes[:4]}... (of {len(context.classes)}) differs "
                             f"from the fitted {type_name}'s {values[:4]}... (of {len(values)})")  # fmt: skip


def _rules(type_name: str, attrs: dict, context: _Context, where) -> dict[str, ArraySpec]:
    """The arrays an estimator uses to predict and the shapes its fitted attributes imply."""
    n_classes, n_members = len(context.classes), context.n_members
    if type_name in _MEMBER_FUSIONS:
        return {
            n: ArraySpec(((n_members, True),), f"{n_members} member(s)") for n in ("temperatures_", "weights_", "coef_")
        }
    if type_name == "LinearSVM":
        return {"classes_": ArraySpec(((n_classes, True),), f"{n_classes} classes", kinds="biuf", finite=False)}
    features = _positive(attrs.get("n_features_in_"), f"{type_name}.n_features_in_", where)
    f_exact, what = (features, True), f"{features} features (n_features_in_)"
    if type_name == "StandardScaler":
        specs = {n: ArraySpec((f_exact,), what) for n in ("mean_", "var_", "scale_")}
        return specs | {"n_samples_seen_": ArraySpec((f_exact,), what, kinds="iuf", finite=False)}
    if type_name == "PCA":
        n = _positive(attrs.get("n_components_"), "PCA.n_components_", where, at_most=features, why=" features")
        specs = {k: ArraySpec(((n, True),), f"{n} components") for k in ("explained_variance_",
                 "explained_variance_ratio_", "singular_values_")}  # fmt: skip
        return specs | {"components_": ArraySpec(((n, True), f_exact), f"{n} components x {what}"),
                        "mean_": ArraySpec((f_exact,), what)}  # fmt: skip
    what = f"{n_classes} classes x {what}"
    return {
        "classes_": ArraySpec(((n_classes, False),), what, kinds="iu", finite=False, codes_below=n_classes),
        "coef_": ArraySpec(((n_classes, False), f_exact), what),
        "intercept_": ArraySpec(((n_classes, False),), what),
    }


def _diagnostic(context: _Context) -> ArraySpec:
    size = DIAGNOSTIC_FACTOR * (context.width + 1) * len(context.classes)
    return ArraySpec(None, "a diagnostic array (DIAGNOSTIC_FACTOR)", kinds="biuf", finite=False, max_size=size)


# ---------------------------------------------------------------------------------------------------
# members and fitted estimators
# ---------------------------------------------------------------------------------------------------
def system_kind(node: dict) -> str:
    """``"decision"`` or ``"proba"``: the kind of scores the system a description describes gives."""
    if node.get("type") == "fusion":
        return "decision" if node.get("method") == "stacking-svm" else "proba"
    return "proba" if node.get("type") in ("crnn", "finetune") else "decision"


def member_limit(member: dict, info: zipfile.ZipInfo) -> tuple[int, str]:
    """(most bytes, why) a member's entry may hold: its recorded size, else :data:`MAX_MEMBER_EXPANSION` x compressed."""
    if "size" in member:
        return member["size"], "recorded for it"
    return (
        MAX_MEMBER_EXPANSION * info.compress_size + _ARCHIVE_SLACK,
        "a compressed model file can (MAX_MEMBER_EXPANSION)",
    )


def member_entries(zf: zipfile.ZipFile, node: dict, where) -> list[tuple[dict, zipfile.ZipInfo]]:
    """(member record, its zip entry) of a fusion; :func:`array_specs` made the entries' names distinct."""
    entries = []
    for member in node["members"]:
        try:
            entries.append((member, zf.getinfo(member["file"])))
        except KeyError:
            raise ModelError(
                where, f"member {member['name']!r} ({member['file']}) is missing from the model file"
            ) from None
    return entries


def check_members(node: dict, members: list[dict], where) -> None:
    """A fusion's members have its classes, in its order, and give the kinds of scores its estimator expects."""
    for record, member in zip(node["members"], members, strict=True):
        if member["classes"] != node["classes"]:
            raise ModelError(where, f"member {record['name']!r} has the classes {member['classes'][:4]}... "
                             f"(of {len(member['classes'])}), the fusion {node['classes'][:4]}... "
                             f"(of {len(node['classes'])})")  # fmt: skip
    kinds = [system_kind(member) for member in members]
    for params in _estimator_params(node["estimator"]):
        if "kinds" in params and params["kinds"] != kinds:
            raise ModelError(where, f"the fusion expects member scores of kinds {params['kinds']}, its members "
                             f"give {kinds}")  # fmt: skip


def _estimator_params(node: dict) -> Iterator[dict]:
    if node.get("type") == "Pipeline":
        for _, step in node["steps"]:
            yield from _estimator_params(step)
        return
    yield node.get("params", {})
    for child in node.get("children", {}).values():
        yield from _estimator_params(child)


def check_scores(decision_function: Callable[[np.ndarray], Any], n_features: int, n_classes: int, what: str, where):
    """Apply a rebuilt estimator to two rows of zeros: it must give (2, n_classes) scores."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            scores = np.asarray(decision_function(np.zeros((2, n_features))))
    except Exception as err:  # noqa: BLE001 -- any failure is weights that do not fit together
        raise ModelError(where, f"the fitted {what} does not apply to {n_features} features "
                         f"({type(err).__name__}: {err})") from None  # fmt: skip
    if scores.shape != (2, n_classes):
        raise ModelError(where, f"the fitted {what} gives {scores.shape[-1]} scores per item for {n_classes} classes")
