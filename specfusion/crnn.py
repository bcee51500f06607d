"""The paper's CRNN on Mel-spectrograms (section 3.2), as a scikit-learn-style estimator, and its fold protocol.

Architecture (paper values in **bold**; the rest the paper leaves open and we chose, see docs/crnn.md)
--------------------------------------------------------------------------------------------------------
Input: one dB Mel-spectrogram per item, shape (128 bands, T frames), standardised with the mean and
standard deviation of the training spectrograms (a scalar pair, stored with the model).

* Each convolutional block: **convolution → batch normalisation over channels → ELU → 2-D max-pooling →
  dropout 0.3**. Convolutions are "same"-padded, stride 1.
* ``variant="dcase2018"``: **three blocks, kernels 5×5, 4×4, 3×3; the third block pools 2 in time and 32
  in frequency**; ours: blocks 1-2 pool 2 in frequency and 1 in time (the three blocks reduce the 128
  bands to exactly 1, the time axis by 2 -- 31 steps for a 10-s segment); filters 32, 64, 128.
* ``variant="esc50"`` / ``"dcase2017"``: **four blocks, 3×3 kernels**; ours: pools (frequency × time)
  2×2, 2×2, 4×2, 8×1 (128 bands → 1; a 5-s ESC-50 clip's 32 frames → 4 steps; 63 frames → 7);
  filters 32, 64, 128, 128 (issue 10: 16-32-64-64, chosen earlier for a CPU budget, stays ~5 points
  lower on ESC-50; the wider net costs 2.9× as much, docs/performance.md).
* The feature maps are read as a sequence over time (channels × remaining bands per step) by **two GRU
  layers of 256 units** (no dropout between them), then **dropout 0.3** and a linear layer giving one
  logit per class; **softmax** gives the class probabilities. The class scores are read from the
  second GRU's output at the **last** time step (Keras' ``return_sequences=False``; ``readout="mean"``
  or ``"max"`` pool over time instead).
* After training, the batch-norm statistics are re-estimated on the training data with dropout off
  (``bn_recalibration``): running averages taken with dropout active before each batch norm do not
  match inference and cost about 19 points of accuracy on ESC-50 with 16-32-64-64 filters, 5 with the
  default 32-64-128-128; no momentum (``bn_momentum``) removes the need (docs/crnn.md).
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
(:mod:`specfusion.augment`, preset :data:`AUGMENTED`); mixed precision (autocast; on by default on CUDA).
Training logs each epoch (or shows it on a tqdm bar with ``progress``) and the protocol draws the learning
curves (``learning_curve.png``). The network is :class:`specfusion.nets.crnn.CRNN`, so fitted models pickle.

Protocol (:func:`crnn_fold_protocol`): one model per development fold, trained on the other folds; its
probabilities for the held-out fold are the development (out-of-fold) predictions, and the test
predictions are the mean of the fold models' probabilities (the paper's mean fusion). Spectrograms are
computed once and cached on disk; each fold's model is saved as a checkpoint and a re-run skips
finished folds. Fixed seeds give identical results on the same machine (and torch version).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from specfusion.augment import mixup_loss
from specfusion.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from specfusion.spectrogram import MelSpecParams

log = logging.getLogger(__name__)

#: Per-variant defaults: the paper's values and our choices where it is silent.
VARIANTS: dict[str, dict] = {
    "dcase2018": {
        "kernels": (5, 4, 3),
        "filters": (32, 64, 128),
        "pools": ((2, 1), (2, 1), (32, 2)),
        "lr": 0.01,
        "epochs": 30,
        "clip_db": -60.0,
    },
    "dcase2017": {
        "kernels": (3, 3, 3, 3),
        "filters": (32, 64, 128, 128),
        "pools": ((2, 2), (2, 2), (4, 2), (8, 1)),
        "lr": 0.001,
        "epochs": 50,
        "clip_db": -80.0,
    },
    "esc50": {
        "kernels": (3, 3, 3, 3),
        "filters": (32, 64, 128, 128),
        "pools": ((2, 2), (2, 2), (4, 2), (8, 1)),
        "lr": 0.001,
        "epochs": 100,
        "clip_db": -80.0,
    },
}
READOUTS = ("last", "mean", "max")  # also specfusion.nets.crnn.READOUTS
#: The augmentation of the "CRNN (augmented)" system (recipes/esc50-offline.toml, ``specfusion crnn --augment``):
#: time shift up to 8 frames, SpecAugment 2 frequency masks <= 16 bands and 2 time masks <= 4 frames, mixup 0.2.
AUGMENTED = {"time_shift": 8, "freq_masks": 2, "freq_width": 16, "time_masks": 2, "time_width": 4, "mixup": 0.2}
#: The learning-curve PNG :func:`crnn_fold_protocol` writes in its output folder.
LEARNING_CURVE = "learning_curve.png"
CHECKPOINT_FORMAT = "specfusion-crnn"
CHECKPOINT_VERSION = 1
#: Version of the network and training code: bump it whenever a change makes the same parameters train
#: another model (architecture, initialisation, training loop). It is part of every fold checkpoint's
#: identity, so older checkpoints are retrained instead of reused.
NETWORK_VERSION = 2
#: :class:`CRNNClassifier` parameters that change where and how fast a model trains, never what it learns.
RUNTIME_PARAMS = frozenset({"device", "progress", "eval_batch_size", "num_threads"})


def variant_defaults(variant: str) -> dict:
    """The defaults of a variant (a copy); ConfigError for an unknown one."""
    try:
        return dict(VARIANTS[variant])
    except KeyError:
        raise ConfigError(f"unknown CRNN variant {variant!r}; choose one of: {', '.join(VARIANTS)}") from None


# ---------------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------------
def build_network(
    n_classes: int,
    *,
    n_mels: int = 128,
    kernels: Sequence[int],
    filters: Sequence[int],
    pools: Sequence[Sequence[int]],
    gru_units: int = 256,
    gru_layers: int = 2,
    dropout: float = 0.3,
    readout: str = "last",
    bn_momentum: float = 0.1,
    keras_init: bool = True,
):
    """The CRNN (:class:`specfusion.nets.crnn.CRNN`) mapping (batch, 1, n_mels, frames) to (batch, n_classes) logits.

    The network is in channels-last memory format. ``keras_init=False`` keeps PyTorch's default
    initialisation (faster; for loading saved weights).
    """
    import torch

    from specfusion.nets.crnn import CRNN

    network = CRNN(
        n_classes, n_mels=n_mels, kernels=kernels, filters=filters, pools=pools, gru_units=gru_units,
        gru_layers=gru_layers, dropout=dropout, readout=readout, bn_momentum=bn_momentum, keras_init=keras_init,
    )  # fmt: skip
    return network.to(memory_format=torch.channels_last)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (restored afterwards); ``None`` changes nothing."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _amp_dtype(device):
    """bfloat16 where the device computes it, else float16 (CUDA without bfloat16)."""
    import torch

    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


# ---------------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------------
class CRNNClassifier(ClassifierMixin, BaseEstimator):
    """The paper's CRNN as a scikit-learn-style classifier on dB Mel-spectrograms.

    Parameters
    ----------
    variant : {"esc50", "dcase2017", "dcase2018"}
        Which of the paper's two architectures and its training defaults (see the module docstring).
    filters, kernels, pools : sequence, optional
        Per-block filter counts, square kernel sizes and (frequency, time) pool sizes; default: the
        variant's.
    gru_units, gru_layers : int
        Recurrent part (paper: 2 layers of 256).
    dropout : float
        Dropout after every block and before the output layer (paper: 0.3).
    readout : {"last", "mean", "max"}
        How the GRU output sequence becomes one vector: last step (default), mean or max over time.
    lr : float, optional
        Initial learning rate; default: the variant's (0.01 dcase2018, 0.001 otherwise).
    decay : float
        Per-update learning-rate decay, ``lr / (1 + decay * t)`` (paper: 0.002).
    batch_size : int
        Mini-batch size (paper: 64 best, 128 evaluated).
    epochs : int, optional
        Default: the variant's (30 / 50 / 100).
    beta1, beta2, eps : float
        Adam parameters (0.9, 0.999; epsilon 1e-7 as Keras).
    standardize : bool
        Standardise inputs with the training spectrograms' mean and standard deviation.
    metric : {"accuracy", "macro_f1"}
        Validation measure shown in the progress bar and kept in :attr:`history_`.
    classes : sequence of str, optional
        Class order of the probability columns (default: sorted training labels).
    seed : int
        Seed of initialisation, dropout and shuffling.
    device : str, optional
        torch device; default CUDA when torch sees one, else CPU.
    progress : bool
        A tqdm bar per epoch (loss, validation metric).
    eval_batch_size : int
        Batch size for prediction.
    bn_recalibration : bool
        After training, re-estimate the batch-norm statistics from the training data with dropout
        off (one forward pass) -- see docs/crnn.md: the running averages collected during training,
        with dropout active before every block's batch norm, do not match inference and cost ESC-50
        19 points of accuracy (fold 1). Per-epoch validation recalibrates on ``recalibration_items`` items.
    recalibration_items : int
        Training items used to recalibrate before each per-epoch validation (the final model uses all).
    num_threads : int, optional
        CPU threads torch uses during :meth:`fit` and prediction (restored afterwards); None leaves
        torch's setting. On a shared 2-core machine 1 is much faster than 2: OpenMP threads that wait for
        a busy core spin (measured 16x slower; docs/performance.md).
    bn_momentum : float
        PyTorch momentum of the batch norms' running statistics (0.1; Keras' 0.99 is 0.01).
    time_shift : int
        Augmentation (off by default; not in the paper): roll each training item circularly by up to
        this many frames (:func:`specfusion.augment.time_shift`).
    freq_masks, freq_width, time_masks, time_width : int
        Augmentation: SpecAugment masks per item and their maximum width in bands / frames
        (:func:`specfusion.augment.spec_augment`); 0 disables.
    mixup : float
        Augmentation: Beta(mixup, mixup) mixing of item pairs (:func:`specfusion.augment.mixup`); 0 disables.
    mixed_precision : bool, optional
        Train and predict under autocast (bfloat16, or float16 with loss scaling where the GPU lacks
        bfloat16); None: on for CUDA devices, off on CPU.
    validation_every : int
        With validation data, score it every this many epochs (and after the last); 1: every epoch.
        Validation only informs :attr:`history_` and the progress bar, so this never changes the model.

    Attributes
    ----------
    classes_ : ndarray of str
    network_ : torch.nn.Module
    history_ : list of dict
        Per epoch: ``epoch``, ``loss`` (mean training loss), ``lr`` (after the epoch's last update),
        ``train_s`` and ``epoch_s`` (seconds of training, and of training plus validation) and, with
        validation data, ``val_loss`` and ``val_<metric>``.
    input_mean_, input_std_ : float
    """

    def __init__(
        self,
        *,
        variant: str = "esc50",
        filters: Sequence[int] | None = None,
        kernels: Sequence[int] | None = None,
        pools: Sequence[Sequence[int]] | None = None,
        gru_units: int = 256,
        gru_layers: int = 2,
        dropout: float = 0.3,
        readout: str = "last",
        lr: float | None = None,
        decay: float = 0.002,
        batch_size: int = 64,
        epochs: int | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-7,
        standardize: bool = True,
        metric: str = "accuracy",
        classes: Sequence[str] | None = None,
        seed: int = 0,
        device: str | None = None,
        progress: bool = False,
        eval_batch_size: int = 64,
        bn_recalibration: bool = True,
        recalibration_items: int = 256,
        num_threads: int | None = None,
        bn_momentum: float = 0.1,
        time_shift: int = 0,
        freq_masks: int = 0,
        freq_width: int = 0,
        time_masks: int = 0,
        time_width: int = 0,
        mixup: float = 0.0,
        mixed_precision: bool | None = None,
        validation_every: int = 1,
    ):
        self.variant = variant
        self.filters = filters
        self.kernels = kernels
        self.pools = pools
        self.gru_units = gru_units
        self.gru_layers = gru_layers
        self.dropout = dropout
        self.readout = readout
        self.lr = lr
        self.decay = decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.standardize = standardize
        self.metric = metric
        self.classes = classes
        self.seed = seed
        self.device = device
        self.progress = progress
        self.eval_batch_size = eval_batch_size
        self.bn_recalibration = bn_recalibration
        self.recalibration_items = recalibration_items
        self.num_threads = num_threads
        self.bn_momentum = bn_momentum
        self.time_shift = time_shift
        self.freq_masks = freq_masks
        self.freq_width = freq_width
        self.time_masks = time_masks
        self.time_width = time_width
        self.mixup = mixup
        self.mixed_precision = mixed_precision
        self.validation_every = validation_every

    # -- parameters (get_params / set_params / clone come from scikit-learn's BaseEstimator) -------------
    def resolved_params(self) -> dict:
        """Every hyper-parameter with the variant's defaults filled in (JSON-ready; what changes the model)."""
        defaults = variant_defaults(self.variant)
        resolved = {
            "variant": self.variant,
            "filters": [int(f) for f in (self.filters if self.filters is not None else defaults["filters"])],
            "kernels": [int(k) for k in (self.kernels if self.kernels is not None else defaults["kernels"])],
            "pools": [[int(a), int(b)] for a, b in (self.pools if self.pools is not None else defaults["pools"])],
            "gru_units": int(self.gru_units),
            "gru_layers": int(self.gru_layers),
            "dropout": float(self.dropout),
            "readout": self.readout,
            "lr": float(self.lr if self.lr is not None else defaults["lr"]),
            "decay": float(self.decay),
            "batch_size": int(self.batch_size),
            "epochs": int(self.epochs if self.epochs is not None else defaults["epochs"]),
            "beta1": float(self.beta1),
            "beta2": float(self.beta2),
            "eps": float(self.eps),
            "standardize": bool(self.standardize),
            "bn_recalibration": bool(self.bn_recalibration),
            "seed": int(self.seed),
            "bn_momentum": float(self.bn_momentum),
            "time_shift": int(self.time_shift),
            "freq_masks": int(self.freq_masks),
            "freq_width": int(self.freq_width),
            "time_masks": int(self.time_masks),
            "time_width": int(self.time_width),
            "mixup": float(self.mixup),
            "mixed_precision": self._mixed_precision(),
        }
        if resolved["batch_size"] < 1 or resolved["epochs"] < 0:
            raise ConfigError("batch_size must be >= 1 and epochs >= 0")
        augmentation = [resolved[k] for k in ("time_shift", "freq_masks", "freq_width", "time_masks", "time_width", "mixup")]
        if min(augmentation) < 0:
            raise ConfigError("augmentation settings (time_shift, masks, widths, mixup) must be >= 0")
        return resolved

    # -- helpers --------------------------------------------------------------------------------------
    def _device(self):
        import torch

        return torch.device(self.device or _default_device())

    def _mixed_precision(self) -> bool:
        """Whether autocast is used: the parameter, or (None) whether the device is a GPU."""
        if self.mixed_precision is not None:
            return bool(self.mixed_precision)
        return self._device().type == "cuda"

    def _autocast(self, device):
        """The autocast context of training and prediction (a no-op without mixed precision)."""
        import torch

        if not self._mixed_precision():
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_amp_dtype(device))

    def augmentation(self):
        """The training-time :class:`specfusion.augment.Augmentation` of these parameters."""
        from specfusion.augment import Augmentation

        return Augmentation(
            time_shift=int(self.time_shift), freq_masks=int(self.freq_masks), freq_width=int(self.freq_width),
            time_masks=int(self.time_masks), time_width=int(self.time_width), mixup=float(self.mixup),
        )  # fmt: skip

    def _encode(self, y) -> np.ndarray:
        from specfusion.classifiers import encode_labels

        self.classes_, codes = encode_labels(y, self.classes)
        return codes

    @staticmethod
    def _as_tensor(S, device):
        import torch

        S = torch.as_tensor(np.asarray(S, dtype=np.float32) if not isinstance(S, torch.Tensor) else S, dtype=torch.float32)
        if S.ndim != 3:
            raise ConfigError(f"spectrograms must have shape (items, n_mels, frames), got {tuple(S.shape)}")
        return S.to(device)

    def _build(self, n_mels: int, *, keras_init: bool = True):
        p = self.resolved_params()
        return build_network(
            len(self.classes_), n_mels=n_mels, kernels=p["kernels"], filters=p["filters"], pools=p["pools"],
            gru_units=p["gru_units"], gru_layers=p["gru_layers"], dropout=p["dropout"], readout=p["readout"],
            bn_momentum=p["bn_momentum"], keras_init=keras_init,
        )  # fmt: skip

    # -- estimator API --------------------------------------------------------------------------------
    def fit(self, S, y, *, validation: tuple | None = None) -> "CRNNClassifier":
        """Train from scratch for the configured number of epochs.

        Parameters
        ----------
        S : array-like or torch.Tensor, shape (n, n_mels, frames)
            dB Mel-spectrograms (already clipped).
        y : array-like of str, shape (n,)
        validation : (S_val, y_val), optional
            Scored after every epoch for the progress bar and :attr:`history_` only; it never
            influences training (no early stopping, no model selection).

        Returns
        -------
        self
        """
        with torch_threads(self.num_threads):
            return self._fit(S, y, validation)

    def _fit(self, S, y, validation) -> "CRNNClassifier":
        import torch
        from torch import nn

        params = self.resolved_params()
        device = self._device()
        codes = self._encode(y)
        S = self._as_tensor(S, device)
        if len(S) != len(codes):
            raise ConfigError(f"{len(S)} spectrograms but {len(codes)} labels")
        if len(S) == 0:
            raise ConfigError("no training items")
        targets = torch.as_tensor(codes, device=device)
        if self.standardize:
            self.input_mean_ = float(S.mean())
            self.input_std_ = float(S.std()) or 1.0
        else:
            self.input_mean_, self.input_std_ = 0.0, 1.0
        torch.manual_seed(params["seed"])
        self.network_ = self._build(S.shape[1]).to(device)
        self.n_mels_ = int(S.shape[1])
        optimiser = torch.optim.Adam(
            self.network_.parameters(), lr=params["lr"], betas=(params["beta1"], params["beta2"]), eps=params["eps"]
        )
        decay = params["decay"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1.0 / (1.0 + decay * t))
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator(device="cpu").manual_seed(params["seed"])
        augment = self.augmentation()
        # the augmentation's own stream: torch's (initialisation, dropout, shuffling) is the same with and without
        augment_rng = np.random.default_rng([params["seed"], 1]) if augment.active else None
        autocast = self._autocast(device)
        scaler = torch.amp.GradScaler(device.type, enabled=params["mixed_precision"] and _amp_dtype(device) == torch.float16)
        val = None
        if validation is not None:
            S_val, y_val = validation
            val = (self._as_tensor(S_val, device), np.asarray(y_val, dtype=object))
        self.history_ = []
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=params["epochs"], desc="CRNN", unit="epoch", leave=False)
        batch = params["batch_size"]
        subset = torch.as_tensor(
            np.random.default_rng(params["seed"]).permutation(len(S))[: self.recalibration_items], device=device
        )  # fixed items for the per-epoch recalibration; numpy's RNG leaves torch's (training) stream alone
        try:
            for epoch in range(1, params["epochs"] + 1):
                started = time.perf_counter()
                self.network_.train()
                order = torch.randperm(len(S), generator=generator).to(device)
                total, count = 0.0, 0
                for start in range(0, len(S), batch):
                    index = order[start : start + batch]
                    x = (S[index].unsqueeze(1) - self.input_mean_) / self.input_std_
                    with autocast:
                        if augment_rng is None:
                            loss = loss_fn(self.network_(x), targets[index])
                        else:
                            x, perm, lam = augment(x, augment_rng)
                            logits = self.network_(x)
                            if perm is None:
                                loss = loss_fn(logits, targets[index])
                            else:
                                loss = mixup_loss(loss_fn, logits, targets[index], perm, lam)
                    optimiser.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimiser)
                    scaler.update()
                    scheduler.step()
                    total += float(loss.detach()) * len(index)
                    count += len(index)
                record = {"epoch": epoch, "loss": total / count, "lr": optimiser.param_groups[0]["lr"]}
                record["train_s"] = time.perf_counter() - started
                if val is not None and (epoch % max(1, int(self.validation_every)) == 0 or epoch == params["epochs"]):
                    if params["bn_recalibration"]:
                        self._recalibrate(S, subset, batch)
                    record.update(self._validate(val[0], val[1], loss_fn))
                record["epoch_s"] = time.perf_counter() - started
                self.history_.append(record)
                self._show_epoch(record, bar, params["epochs"])
        finally:
            if bar is not None:
                bar.close()
        if params["bn_recalibration"] and params["epochs"] > 0:
            self._recalibrate(S, None, batch)
            if val is not None:  # the last record describes the returned model
                self.history_[-1].update(self._validate(val[0], val[1], loss_fn))
        self.network_.eval()
        return self

    def _show_epoch(self, record: dict, bar, epochs: int) -> None:
        """One epoch's loss and validation score: on the progress bar, or logged (INFO) without one."""
        shown = {"loss": f"{record['loss']:.3f}"}
        if "val_loss" in record:
            shown["val_loss"] = f"{record['val_loss']:.3f}"
        if f"val_{self.metric}" in record:
            shown[f"val_{self.metric}"] = f"{100 * record[f'val_{self.metric}']:.1f}%"
        if bar is not None:
            bar.set_postfix(shown)
            bar.update(1)
        else:
            log.info("CRNN epoch %d/%d %s (%.1f s)", record["epoch"], epochs, " ".join(f"{k} {v}" for k, v in shown.items()), record["epoch_s"])

    def _recalibrate(self, S, index, batch_size: int) -> None:
        """Re-estimate every batch norm's running mean/variance on ``S[index]`` with dropout off.

        The statistics are the plain average over mini-batches of the training size (PyTorch's
        ``momentum=None``); the weights do not change.
        """
        import torch
        from torch import nn

        norms = [m for m in self.network_.modules() if isinstance(m, nn.BatchNorm2d)]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.network_.train()
        for m in self.network_.modules():
            if type(m).__name__ == "FastDropout":
                m.eval()
        order = torch.arange(len(S), device=S.device) if index is None else index
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                part = order[start : start + batch_size]
                if len(part) < 2 and start > 0:
                    break  # a single-item batch has no variance to contribute
                with self._autocast(S.device):
                    self.network_((S[part].unsqueeze(1) - self.input_mean_) / self.input_std_)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.network_.eval()

    def recalibrate_batch_norm(self, S) -> "CRNNClassifier":
        """Re-estimate the batch-norm statistics on spectrograms ``S`` (dropout off); see ``bn_recalibration``."""
        self._check_fitted()
        with torch_threads(self.num_threads):
            device = next(self.network_.parameters()).device
            self._recalibrate(self._as_tensor(S, device), None, self.resolved_params()["batch_size"])
        return self

    def _validate(self, S_val, y_val, loss_fn) -> dict:
        import torch

        from specfusion.evaluation import score

        logits = self._logits(S_val)
        known = np.array([v in set(self.classes_) for v in y_val])
        out = {}
        if known.any():
            lookup = {c: i for i, c in enumerate(self.classes_)}
            codes = torch.as_tensor([lookup[v] for v in y_val[known]], device=logits.device)
            out["val_loss"] = float(loss_fn(logits[torch.as_tensor(known, device=logits.device)], codes))
        predicted = self.classes_[logits.argmax(dim=1).cpu().numpy()]
        out[f"val_{self.metric}"] = score(self.metric, y_val, predicted, classes=list(self.classes_))
        return out

    def _logits(self, S):
        import torch

        self._check_fitted()
        device = next(self.network_.parameters()).device
        S = self._as_tensor(S, device)
        if S.shape[1] != self.n_mels_:
            raise ConfigError(f"the model was trained on {self.n_mels_} Mel bands, got {S.shape[1]}")
        self.network_.eval()
        chunks = []
        with torch.inference_mode(), self._autocast(device):
            for start in range(0, len(S), self.eval_batch_size):
                x = (S[start : start + self.eval_batch_size].unsqueeze(1) - self.input_mean_) / self.input_std_
                chunks.append(self.network_(x).float())
        if not chunks:
            return torch.zeros((0, len(self.classes_)), device=device)
        return torch.cat(chunks)

    def plot_learning_curve(self, path) -> Path:
        """Save this model's loss and validation score per epoch as a PNG (:func:`plot_learning_curves`)."""
        self._check_fitted()
        return plot_learning_curves({"model": self.history_}, path, metric=self.metric)

    def _check_fitted(self):
        if not hasattr(self, "network_"):
            raise ConfigError("this CRNNClassifier is not fitted yet; call fit() or load() first")

    def predict_proba(self, S) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns in :attr:`classes_` order."""
        import torch

        with torch_threads(self.num_threads):
            return torch.softmax(self._logits(S).float(), dim=1).cpu().numpy().astype(np.float64)

    def predict(self, S) -> np.ndarray:
        """Predicted class names."""
        return self.classes_[np.argmax(self.predict_proba(S), axis=1)]

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoint(self, *, extra: dict | None = None) -> dict:
        """The fitted model as a dict of tensors and plain values (loadable with ``weights_only=True``)."""
        self._check_fitted()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "params": self.resolved_params(),
            "metric": self.metric,
            "classes": [str(c) for c in self.classes_],
            "n_mels": self.n_mels_,
            "input_mean": self.input_mean_,
            "input_std": self.input_std_,
            "history": [dict(r) for r in self.history_],
            "state_dict": {k: v.detach().cpu() for k, v in self.network_.state_dict().items()},
            "extra": json.loads(json.dumps(extra or {}, default=str)),
        }

    def save(self, path, *, extra: dict | None = None) -> Path:
        """Save the fitted model (written to a temporary file, then renamed)."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.checkpoint(extra=extra), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path, *, device: str | None = None, num_threads: int | None = None) -> "CRNNClassifier":
        """Load a model saved by :meth:`save` (``torch.load(weights_only=True)``: no code is unpickled)."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise StoreError(f"{path}: CRNN checkpoint not found")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for corrupt files
            from specfusion.weights import describe_load_error

            raise StoreError(f"{path}: not a readable CRNN checkpoint ({describe_load_error(err)}); delete it to retrain") from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise StoreError(f"{path}: not a specfusion CRNN checkpoint")
        p = data["params"]
        model = cls(**{k: v for k, v in p.items()}, metric=data.get("metric", "accuracy"), classes=data["classes"], device=device, num_threads=num_threads)
        model.classes_ = np.asarray(data["classes"], dtype=object)
        model.n_mels_ = int(data["n_mels"])
        model.input_mean_ = float(data["input_mean"])
        model.input_std_ = float(data["input_std"])
        model.history_ = list(data.get("history", []))
        model.checkpoint_extra_ = dict(data.get("extra", {}))
        model.network_ = model._build(model.n_mels_, keras_init=False)
        try:
            model.network_.load_state_dict(data["state_dict"])
        except RuntimeError as err:
            raise StoreError(f"{path}: weights do not fit the architecture ({err})") from None
        model.network_.to(model._device()).eval()
        return model


def plot_learning_curves(histories: dict, path, *, metric: str = "accuracy", title: str | None = None) -> Path:
    """Save the training loss and validation loss/score per epoch of one or more models as a PNG.

    Parameters
    ----------
    histories : dict of str to list of dict
        Per model (e.g. ``"fold 1"``), its :attr:`CRNNClassifier.history_`.
    path : path-like
        The PNG to write (folders are created).
    metric : str
        The validation score's name (``val_<metric>`` in the records).
    title : str, optional

    Returns
    -------
    Path
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, score_axes = figure.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        loss_axes.plot(epochs, [r["loss"] for r in history], color=colour, label=f"{name} training")
        if any("val_loss" in r for r in history):
            val = [(r["epoch"], r["val_loss"]) for r in history if "val_loss" in r]
            loss_axes.plot(*zip(*val), color=colour, linestyle="--", label=f"{name} validation")
        key = f"val_{metric}"
        if any(key in r for r in history):
            val = [(r["epoch"], 100 * r[key]) for r in history if key in r]
            score_axes.plot(*zip(*val), color=colour, label=name)
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy", title="loss (training: with dropout/augmentation)")
    score_axes.set(xlabel="epoch", ylabel=f"validation {metric} (%)", title=f"held-out {metric}")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


