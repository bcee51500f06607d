"""Fitted systems saved as one portable, pickle-free model file (``model.sfm``) and applied to new audio.

A model file is a zip archive holding

* ``model.json`` -- format name and version, the specfusion version that wrote it, and the system as a
  tree of plain JSON: for a feature system the extractor's name, constructor options and full
  configuration (:func:`specfusion.features.extraction.store_config`: network, weights identity and SHA-256,
  spectrogram and image settings, the short-clip policy), the engine's batch size, and the fitted
  :class:`~specfusion.models.svm.LinearSVM` (its parameters, chosen C, classes and pipeline steps:
  scaler mean/scale, SVM weights and intercepts); for a CRNN the effective parameters, spectrogram
  settings and every fold model's input standardisation pair; for a fusion its method, the fitted
  meta-model and its members' names and SHA-256 digests;
* ``arrays.npz`` -- every numeric array the tree names (SVM weights, CRNN state dicts ...), read with
  ``allow_pickle=False``;
* ``members/<i>.sfm`` (fusions only) -- each member's own model file, nested, referenced from
  ``model.json`` by its SHA-256 and size.

``model.json`` records the SHA-256 of its own canonical JSON (``description_sha256``), so the whole
description -- class list included -- is covered by a digest.

Nothing is ever unpickled: a file that is not such an archive (e.g. a pickle renamed ``model.sfm``) is
refused with a :class:`~specfusion.errors.ModelError` before any of its bytes are interpreted, and
fitted objects are rebuilt from an allow-list of classes whose fitted attributes are set from the
arrays. Loading refuses another format or format version, a missing or altered member, and an
extractor this installation builds with another configuration (e.g. a weights file with another hash).
The loader validates everything before allocating anything (:mod:`specfusion.pipeline.model_checks`):
sizes, class lists against array shapes, the recorded network parameters against the state dicts,
finite parameters, member nesting.

:func:`load_system` returns a :class:`SavedSystem`: ``predict(waveforms, sr)``, ``predict_scores``
(also ``decision_function``) and ``classes_``. Scores equal the run's test scores: the refit SVM on
all development data, the mean of the CRNN fold models' probabilities, the fusion's refit meta-model
on its members' scores. Files are scored as the extraction engine scores them (same reading, short-clip
policy, batches of the store's batch size, runtime), so a file scored in the same batch gives the very
features of the store.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specfusion import __version__
from specfusion.errors import AudioError, ConfigError, ModelError, WeightsError
from specfusion.files import write_atomic
from specfusion.identity import canonical_json, model_file_digest, plain
from specfusion.pipeline import model_checks as checks

log = logging.getLogger(__name__)

FORMAT_NAME = "specfusion-model"
#: Version of the model-file layout; files of another version are refused.
FORMAT_VERSION = 1
#: File name of a system's model in its output folder.
MODEL_FILE = "model.sfm"
MODEL_JSON = "model.json"
ARRAYS_FILE = "arrays.npz"
_ZIP_MAGIC = b"PK\x03\x04"


# ---------------------------------------------------------------------------------------------------
# fitted estimators <-> JSON tree + arrays (allow-listed classes only)
# ---------------------------------------------------------------------------------------------------
def _estimator_classes() -> dict[str, type]:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from specfusion.fusion import methods as fusion
    from specfusion.models.svm import LinearSVM

    classes = [
        StandardScaler, PCA, LinearSVC, LogisticRegression, LinearSVM,
        fusion.CalibratedMean, fusion.WeightedFusion, fusion.LogRegStacking, fusion._CalibratedSVM, fusion.AutoFusion,
    ]  # fmt: skip
    return {cls.__name__: cls for cls in classes}


#: Saved under another class: only the attributes that prediction uses differ, and they are the same.
_SAVED_AS = {"LogisticRegressionCV": "LogisticRegression"}
_NO_VALUE = object()


def _plain(value):
    """``value`` as plain JSON types, or :data:`_NO_VALUE` when it has no JSON form (arrays, objects)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _NO_VALUE if any(v is _NO_VALUE for v in items) else items
    if isinstance(value, dict):
        items = {k: _plain(v) for k, v in value.items()}
        ok = all(isinstance(k, str) for k in items) and not any(v is _NO_VALUE for v in items.values())
        return items if ok else _NO_VALUE
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NO_VALUE
    return _NO_VALUE


