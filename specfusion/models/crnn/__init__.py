"""The paper's CRNN on Mel-spectrograms (section 3.2), as a scikit-learn-style estimator.

Architecture (paper values in **bold**; the rest the paper leaves open and we chose, see docs/crnn.md)
--------------------------------------------------------------------------------------------------------
Input: one dB Mel-spectrogram per item, shape (128 bands, T frames), standardised with the mean and
standard deviation of the training spectrograms: per Mel band (esc50, dcase2017) or one scalar pair
(dcase2018), stored with the model (``standardize``).

* Each convolutional block: **convolution → batch normalisation over channels → ELU → 2-D max-pooling →
  dropout 0.3**. Convolutions are "same"-padded, stride 1.
* ``variant="dcase2018"``: **three blocks, kernels 5×5, 4×4, 3×3; the third block pools 2 in time and 32
  in frequency**; ours: blocks 1-2 pool 2 in frequency and 1 in time (the three blocks reduce the 128
  bands to exactly 1, the time axis by 2 -- 31 steps for a 10-s segment); filters 32, 64, 128.
* ``variant="esc50"`` / ``"dcase2017"``: **four blocks, 3×3 kernels**; ours: pools (frequency × time)
  2×2, 2×2, 4×2, 8×1 (128 bands → 1; a 5-s ESC-50 clip's 32 frames → 4 steps; 63 frames → 7);
  filters 64, 128, 256, 256 (issue 10: 60.8 % ESC-50 Devel against 57.5 for 32-64-128-128 and 51.1 for
  16-32-64-64; each doubling of the filters costs 1.8-3.5× the training time, docs/performance.md).
* The feature maps are read as a sequence over time (channels × remaining bands per step) by **two GRU
  layers of 256 units** (no dropout between them), then **dropout 0.3** and a linear layer giving one
  logit per class; **softmax** gives the class probabilities. The class scores are read from the
  second GRU's output averaged over time (``readout="mean"``; esc50, dcase2017) or at the last time
  step (Keras' ``return_sequences=False``; dcase2018).
* After training, the batch-norm statistics are re-estimated on the training data with dropout off
  (``bn_recalibration``): running averages taken with dropout active before each batch norm do not
  match inference and cost about 19 points of accuracy on ESC-50 with 16-32-64-64 filters, 5 with
  32-64-128-128; no momentum (``bn_momentum``) removes the need (docs/crnn.md).
* Initialisation as Keras does it: Glorot-uniform kernels, orthogonal recurrent kernels, zero biases;
  batch normalisation with Keras' epsilon 1e-3 and PyTorch's momentum 0.1 (Keras' 0.99 leaves the
  running statistics far from the data after a few hundred updates). Kernels of even size are "same"-
  padded one more at the end, as TensorFlow does.

Training: **cross-entropy on the logits, Adam (β1 0.9, β2 0.999)**, epsilon 1e-7 (Keras'); learning rate
**0.01** (dcase2018, the paper's best) or **0.001** (esc50, dcase2017) with **decay 0.002 per update**,
``lr / (1 + decay · t)`` (Keras' legacy ``decay``); **batch 64**; **30 / 50 / 100 epochs** for dcase2018 /
dcase2017 / esc50; no early stopping (a fixed number of epochs, as the paper). Spectrograms are clipped at
**-80 dB** (esc50, dcase2017) or **-30/-45/-60 dB** (dcase2018; default -60, the best on development).

Beyond the paper (options, off by default): time shift, SpecAugment masking and mixup
(:mod:`specfusion.models.augment`, preset :data:`AUGMENTED`); mixed precision (autocast; on by default on CUDA).
Training logs each epoch (or shows it on a tqdm bar with ``progress``) and the protocol draws the learning
curves (``learning_curve.png``). The network is :class:`specfusion.features.nets.crnn.CRNN`, so fitted models pickle.

Modules: :mod:`specfusion.models.crnn.variants` (the variants' defaults, :func:`build_network`),
:mod:`specfusion.models.crnn.estimator` (:class:`CRNNClassifier`, its parameter constraints and :func:`model_identity`),
:mod:`specfusion.models.crnn.checkpoints` (checkpoints written whole, and checked on load before a network is built),
:mod:`specfusion.models.crnn.parallel` (the back-ends the protocol's fold models train on: this process or local
processes; on Dask, :class:`specfusion.distributed.crnn.DaskFolds`).
The fold protocol, :func:`crnn_fold_protocol` (one model per development fold; out-of-fold and mean-fused
test probabilities), is in :mod:`specfusion.models.crnn.protocol` and importable from here; the spectrograms it trains
on are computed and cached by :mod:`specfusion.models.crnn.spectrograms`.
"""

from specfusion.models.crnn.estimator import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    NETWORK_VERSION,
    RUNTIME_PARAMS,
    CRNNClassifier,
    model_identity,
)
from specfusion.models.crnn.protocol import LEARNING_CURVE, CRNNResult, crnn_fold_protocol
from specfusion.models.crnn.variants import (
    AUGMENTED,
    READOUTS,
    VARIANTS,
    build_network,
    torch_threads,
    variant_defaults,
)

__all__ = [
    "AUGMENTED", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "NETWORK_VERSION", "READOUTS", "RUNTIME_PARAMS",
    "VARIANTS", "CRNNClassifier", "build_network", "model_identity", "torch_threads", "variant_defaults",
    "crnn_fold_protocol", "CRNNResult", "LEARNING_CURVE",
]  # fmt: skip