# ---------------------------------------------------------------------------------------------------
# spectrograms, computed once and cached
# ---------------------------------------------------------------------------------------------------
def _item_spectrogram(item, *, sr, params, short: str = "pad"):
    """The dB Mel-spectrogram of one item; any problem is an :class:`AudioError` naming its file."""
    from specfusion.audio import load_audio
    from specfusion.errors import AudioError
    from specfusion.extraction import item_error
    from specfusion.spectrogram import melspectrogram

    channels = item.channel if item.channel is not None else "mean"
    y, rate = load_audio(item.path, sr=sr, channels=channels, min_seconds=params.window_s, short=short)
    try:
        return melspectrogram(y[0], rate, params=params), rate
    except AudioError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 -- a non-finite spectrogram is this item's failure
        raise item_error(item.path, err) from None


def _file_stamps(paths) -> list:
    """(size, modification time in ns) of every distinct file, so audio replaced in place changes cache keys."""
    stamps = {}
    for path in paths:
        if path not in stamps:
            try:
                info = os.stat(path)
                stamps[path] = [info.st_size, info.st_mtime_ns]
            except OSError:
                stamps[path] = None
    return [stamps[p] for p in paths]


def spectrogram_cache_key(table, *, sr, params, n_frames, short: str = "pad") -> str:
    """Hash of everything that determines the cached spectrograms: items, their files (path, size, mtime),
    sample rate, spectrogram parameters, length, the short-clip policy and the specfusion version."""
    from specfusion import __version__

    paths = [str(i.path) for i in table]
    text = json.dumps(
        {"uids": table.uids(), "paths": paths, "files": _file_stamps(paths), "sr": sr, "params": params.as_dict(),
         "n_frames": n_frames, "short": short, "specfusion_version": __version__},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class SpectrogramSet:
    """Spectrograms of the items that could be used, and the items that could not.

    Attributes
    ----------
    S : ndarray, shape (n_ok, n_mels, frames), float32
    rows : ndarray of int, shape (n_ok,)
        Position in the table of each row of ``S`` (table order).
    failures : list of (uid, reason, path)
        Items left out, in table order, with the reason.
    """

    S: np.ndarray
    rows: np.ndarray
    failures: list

    @property
    def n_failed(self) -> int:
        return len(self.failures)


def compute_spectrograms(
    table,
    *,
    clip_db: float | None = -80.0,
    sr: int | None = None,
    n_frames: int | None = None,
    cache_dir=None,
    progress: bool = False,
    workers: int | None = None,
    short: str = "pad",
    spec_params: MelSpecParams | dict | None = None,
) -> np.ndarray:
    """The paper's dB Mel-spectrogram of every item of ``table``, shape (n, 128, frames), float32.

    Channel items (``item.channel`` set) use that channel; other items are down-mixed. Spectrograms of
    different lengths are cropped or padded at the end with the floor value (``clip_db``, or each
    spectrogram's minimum) to ``n_frames`` (default: the longest). With ``cache_dir``, the array is
    stored there as ``spectrograms-<hash>.npy`` (the hash covers items, rate, parameters and the
    short-clip policy) and loaded instead of recomputed next time.

    Every row belongs to the table row of the same position, so an item that cannot be used is an
    error here; :func:`spectrogram_set` (used by :func:`crnn_fold_protocol`) leaves such items out and
    lists them instead.

    Parameters
    ----------
    table : DatasetTable
    clip_db : float or None
        Clip below this many dB.
    sr : int, optional
        Resample to this rate; default: the rate of the first file (others are resampled to it).
    n_frames : int, optional
    cache_dir : path-like, optional
    progress : bool
    workers : int, optional
        Threads decoding and transforming files (default: the CPU count).
    short : {"pad", "error"}
        Clips shorter than one window (0.32 s): zero-padded to one window, or a failure.
    spec_params : MelSpecParams or dict, optional
        The other spectrogram parameters (window, hop, n_mels, fmin, fmax; paper defaults); ``clip_db``
        above wins over theirs. Part of the cache key.

    Raises
    ------
    AudioError
        An item's audio cannot be used (naming the first such file and how many failed).
    """
    result = spectrogram_set(table, clip_db=clip_db, sr=sr, n_frames=n_frames, cache_dir=cache_dir, progress=progress,
                             workers=workers, short=short, spec_params=spec_params)  # fmt: skip
    if result.failures:
        from specfusion.errors import AudioError

        uid, reason, path = result.failures[0]
        more = f" ({result.n_failed - 1} more item(s) failed too)" if result.n_failed > 1 else ""
        raise AudioError(path, reason + more)
    return result.S


def spectrogram_set(
    table,
    *,
    clip_db: float | None = -80.0,
    sr: int | None = None,
    n_frames: int | None = None,
    cache_dir=None,
    progress: bool = False,
    workers: int | None = None,
    short: str = "pad",
    spec_params: MelSpecParams | dict | None = None,
) -> SpectrogramSet:
    """:func:`compute_spectrograms` with the per-item failure policy of the extraction engine.

    An item whose audio cannot be used (unreadable, truncated, silent, too short with
    ``short="error"``, a non-finite spectrogram ...) is left out and listed in
    :attr:`SpectrogramSet.failures` with its reason; the others are computed as usual. Only complete
    sets are cached, so failed items are tried again next time. Parameters as :func:`compute_spectrograms`.

    Raises
    ------
    AudioError
        Every item failed.
    """
    from specfusion.audio import audio_info, check_short_policy
    from specfusion.errors import AudioError
    from specfusion.spectrogram import mel_params

    check_short_policy(short)
    # clip_db wins over spec_params' (None: no clipping); float(): -80 and -80.0 give one cache key
    params = dataclasses.replace(mel_params(spec_params), clip_db=None if clip_db is None else float(clip_db))
    if len(table) == 0:
        raise ConfigError("the table has no items")
    if sr is None:
        sr = _first_readable_rate(table, audio_info)
    cache = None
    if cache_dir is not None:
        key = spectrogram_cache_key(table, sr=sr, params=params, n_frames=n_frames, short=short)
        cache = Path(cache_dir) / f"spectrograms-{key}.npy"
        if cache.is_file():
            try:
                S = np.load(cache)
                if S.ndim == 3 and len(S) == len(table):
                    log.info("spectrograms loaded from %s", cache)
                    return SpectrogramSet(S=S, rows=np.arange(len(table)), failures=[])
            except (OSError, ValueError) as err:
                log.warning("ignoring unreadable spectrogram cache %s (%s)", cache, err)
    items = list(table)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="spectrograms", unit="file", leave=False)

    def one(item):
        try:
            spec, _ = _item_spectrogram(item, sr=sr, params=params, short=short)
        except AudioError as err:
            spec = err
        if bar is not None:
            bar.update(1)
        return spec

    try:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            specs = list(pool.map(one, items))
    finally:
        if bar is not None:
            bar.close()
    failures = [(item.uid, spec.reason, str(item.path)) for item, spec in zip(items, specs) if isinstance(spec, AudioError)]
    for uid, reason, path in failures:
        log.warning("%s: left out: %s [%s]", uid, reason, path)
    rows = np.asarray([i for i, spec in enumerate(specs) if not isinstance(spec, AudioError)], dtype=np.int64)
    if not len(rows):
        raise AudioError(failures[0][2], f"{failures[0][1]} -- and every other item failed too ({len(failures)} in all)")
    specs = [specs[i] for i in rows]
    length = n_frames or max(s.shape[1] for s in specs)
    S = np.empty((len(specs), params.n_mels, length), dtype=np.float32)
    for i, spec in enumerate(specs):
        floor = params.clip_db if params.clip_db is not None else float(spec.min())
        used = min(length, spec.shape[1])
        S[i, :, :used] = spec[:, :used]
        S[i, :, used:] = floor
    if cache is not None and not failures:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npy")
        np.save(tmp, S)
        tmp.replace(cache)
        log.info("spectrograms cached in %s", cache)
    elif cache is not None:
        log.warning("spectrograms not cached: %d item(s) failed and will be tried again next time", len(failures))
    return SpectrogramSet(S=S, rows=rows, failures=failures)


