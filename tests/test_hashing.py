"""specfusion.identity reproduces every digest that names something on disk (stores, run caches, ONNX graphs)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from specfusion import identity as hashing
from specfusion.errors import ConfigError
from specfusion.features.store import ItemRows
from specfusion.features.store import config_hash as store_hash
from specfusion.features.weights import sha256_file
from specfusion.models.svm_solver import fingerprint
from specfusion.pipeline.recipes import config_hash as recipe_hash

# A configuration with nesting, None, a list and a non-ASCII string. The digests below were computed with the
# per-module code that specfusion had before this helper existed; existing stores and caches are named by them.
CONFIG = {"extractor": "densenet121", "layer": "avg_pool", "weights": {"kind": "imagenet", "sha256": "ab"},
          "size": [224, 224], "fmax": None, "name": "café"}  # fmt: skip
STORE_KEY = "e6f4187557ef9c9670c2e15eaebb3bdf41781499a2fb97075176ec4b39cff9a4"
ONNX_KEY = "7eaed488c7f79b4547227753"


def test_config_hash_keeps_the_store_and_recipe_keys():
    assert hashing.config_hash(CONFIG) == store_hash(CONFIG) == STORE_KEY
    assert recipe_hash(CONFIG) == hashing.config_hash(CONFIG, length=12) == STORE_KEY[:12]
    # key order and whitespace do not matter; the value does
    assert hashing.config_hash(dict(reversed(list(CONFIG.items())))) == STORE_KEY
    assert hashing.config_hash({**CONFIG, "layer": "features"}) != STORE_KEY


def test_onnx_graph_key_is_unchanged():
    identity = {"config": CONFIG, "input": [3, 224, 224], "torch": "2.13.0", "opset": 17, "format": 1}
    assert hashing.config_hash(identity, length=24) == ONNX_KEY


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
    with pytest.raises(ConfigError):
        hashing.canonical_json({"x": float("nan")})
    with pytest.raises(ConfigError):
        hashing.config_hash({"x": object()})


def test_crnn_digests_keep_their_values():
    import hashlib

    from specfusion.identity import items_digest, labelled_items_digest

    uids, labels = ["1-2-A-0", "0-1-B-3", "2-9-A-1"], ["dog", "rain", "dog"]
    assert items_digest(uids) == hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()
    pairs = "\n".join(sorted(f"{u}\t{lab}" for u, lab in zip(uids, labels)))
    assert labelled_items_digest(uids, labels) == hashlib.sha256(pairs.encode()).hexdigest()
