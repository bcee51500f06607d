"""Memory: what the main job holds between its steps (issue 13)."""

import gc
import weakref

import numpy as np
import pytest
from extraction_helpers import TinyTestCNN, onnx_cache  # noqa: F401 (fixture)

from specfusion.features.runtimes import select_runtime


def test_an_extractor_and_its_onnx_session_are_freed_after_use(onnx_cache):  # noqa: F811
    """The session memo must not keep networks alive: a run of 7 extractors held every VGG until the end."""
    pytest.importorskip("onnxruntime", reason="the CPU runtime needs onnxruntime (and onnx to export)")
    pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")
    extractor = TinyTestCNN(seed=3)
    engine = select_runtime(extractor)
    assert engine.name == "onnxruntime"
    batch = np.stack([extractor.prepare(np.ones(16000, np.float32))] * 2)
    assert select_runtime(extractor) is engine  # memoised while the extractor lives
    features = engine.embed(batch)
    alive = weakref.ref(extractor)
    del extractor, engine
    gc.collect()
    assert alive() is None
    assert features.shape[0] == 2