def _protocol_spec_params(spec_params) -> MelSpecParams:
    """The CRNN protocol's spectrogram parameters; the clipping must come from ``clip_db`` alone."""
    from specfusion.spectrogram import mel_params

    params = mel_params(spec_params)
    if params.clip_db is not None:
        raise ConfigError("set the CRNN's spectrogram clipping with clip_db (--clip-db), not spec_params.clip_db")
    return params


def _first_readable_rate(table, audio_info) -> int:
    """The sample rate of the first item whose header can be read (the default rate of the set)."""
    from specfusion.errors import AudioError

    first_error = None
    for item in table:
        try:
            return int(audio_info(item.path).samplerate)
        except AudioError as err:
            first_error = first_error or err
    raise first_error


# ---------------------------------------------------------------------------------------------------
# the fold protocol
# ---------------------------------------------------------------------------------------------------
def items_digest(uids: Sequence[str]) -> str:
    """SHA-256 of a set of item keys (order-free); checkpoints record their training items' digest."""
    return hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()


def labelled_items_digest(uids: Sequence[str], labels: Sequence[str]) -> str:
    """SHA-256 of a set of (item key, label) pairs (order-free): changes when an item or a label does."""
    return hashlib.sha256("\n".join(sorted(f"{u}\t{lab}" for u, lab in zip(uids, labels))).encode()).hexdigest()


