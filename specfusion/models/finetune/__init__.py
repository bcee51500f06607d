"""Fine-tuning pretrained networks (YAMNet, EfficientNet-Lite) per development fold: the paper's future work.

Modules: :mod:`~specfusion.models.finetune.networks` (the networks as blocks with a new head),
:mod:`~specfusion.models.finetune.inputs` (their front ends), :mod:`~specfusion.models.finetune.estimator`
(:class:`FineTuneClassifier`), :mod:`~specfusion.models.finetune.training` (its training loop) and
:mod:`~specfusion.models.finetune.protocol` (:func:`finetune_fold_protocol`, the CRNN's fold protocol with
this estimator). docs/finetune.md says what it does and costs.
"""

from specfusion.models.finetune.estimator import FINETUNE_VERSION, NETWORK_DEFAULTS, FineTuneClassifier, model_identity
from specfusion.models.finetune.networks import NETWORKS
from specfusion.models.finetune.protocol import finetune_fold_protocol

__all__ = ["FINETUNE_VERSION", "NETWORKS", "NETWORK_DEFAULTS", "FineTuneClassifier", "finetune_fold_protocol",
           "model_identity"]  # fmt: skip