def encode_estimator(obj, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """A fitted estimator as a JSON node; its numeric arrays go into ``arrays`` under ``prefix``.

    Only the classes of :func:`_estimator_classes` (and scikit-learn ``Pipeline``) are accepted.
    """
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

    if isinstance(obj, Pipeline):
        steps = [[name, encode_estimator(step, f"{prefix}{name}/", arrays)] for name, step in obj.steps]
        return {"type": "Pipeline", "steps": steps}
    type_name = _SAVED_AS.get(type(obj).__name__, type(obj).__name__)
    cls = _estimator_classes().get(type_name)
    if cls is None or not isinstance(obj, cls):
        raise ConfigError(f"cannot save a fitted {type(obj).__name__} in a model file")
    params = {}
    if type_name == type(obj).__name__:
        for key, value in obj.get_params(deep=False).items():
            plain = _plain(value)
            if plain is not _NO_VALUE:
                params[key] = plain
    node: dict[str, Any] = {"type": type_name, "params": params, "attrs": {}, "arrays": {}, "texts": {}, "children": {}}
    for name, value in vars(obj).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            arrays[prefix + name] = value
            node["arrays"][name] = prefix + name
        elif isinstance(value, np.ndarray) and value.ndim == 1 and all(isinstance(v, str) for v in value.tolist()):
            node["texts"][name] = {"values": value.tolist(), "object": value.dtype.kind == "O"}
        elif isinstance(value, (BaseEstimator, Pipeline)):
            node["children"][name] = encode_estimator(value, f"{prefix}{name}/", arrays)
        else:
            plain = _plain(value)
            if plain is not _NO_VALUE:
                node["attrs"][name] = plain
    return node


def decode_estimator(node: dict, arrays, where) -> Any:
    """The fitted estimator of :func:`encode_estimator`'s ``node``; :class:`ModelError` for an unknown class."""
    from sklearn.pipeline import Pipeline

    if node.get("type") == "Pipeline":
        return Pipeline([(name, decode_estimator(step, arrays, where)) for name, step in node["steps"]])
    cls = _estimator_classes().get(node.get("type"))
    if cls is None:
        raise ModelError(where, f"unknown estimator type {node.get('type')!r} (not one specfusion saves)")
    fitted = [name for part in ("attrs", "texts", "arrays", "children") for name in node.get(part, {})]
    if any(not name.endswith("_") or name.startswith("_") for name in fitted):
        raise ModelError(where, f"{node['type']}: only fitted attributes (name_) are set from a model file")
    try:
        obj = cls(**node.get("params", {}))
    except TypeError as err:
        raise ModelError(where, f"{node['type']}: parameters this installation does not take ({err})") from None
    for name, value in node.get("attrs", {}).items():
        setattr(obj, name, value)
    for name, text in node.get("texts", {}).items():
        setattr(obj, name, np.asarray(text["values"], dtype=object if text["object"] else None))
    for name, key in node.get("arrays", {}).items():
        setattr(obj, name, _array(arrays, key, where))
    for name, child in node.get("children", {}).items():
        setattr(obj, name, decode_estimator(child, arrays, where))
    return obj


def _array(arrays, key: str, where) -> np.ndarray:
    if key not in arrays:
        raise ModelError(where, f"array {key!r} is missing from {ARRAYS_FILE}")
    return arrays[key]


# ---------------------------------------------------------------------------------------------------
# reading audio as the engine does
# ---------------------------------------------------------------------------------------------------
def _mono(source, *, rate: int, min_seconds: float, short: str) -> np.ndarray:
    """One source (a file path, or ``(waveform, sr)``) as mono float32 at ``rate``: the engine's reading."""
    from specfusion.data.audio import fix_length, load_audio, resample

    if isinstance(source, _Decoded):
        return source.samples
    if not isinstance(source, tuple):
        y, _ = load_audio(source, sr=rate, channels="mean", min_seconds=min_seconds, short=short)
        return y[0]
    waveform, sr, where = source
    y = np.asarray(waveform, dtype=np.float32)
    if y.ndim == 2:  # (channels, samples): down-mixed, as files are
        y = y.mean(axis=0, dtype=np.float32)
    if y.ndim != 1:
        raise ConfigError(f"{where}: a waveform must have shape (samples,) or (channels, samples), got {y.shape}")
    if y.size == 0:
        raise AudioError(where, "no audio samples (zero-length)")
    if not np.isfinite(y).all():
        raise AudioError(where, "contains NaN or infinite samples")
    if not y.any():
        raise AudioError(where, "silent: every sample is zero (its spectrogram and features would be constant)")
    too_short = y.size < min_seconds * sr
    if too_short and short == "error":
        raise AudioError(where, f"too short: {y.size / sr:.3f} s, shorter than one analysis window ({min_seconds} s)")
    y = resample(y, int(sr), int(rate))
    if too_short:
        y = fix_length(y, max(y.shape[-1], int(math.ceil(min_seconds * rate))))
    return np.ascontiguousarray(y, dtype=np.float32)


def _sources(waveforms, sr) -> list[tuple]:
    """``(waveform, sr, name)`` per waveform of a list or a 2-D array (one row per sound)."""
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer, float, np.floating)) or sr <= 0 or sr != int(sr):
        raise ConfigError(f"sr must be a positive integer number of Hz, got {sr!r}")
    if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
        waveforms = [waveforms]
    return [(w, int(sr), f"waveform {i}") for i, w in enumerate(waveforms)]


def _where(source) -> str:
    if isinstance(source, _Decoded):
        return source.where
    return source[2] if isinstance(source, tuple) else str(source)


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """One channel of a source, already read at the model's rate (a system trained on channel items)."""

    samples: np.ndarray
    where: str


def _channel_signals(source, *, rate: int, min_seconds: float, short: str) -> np.ndarray:
    """Every channel of one source as float32 at ``rate``, shape (channels, samples): the engine's reading of
    channel items (DCASE 2018 task 5), where :func:`_mono` down-mixes."""
    from specfusion.data.audio import load_audio

    if not isinstance(source, tuple):
        return load_audio(source, sr=rate, channels="each", min_seconds=min_seconds, short=short)[0]
    waveform, sr, where = source
    y = np.asarray(waveform, dtype=np.float32)
    rows = y[None] if y.ndim == 1 else y
    if rows.ndim != 2:
        raise ConfigError(f"{where}: a waveform must have shape (samples,) or (channels, samples), got {y.shape}")
    return np.stack([_mono((row, sr, where), rate=rate, min_seconds=min_seconds, short=short) for row in rows])