def rows_digest(array: np.ndarray, mask) -> str:
    """SHA-256 of the rows ``array[mask]`` (bytes, shape and dtype), hashed in blocks to bound memory."""
    rows = np.flatnonzero(mask)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape[1:]}{len(rows)}".encode())
    for start in range(0, len(rows), 512):
        digest.update(np.ascontiguousarray(array[rows[start : start + 512]]).tobytes())
    return digest.hexdigest()


def _plain_json(value):
    """``value`` as plain JSON types (tuples become lists), the form a checkpoint gives back."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def model_identity(estimator: "CRNNClassifier") -> dict:
    """Every parameter of ``estimator`` that changes the trained model, with effective defaults filled in.

    Taken from ``get_params()`` (so a parameter added to :class:`CRNNClassifier` is covered without
    changing this function) minus :data:`RUNTIME_PARAMS`, overlaid with ``resolved_params()`` (the
    variant's defaults for filters, lr, epochs, ...), plus :data:`NETWORK_VERSION`.
    """
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in RUNTIME_PARAMS}
    params.update(estimator.resolved_params())
    return _plain_json({"network_version": NETWORK_VERSION, "params": params})


def _identity_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two identities (for the log line that says why)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _identity_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({_short(a)} -> {_short(b)})")
    return out


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def _reusable_checkpoint(path: Path, identity: dict, *, device, num_threads) -> "CRNNClassifier | None":
    """The model saved in ``path`` when its identity equals ``identity``; None (and a log line why) otherwise."""
    if not path.is_file():
        return None
    try:
        model = CRNNClassifier.load(path, device=device, num_threads=num_threads)
    except StoreError as err:
        log.warning("%s: retraining: the checkpoint cannot be used (%s)", path, err)
        return None
    saved = model.checkpoint_extra_.get("identity")
    if saved == identity:
        return model
    why = _identity_diff(saved, identity) if isinstance(saved, dict) else ["the checkpoint records no identity (older specfusion)"]
    log.warning("%s: retraining: the checkpoint was trained with other inputs: %s", path, "; ".join(why[:6]))
    return None


@dataclasses.dataclass
class CRNNResult:
    """What :func:`crnn_fold_protocol` returns.

    Attributes
    ----------
    predictions : Predictions
        Out-of-fold development probabilities and mean-fused test probabilities.
    histories : dict of int to list of dict
        Per development fold, the training history (loss, validation metric per epoch).
    checkpoints : dict of int to Path
    config : dict
        The system configuration (also in the predictions).
    failures : list of (uid, reason, path)
        Items left out because their audio could not be used (also in the predictions' configuration
        under ``left_out``).
    """

    predictions: object
    histories: dict
    checkpoints: dict
    config: dict
    failures: list = dataclasses.field(default_factory=list)


def crnn_fold_protocol(
    table,
    *,
    out_dir,
    variant: str = "esc50",
    clip_db: float | None = None,
    sr: int | None = None,
    combine: str = "mean",
    folds: Sequence[int] | None = None,
    progress: bool = False,
    short: str = "pad",
    spec_params: MelSpecParams | dict | None = None,
    **estimator_params,
):
    """Train one CRNN per development fold; out-of-fold and mean-fused test probabilities.

    Parameters
    ----------
    table : DatasetTable
        Development items with folds 1..K (test items, fold 0, are only predicted).
    out_dir : path-like
        Spectrogram cache, ``fold<k>.pt`` checkpoints, ``predictions.csv`` and the learning curve
        (``learning_curve.png``, every fold's history) go here. A fold whose
        checkpoint exists (with the same configuration) is not trained again.
    variant : {"esc50", "dcase2017", "dcase2018"}
    clip_db : float, optional
        Spectrogram clipping; default the variant's (-80 dB; -60 dB for dcase2018).
    sr : int, optional
        Sample rate (default: the first file's).
    combine : {"mean", "max", "none"}
        How a segment's channel probabilities are combined (channel items only).
    folds : sequence of int, optional
        Run only these development folds (then only their items get development predictions and the
        test predictions average these folds' models) -- for quick checks.
    progress : bool
        Progress bars (spectrograms, folds, epochs).
    short : {"pad", "error"}
        Clips shorter than one spectrogram window (0.32 s): zero-padded to one window, or left out.
        Items whose audio cannot be used are left out of training and scoring (never the whole run);
        the result's ``failures`` and the predictions' ``left_out`` entry list them.
    spec_params : MelSpecParams or dict, optional
        Spectrogram window, hop, n_mels, fmin, fmax (default: the paper's); the clipping is ``clip_db``.
        Recorded in the checkpoints' identity and the predictions' config when not the defaults.
    **estimator_params
        Further :class:`CRNNClassifier` parameters (epochs, lr, batch_size, filters, seed, device, ...).

    Returns
    -------
    CRNNResult
    """
    from specfusion.predictions import predictions_from_items, write_predictions
    from specfusion.spectrogram import non_default_params

    defaults = variant_defaults(variant)
    clip_db = float(defaults["clip_db"] if clip_db is None else clip_db)
    params = _protocol_spec_params(spec_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    estimator_params.setdefault("metric", table.metric)
    estimator_params.setdefault("classes", list(table.classes))
    base_seed = int(estimator_params.pop("seed", 0))
    template = CRNNClassifier(variant=variant, progress=progress, seed=base_seed, **estimator_params)
    partitions = table.partitions()
    dev = partitions == "dev"
    dev_folds = sorted(set(table.folds()[dev].tolist()))
    if len(dev_folds) < 2:
        raise ConfigError(f"the CRNN protocol needs at least two development folds, found {dev_folds}")
    run_folds = dev_folds if folds is None else [int(k) for k in folds]
    unknown = set(run_folds) - set(dev_folds)
    if unknown:
        raise ConfigError(f"fold(s) {sorted(unknown)} are not development folds ({dev_folds})")
    spectrograms = spectrogram_set(table, clip_db=clip_db, sr=sr, cache_dir=out_dir, progress=progress, short=short,
                                   spec_params=params)  # fmt: skip
    S, n_table = spectrograms.S, len(table)
    if spectrograms.failures:
        table = table.subset(spectrograms.rows)
        partitions = table.partitions()
        dev = partitions == "dev"
        log.warning("CRNN: %d of %d item(s) left out (their audio cannot be used)", spectrograms.n_failed, n_table)
    left_out = {"n": spectrograms.n_failed, "of": n_table,
                "items": [{"uid": u, "reason": r, "path": p} for u, r, p in spectrograms.failures]}  # fmt: skip
    labels = table.labels()
    item_folds = table.folds()
    config = {
        "system": "crnn",
        "dataset": table.name,
        "clip_db": clip_db,
        "spectrogram": {"n_mels": int(S.shape[1]), "frames": int(S.shape[2]), "sr": sr},
        "crnn": model_identity(template)["params"],
        "network_version": NETWORK_VERSION,
        "seed_rule": "fold k trains with seed + k",
        "classes": list(template.classes),
    }
    changed = non_default_params(params)
    if changed:  # only then, so that the identity of checkpoints made with the paper's spectrogram stays valid
        config["spectrogram"]["params"] = changed
    test_index = np.flatnonzero(~dev)
    scores = np.zeros((len(table), len(table.classes)))
    have = np.zeros(len(table), dtype=bool)
    test_sum = np.zeros((len(test_index), len(table.classes)))
    histories, checkpoints = {}, {}
    fold_bar = None
    if progress:
        from tqdm.auto import tqdm

        fold_bar = tqdm(run_folds, desc=f"CRNN {variant} folds", unit="fold")
    uids = np.asarray(table.uids(), dtype=object)
    for k in fold_bar if fold_bar is not None else run_folds:
        held_out = dev & (item_folds == k)
        train = dev & (item_folds != k)
        path = out_dir / f"fold{k}.pt"
        fold_config = {**config, "fold": k, "seed": base_seed + k}
        fresh = CRNNClassifier(**{**template.get_params(), "seed": base_seed + k})
        identity = _plain_json({
            **model_identity(fresh), "fold": k, "clip_db": clip_db, "sr": sr,
            "spectrogram_shape": list(S.shape[1:]), "train_spectrograms_sha256": rows_digest(S, train),
            **({"spec_params": changed} if changed else {}),
            "train_items_sha256": items_digest(uids[train]),
            "train_labels_sha256": labelled_items_digest(uids[train], labels[train]),
        })  # fmt: skip
        model = _reusable_checkpoint(path, identity, device=template.device, num_threads=template.num_threads)
        if model is not None:
            log.info("fold %d: using the finished model in %s (same items, labels, parameters and code)", k, path)
        else:
            model = fresh
            model.fit(S[train], labels[train], validation=(S[held_out], labels[held_out]))
            extra = {"config": fold_config, "identity": identity, "n_train": int(train.sum()),
                     "train_items_sha256": identity["train_items_sha256"]}  # fmt: skip
            model.save(path, extra=extra)
        histories[k] = model.history_
        checkpoints[k] = path
        scores[held_out] = model.predict_proba(S[held_out])
        have |= held_out
        if len(test_index):
            test_sum += model.predict_proba(S[test_index])
    if len(test_index):
        scores[test_index] = test_sum / len(run_folds)
        have[test_index] = True
    channels = [i.channel for i in table]
    has_channels = any(c is not None for c in channels)
    keep = np.flatnonzero(have)
    sub = table.subset(keep)
    predictions = predictions_from_items(
        names=sub.uids(), segments=[i.name for i in sub] if has_channels else None, folds=sub.folds(),
        partitions=sub.partitions(), labels=sub.labels(), scores=scores[keep], classes=list(table.classes),
        kind="proba", config={**config, "folds_run": run_folds, "combine": combine if has_channels else "none", "left_out": left_out},
        combine=combine,
    )  # fmt: skip
    write_predictions(out_dir / "predictions.csv", predictions)
    plot_learning_curves({f"fold {k}": h for k, h in histories.items()}, out_dir / LEARNING_CURVE, metric=template.metric, title=f"CRNN {variant}")
    return CRNNResult(predictions=predictions, histories=histories, checkpoints=checkpoints, config=config,
                      failures=list(spectrograms.failures))  # fmt: skip
