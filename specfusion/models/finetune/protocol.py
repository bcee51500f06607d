"""Fine-tuning's fold protocol: :func:`finetune_fold_protocol`, the CRNN's protocol with another estimator and input.

One :class:`~specfusion.models.finetune.FineTuneClassifier` per development fold, trained on the other folds;
out-of-fold development probabilities and the mean of the fold models' probabilities for the test items. The
machinery is the CRNN's (:func:`specfusion.models.crnn.protocol.fold_models`): inputs computed once and cached on
disk (:func:`~specfusion.models.crnn.spectrograms.spectrogram_set` with the network's front end,
:mod:`specfusion.models.finetune.inputs`), ``fold<k>.pt`` checkpoints reused only when their identity (model,
pretrained weights, fold, inputs, training items and labels) matches, the folds still to train on a
:class:`~specfusion.models.crnn.parallel.FoldBackend` (this process, local processes, or Dask), the learning
curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specfusion.models.crnn.parallel import FoldBackend, LocalFolds
from specfusion.models.crnn.protocol import (
    CRNNResult,
    check_protocol_options,
    fold_models,
    resolve_folds,
    usable_items,
)
from specfusion.models.finetune.estimator import FINETUNE_VERSION, FineTuneClassifier, model_identity
from specfusion.models.finetune.inputs import check_inputs, default_inputs, frontend


def finetune_fold_protocol(
    table,
    *,
    out_dir,
    network: str = "yamnet",
    inputs: str | None = None,
    sr: int | None = None,
    combine: str = "mean",
    folds: Sequence[int] | None = None,
    progress: bool = False,
    short: str = "pad",
    n_jobs: int = 1,
    backend: FoldBackend | None = None,
    **estimator_params,
) -> CRNNResult:
    """Fine-tune ``network`` once per development fold; out-of-fold and mean-fused test probabilities.

    Parameters
    ----------
    table : DatasetTable
        Development items with folds 1..K (test items, fold 0, are only predicted).
    out_dir : path-like
        The input cache, ``fold<k>.pt`` checkpoints, ``predictions.csv`` and ``learning_curve.png``.
    network : str
        :data:`~specfusion.models.finetune.networks.NETWORKS`.
    inputs : {"yamnet", "mel", "multires"}, optional
        The front end (:mod:`specfusion.models.finetune.inputs`); default the network's.
    sr : int, optional
        Rate the audio is read at (YAMNet: always 16 kHz; default the first file's).
    combine, folds, progress, short, n_jobs, backend
        As :func:`specfusion.models.crnn.protocol.crnn_fold_protocol`.
    **estimator_params
        Further :class:`FineTuneClassifier` parameters (epochs, freeze, lr, seed, device ...).

    Returns
    -------
    CRNNResult
        The protocol's result (predictions, histories, checkpoints, config, failures).
    """
    from specfusion.models.crnn.spectrograms import spectrogram_set

    inputs = inputs or default_inputs(network)
    check_inputs(network, inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = _template(table, network=network, progress=progress, **estimator_params)
    check_protocol_options(combine=combine, n_jobs=n_jobs if backend is None else 1)
    run_folds = resolve_folds(table, folds)
    front = frontend(inputs)
    rate = getattr(front, "sample_rate", None) or sr
    arrays = spectrogram_set(table, sr=rate, cache_dir=out_dir, progress=progress, short=short, frontend=front)
    usable = usable_items(table, arrays)
    settings = {"clip_db": None, "sr": rate, "spec_params": {"inputs": inputs, **front.as_dict()}}
    config = protocol_config(usable, template, shape=arrays.S.shape, inputs=inputs, sr=rate, frontend=front.as_dict())
    return fold_models(table, arrays, usable, run_folds, template=template, config=config, settings=settings,
                       out_dir=out_dir, backend=LocalFolds(n_jobs) if backend is None else backend, combine=combine,
                       progress=progress, title=f"fine-tuned {network}")  # fmt: skip


def _template(table, *, network: str, progress: bool, **estimator_params) -> FineTuneClassifier:
    """The estimator every fold model copies (metric and classes default to the table's); checked before any work."""
    estimator_params.setdefault("metric", table.metric)
    estimator_params.setdefault("classes", list(table.classes))
    template = FineTuneClassifier(network=network, progress=progress, **estimator_params)
    template.resolved_params()
    return template


def protocol_config(table, template: FineTuneClassifier, *, shape, inputs: str, sr, frontend: dict) -> dict:
    """The system configuration: dataset, inputs, the model's parameters and pretrained weights, version, seed rule."""
    return {
        "system": "finetune",
        "dataset": table.name,
        "inputs": {"kind": inputs, "shape": [int(s) for s in shape[1:]], "sr": sr, "frontend": frontend},
        "finetune": model_identity(template)["params"],
        "finetune_version": FINETUNE_VERSION,
        "seed_rule": "fold k trains with seed + k",
        "classes": list(template.classes),
    }