def _score_each_channel(sources: Sequence, score, *, combine: str, **reading) -> Scored:
    """``score`` (of decoded channels) applied to every channel of every source, combined per source as the run
    combined a segment's channel items (``combine``: "mean" or "max"; "none", a row per channel in the run, is
    the mean here: a file gets one row). A source with a channel that cannot be used is a failure."""
    from specfusion.evaluation.predictions import combine_channels

    channels, owners, failures = [], [], {}
    for i, source in enumerate(sources):
        try:
            signals = _channel_signals(source, **reading)
        except MemoryError:
            raise
        except (AudioError, ConfigError) as err:
            failures[i] = getattr(err, "reason", str(err))
            continue
        channels += [_Decoded(y, f"{_where(source)} (channel {c})") for c, y in enumerate(signals)]
        owners += [i] * len(signals)
    result = score(channels)
    for j, reason in sorted(result.failures.items()):
        failures.setdefault(owners[j], f"{channels[j].where}: {reason}")
    keep = [k for k, j in enumerate(result.rows) if owners[j] not in failures]
    if not keep:
        return Scored(rows=np.zeros(0, np.int64), scores=np.zeros((0, result.scores.shape[1])), failures=failures)
    segments = [owners[result.rows[k]] for k in keep]
    how = "max" if combine == "max" else "mean"
    keys, scores, _ = combine_channels(segments, segments, result.scores[keep], how=how)
    return Scored(rows=np.asarray(keys, dtype=np.int64), scores=scores, failures=failures)


@dataclasses.dataclass
class Scored:
    """Scores of the sources that could be used, and why the others could not.

    Attributes
    ----------
    rows : ndarray of int
        Position of each scored source.
    scores : ndarray, shape (len(rows), n_classes)
    failures : dict of int to str
        Source position -> reason.
    """

    rows: np.ndarray
    scores: np.ndarray
    failures: dict[int, str]


# ---------------------------------------------------------------------------------------------------
# systems
# ---------------------------------------------------------------------------------------------------
class SavedSystem:
    """A fitted system loaded from a model file (:func:`load_system`).

    Attributes
    ----------
    classes_ : ndarray of str
        Class order of the score columns.
    kind : {"decision", "proba"}
        SVM decision values, or class probabilities (CRNN; fusions other than ``stacking-svm``).
    name : str
        The system's name in the run that saved it.
    info : dict
        The model file's ``model.json``.
    """

    kind = "decision"

    def __init__(self, node: dict, info: dict):
        self.node = node
        self.info = info
        self.name = str(node.get("name", ""))
        self.classes_ = np.asarray(node["classes"], dtype=object)
        # a system trained on channel items (DCASE 2018 task 5) scores every channel and combines them as the
        # run did; model files without the entry (and every other system) down-mix
        self.channels = node.get("channels", "mean")
        self.combine = node.get("combine", "mean")

    def score(self, sources: Sequence) -> Scored:
        """Scores of file paths and ``(waveform, sr, name)`` tuples; unusable sources listed, not raised.

        A system trained on channel items scores each channel of a source and combines them (:attr:`combine`).
        """
        if self.channels == "each":
            return _score_each_channel(sources, self._score_signals, combine=self.combine, **self._reading())
        return self._score_signals(sources)

    def _score_signals(self, sources: Sequence) -> Scored:
        """Scores of sources read as mono signals (:func:`_mono`)."""
        raise NotImplementedError

    def _reading(self) -> dict:
        """How a source is read: ``rate``, ``min_seconds`` and ``short`` (:func:`_channel_signals`)."""
        raise NotImplementedError

    def predict_scores(self, waveforms, sr: int) -> np.ndarray:
        """Per-class scores of every waveform, shape (n, n_classes), columns in :attr:`classes_` order.

        Parameters
        ----------
        waveforms : sequence of array-like, or ndarray of shape (n, samples)
            Sounds, mono ``(samples,)`` or ``(channels, samples)`` (down-mixed; scored per channel and combined
            by a system trained on channel items), at rate ``sr``.
        sr : int
            Their sample rate in Hz (resampled with soxr to the model's rate).

        Raises
        ------
        AudioError
            A waveform cannot be used (empty, non-finite, silent, too short with the model's policy
            ``short="error"``); the message names it (``waveform i``).
        """
        sources = _sources(waveforms, sr)
        result = self.score(sources)
        if result.failures:
            first = min(result.failures)
            raise AudioError(_where(sources[first]), result.failures[first])
        return result.scores

    def decision_function(self, waveforms, sr: int) -> np.ndarray:
        """The same as :meth:`predict_scores` (scikit-learn's name)."""
        return self.predict_scores(waveforms, sr)

    def predict(self, waveforms, sr: int) -> np.ndarray:
        """Predicted class of every waveform (the highest score; the first class on ties)."""
        return self.classes_[np.argmax(self.predict_scores(waveforms, sr), axis=1)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={len(self.classes_)})"


