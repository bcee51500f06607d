"""Files read back from the cache are verified before use: a damaged ONNX graph cache never gives wrong features.

``specfusion extract`` on a cache whose ``.onnx.data`` (the graph's weights) had bytes garbled exited 0 and
wrote wrong features; now the graph is exported again, with a warning, and the features are the right ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from extraction_helpers import TinyTestCNN, make_esc50_copy  # noqa: F401 (registers tiny_test_cnn)

from specfusion.cli import main
from specfusion.features import runtimes
from specfusion.features.store import FeatureStore

pytest.importorskip("onnxruntime", reason="the CPU runtime needs onnxruntime (and onnx to export)")
pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _extract(root, out) -> int:
    return main(["extract", "--dataset", "esc50", "--root", str(root), "--extractor", "tiny_test_cnn",
                 "--runtime", "onnxruntime", "--out", str(out)])  # fmt: skip


def test_extract_on_a_cache_with_garbled_weights_exports_again_and_writes_the_right_features(
    home, tmp_path, esc50_root, monkeypatch, capsys
):
    root = make_esc50_copy(esc50_root, tmp_path / "esc", 3)
    assert _extract(root, tmp_path / "first.h5") == 0
    (data,) = (home / "onnx").glob("tiny_test_cnn-*.onnx.data")
    weights = bytearray(data.read_bytes())
    weights[:512] = bytes(255 - byte for byte in weights[:512])  # the first convolution's weights
    data.write_bytes(bytes(weights))
    monkeypatch.setattr(runtimes, "_VERIFIED", {}, raising=False)  # as in a new process
    capsys.readouterr()
    assert _extract(root, tmp_path / "second.h5") == 0
    first, second = (FeatureStore.open(tmp_path / name).arrays().X for name in ("first.h5", "second.h5"))
    np.testing.assert_array_equal(second, first)
    assert "is damaged" in capsys.readouterr().err
