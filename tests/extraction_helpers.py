"""Test helpers of the extraction engine: a tiny registered extractor and small ESC-50 copies.

The tiny extractor uses the real front end (the paper's Mel-spectrogram, a colour-mapped image) and a
small randomly initialised convolutional network, so engine and store tests run in seconds on 2 cores.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest

from specfusion.features.extractors.base import Extractor, register
from specfusion.features.images import render_rgb, to_network_input
from specfusion.features.spectrogram import MelSpecParams, melspectrogram


@register("tiny_test_cnn")
class TinyTestCNN(Extractor):
    """Mel-spectrogram -> 64x64 viridis image -> two conv layers -> global average pool (16-d).

    ``delay`` (seconds) slows the front end down for every item, so a test can kill a run in the middle
    (whatever runtime runs the network).
    """

    input_kind = "image"

    def __init__(self, *, seed: int = 0, sample_rate: int = 16000, colormap: str = "viridis", delay: float = 0.0):
        import torch

        self.seed = int(seed)
        self.sample_rate = int(sample_rate)
        self.colormap = colormap
        self.delay = float(delay)
        self.dim = 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, self.dim, 3, stride=2),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
            ).eval()

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        mel_db = melspectrogram(np.asarray(waveform, np.float32), self.sample_rate, params=MelSpecParams())
        return to_network_input(render_rgb(mel_db, colormap=self.colormap, size=(64, 64)))

    def embedding_module(self):
        """The network, so the engine can run it on ONNX Runtime."""
        return self.net

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.net(torch.from_numpy(np.asarray(batch, np.float32))).numpy()

    def config(self) -> dict:
        return {"extractor": self.name, "seed": self.seed, "sample_rate": self.sample_rate,
                "colormap": self.colormap, "image_size": [64, 64]}  # fmt: skip


def small_esc50(esc50_root: Path, n_classes: int):
    """The first ``n_classes`` ESC-50 classes: 4 clips per development fold (1-3) and 1 per class of fold 4 as
    the test partition (real clips, dataset order)."""
    from specfusion.data.datasets import load_esc50

    table = load_esc50(esc50_root, test_folds=(4,))
    classes = table.classes[:n_classes]
    keep, count = [], {}
    for i, item in enumerate(table):
        key = (item.label, item.fold)
        if item.label in classes and count.get(key, 0) < (1 if item.fold == 0 else 4):
            count[key] = count.get(key, 0) + 1
            keep.append(i)
    table = table.subset(keep)
    table.classes = list(classes)
    return table


def make_esc50_copy(esc50_root: Path, dest: Path, n: int, *, extra: dict[str, bytes] | None = None) -> Path:
    """An ESC-50 layout in ``dest`` with the first ``n`` real clips (symbolic links) of the meta file.

    ``extra`` maps file stems to bytes: each becomes an ``audio/<stem>.flac`` file with that content
    and a meta row (fold 1, class ``dog``), e.g. an empty or corrupt file.
    """
    (dest / "meta").mkdir(parents=True, exist_ok=True)
    (dest / "audio").mkdir(exist_ok=True)
    with open(esc50_root / "meta" / "esc50.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        template = next(reader)
        rows = [template] + [row for _, row in zip(range(n - 1), reader)] if n else []
    for row in rows:
        stem = Path(row["filename"]).stem
        source = (esc50_root / "audio" / f"{stem}.flac").resolve()
        link = dest / "audio" / f"{stem}.flac"
        if not link.exists():
            os.symlink(source, link)
    for k, (stem, content) in enumerate((extra or {}).items()):
        (dest / "audio" / f"{stem}.flac").write_bytes(content)
        rows.insert(
            min(len(rows), 2 + 3 * k),
            {**template, "filename": f"{stem}.wav", "fold": "1", "target": "0", "category": "dog"},
        )
    with open(dest / "meta" / "esc50.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return dest


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """A private ``$SPECFUSION_HOME`` for the tests' ONNX exports (not the user's cache)."""
    home = tmp_path_factory.mktemp("specfusion_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECFUSION_HOME", str(home))
        yield home