class FeatureSVMSystem(SavedSystem):
    """Extractor -> features -> the refit :class:`~specfusion.models.svm.LinearSVM` (decision values)."""

    kind = "decision"

    def __init__(self, node: dict, info: dict, arrays, where, *, device: str | None = None):
        super().__init__(node, info)
        from specfusion.features.extraction import store_config
        from specfusion.features.extractors import get_extractor

        spec = node["extractor"]
        self.short = node.get("short", "pad")
        self.batch_size = int(node.get("batch_size") or 16)
        self.runtime = node.get("runtime", "auto")
        self.extractor = get_extractor(spec["name"], device=device, **spec.get("options", {}))
        here = canonical_json(store_config(self.extractor, short=self.short))
        saved = canonical_json(spec["config"])
        if here != saved:
            self.extractor, here = _with_saved_defaults(spec, device, short=self.short, fallback=(self.extractor, here))
        if here != saved:
            raise ModelError(where, "the extractor this installation builds differs from the saved one: "
                             f"{'; '.join(_differences(saved, here)[:4])}; use the same weights and settings "
                             "(e.g. the weights file with the saved SHA-256)")  # fmt: skip
        self.svm = decode_estimator(node["classifier"], arrays, where)
        self.best_C = node.get("best_C")
        n_features = int(self.svm.n_features_in_)
        if int(self.extractor.dim) != n_features:
            raise ModelError(where, f"the SVM takes {n_features} features, the extractor gives {self.extractor.dim}")
        checks.check_scores(self.svm.decision_function, n_features, len(self.classes_), "SVM", where)

    def features(self, sources: Sequence) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows, float32 features, failures) of ``sources``, in batches of :attr:`batch_size` consecutive sources."""
        from specfusion.features.extraction import embed_grouped, item_error, reading_options
        from specfusion.features.runtimes import select_runtime

        extractor = self.extractor
        embed = select_runtime(extractor, self.runtime).embed
        reading = reading_options(extractor, short=self.short)
        rows, feats, failures = [], [], {}
        for start in range(0, len(sources), self.batch_size):
            prepared = []
            for i in range(start, min(len(sources), start + self.batch_size)):
                try:
                    prepared.append((i, extractor.prepare(_mono(sources[i], rate=extractor.sample_rate, **reading))))
                except MemoryError:
                    raise
                except (AudioError, ConfigError) as err:
                    failures[i] = getattr(err, "reason", str(err))
                except Exception as err:  # noqa: BLE001 -- one item's front end must not stop the others
                    failures[i] = item_error(_where(sources[i]), err).reason
            batch_rows, batch_feats = embed_grouped(extractor, prepared, embed=embed)
            finite = np.isfinite(batch_feats).all(axis=1)
            for i in batch_rows[~finite]:
                failures[int(i)] = "the network produced non-finite features (NaN/inf)"
            rows.append(batch_rows[finite])
            feats.append(batch_feats[finite])
        rows_out = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        feats_out = np.concatenate(feats) if feats else np.zeros((0, int(extractor.dim)), np.float32)
        return rows_out, feats_out, failures

    def _reading(self) -> dict:
        from specfusion.features.extraction import reading_options

        return {"rate": self.extractor.sample_rate, **reading_options(self.extractor, short=self.short)}

    def _score_signals(self, sources: Sequence) -> Scored:
        rows, X, failures = self.features(sources)
        scores = self.svm.decision_function(X) if len(rows) else np.zeros((0, len(self.classes_)))
        return Scored(rows=rows, scores=np.asarray(scores, dtype=np.float64), failures=failures)


class CRNNSystem(SavedSystem):
    """Mel-spectrogram -> every fold's CRNN; the mean of their probabilities (the fold protocol's test rule)."""

    kind = "proba"

    def __init__(self, node: dict, info: dict, arrays, where, *, device: str | None = None):
        super().__init__(node, info)
        import torch

        from specfusion.models.crnn import CRNNClassifier, build_network
        from specfusion.models.crnn.estimator import statistic_from_plain

        self.sr = int(node["sr"])
        self.clip_db = node.get("clip_db")
        self.n_frames = int(node["n_frames"])
        self.short = node.get("short", "pad")
        self.spec_params = dict(node.get("spec_params") or {})
        params = dict(node["params"])
        self.models = []
        for fold in node["folds"]:
            model = CRNNClassifier(**params, metric=node.get("metric", "accuracy"), classes=list(node["classes"]),
                                   device=device)  # fmt: skip
            model.classes_ = np.asarray(node["classes"], dtype=object)
            model.n_mels_ = int(node["n_mels"])
            model.input_mean_ = statistic_from_plain(fold["input_mean"])
            model.input_std_ = statistic_from_plain(fold["input_std"])
            model.history_ = []
            keys = ("kernels", "filters", "pools", "gru_units", "gru_layers", "dropout", "readout", "bn_momentum")
            architecture = {k: params[k] for k in keys}
            network = build_network(len(model.classes_), n_mels=model.n_mels_, keras_init=False, **architecture)
            state = {
                name: torch.from_numpy(np.array(_array(arrays, key, where))) for name, key in fold["state_dict"].items()
            }
            try:
                network.load_state_dict(state)
            except RuntimeError as err:
                raise ModelError(where, f"fold {fold['fold']}: weights do not fit the architecture ({err})") from None
            model.network_ = network.to(model._device()).eval()
            self.models.append(model)

    def spectrograms(self, sources: Sequence) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(rows, spectrograms (n, n_mels, n_frames) float32, failures), cropped or padded as in training."""
        from specfusion.features.extraction import item_error
        from specfusion.features.spectrogram import mel_params, melspectrogram

        clip_db = None if self.clip_db is None else float(self.clip_db)
        params = dataclasses.replace(mel_params(self.spec_params or None), clip_db=clip_db)
        rows, specs, failures = [], [], {}
        for i, source in enumerate(sources):
            try:
                y = _mono(source, rate=self.sr, min_seconds=params.window_s, short=self.short)
                specs.append(melspectrogram(y, self.sr, params=params))
                rows.append(i)
            except MemoryError:
                raise
            except (AudioError, ConfigError) as err:
                failures[i] = getattr(err, "reason", str(err))
            except Exception as err:  # noqa: BLE001
                failures[i] = item_error(_where(source), err).reason
        S = np.empty((len(specs), params.n_mels, self.n_frames), dtype=np.float32)
        for j, spec in enumerate(specs):
            floor = params.clip_db if params.clip_db is not None else float(spec.min())
            used = min(self.n_frames, spec.shape[1])
            S[j, :, :used] = spec[:, :used]
            S[j, :, used:] = floor
        return np.asarray(rows, dtype=np.int64), S, failures

    def _reading(self) -> dict:
        from specfusion.features.spectrogram import mel_params

        return {"rate": self.sr, "min_seconds": mel_params(self.spec_params or None).window_s, "short": self.short}

    def _score_signals(self, sources: Sequence) -> Scored:
        rows, S, failures = self.spectrograms(sources)
        total = np.zeros((len(rows), len(self.classes_)))
        if len(rows):
            for model in self.models:
                total += model.predict_proba(S)
        return Scored(rows=rows, scores=total / len(self.models), failures=failures)


