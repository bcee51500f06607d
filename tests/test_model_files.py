"""Model files are validated on load, before anything is allocated (docs/reliability.md, "Model files: what is
verified on load"): class lists against shapes and a digest of the description, finite parameters, declared
sizes, member nesting, tampered parameters. Small SVM, CRNN and fusion model files are generated here and
tampered with by rewriting their zip; "deliberate" edits also recompute every digest, so that the checks behind
the digests are tested too."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tracemalloc
import types
import zipfile

import numpy as np
import pytest
import soundfile as sf

from specfusion.errors import ModelError
from specfusion.features.extractors.base import Extractor, register
from specfusion.fusion.methods import FUSION_METHODS
from specfusion.pipeline import model_checks
from specfusion.pipeline.model_checks import DESCRIPTION_DIGEST, description_digest
from specfusion.pipeline.systems import (
    crnn_system_bytes,
    decode_estimator,
    fusion_system_bytes,
    load_system,
    svm_system_bytes,
)

CLASSES = ["dog", "rain", "rooster"]
SR = 8000


@register("model_file_test_stats")
class StatsExtractor(Extractor):
    """Four waveform statistics through a fixed random projection (8-d): an extractor built in microseconds."""

    input_kind = "waveform"

    def __init__(self, *, device=None, seed: int = 0):
        self.device = "cpu"
        self.seed = int(seed)
        self.sample_rate = SR
        self.dim = 8
        self.projection = np.random.default_rng(self.seed).normal(size=(4, self.dim)).astype(np.float32)

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        y = np.asarray(waveform, np.float32)
        return np.array([y.mean(), y.std(), np.abs(y).max(), (y[1:] * y[:-1]).mean()], np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, np.float32) @ self.projection

    def config(self) -> dict:
        return {"extractor": self.name, "seed": self.seed, "sample_rate": self.sample_rate}


def _waves(n=3, seed=5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SR).astype(np.float32) for _ in range(n)]


def _fit_svm():
    from specfusion.models.svm import LinearSVM

    rng = np.random.default_rng(0)
    y = np.repeat(CLASSES, 6)
    X = rng.normal(size=(18, 8)) + np.repeat(np.eye(3, 8) * 2.0, 6, axis=0)
    return LinearSVM(c_grid=[0.1, 1.0]).fit(X, y, folds=np.tile([1, 2, 3], 6))


def _fusion(members: list[bytes], kinds: tuple[str, ...], name: str = "fusion", method: str = "weighted") -> bytes:
    """A fusion of ``members`` (model files giving scores of ``kinds``), fitted on generated scores."""
    from specfusion.fusion.methods import make_estimator

    rng = np.random.default_rng(1)
    y = np.repeat(CLASSES, 6)
    X = rng.random(size=(18, len(kinds) * len(CLASSES)))
    model = make_estimator(method, kinds=kinds, classes=CLASSES, metric="accuracy")
    model.fit(X, y, folds=np.tile([1, 2, 3], 6))
    result = types.SimpleNamespace(predictions=types.SimpleNamespace(classes=CLASSES), method=method,
                                   chosen=method, weights=None, model=model)  # fmt: skip
    return fusion_system_bytes(result, members, member_names=[f"m{i}" for i in range(len(members))], name=name)


@pytest.fixture(scope="module")
def svm_file() -> bytes:
    extractor = StatsExtractor()
    return svm_system_bytes(_fit_svm(), extractor, extractor_options={}, name="svm")


@pytest.fixture(scope="module")
def crnn_file() -> bytes:
    from specfusion.models.crnn import CRNNClassifier

    rng = np.random.default_rng(2)
    S = rng.normal(size=(12, 16, 8)).astype(np.float32)
    model = CRNNClassifier(variant="esc50", filters=(2, 2, 2, 2), pools=((2, 1),) * 4, gru_units=4, epochs=1,
                           batch_size=6, num_threads=1).fit(S, np.repeat(CLASSES, 4))  # fmt: skip
    return crnn_system_bytes([model, model], sr=SR, clip_db=-80.0, n_frames=8, spec_params={"n_mels": 16}, name="crnn")


@pytest.fixture(scope="module")
def fusion_file(svm_file, crnn_file) -> bytes:
    return _fusion([svm_file, crnn_file], ("decision", "proba"))


@pytest.fixture
def files(svm_file, crnn_file, fusion_file) -> dict[str, bytes]:
    return {"svm": svm_file, "crnn": crnn_file, "fusion": fusion_file}


def _entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def _tamper(data: bytes, system=None, arrays=None, *, deliberate: bool = True) -> bytes:
    """``data`` with its system description changed by ``system(node)`` and its arrays by ``arrays(dict)``.

    ``deliberate``: every digest is recomputed (an edit made to pass them); else the description's is left as it
    was (damage, or an edit by hand).
    """
    entries = _entries(data)
    meta = json.loads(entries["model.json"])
    if arrays is not None:
        with np.load(io.BytesIO(entries["arrays.npz"])) as npz:
            loaded = {k: npz[k] for k in npz.files}
        arrays(loaded)
        buffer = io.BytesIO()
        np.savez(buffer, **loaded)
        entries["arrays.npz"] = buffer.getvalue()
        meta["arrays_sha256"] = hashlib.sha256(entries["arrays.npz"]).hexdigest()
    if system is not None:
        system(meta["system"])
    if deliberate:
        meta[DESCRIPTION_DIGEST] = description_digest(meta)
    entries["model.json"] = json.dumps(meta).encode()
    return _zip(entries)


def _load(data: bytes, tmp_path, name="model.sfm"):
    path = tmp_path / name
    path.write_bytes(data)
    return load_system(path, device="cpu")


# ---------------------------------------------------------------------------------------------------
# files written today, and by the previous release
# ---------------------------------------------------------------------------------------------------
def test_generated_model_files_load_and_score_as_the_fitted_models(svm_file, crnn_file, tmp_path):
    svm = _fit_svm()
    system = _load(svm_file, tmp_path)
    _, features, _ = system.features([(w, SR, "generated") for w in _waves()])
    np.testing.assert_array_equal(system.predict_scores(_waves(), SR), svm.decision_function(features))
    crnn = _load(crnn_file, tmp_path, "crnn.sfm")
    _, S, _ = crnn.spectrograms([(w, SR, "generated") for w in _waves()])
    expected = np.mean([m.predict_proba(S) for m in crnn.models], axis=0)
    np.testing.assert_array_equal(crnn.predict_scores(_waves(), SR), expected)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_every_fusion_methods_model_file_passes_the_checks(svm_file, crnn_file, method, tmp_path):
    system = _load(_fusion([svm_file, crnn_file], ("decision", "proba"), method=method), tmp_path)
    sources = [(w, SR, "generated") for w in _waves()]
    features = np.hstack([member.score(sources).scores for member in system.members])
    expected = system.estimator.decision_function(features)
    np.testing.assert_array_equal(
        system.score(sources).scores, expected if method == "stacking-svm" else np.exp(expected)
    )


def test_model_files_record_a_digest_of_their_whole_description(files):
    for data in files.values():
        meta = json.loads(_entries(data)["model.json"])
        assert meta[DESCRIPTION_DIGEST] == description_digest(meta)


def test_a_file_of_the_previous_release_loads_and_predicts_the_same(files, tmp_path, caplog):
    caplog.set_level("INFO", logger="specfusion.pipeline.systems")
    for kind, data in files.items():
        old = _tamper(data, system=lambda node: None, deliberate=False)
        entries = _entries(old)
        meta = json.loads(entries["model.json"])
        del meta[DESCRIPTION_DIGEST]
        entries["model.json"] = json.dumps(meta).encode()
        old_system, today = _load(_zip(entries), tmp_path, f"old-{kind}.sfm"), _load(data, tmp_path, f"{kind}.sfm")
        np.testing.assert_array_equal(old_system.predict_scores(_waves(), SR), today.predict_scores(_waves(), SR))
    assert "checked for consistency only" in caplog.text


# ---------------------------------------------------------------------------------------------------
# 1. class list and shapes against each other; the description's digest
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["svm", "crnn", "fusion"])
@pytest.mark.parametrize(
    "edit",
    [
        lambda node: node["classes"].append("cat"),
        lambda node: node["classes"].reverse(),
        lambda node: node.update(name="renamed"),
    ],
    ids=["class-added", "classes-reordered", "renamed"],
)
def test_an_edited_description_is_refused_by_its_digest(files, kind, edit, tmp_path):
    with pytest.raises(ModelError, match="does not match its recorded digest"):
        _load(_tamper(files[kind], system=edit, deliberate=False), tmp_path)


@pytest.mark.parametrize(
    "kind, match",
    [
        ("svm", "class list .* differs from the fitted LinearSVM"),
        ("crnn", r"'fold1/out.bias' has shape \(3,\) where the description implies shape \(4,\) .*for 4 classes"),
        ("fusion", "class list .* differs from the fitted WeightedFusion"),
    ],
)
def test_four_class_names_over_three_weight_rows_are_refused(files, kind, match, tmp_path):
    tampered = _tamper(files[kind], system=lambda node: node["classes"].append("cat"))
    with pytest.raises(ModelError, match=match):
        _load(tampered, tmp_path)


@pytest.mark.parametrize("kind", ["svm", "fusion"])
def test_a_reordered_class_list_is_refused_where_the_fitted_model_records_its_order(files, kind, tmp_path):
    with pytest.raises(ModelError, match="class list .* differs from the fitted"):
        _load(_tamper(files[kind], system=lambda node: node["classes"].reverse()), tmp_path)


def test_a_fusion_refuses_members_of_other_classes_or_other_kinds(svm_file, crnn_file, tmp_path):
    def svm_classes(node):
        node["classes"] = ["cat", "cow", "hen"]
        node["classifier"]["texts"]["classes_"]["values"] = ["cat", "cow", "hen"]

    other = _tamper(svm_file, system=svm_classes)
    fusion = _fusion([other, crnn_file], ("decision", "proba"))
    with pytest.raises(ModelError, match="member 'm0' has the classes"):
        _load(_tamper(fusion, system=lambda node: node.update(classes=CLASSES)), tmp_path)
    swapped = _fusion([crnn_file, svm_file], ("decision", "proba"))  # a CRNN gives probabilities
    with pytest.raises(ModelError, match=r"expects member scores of kinds \['decision', 'proba'\]"):
        _load(swapped, tmp_path)


def test_an_svm_whose_features_differ_from_its_extractors_is_refused(svm_file, tmp_path):
    def five_features(node):
        node["classifier"]["attrs"]["n_features_in_"] = 5
        node["classifier"]["children"]["pipeline_"]["steps"][-1][1]["attrs"]["n_features_in_"] = 5

    tampered = _tamper(svm_file, system=five_features, arrays=lambda a: a.update({k: v[:, :5] for k, v in a.items()
                                                                                 if k.endswith("coef_")}))  # fmt: skip
    with pytest.raises(ModelError, match="the SVM takes 5 features, the extractor gives 8"):
        _load(tampered, tmp_path)


# ---------------------------------------------------------------------------------------------------
# 2. non-finite parameters
# ---------------------------------------------------------------------------------------------------
def _poison(suffix: str, value: float):
    def change(arrays):
        key = next(k for k in arrays if k.endswith(suffix))
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = value

    return change


@pytest.mark.parametrize(
    "kind, suffix, value",
    [
        ("svm", "coef_", np.nan),
        ("svm", "intercept_", np.inf),
        ("crnn", "gru.weight_hh_l0", np.nan),
        ("crnn", "out.bias", -np.inf),
        ("fusion", "temperatures_", np.nan),
    ],
)
def test_non_finite_parameters_are_refused(files, kind, suffix, value, tmp_path):
    with pytest.raises(ModelError, match="holds NaN or infinite values"):
        _load(_tamper(files[kind], arrays=_poison(suffix, value)), tmp_path)


def test_an_object_array_in_a_valid_model_is_refused_not_unpickled(svm_file, tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("unpickled",))

    entries = _entries(svm_file)
    inner = _entries(entries["arrays.npz"])
    key = next(name for name in inner if name.endswith("coef_.npy"))
    buffer = io.BytesIO()
    np.save(buffer, np.array([Boom()] * 3, dtype=object), allow_pickle=True)
    inner[key] = buffer.getvalue()
    entries["arrays.npz"] = _zip(inner)
    meta = json.loads(entries["model.json"])
    meta["arrays_sha256"] = hashlib.sha256(entries["arrays.npz"]).hexdigest()
    meta[DESCRIPTION_DIGEST] = description_digest(meta)
    entries["model.json"] = json.dumps(meta).encode()
    with pytest.raises(ModelError, match="not a plain numeric archive .* has dtype object"):
        _load(_zip(entries), tmp_path)


def test_non_finite_numbers_in_the_description_are_refused(crnn_file, tmp_path):
    entries = _entries(crnn_file)
    entries["model.json"] = entries["model.json"].replace(b'"clip_db": -80.0', b'"clip_db": NaN')
    with pytest.raises(ModelError, match="NaN is not a number a model file may hold"):
        _load(_zip(entries), tmp_path)


# ---------------------------------------------------------------------------------------------------
# 3. declared sizes: nothing large is read before it is validated
# ---------------------------------------------------------------------------------------------------
class _Hashing:
    """A write-only stream that passes bytes on and digests them."""

    def __init__(self, raw):
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        pass


def _bomb(data: bytes, suffix: str, shape: tuple[int, ...]) -> bytes:
    """``data`` with the array ending in ``suffix`` replaced by zeros of ``shape``, written (and compressed) in chunks."""
    entries = _entries(data)
    meta = json.loads(entries["model.json"])
    with np.load(io.BytesIO(entries["arrays.npz"])) as npz:
        arrays = {k: npz[k] for k in npz.files}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("arrays.npz", "w", force_zip64=True) as raw:
            stream = _Hashing(raw)
            with zipfile.ZipFile(stream, "w") as npz:
                for key, array in arrays.items():
                    with npz.open(f"{key}.npy", "w", force_zip64=True) as entry:
                        if not key.endswith(suffix):
                            np.lib.format.write_array(entry, array)
                            continue
                        np.lib.format.write_array_header_1_0(entry, {"descr": "<f8", "fortran_order": False,
                                                                     "shape": shape})  # fmt: skip
                        for _ in range(int(np.prod(shape)) * 8 >> 20):
                            entry.write(bytes(1 << 20))
        meta["arrays_sha256"] = stream.digest.hexdigest()
        meta[DESCRIPTION_DIGEST] = description_digest(meta)
        zf.writestr("model.json", json.dumps(meta))
        for name in entries:
            if name.startswith("members/"):
                zf.writestr(name, entries[name])
    return out.getvalue()


def _peak_while(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_zip_bomb_is_refused_before_anything_large_is_allocated(svm_file, tmp_path):
    bomb = _bomb(svm_file, "coef_", (4, 1 << 23))  # 256 MiB of zeros declared
    assert len(bomb) < 1 << 20

    def load():
        with pytest.raises(
            ModelError,
            match=r"arrays.npz declares 268\d+ bytes, more than the \d+ its arrays' shapes in the description take",
        ):
            _load(bomb, tmp_path)

    assert _peak_while(load) < 48 << 20


def test_a_description_larger_than_the_limit_is_refused(svm_file, tmp_path):
    entries = _entries(svm_file)
    entries["model.json"] = entries["model.json"] + b" " * (model_checks.MAX_DESCRIPTION_BYTES + 1)
    with pytest.raises(ModelError, match="model.json declares .* bytes, more than the 8388608"):
        _load(_zip(entries), tmp_path)


def test_an_array_entry_that_holds_more_than_its_header_declares_is_refused(svm_file, tmp_path):
    entries = _entries(svm_file)
    inner = _entries(entries["arrays.npz"])
    inner = {name: data + (b"\0" * 64 if name.endswith("coef_.npy") else b"") for name, data in inner.items()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as npz:
        for name, data in inner.items():
            npz.writestr(name, data)
    entries["arrays.npz"] = buffer.getvalue()
    meta = json.loads(entries["model.json"])
    meta["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    meta[DESCRIPTION_DIGEST] = description_digest(meta)
    entries["model.json"] = json.dumps(meta).encode()
    with pytest.raises(ModelError, match="holds 256 bytes of data, its header declares"):
        _load(_zip(entries), tmp_path)


# ---------------------------------------------------------------------------------------------------
# 4. members: each its own entry, nested at most MAX_MEMBER_DEPTH deep
# ---------------------------------------------------------------------------------------------------
def _shared_entry_fusion(member: bytes, kind: str) -> bytes:
    """A fusion of ``member`` twice whose two members both point at one zip entry."""
    fusion = _fusion([member, member], (kind, kind))
    entries = _entries(fusion)
    del entries["members/1.sfm"]
    meta = json.loads(entries["model.json"])
    meta["system"]["members"][1]["file"] = "members/0.sfm"
    meta[DESCRIPTION_DIGEST] = description_digest(meta)
    entries["model.json"] = json.dumps(meta).encode()
    return _zip(entries)


def test_a_nested_fusion_bomb_of_members_sharing_one_entry_is_refused(svm_file, tmp_path):
    data, kind = svm_file, "decision"
    for _ in range(12):  # 2**12 = 4096 models if every member were loaded
        data, kind = _shared_entry_fusion(data, kind), "proba"
    with pytest.raises(ModelError, match="members 'm0' and 'm1' both name the entry 'members/0.sfm'"):
        _load(data, tmp_path)


def test_members_nested_deeper_than_the_limit_are_refused(svm_file, tmp_path):
    data, kind = svm_file, "decision"
    for depth in range(1, model_checks.MAX_MEMBER_DEPTH + 2):
        data, kind = _fusion([data], (kind,), name=f"depth {depth}"), "proba"
        if depth == model_checks.MAX_MEMBER_DEPTH:
            assert _load(data, tmp_path).predict_scores(_waves(), SR).shape == (3, 3)
    with pytest.raises(ModelError, match=f"members nested more than {model_checks.MAX_MEMBER_DEPTH} deep"):
        _load(data, tmp_path)


def test_member_entries_that_overlap_are_refused(svm_file, crnn_file, tmp_path):
    data = bytearray(_fusion([svm_file, svm_file], ("decision", "decision")))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        offsets = {info.filename: info.header_offset for info in zf.infolist()}
        at = zf.start_dir
    while data[at : at + 4] == b"PK\x01\x02":  # central directory: point members/1.sfm at members/0.sfm's data
        name_length, extra_length, comment_length = struct.unpack_from("<3H", data, at + 28)
        if data[at + 46 : at + 46 + name_length] == b"members/1.sfm":
            struct.pack_into("<L", data, at + 42, offsets["members/0.sfm"])
        at += 46 + name_length + extra_length + comment_length
    with pytest.raises(ModelError, match="overlaps the next one"):
        _load(bytes(data), tmp_path)


# ---------------------------------------------------------------------------------------------------
# 5. tampered parameters: refused by the load-time validation, before any allocation
# ---------------------------------------------------------------------------------------------------
def test_weights_cut_to_fewer_features_are_refused(svm_file, tmp_path):
    tampered = _tamper(svm_file, arrays=lambda a: a.update({k: v[:, :5] for k, v in a.items() if k.endswith("coef_")}))
    with pytest.raises(ModelError, match=r"coef_' has shape \(3, 5\) where the description implies shape \(<=3, 8\)"):
        _load(tampered, tmp_path)


def test_a_million_gru_units_are_refused_before_the_network_is_built(crnn_file, tmp_path):
    tampered = _tamper(crnn_file, system=lambda node: node["params"].update(gru_units=10**6))

    def load():
        with pytest.raises(
            ModelError, match=r"'fold1/gru\.\w+' has shape \(12,?\d*\) where the description implies shape \(3000000"
        ):
            _load(tampered, tmp_path)

    assert _peak_while(load) < 32 << 20


def test_a_billion_frames_are_refused_on_load(crnn_file, tmp_path):
    tampered = _tamper(crnn_file, system=lambda node: node.update(n_frames=10**9))
    with pytest.raises(ModelError, match="n_frames is 1000000000, more than 1048576 for 16 Mel bands"):
        _load(tampered, tmp_path)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"sr": 10**9}, "sr is 1000000000, more than 384000 Hz"),
        ({"spec_params": {"n_mels": 16, "hop_s": 1e-6}}, "overlaps more than 64 times"),
        ({"spec_params": {"n_mels": 16, "window_s": 1e6}}, "a Mel filter bank of 16 x 4000000001 values"),
        ({"n_mels": 10**6, "spec_params": {"n_mels": 10**6}}, "a Mel filter bank of 1000000 x 1281 values"),
    ],
    ids=["rate", "hop", "window", "n_mels"],
)
def test_spectrogram_settings_that_would_allocate_without_bound_are_refused(crnn_file, change, match, tmp_path):
    with pytest.raises(ModelError, match=match):
        _load(_tamper(crnn_file, system=lambda node: node.update(change)), tmp_path)


def test_predict_turns_a_tampered_model_into_one_error_line(files, tmp_path, capsys):
    from specfusion.cli import main

    wav = tmp_path / "clip.wav"
    sf.write(wav, _waves(1)[0], SR)
    tampered = {
        "class-added": _tamper(files["svm"], system=lambda node: node["classes"].append("cat")),
        "nan": _tamper(files["crnn"], arrays=_poison("out.weight", np.nan)),
        "frames": _tamper(files["crnn"], system=lambda node: node.update(n_frames=10**9)),
    }
    for name, data in tampered.items():
        model = tmp_path / f"{name}.sfm"
        model.write_bytes(data)
        assert main(["predict", str(model), str(wav), "--device", "cpu"]) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("specfusion: error:")


def test_only_fitted_attributes_are_set_from_a_model_file():
    for part in ("attrs", "arrays", "texts", "children"):
        with pytest.raises(ModelError, match="only fitted attributes"):
            decode_estimator({"type": "LinearSVC", part: {"__class__": 1}}, {}, "generated")
