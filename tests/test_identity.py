"""specfusion.identity builds every key that names something on disk, and builds them as they always were.

The expected digests below were computed by the code that built each key before the keys moved into
:mod:`specfusion.identity` (run caches in the recipe runner, checkpoint identities in the CRNN protocol,
ONNX graph names in the runtimes, store keys in the store). Existing stores, run caches, checkpoints and
ONNX graphs are named by them: a change here means users' caches are recomputed or, worse, wrongly reused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from specfusion import identity as hashing
from specfusion.errors import ConfigError
from specfusion.features.store import ItemRows
from specfusion.features.weights import sha256_file
from specfusion.models.svm_solver import fingerprint

# A configuration with nesting, None, a list and a non-ASCII string. The digests below were computed with the
# per-module code that specfusion had before this helper existed; existing stores and caches are named by them.
CONFIG = {"extractor": "densenet121", "layer": "avg_pool", "weights": {"kind": "imagenet", "sha256": "ab"},
          "size": [224, 224], "fmax": None, "name": "café"}  # fmt: skip
STORE_KEY = "e6f4187557ef9c9670c2e15eaebb3bdf41781499a2fb97075176ec4b39cff9a4"
ONNX_KEY = "7eaed488c7f79b4547227753"


def test_config_hash_keeps_the_store_and_recipe_keys():
    assert hashing.config_hash(CONFIG) == hashing.store_key(CONFIG) == STORE_KEY
    assert hashing.store_file_key(CONFIG) == hashing.config_hash(CONFIG, length=12) == STORE_KEY[:12]
    # key order and whitespace do not matter; the value does
    assert hashing.config_hash(dict(reversed(list(CONFIG.items())))) == STORE_KEY
    assert hashing.config_hash({**CONFIG, "layer": "features"}) != STORE_KEY


def test_onnx_graph_key_is_unchanged():
    identity = {"config": CONFIG, "input": [3, 224, 224], "torch": "2.13.0", "opset": 17, "format": 1}
    assert hashing.config_hash(identity, length=24) == ONNX_KEY
    key = hashing.onnx_graph_key(CONFIG, (3, 224, 224), torch_version="2.13.0", opset=17, graph_format=1)
    assert key == ONNX_KEY


def test_item_fingerprint_and_texts():
    rows = ItemRows(uids=np.array(["a", "b@ch1"], dtype=object), names=np.array(["a", "b"], dtype=object),
                    labels=np.array(["dog", ""], dtype=object), folds=np.array([1, 0]),
                    partitions=np.array(["dev", "test"], dtype=object), channels=np.array([-1, 1]),
                    groups=np.array(["", ""], dtype=object), paths=np.array(["a.wav", "b.wav"], dtype=object))  # fmt: skip
    assert rows.fingerprint() == "ccfd944b1ed65b469b53f18cf4b5f955ce830562f9939d0a0cff956cce82b4b4"
    text = "a\tdog\t1\tdev\nb@ch1\t\t0\ttest"  # the runner's dataset items key
    assert hashing.text_digest(text) == "2f7ce18d978bf0c21bd50cfc533f7004ffc3b767443b96fefbc42e0999eaadaa"
    assert hashing.text_digest(text.encode()) == hashing.text_digest(text)
    assert hashing.text_digest(text, length=16) == hashing.text_digest(text)[:16]


def test_file_digest_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"specfusion\n" * 200_000)  # 2.2 MB: three chunks
    assert hashing.file_digest(path) == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == "cbe8a4bd05aad6412a7e2c81eedf36b447615da895bcb60086d98f193b17b532"


def test_arrays_digest_is_the_svm_search_fingerprint():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    codes = np.array([0, 1, 0, 1])
    assert fingerprint(X, codes, [1, 1, 2, 2]) == "70a7db337401c0597a641cee04087b5a"
    assert fingerprint(X, codes, None) == "62ad1d48eb0177973956e43c717ecd62"
    # shape and dtype are part of the digest, not only the bytes
    assert hashing.arrays_digest(X) != hashing.arrays_digest(X.reshape(3, 4))
    assert hashing.arrays_digest(X) != hashing.arrays_digest(X.view(np.int32))


def test_canonical_json_refuses_what_json_cannot_hold():
    assert hashing.canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    with pytest.raises(ConfigError, match=r"at svm\.lr"):
        hashing.canonical_json({"svm": {"lr": float("nan")}})
    with pytest.raises(ConfigError, match=r"at x\[1\]"):
        hashing.config_hash({"x": [1, object()]})
    # never str() of an object: a Path, a device or a numpy scalar is not silently turned into text
    with pytest.raises(ConfigError):
        hashing.canonical_json({"path": Path("a.wav")})


def test_plain_gives_what_json_gives_back_and_refuses_objects():
    value = {"t": (1, 2), "n": np.float32(0.5), "a": np.arange(3), "k": {3: "int key"}, "b": np.bool_(True)}
    assert hashing.plain(value) == {"t": [1, 2], "n": 0.5, "a": [0, 1, 2], "k": {"3": "int key"}, "b": True}
    with pytest.raises(ConfigError, match="at device"):
        hashing.plain({"device": object()})
    with pytest.raises(ConfigError):
        hashing.plain({"x": np.float64("inf")})


def test_crnn_digests_keep_their_values():
    import hashlib

    from specfusion.identity import items_digest, labelled_items_digest

    uids, labels = ["1-2-A-0", "0-1-B-3", "2-9-A-1"], ["dog", "rain", "dog"]
    assert items_digest(uids) == hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()
    pairs = "\n".join(sorted(f"{u}\t{lab}" for u, lab in zip(uids, labels)))
    assert labelled_items_digest(uids, labels) == hashlib.sha256(pairs.encode()).hexdigest()


# -- the keys of a recipe run, a checkpoint and the spectrogram cache -----------------------------------------
#: Keys computed for the generated dataset below by the code before the identity module (see the module docstring).
GOLDEN = {
    "store_file/efficientnet_lite0": "83bc8d0887b2",
    "store_key/efficientnet_lite0": "a9af21162c540fde1e5bfb46386c883324d6b9908dd4bba28e13fc2fcd9d14fa",
    "store_key_short_skip/efficientnet_lite0": "2b9108f0070d53c7055e75e58915177f1884c57344e89c3b47404f9ea5f1209f",
    "svm_key/efficientnet_lite0": "a0b1883e0cc2",
    "svm_key_c/efficientnet_lite0": "9613ad41fcce",
    "onnx_key/efficientnet_lite0": "919c477ac2c6b3ce74be793e",
    "store_file/vgg16": "916f4379a766",
    "store_key/vgg16": "cb234b466ac70e58a08d60a7b78019f9d220b9907d9d32eacaa21a29619f611f",
    "store_key_short_skip/vgg16": "7e43c544a75b960b8c6f2969eb567a8034c70afac0b039b5eed853628bdc9f90",
    "svm_key/vgg16": "a85e8b554ed5",
    "svm_key_c/vgg16": "f5f0a5f78bbf",
    "onnx_key/vgg16": "713b538791498b72088482f9",
    "store_file/aisfx": "834abc15b358",
    "store_key/aisfx": "0db0ea3285352720a8fd6b9bb1aebd0da7e3e8c1378ffd126b96b5f8c3edb310",
    "store_key_short_skip/aisfx": "82999b0d9767dc2f008b71b1a65ae7de4fa447f6c1fad873174a022e98359648",
    "svm_key/aisfx": "9481ca265c9c",
    "svm_key_c/aisfx": "f614a9ac73d4",
    "onnx_key/aisfx": "478bce9c55a0548f09d40f0e",
    "store_file/soundnet": "3b60bebf3d14",
    "store_key/soundnet": "728b265280bf2360ae48ae736b6fba550c95298c8d5c90dc845cc395c6080895",
    "store_key_short_skip/soundnet": "58fd7ee13ffabbfc8f2fdc3cdd33e7fc53bfd27616016632bd9e343495955d45",
    "svm_key/soundnet": "56a2d3b19cd3",
    "svm_key_c/soundnet": "c3d42f691313",
    "onnx_key/soundnet": "2d02967c4836e3f3c8a2c462",
    "crnn_key/default": "85df3a81c3df",
    "crnn_key/augmented": "279e03312d92",
    "crnn_key/dcase2018": "c568ae69cd51",
    "crnn_key/spec": "2ca31934ddf0",
    "model_identity/esc50": "937df734b4233a8bdb4f1ed2c14c4cab03926483db45de728d6785cf5d67b77d",
    "model_identity/dcase2017": "6090b384ee6c2cebc78b8dbdfc03e13143c7b1313879bb4679396e0b0ff4fd0a",
    "model_identity/dcase2018": "68e6fb13220674242ece45ead82e251da5b3087ebc96784b6696e767ad9a31d3",
    "checkpoint_identity": "ab3a957b1cce49b401e02ec8031043052b00ee05f4b805c5deb62f5abfdd3f83",
    "spectrogram_cache_key": "2c9250a6f47f7119",
    "fusion_key/weighted": "46e76a7ff3f1",
    "fusion_key/stacking-svm": "fafb042a21e2",
    "fusion_key/calibrated-mean": "8341b96b4bf4",
    "fusion_key/stacking-logreg": "813263913b92",
    "fusion_key/auto": "610ee5bd1ff8",
}  # fmt: skip
GOLDEN_VERSION = "0.1.0"  # the version those keys were computed with; every run-cache key carries it
EXTRACTORS = (
    ("efficientnet_lite0", {"weights": "imagenet", "colormap": "cividis"}),
    ("vgg16", {"weights": "none", "colormap": "cividis", "renderer": "deepspectrum"}),
    ("aisfx", {"weights": "pretrained", "pooling": "mean+max"}),
    ("soundnet", {"layer": "conv6", "pooling": "mean"}),
)
CRNN_OPTIONS = {
    "default": {"variant": "esc50", "mixed_precision": True, "validation_every": 5},
    "augmented": {"variant": "esc50", "mixed_precision": True, "validation_every": 5, "epochs": 150, "readout": "last",
                  "standardize": "global", "time_shift": 8, "freq_masks": 2, "freq_width": 16, "time_masks": 2,
                  "time_width": 4, "mixup": 0.2},
    "dcase2018": {"variant": "dcase2018", "clip_db": -45},
    "spec": {"variant": "esc50", "spec_params": {"n_mels": 64}},
}  # fmt: skip
TINY = """title = "t"
[dataset]
kind = "csv"
[[systems]]
name = "a"
kind = "deepspectrum"
extractor = "efficientnet_lite0"
weights = "imagenet"
[[systems]]
name = "b"
kind = "audio"
extractor = "aisfx"
[[fusions]]
name = "f"
members = ["a", "b"]
method = "weighted"
"""


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """A recipe runner on 12 generated clips in a CSV with relative paths (3 labels, folds 1-4)."""
    import soundfile as sf

    from specfusion.pipeline.recipes import parse_recipe
    from specfusion.pipeline.runner import RecipeRunner

    root = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(0)
    rows = ["path,label,fold,partition"]
    for i in range(12):
        sf.write(
            root / f"clip{i:02d}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000, subtype="PCM_16"
        )
        rows.append(f"clip{i:02d}.wav,{['dog', 'rain', 'sea'][i % 3]},{i % 4 + 1},dev")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return RecipeRunner(parse_recipe(TINY), root=root / "data.csv", out_dir=root / "out")


@pytest.fixture
def golden_version(monkeypatch):
    import specfusion

    monkeypatch.setattr(specfusion, "__version__", GOLDEN_VERSION)


def test_dataset_identity_is_unchanged(runner):
    assert runner.dataset_key() == {"kind": "csv", "options": {}, "short": "pad",
                                    "items": "9f45c17ad7a8ed4c08f2c33c3314321a2bf36202827fc1f94a901e3b617a811d"}  # fmt: skip


@pytest.mark.parametrize(("name", "options"), EXTRACTORS, ids=[e[0] for e in EXTRACTORS])
def test_store_and_svm_step_keys_are_unchanged(runner, golden_version, name, options):
    from specfusion.errors import WeightsUnavailableError
    from specfusion.features.extraction import store_config
    from specfusion.features.extractors import get_extractor
    from specfusion.models.svm import LinearSVM

    try:
        extractor = get_extractor(name, **options)
    except WeightsUnavailableError as err:
        pytest.skip(f"{name}'s weights are not installed here: {err}")
    feature_config = {"extractor": name, "extractor_config": extractor.config(), "dataset": runner.dataset_key()}
    assert hashing.store_file_key(feature_config) == GOLDEN[f"store_file/{name}"]
    assert hashing.store_key(store_config(extractor)) == GOLDEN[f"store_key/{name}"]
    assert hashing.store_key(store_config(extractor, short="skip")) == GOLDEN[f"store_key_short_skip/{name}"]
    assert runner.svm_key(feature_config, LinearSVM(metric="macro_f1", n_jobs=-1)) == GOLDEN[f"svm_key/{name}"]
    searched = LinearSVM(metric="macro_f1", n_jobs=-1, c_grid=[0.1, 1.0])
    assert runner.svm_key(feature_config, searched) == GOLDEN[f"svm_key_c/{name}"]
    graph = hashing.onnx_graph_key(extractor.config(), (3, 224, 224), torch_version="2.13.0", opset=17, graph_format=2)
    assert graph == GOLDEN[f"onnx_key/{name}"]


@pytest.mark.parametrize("label", list(CRNN_OPTIONS))
def test_crnn_step_keys_are_unchanged(runner, golden_version, label):
    assert runner.crnn_key(CRNN_OPTIONS[label]) == GOLDEN[f"crnn_key/{label}"]


@pytest.mark.parametrize("method", ["weighted", "stacking-svm", "calibrated-mean", "stacking-logreg", "auto"])
def test_fusion_step_keys_are_unchanged(runner, golden_version, method, tmp_path):
    import dataclasses

    first, second = tmp_path / "p1.csv", tmp_path / "p2.csv"
    first.write_text("x\n")
    second.write_text("y\n")
    fusion = dataclasses.replace(runner.recipe.fusions[0], method=method)
    assert runner.fusion_key(fusion, ["a", "b"], [first, second]) == GOLDEN[f"fusion_key/{method}"]


def test_crnn_model_and_checkpoint_identities_are_unchanged(runner):
    from specfusion.models.crnn import CRNNClassifier, model_identity

    for variant in ("esc50", "dcase2017", "dcase2018"):
        assert (
            hashing.config_hash(model_identity(CRNNClassifier(variant=variant))) == GOLDEN[f"model_identity/{variant}"]
        )
    table = runner.table
    spectrograms = np.random.default_rng(1).standard_normal((len(table), 128, 32)).astype(np.float32)
    fresh = CRNNClassifier(variant="esc50", metric="accuracy", classes=list(table.classes), seed=1)
    identity = hashing.checkpoint_identity(
        model_identity(fresh), fold=1, clip_db=-80.0, sr=16000, spectrograms=spectrograms, train=table.folds() != 1,
        uids=np.asarray(table.uids(), dtype=object), labels=table.labels(),
    )  # fmt: skip
    assert hashing.config_hash(identity) == GOLDEN["checkpoint_identity"]
    # what a checkpoint gives back compares equal: plain JSON types only
    assert hashing.plain(identity) == identity


def test_spectrogram_cache_key_is_unchanged(golden_version):
    from specfusion.features.spectrogram import MelSpecParams

    if os.sep != "/":
        pytest.skip("the expected keys were computed with POSIX paths")
    common = {
        "uids": ["a", "b"],
        "paths": ["/data/a.wav", "/data/b.flac"],
        "stamps": [[100, 1_700_000_000_000_000_000], None],
    }
    key = hashing.spectrogram_cache_key(**common, sr=16000, params=MelSpecParams().as_dict(), n_frames=32, short="pad")
    assert key == "e57e87a3b85083b5"
    other = hashing.spectrogram_cache_key(
        **common, sr=22050, params=MelSpecParams(n_mels=64).as_dict(), n_frames=63, short="skip"
    )
    assert other == "c036ae5c6baf5bd3"