class FusionSystem(SavedSystem):
    """The members' scores side by side -> the refit fusion model (one call applies all)."""

    def __init__(self, node: dict, info: dict, arrays, where, members: list[SavedSystem]):
        super().__init__(node, info)
        self.members = members
        self.method = node["method"]
        self.kind = "decision" if self.method == "stacking-svm" else "proba"
        self.estimator = decode_estimator(node["estimator"], arrays, where)
        width = sum(len(member.classes_) for member in members)
        checks.check_scores(self.estimator.decision_function, width, len(self.classes_), f"{self.method} fusion", where)

    def score(self, sources: Sequence) -> Scored:
        from specfusion.fusion.methods import meta_features

        results = [m.score(sources) for m in self.members]
        failures: dict[int, str] = {}
        for member, result in zip(self.members, results, strict=True):
            for i, reason in result.failures.items():
                failures.setdefault(i, f"{member.name}: {reason}" if member.name else reason)
        rows = np.asarray([i for i in range(len(sources)) if i not in failures], dtype=np.int64)
        blocks = []
        for result in results:
            position = {int(r): j for j, r in enumerate(result.rows)}
            blocks.append(_Scores(result.scores[[position[int(i)] for i in rows]]))
        if not len(rows):
            return Scored(rows=rows, scores=np.zeros((0, len(self.classes_))), failures=failures)
        scores = self.estimator.decision_function(meta_features(blocks))
        if self.kind == "proba":
            scores = np.exp(scores)
        return Scored(rows=rows, scores=np.asarray(scores, dtype=np.float64), failures=failures)


@dataclasses.dataclass
class _Scores:
    """The one attribute :func:`specfusion.fusion.methods.meta_features` reads."""

    scores: np.ndarray


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
def _differences(old, new, prefix: str = "") -> list[str]:
    old, new = plain(old), plain(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix[:-1] or 'value'}: saved {json.dumps(old)[:60]}, here {json.dumps(new)[:60]}"]


def _archive(node: dict, arrays: dict[str, np.ndarray], members: Sequence[bytes] = ()) -> bytes:
    """The bytes of a model file holding ``node`` (the system), ``arrays`` and nested member files."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    array_bytes = buffer.getvalue()
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "specfusion_version": __version__,
        "arrays_sha256": model_file_digest(array_bytes),
        "system": node,
    }
    meta[checks.DESCRIPTION_DIGEST] = checks.description_digest(meta)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MODEL_JSON, json.dumps(meta, indent=1, sort_keys=True))
        zf.writestr(ARRAYS_FILE, array_bytes)
        for i, member in enumerate(members):
            zf.writestr(f"members/{i}.sfm", member)
    return out.getvalue()


def _write(path, data: bytes) -> Path:
    return write_atomic(path, data)


def _with_saved_defaults(spec: dict, device, *, short: str, fallback: tuple):
    """The extractor of a model file rebuilt with the defaults recorded in its configuration.

    For model files saved before a default changed: the image CNNs' window and hop (the paper's 0.32 / 0.16 s
    before DEEP SPECTRUM's STFT became their default) and the layout of a random ResNet50 (V1.5 before Keras'
    V1). Their options do not name these, so the defaults of today would
    build another extractor; the configuration records what was used. Returns ``(extractor, canonical
    configuration)``, or ``fallback`` where that does not apply.
    """
    import inspect

    from specfusion.features.extraction import store_config
    from specfusion.features.extractors import get_extractor, get_extractor_class

    options = dict(spec.get("options", {}))
    config = spec["config"]
    try:
        keywords = set(inspect.signature(get_extractor_class(spec["name"]).__init__).parameters)
    except ConfigError:
        return fallback
    recorded = {k: v for k, v in _recorded_options(config, keywords).items() if k not in options}
    if not recorded:
        return fallback
    try:
        extractor = get_extractor(spec["name"], device=device, **options, **recorded)
    except (ConfigError, TypeError):
        return fallback
    return extractor, canonical_json(store_config(extractor, short=short))


def _recorded_options(config: dict, keywords: set) -> dict:
    """Options that an extractor's configuration records and a default may have changed since: the
    spectrogram (``spec_params``) and a random ResNet50's layout (``stride_in_1x1``; absent means V1.5)."""
    options = {}
    if "spec_params" in keywords and isinstance(config.get("spectrogram"), dict):
        options["spec_params"] = dict(config["spectrogram"])
    weights = config.get("weights")
    if "stride_in_1x1" in keywords and isinstance(weights, dict) and weights.get("kind") == "none":
        options["stride_in_1x1"] = bool(weights.get("stride_in_1x1", False))
    return options


def svm_system_bytes(svm, extractor, *, extractor_options: dict, short: str = "pad", batch_size: int | None = None,
                     runtime: str = "auto", name: str = "", channels: str = "mean", combine: str = "mean") -> bytes:  # fmt: skip
    """A feature system's model file: the extractor (options + configuration) and the fitted SVM.

    Parameters
    ----------
    svm : LinearSVM
        Fitted on all development data (the model that scored the test items).
    extractor : Extractor
        The extractor that made the features.
    extractor_options : dict
        Keyword options that rebuild it (``get_extractor(name, **extractor_options)``); ``device`` is
        left out (chosen when the model is loaded).
    short : {"pad", "error"}
        The short-clip policy of the features.
    batch_size : int, optional
        Items per network batch (the feature store's); default the engine's.
    runtime : str
        How the network ran (:func:`specfusion.features.runtimes.select_runtime`).
    name : str
        The system's name.
    channels, combine : str
        ``channels="each"``: the SVM was trained on channel items (DCASE 2018 task 5), and a file is scored per
        channel, the channels' scores combined with ``combine`` as the run combined a segment's; "mean"
        (default): files are down-mixed.
    """
    from specfusion.features.extraction import default_batch_size, store_config

    arrays: dict[str, np.ndarray] = {}
    options = {k: _plain(v) for k, v in extractor_options.items() if k != "device"}
    bad = [k for k, v in options.items() if v is _NO_VALUE]
    if bad:
        raise ConfigError(f"extractor options {bad} have no JSON form; a model file cannot rebuild the extractor")
    node = {
        "type": "svm",
        "name": name,
        "classes": [str(c) for c in svm.classes_],
        "extractor": {
            "name": extractor.name,
            "options": options,
            "config": plain(store_config(extractor, short=short)),
        },  # fmt: skip
        "short": short,
        "batch_size": int(batch_size or default_batch_size(extractor)),
        "runtime": runtime,
        "best_C": float(svm.best_C_),
        "classifier": encode_estimator(svm, "svm/", arrays),
        **_channel_entries(channels, combine),
    }
    return _archive(node, arrays)


def _channel_entries(channels: str, combine: str) -> dict:
    """The model file's ``channels`` and ``combine`` entries: only for a system trained on channel items, so that
    the description of every other system stays as it was."""
    if channels not in ("mean", "each") or combine not in ("mean", "max", "none"):
        raise ConfigError(f"channels must be 'mean' or 'each' and combine 'mean', 'max' or 'none', "
                          f"got {channels!r}, {combine!r}")  # fmt: skip
    return {"channels": "each", "combine": combine} if channels == "each" else {}


def crnn_system_bytes(models: Sequence, *, sr: int, clip_db, n_frames: int, short: str = "pad", name: str = "",
                      folds: Sequence[int] | None = None, spec_params: dict | None = None, channels: str = "mean",
                      combine: str = "mean") -> bytes:  # fmt: skip
    """A CRNN system's model file: every fold model's state dict and input standardisation.

    Parameters
    ----------
    models : sequence of CRNNClassifier
        The fold models (their probabilities are averaged, as the fold protocol scores test items).
    sr : int
        The spectrograms' sample rate (the effective one).
    clip_db : float or None
    n_frames : int
        The length spectrograms are cropped or padded to.
    short : {"pad", "error"}
    name : str
    folds : sequence of int, optional
        Each model's fold (recorded only).
    spec_params : dict, optional
        The spectrogram parameters that differ from the paper's (window, hop, n_mels, fmin, fmax).
    channels, combine : str
        As :func:`svm_system_bytes`' (a CRNN trained on channel items scores a file per channel).
    """
    from specfusion.models.crnn.estimator import statistic_to_plain

    arrays: dict[str, np.ndarray] = {}
    first = models[0]
    fold_nodes = []
    for i, model in enumerate(models):
        k = int(folds[i]) if folds is not None else i + 1
        state = {}
        for key, tensor in model.network_.state_dict().items():
            arrays[f"fold{k}/{key}"] = tensor.detach().cpu().numpy()
            state[key] = f"fold{k}/{key}"
        fold_nodes.append({
            "fold": k, "input_mean": statistic_to_plain(model.input_mean_),
            "input_std": statistic_to_plain(model.input_std_), "state_dict": state,
        })  # fmt: skip
    node = {
        "type": "crnn",
        "name": name,
        "classes": [str(c) for c in first.classes_],
        "params": first.resolved_params(),
        "metric": first.metric,
        "n_mels": int(first.n_mels_),
        "sr": int(sr),
        "clip_db": None if clip_db is None else float(clip_db),
        "n_frames": int(n_frames),
        "short": short,
        "spec_params": dict(spec_params or {}),
        "folds": fold_nodes,
        **_channel_entries(channels, combine),
    }
    return _archive(node, arrays)


def fusion_system_bytes(result, members: Sequence[bytes], *, member_names: Sequence[str], name: str = "") -> bytes:
    """A fusion's model file: its method and fitted meta-model, and its members' model files nested.

    Parameters
    ----------
    result : FusionResult
        What :func:`specfusion.fusion.methods.fuse` returned (``result.model`` scored the test items).
    members : sequence of bytes
        Each member's model file, in the fusion's member order.
    member_names : sequence of str
    name : str
    """
    arrays: dict[str, np.ndarray] = {}
    node = {
        "type": "fusion",
        "name": name,
        "classes": [str(c) for c in result.predictions.classes],
        "method": result.method,
        "chosen": result.chosen,
        "weights": result.weights,
        "members": [
            {"name": n, "file": f"members/{i}.sfm", "sha256": model_file_digest(m), "size": len(m)}
            for i, (n, m) in enumerate(zip(member_names, members, strict=True))
        ],  # fmt: skip
        "estimator": encode_estimator(result.model, "fusion/", arrays),
    }
    return _archive(node, arrays, members)


def extractor_from_store_config(config: dict, *, device: str | None = None):
    """(extractor, options) rebuilding the extractor of a feature store from its configuration alone.

    For ``specfusion svm``, which gets a store and not the options that made it: the options are read
    from the configuration's keys that are constructor keywords (colour map, spectrogram, pooling ...)
    and its weights entry (``imagenet``, or ``none`` with seed and init); the result is accepted only
    when its configuration equals the store's exactly.

    Raises
    ------
    ModelError
        No options found that rebuild the same configuration (e.g. weights from a file).
    """
    import inspect

    from specfusion.features.extraction import store_config
    from specfusion.features.extractors import get_extractor, get_extractor_class

    name = config.get("extractor")
    short = config.get("short", "pad")
    cls = get_extractor_class(str(name))
    keywords = set(inspect.signature(cls.__init__).parameters) - {"self", "device", "weights_path", "channels_last"}
    options = {k: config[k] for k in keywords if k in config and k not in ("weights", "seed", "init", "preprocess")}
    options.update(_recorded_options(config, keywords))
    weights = config.get("weights")
    if isinstance(weights, dict) and "weights" in keywords:
        options["weights"] = weights.get("kind")
        for key in ("seed", "init"):
            if key in weights and key in keywords:
                options[key] = weights[key]
    presets = [None]
    if "preprocess" in keywords and isinstance(config.get("normalisation"), dict):
        presets = [config["normalisation"].get("preset"), None]
    saved = canonical_json(config)
    differences: list[str] = []
    for preset in presets:
        trial = {**options, **({"preprocess": preset} if preset else {})}
        try:
            extractor = get_extractor(str(name), device=device, **trial)
        except (ConfigError, WeightsError, TypeError) as err:
            differences = [str(err)]
            continue
        here = store_config(extractor, short=short)
        if canonical_json(here) == saved:
            return extractor, trial
        differences = _differences(config, here)
    raise ModelError(
        str(name),
        "the extractor cannot be rebuilt from the feature store's configuration alone ("
        + "; ".join(differences[:3])
        + ")",
    )


def crnn_result_bytes(result, table, *, short: str = "pad", name: str = "") -> bytes:
    """The model file of a :func:`~specfusion.models.crnn.protocol.crnn_fold_protocol` result: its fold checkpoints' models.

    ``table`` is the protocol's dataset (its first readable file gives the rate when none was set).
    """
    from specfusion.models.crnn import CRNNClassifier

    folds = list(result.checkpoints)
    models = [CRNNClassifier.load(result.checkpoints[k], device="cpu") for k in folds]
    spectrogram = result.config["spectrogram"]
    sr = spectrogram.get("sr") or _first_rate(table)
    each = any(item.channel is not None for item in table)
    channels = {"channels": "each", "combine": result.predictions.config.get("combine", "mean")} if each else {}
    return crnn_system_bytes(models, sr=sr, clip_db=result.config.get("clip_db"), n_frames=spectrogram["frames"],
                             short=short, name=name, folds=folds, spec_params=spectrogram.get("params"),
                             **channels)  # fmt: skip


def _first_rate(table) -> int:
    """The rate of the first readable file of ``table``: the CRNN protocol's default rate."""
    from specfusion.data.audio import audio_info

    for item in table:
        try:
            return int(audio_info(item.path).samplerate)
        except AudioError:
            continue
    raise ConfigError("no file of the dataset is readable; the CRNN's sample rate is unknown")


def fusion_result_bytes(result, member_predictions: Sequence, member_names: Sequence[str], *, name: str = "") -> bytes:
    """The model file of a :func:`~specfusion.fusion.methods.fuse` result whose members' predictions files are
    ``member_predictions``: each member's ``model.sfm`` beside its predictions is nested.

    Raises
    ------
    ModelError
        A member has no model file (a step cached before model files were saved: re-run it).
    """
    members = []
    for member, predictions in zip(member_names, member_predictions, strict=True):
        model = Path(predictions).with_name(MODEL_FILE)
        if not model.is_file():
            raise ModelError(model, f"member {member!r} has no model file; delete its folder and run again to save one")
        members.append(model.read_bytes())
    return fusion_system_bytes(result, members, member_names=member_names, name=name)


def save_model(path, data: bytes) -> Path:
    """Write model-file bytes to ``path`` (a temporary file, then renamed)."""
    return _write(path, data)


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------
def read_archive(data, where) -> tuple[dict, dict[str, np.ndarray], zipfile.ZipFile]:
    """(``model.json``, arrays, the zip) of a model file, after every check; nothing is unpickled.

    ``data`` is the file's bytes or a seekable binary stream of them. The checks of
    :mod:`specfusion.pipeline.model_checks` run in order: zip structure, description (size, strict JSON, format,
    digest, content), ``arrays.npz``'s size against what the description implies, its digest, its ``.npy``
    headers against the description; only then are the arrays read, each exactly the size its description implies.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with checks.readable(where, "the model file"):
        magic = stream.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise ModelError(where, "not a specfusion model file (not a zip archive); model files (model.sfm) are written "
                         "by `specfusion run`, `svm` and `crnn`; other files are never unpickled")  # fmt: skip
    zf = checks.open_zip(stream, where, what="the model file")
    meta = _description(zf, where)
    specs = checks.array_specs(meta.get("system"), where)
    try:
        array_entry = zf.getinfo(ARRAYS_FILE)
    except KeyError:
        raise ModelError(where, f"{ARRAYS_FILE} is missing from the model file") from None
    array_bytes = checks.read_entry(zf, array_entry, checks.npz_bound(specs), where, what=ARRAYS_FILE,
                                    implied="its arrays' shapes in the description take")  # fmt: skip
    if model_file_digest(array_bytes) != meta.get("arrays_sha256"):
        damaged = f"{ARRAYS_FILE} does not match the digest in {MODEL_JSON} (a damaged or altered file)"
        raise ModelError(where, damaged)
    npz, headers = checks.npz_headers(io.BytesIO(array_bytes), where)
    checks.check_headers(headers, specs, where)
    return meta, checks.load_arrays(npz, headers, specs, where), zf


def _description(zf: zipfile.ZipFile, where) -> dict:
    """``model.json``, checked: strict JSON of a bounded size, this format and version, its recorded digest."""
    meta = checks.read_description(zf, where)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ModelError(where, f"not a specfusion model file (format {found!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "update specfusion to read it" if newer else "save the model again with this specfusion"
        raise ModelError(where, f"model format version {version!r}; this specfusion ({__version__}) reads version "
                         f"{FORMAT_VERSION} only; {hint}")  # fmt: skip
    if meta.get("specfusion_version") != __version__:
        log.info("%s: written by specfusion %s, read by %s", where, meta.get("specfusion_version"), __version__)
    if not checks.check_description_digest(meta, where):
        log.info("%s: written before model files recorded their description's digest; its description is checked "
                 "for consistency only", where)  # fmt: skip
    return meta


@dataclasses.dataclass
class _Archive:
    """A model file read and checked: its ``model.json``, its arrays and its members' archives."""

    meta: dict
    arrays: dict[str, np.ndarray]
    members: list[_Archive]
    where: Any


def _read_tree(data, where, depth: int = 0) -> _Archive:
    """Read and check a model file and, nested, every member's, before any system is built.

    A member is read only when its entry holds no more than its recorded size, each from its own entry, at most
    :data:`~specfusion.pipeline.model_checks.MAX_MEMBER_DEPTH` deep.
    """
    meta, arrays, zf = read_archive(data, where)
    node = meta["system"]
    members: list[_Archive] = []
    if node["type"] == "fusion":
        if depth >= checks.MAX_MEMBER_DEPTH:
            raise ModelError(where, f"members nested more than {checks.MAX_MEMBER_DEPTH} deep (MAX_MEMBER_DEPTH); "
                             "a fusion's members are systems")  # fmt: skip
        for member, entry in checks.member_entries(zf, node, where):
            limit, implied = checks.member_limit(member, entry)
            data = checks.read_entry(zf, entry, limit, where, what=f"member {member['name']!r}", implied=implied)
            if model_file_digest(data) != member["sha256"]:
                raise ModelError(where, f"member {member['name']!r} does not match its recorded SHA-256 "
                                 "(a damaged or altered file)")  # fmt: skip
            members.append(_read_tree(data, f"{where} [member {member['name']}]", depth + 1))
        checks.check_members(node, [m.meta["system"] for m in members], where)
    return _Archive(meta, arrays, members, where)


def _build(archive: _Archive, device: str | None) -> SavedSystem:
    """The system of a checked archive (its members' first)."""
    node, where = archive.meta["system"], archive.where
    try:
        if node["type"] == "svm":
            return FeatureSVMSystem(node, archive.meta, archive.arrays, where, device=device)
        if node["type"] == "crnn":
            return CRNNSystem(node, archive.meta, archive.arrays, where, device=device)
        if node["type"] == "finetune":
            from specfusion.pipeline.finetune_files import FineTuneSystem

            return FineTuneSystem(node, archive.meta, archive.arrays, where, device=device)
        members = [_build(member, device) for member in archive.members]
        return FusionSystem(node, archive.meta, archive.arrays, where, members)
    except (KeyError, TypeError) as err:
        raise ModelError(where, f"{MODEL_JSON} lacks an entry this specfusion needs ({err})") from None


def system_from_bytes(data: bytes, where, *, device: str | None = None) -> SavedSystem:
    """:func:`load_system` on the bytes of a model file (``where`` names it in messages)."""
    return _build(_read_tree(data, where), device)


def load_system(path, *, device: str | None = None) -> SavedSystem:
    """Load a fitted system from a model file (``model.sfm``) to apply it to new audio.

    Parameters
    ----------
    path : path-like
        A model file written by ``specfusion run`` (``systems/<name>/model.sfm``,
        ``fusions/<name>/model.sfm``), ``specfusion svm`` or ``specfusion crnn``.
    device : str, optional
        Torch device of the networks (default: a GPU when torch sees one).

    Returns
    -------
    SavedSystem
        ``predict(waveforms, sr)``, ``predict_scores(waveforms, sr)`` / ``decision_function``, ``classes_``.

    Raises
    ------
    ModelError
        Not a model file (a pickle is refused, never unpickled), another format version, a member
        missing or altered, an extractor built here with another configuration (other weights ...), a
        description or array that fails the load-time checks of :mod:`specfusion.pipeline.model_checks`
        (one line that names the entry).
    WeightsUnavailableError
        The extractor's weights are not available here.

    Examples
    --------
    >>> system = load_system("runs/esc50/systems/densenet121-imagenet/model.sfm")  # doctest: +SKIP
    >>> system.predict([waveform], sr=44100)                                        # doctest: +SKIP
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(path, "no such model file") from None
    except IsADirectoryError:
        raise ModelError(path, f"is a folder; give the model file inside it (e.g. {path / MODEL_FILE})") from None
    return system_from_bytes(data, path, device=device)
