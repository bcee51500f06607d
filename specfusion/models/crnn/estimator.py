"""The CRNN as a scikit-learn-style estimator: parameters, training loop, prediction, checkpoints and their identity.

The architecture and the training rules (paper values and our choices) are described in :mod:`specfusion.models.crnn`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions, validate_parameter_constraints

from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.metrics import METRICS
from specfusion.identity import crnn_model_identity, plain
from specfusion.models.augment import mixup_loss
from specfusion.models.crnn.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    check_network,
    check_statistics,
    first_non_finite,
    read_checkpoint,
    statistic_from_plain,
    statistic_to_plain,
    write_checkpoint,
)
from specfusion.models.crnn.variants import (
    READOUTS,
    VARIANTS,
    TorchDeviceMixin,
    _amp_dtype,
    build_network,
    torch_threads,
    validation_scores,
    variant_defaults,
)

log = logging.getLogger(__name__)

#: Version of the network and training code: bump it whenever a change makes the same parameters train
#: another model (architecture, initialisation, training loop). It is part of every fold checkpoint's
#: identity, so older checkpoints are retrained instead of reused.
NETWORK_VERSION = 2
#: :class:`CRNNClassifier` parameters that change where and how fast a model trains, never what it learns.
RUNTIME_PARAMS = frozenset({"device", "progress", "eval_batch_size", "num_threads"})


@dataclasses.dataclass
class _Training:
    """What the training steps of one fit share: optimiser and schedule, loss, shuffling, augmentation, precision."""

    optimiser: Any
    scheduler: Any
    scaler: Any
    loss_fn: Callable
    generator: Any
    augment: Any
    augment_rng: np.random.Generator | None
    autocast: Any
    standardise: Callable
    device: Any
    batch_size: int
    sum_dtype: Any

    def step(self, loss) -> None:
        """Update the weights from a mini-batch's loss (scaled where float16 needs it), then the learning rate."""
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.scheduler.step()


class CRNNClassifier(TorchDeviceMixin, ClassifierMixin, BaseEstimator):
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
    readout : {"last", "mean", "max"}, optional
        How the GRU output sequence becomes one vector: last step (Keras' ``return_sequences=False``),
        mean or max over time. Default: the variant's ("mean" for esc50 and dcase2017, "last" for
        dcase2018; docs/crnn.md).
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
    standardize : bool or {"global", "band"}, optional
        How inputs are standardised with the training spectrograms' statistics: True or "global", one
        mean and standard deviation over all values; "band", one per Mel band (as the input batch norm
        over frequency of Choi et al.'s music-tagging CRNN, whose block design the paper's follows);
        False, the dB values as they are. Default: the variant's ("band" for esc50 and dcase2017, True
        for dcase2018).
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
        this many frames (:func:`specfusion.models.augment.time_shift`).
    freq_masks, freq_width, time_masks, time_width : int
        Augmentation: SpecAugment masks per item and their maximum width in bands / frames
        (:func:`specfusion.models.augment.spec_augment`); 0 disables.
    mixup : float
        Augmentation: Beta(mixup, mixup) mixing of item pairs (:func:`specfusion.models.augment.mixup`); 0 disables.
    mixed_precision : bool, optional
        Train and predict under autocast (bfloat16, or float16 with loss scaling where the GPU lacks
        bfloat16); None: on for CUDA devices, off on CPU.
    validation_every : int
        With validation data, score it every this many epochs (and after the last); 1: every epoch.
        Validation only informs :attr:`history_` and the progress bar, so this never changes the model.
    average_epochs : int
        Not in the paper (off by default): return the average of the weights at the end of each of the
        last this many epochs (stochastic weight averaging, Izmailov et al. 2018, with the run's own
        learning-rate schedule; :class:`torch.optim.swa_utils.AveragedModel`). The batch-norm statistics
        of the averaged weights are then re-estimated as ``bn_recalibration`` does, whatever its value:
        the running statistics belong to none of the averaged weights. 0 disables.

    Attributes
    ----------
    classes_ : ndarray
        The class labels: integer labels keep their dtype (as scikit-learn's), others are an object array.
    network_ : torch.nn.Module
    history_ : list of dict
        Per epoch: ``epoch``, ``loss`` (mean training loss), ``lr`` (after the epoch's last update),
        ``train_s`` and ``epoch_s`` (seconds of training, and of training plus validation) and, with
        validation data, ``val_loss`` and ``val_<metric>``.
    input_mean_, input_std_ : float or ndarray of shape (n_mels,)
        The standardisation's statistics (per band with ``standardize="band"``).
    """

    #: scikit-learn's parameter validation (:meth:`check_params`): run by :meth:`resolved_params`, so by
    #: :meth:`fit`, by the fold protocol before any work, and per entry when a recipe is parsed.
    _parameter_constraints: dict = {
        "variant": [StrOptions(set(VARIANTS))],
        "filters": ["array-like", None],
        "kernels": ["array-like", None],
        "pools": ["array-like", None],
        "gru_units": [Interval(Integral, 1, None, closed="left")],
        "gru_layers": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "readout": [StrOptions(set(READOUTS)), None],
        "lr": [Interval(Real, 0, None, closed="neither"), None],
        "decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left"), None],
        "beta1": [Interval(Real, 0, 1, closed="left")],
        "beta2": [Interval(Real, 0, 1, closed="left")],
        "eps": [Interval(Real, 0, None, closed="neither")],
        "standardize": ["boolean", StrOptions({"global", "band"}), None],
        "metric": [StrOptions(set(METRICS))],
        "classes": ["array-like", None],
        "seed": [Interval(Integral, 0, 2**32 - 1, closed="both")],
        "device": [str, None],
        "progress": ["boolean"],
        "eval_batch_size": [Interval(Integral, 1, None, closed="left")],
        "bn_recalibration": ["boolean"],
        "recalibration_items": [Interval(Integral, 1, None, closed="left")],
        "num_threads": [Interval(Integral, 1, None, closed="left"), None],
        "bn_momentum": [Interval(Real, 0, 1, closed="both")],
        "time_shift": [Interval(Integral, 0, None, closed="left")],
        "freq_masks": [Interval(Integral, 0, None, closed="left")],
        "freq_width": [Interval(Integral, 0, None, closed="left")],
        "time_masks": [Interval(Integral, 0, None, closed="left")],
        "time_width": [Interval(Integral, 0, None, closed="left")],
        "mixup": [Interval(Real, 0, None, closed="left")],
        "mixed_precision": ["boolean", None],
        "validation_every": [Interval(Integral, 1, None, closed="left")],
        "average_epochs": [Interval(Integral, 0, None, closed="left")],
    }

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
        readout: str | None = None,
        lr: float | None = None,
        decay: float = 0.002,
        batch_size: int = 64,
        epochs: int | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-7,
        standardize: bool | str | None = None,
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
        average_epochs: int = 0,
    ):
        """Store every hyper-parameter unchanged (scikit-learn's rule; :meth:`resolved_params` checks them in ``fit``).

        Long only because it has one keyword and one assignment per parameter.
        """
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
        self.average_epochs = average_epochs

    # -- parameters (get_params / set_params / clone come from scikit-learn's BaseEstimator) -------------
    def check_params(self) -> None:
        """Every parameter against :attr:`_parameter_constraints` (scikit-learn's ``_validate_params``, one
        parameter at a time so that the error knows which).

        Raises
        ------
        ParameterError
            The first invalid parameter, named in the message and in ``parameters``.
        """
        for name, value in self.get_params(deep=False).items():
            check_parameter(name, value)

    def resolved_params(self) -> dict:
        """Every hyper-parameter with the variant's defaults filled in (JSON-ready; what changes the model).

        Raises
        ------
        ParameterError
            A parameter outside its constraints (:meth:`check_params`), or a block list (``filters``,
            ``kernels``, ``pools``) whose entries are not positive integers.
        ConfigError
            Parameters that do not fit together (block lists of different lengths, ``average_epochs`` above
            ``epochs``).
        """
        self.check_params()
        defaults = variant_defaults(self.variant)
        blocks = {key: getattr(self, key) if getattr(self, key) is not None else defaults[key]
                  for key in ("filters", "kernels", "pools")}  # fmt: skip
        resolved = {
            "variant": self.variant,
            "filters": block_values("filters", blocks["filters"]),
            "kernels": block_values("kernels", blocks["kernels"]),
            "pools": block_values("pools", blocks["pools"]),
            "gru_units": int(self.gru_units),
            "gru_layers": int(self.gru_layers),
            "dropout": float(self.dropout),
            "readout": self.readout if self.readout is not None else defaults["readout"],
            "lr": float(self.lr if self.lr is not None else defaults["lr"]),
            "decay": float(self.decay),
            "batch_size": int(self.batch_size),
            "epochs": int(self.epochs if self.epochs is not None else defaults["epochs"]),
            "beta1": float(self.beta1),
            "beta2": float(self.beta2),
            "eps": float(self.eps),
            "standardize": self._standardize_mode(defaults["standardize"]),
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
            "average_epochs": int(self.average_epochs),
        }
        if not len(resolved["filters"]) == len(resolved["kernels"]) == len(resolved["pools"]):
            raise ConfigError(f"filters, kernels and pools need one entry per block, got {len(resolved['filters'])}, "
                              f"{len(resolved['kernels'])} and {len(resolved['pools'])}")  # fmt: skip
        if resolved["average_epochs"] > resolved["epochs"]:
            raise ConfigError(
                f"average_epochs must be between 0 and epochs ({resolved['epochs']}), got {resolved['average_epochs']}",
                parameters={"average_epochs": None},
            )
        return resolved

    def model_identity(self) -> dict:
        """:func:`model_identity` of this estimator (what the fold protocol's checkpoints are reused by)."""
        return model_identity(self)

    # -- helpers --------------------------------------------------------------------------------------
    def augmentation(self):
        """The training-time :class:`specfusion.models.augment.Augmentation` of these parameters."""
        from specfusion.models.augment import Augmentation

        return Augmentation(
            time_shift=int(self.time_shift), freq_masks=int(self.freq_masks), freq_width=int(self.freq_width),
            time_masks=int(self.time_masks), time_width=int(self.time_width), mixup=float(self.mixup),
        )  # fmt: skip

    def _encode(self, y) -> np.ndarray:
        from specfusion.models.svm import encode_labels

        self.classes_, codes = encode_labels(y, self.classes)
        return codes

    @staticmethod
    def _as_tensor(S, device):
        import torch

        S = torch.as_tensor(
            np.asarray(S, dtype=np.float32) if not isinstance(S, torch.Tensor) else S, dtype=torch.float32
        )
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
    def fit(self, S, y, *, validation: tuple | None = None) -> CRNNClassifier:
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

        Raises
        ------
        ConfigError
            An invalid parameter (:meth:`check_params`, a :class:`~specfusion.models.svm.ParameterError`),
            parameters that do not fit together, or data of the wrong shape; before any training.
        """
        self.check_params()
        with torch_threads(self.num_threads):
            return self._fit(S, y, validation)

    def _standardize_mode(self, default: bool | str) -> bool | str:
        """``standardize`` resolved: True (one mean and deviation; also for "global"), "band" or False."""
        value = default if self.standardize is None else self.standardize
        if value in ("global", "band"):
            return True if value == "global" else "band"
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f'standardize must be True, False, "global" or "band", got {value!r}')

    def _set_input_statistics(self, S, mode) -> None:
        """Fit ``input_mean_`` / ``input_std_`` on the training spectrograms ``S`` (n, n_mels, frames)."""
        import torch

        if mode == "band":
            std, mean = torch.std_mean(S.float(), dim=(0, 2))
            std = torch.where(std > 0, std, torch.ones_like(std))  # a constant band (e.g. empty) stays as it is
            self.input_mean_ = mean.cpu().numpy().astype(np.float64)
            self.input_std_ = std.cpu().numpy().astype(np.float64)
        elif mode:
            self.input_mean_ = float(S.mean())
            self.input_std_ = float(S.std()) or 1.0
        else:
            self.input_mean_, self.input_std_ = 0.0, 1.0

    def _standardiser(self, device):
        """A function: (batch, n_mels, frames) spectrograms on ``device`` → standardised (batch, 1, n_mels, frames).

        Per-band statistics are moved to the device once here, not once per mini-batch (a copy to a GPU per
        step would make every step wait for it).
        """
        import torch

        mean, std = self.input_mean_, self.input_std_
        if not isinstance(mean, float):
            mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1, 1) for v in (mean, std))
        return lambda S: (S.unsqueeze(1) - mean) / std

    def _fit(self, S, y, validation) -> CRNNClassifier:
        """Train (see :meth:`fit`): set-up, the epochs, then the returned weights' final form."""
        import torch

        params = self.resolved_params()
        device = self._device()
        S, targets = self._training_data(S, y, device)
        self._set_input_statistics(S, params["standardize"])
        torch.manual_seed(params["seed"])
        self.network_ = self._build(S.shape[1]).to(device)
        self.n_mels_ = int(S.shape[1])
        training = self._training(params, device)
        val = self._validation_data(validation, device)
        self.history_ = []
        averaged = self._train_epochs(S, targets, val, training, params)
        self._finish_training(S, val, averaged, training, params)
        return self

    def _training_data(self, S, y, device):
        """The training spectrograms on ``device`` and their class codes (sets :attr:`classes_`)."""
        import torch

        codes = self._encode(y)
        S = self._as_tensor(S, device)
        if len(S) != len(codes):
            raise ConfigError(f"{len(S)} spectrograms but {len(codes)} labels")
        if len(S) == 0:
            raise ConfigError("no training items")
        return S, torch.as_tensor(codes, device=device)

    def _validation_data(self, validation, device):
        """``(S_val on device, y_val as objects)``, or None without validation data."""
        if validation is None:
            return None
        S_val, y_val = validation
        return self._as_tensor(S_val, device), np.asarray(y_val, dtype=object)

    def _training(self, params: dict, device) -> _Training:
        """The optimiser (Adam, per-update decay), loss, shuffling, augmentation and precision of one fit."""
        import torch
        from torch import nn

        optimiser = torch.optim.Adam(
            self.network_.parameters(), lr=params["lr"], betas=(params["beta1"], params["beta2"]), eps=params["eps"]
        )
        decay = params["decay"]
        augment = self.augmentation()
        return _Training(
            optimiser=optimiser,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: 1.0 / (1.0 + decay * t)),
            scaler=torch.amp.GradScaler(
                device.type, enabled=params["mixed_precision"] and _amp_dtype(device) == torch.float16
            ),
            loss_fn=nn.CrossEntropyLoss(),
            generator=torch.Generator(device="cpu").manual_seed(params["seed"]),
            augment=augment,
            # the augmentation's own stream: torch's (initialisation, dropout, shuffling) is the same with and without
            augment_rng=np.random.default_rng([params["seed"], 1]) if augment.active else None,
            autocast=self._autocast(device),
            standardise=self._standardiser(device),
            device=device,
            batch_size=params["batch_size"],
            sum_dtype=torch.float32 if device.type == "mps" else torch.float64,  # MPS has no float64
        )

    def _train_epochs(self, S, targets, val, training: _Training, params: dict):
        """Every epoch, each recorded in :attr:`history_`; returns the running weight average (or None)."""
        import torch

        epochs = params["epochs"]
        subset = torch.as_tensor(
            np.random.default_rng(params["seed"]).permutation(len(S))[: self.recalibration_items],
            device=training.device,
        )  # fixed items for the per-epoch recalibration; numpy's RNG leaves torch's (training) stream alone
        averaged = None  # the running weight average of the last average_epochs epochs
        with self._epoch_bar(epochs) as bar:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                loss, lr = self._train_epoch(S, targets, training)
                record = {"epoch": epoch, "loss": loss, "lr": lr, "train_s": time.perf_counter() - started}
                if epoch > epochs - params["average_epochs"]:
                    averaged = self._update_average(averaged)
                if val is not None and (epoch % max(1, int(self.validation_every)) == 0 or epoch == epochs):
                    if params["bn_recalibration"]:
                        self._recalibrate(S, subset, training.batch_size)
                    record.update(self._validate(val[0], val[1], training.loss_fn))
                record["epoch_s"] = time.perf_counter() - started
                self.history_.append(record)
                self._show_epoch(record, bar, epochs)
        return averaged

    @contextlib.contextmanager
    def _epoch_bar(self, epochs: int):
        """A tqdm bar counting the epochs with ``progress`` (closed at the end), else None."""
        if not self.progress:
            yield None
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="CRNN", unit="epoch", leave=False)
        try:
            yield bar
        finally:
            bar.close()

    def _train_epoch(self, S, targets, training: _Training) -> tuple[float, float]:
        """One pass over the training items in a random order: (mean loss, learning rate after the last update)."""
        import torch

        self.network_.train()
        order = torch.randperm(len(S), generator=training.generator).to(training.device)
        # the loss is summed on the device: reading it every step would make a GPU wait for each one
        total, count = torch.zeros((), dtype=training.sum_dtype, device=training.device), 0
        for start in range(0, len(S), training.batch_size):
            index = order[start : start + training.batch_size]
            loss = self._batch_loss(training.standardise(S[index]), targets[index], training)
            training.step(loss)
            total += loss.detach().to(training.sum_dtype) * len(index)
            count += len(index)
        return float(total) / count, training.optimiser.param_groups[0]["lr"]

    def _batch_loss(self, x, targets, training: _Training):
        """A standardised mini-batch's loss; augmented (mixup: the loss of both targets) when augmentation is on."""
        with training.autocast:
            if training.augment_rng is None:
                return training.loss_fn(self.network_(x), targets)
            x, perm, lam = training.augment(x, training.augment_rng)
            logits = self.network_(x)
            if perm is None:
                return training.loss_fn(logits, targets)
            return mixup_loss(training.loss_fn, logits, targets, perm, lam)

    def _finish_training(self, S, val, averaged, training: _Training, params: dict) -> None:
        """The returned weights: the average if any; batch-norm statistics re-estimated on all training items."""
        if averaged is not None:
            self.network_.load_state_dict(averaged.module.state_dict())
        if (params["bn_recalibration"] or averaged is not None) and params["epochs"] > 0:
            self._recalibrate(S, None, training.batch_size)
            if val is not None:  # the last record describes the returned model
                self.history_[-1].update(self._validate(val[0], val[1], training.loss_fn))
        self.network_.eval()

    def _update_average(self, averaged):
        """Add the network's current weights to the running average (started here when ``averaged`` is None)."""
        from torch.optim.swa_utils import AveragedModel

        if averaged is None:
            averaged = AveragedModel(self.network_)
        averaged.update_parameters(self.network_)
        return averaged

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
            log.info(
                "CRNN epoch %d/%d %s (%.1f s)",
                record["epoch"],
                epochs,
                " ".join(f"{k} {v}" for k, v in shown.items()),
                record["epoch_s"],
            )

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
        standardise = self._standardiser(S.device)
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                part = order[start : start + batch_size]
                if len(part) < 2 and start > 0:
                    break  # a single-item batch has no variance to contribute
                with self._autocast(S.device):
                    self.network_(standardise(S[part]))
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        self.network_.eval()

    def recalibrate_batch_norm(self, S) -> CRNNClassifier:
        """Re-estimate the batch-norm statistics on spectrograms ``S`` (dropout off); see ``bn_recalibration``."""
        self._check_fitted()
        with torch_threads(self.num_threads):
            device = next(self.network_.parameters()).device
            self._recalibrate(self._as_tensor(S, device), None, self.resolved_params()["batch_size"])
        return self

    def _validate(self, S_val, y_val, loss_fn) -> dict:
        logits = self._logits(S_val)
        return validation_scores(logits, y_val, classes=self.classes_, metric=self.metric, loss_fn=loss_fn)

    def _logits(self, S):
        import torch

        self._check_fitted()
        device = next(self.network_.parameters()).device
        S = self._as_tensor(S, device)
        if S.shape[1] != self.n_mels_:
            raise ConfigError(f"the model was trained on {self.n_mels_} Mel bands, got {S.shape[1]}")
        self.network_.eval()
        chunks = []
        standardise = self._standardiser(device)
        with torch.inference_mode(), self._autocast(device):
            for start in range(0, len(S), self.eval_batch_size):
                x = standardise(S[start : start + self.eval_batch_size])
                chunks.append(self.network_(x).float())
        if not chunks:
            return torch.zeros((0, len(self.classes_)), device=device)
        return torch.cat(chunks)

    def plot_learning_curve(self, path) -> Path:
        """Save this model's loss and validation score per epoch as a PNG (:func:`specfusion.evaluation.plots.plot_learning_curves`)."""
        from specfusion.evaluation.plots import plot_learning_curves

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
        """The fitted model as a dict of tensors and plain values (loadable with ``weights_only=True``).

        Raises
        ------
        ConfigError
            A weight is NaN or infinite (training diverged): such a model is never saved, as :meth:`load`
            would refuse it.
        """
        self._check_fitted()
        state = {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}
        diverged = first_non_finite(state)
        if diverged is not None:
            loss = self.history_[-1]["loss"] if self.history_ else float("nan")
            raise ConfigError(f"the trained CRNN's weight {diverged!r} is NaN or infinite: training diverged (last "
                              f"training loss {loss:.3g}); train with a lower lr", parameters={"lr": None})  # fmt: skip
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "params": self.resolved_params(),
            "metric": self.metric,
            "classes": [c.item() if isinstance(c, np.generic) else str(c) for c in self.classes_],  # ints stay ints
            "n_mels": self.n_mels_,
            "input_mean": statistic_to_plain(self.input_mean_),
            "input_std": statistic_to_plain(self.input_std_),
            "history": [dict(r) for r in self.history_],
            "state_dict": state,
            "extra": plain(extra or {}),
        }

    def save(self, path, *, extra: dict | None = None) -> Path:
        """Save the fitted model whole (:func:`~specfusion.models.crnn.checkpoints.write_checkpoint`).

        Raises
        ------
        StoreError
            The file could not be written (a full disk ...); a previous file at ``path`` is unchanged.
        """
        return write_checkpoint(self.checkpoint(extra=extra), path)

    @classmethod
    def load(cls, path, *, device: str | None = None, num_threads: int | None = None) -> CRNNClassifier:
        """Load a model saved by :meth:`save`, every recorded value checked before its network is built.

        The file is read with ``torch.load(weights_only=True)`` (no code is unpickled); its fields, its
        parameters (as :meth:`fit` checks them), its input statistics and its weights (names, shapes, finite
        values) are checked first (:mod:`specfusion.models.crnn.checkpoints`).

        Raises
        ------
        StoreError
            The file is missing, unreadable, not a CRNN checkpoint, or records values that are invalid, do not fit
            together or are not finite; the message names the file and the value.
        """
        from specfusion.models.svm import encode_labels

        check_parameter("device", device)
        check_parameter("num_threads", num_threads)
        path = Path(path)
        data = read_checkpoint(path)
        model, params = cls._recorded_estimator(data, path, device=device, num_threads=num_threads)
        check_statistics(data, params["standardize"], path)
        check_network(data["state_dict"], len(data["classes"]), data["n_mels"], params, path)
        model.classes_ = encode_labels(data["classes"], data["classes"])[0]  # the class array fit() set
        model.n_mels_ = int(data["n_mels"])
        model.input_mean_ = statistic_from_plain(data["input_mean"])
        model.input_std_ = statistic_from_plain(data["input_std"])
        model.history_ = list(data["history"])
        model.checkpoint_extra_ = dict(data["extra"])
        model.network_ = model._build(model.n_mels_, keras_init=False)
        try:
            model.network_.load_state_dict(data["state_dict"])
        except RuntimeError as err:
            raise StoreError(f"{path}: weights do not fit the architecture ({err})") from None
        model.network_.to(model._device()).eval()
        return model

    @classmethod
    def _recorded_estimator(cls, data: dict, path: Path, *, device, num_threads) -> tuple[CRNNClassifier, dict]:
        """The unfitted estimator of a checkpoint's recorded parameters and its :meth:`resolved_params` (StoreError)."""
        try:
            model = cls(**data["params"], metric=data["metric"], classes=data["classes"], device=device,
                        num_threads=num_threads)  # fmt: skip
            return model, model.resolved_params()
        except ConfigError as err:
            raise StoreError(f"{path}: the checkpoint records invalid parameters ({err})") from None
        except TypeError as err:  # a keyword this CRNNClassifier does not take
            raise StoreError(
                f"{path}: the checkpoint records parameters this specfusion does not know ({err})"
            ) from None


def check_parameter(name: str, value) -> None:
    """ParameterError unless ``value`` meets the constraint of :class:`CRNNClassifier` parameter ``name``.

    scikit-learn's validation of :attr:`CRNNClassifier._parameter_constraints` for one parameter; a block list
    (``filters``, ``kernels``, ``pools``) has every entry checked too (:func:`block_values`). Recipes check
    their entries with it when they are parsed.

    Raises
    ------
    ParameterError
        A :class:`~specfusion.errors.ConfigError` (and scikit-learn's ``InvalidParameterError``) naming the
        parameter, also in ``parameters``.
    """
    from specfusion.models.svm import ParameterError

    try:
        validate_parameter_constraints({name: CRNNClassifier._parameter_constraints[name]}, {name: value},
                                       caller_name=CRNNClassifier.__name__)  # fmt: skip
    except InvalidParameterError as err:
        raise ParameterError(str(err), parameters={name: None}) from None
    if name in ("filters", "kernels", "pools") and value is not None:
        block_values(name, value)


def block_values(name: str, values) -> list:
    """A block list as plain integers: per block a positive integer (``filters``, ``kernels``) or a
    (frequency, time) pair of them (``pools``); ParameterError naming ``name`` otherwise (never ``int(2.5)``)."""
    from specfusion.models.svm import ParameterError

    pairs = name == "pools"
    try:
        entries = [list(v) for v in values] if pairs else list(values)
    except TypeError:
        entries = []
    if pairs:
        valid = all(len(e) == 2 and all(_positive_integer(x) for x in e) for e in entries)
    else:
        valid = all(_positive_integer(e) for e in entries)
    if not entries or not valid:
        what = "a (frequency, time) pair of positive integers" if pairs else "a positive integer"
        raise ParameterError(f"The {name!r} parameter of CRNNClassifier must list per block {what}. Got {values!r} "
                             "instead.", parameters={name: None})  # fmt: skip
    return [[int(a), int(b)] for a, b in entries] if pairs else [int(e) for e in entries]


def _positive_integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def model_identity(estimator: CRNNClassifier) -> dict:
    """Every parameter of ``estimator`` that changes the trained model, with effective defaults filled in.

    Taken from ``get_params()`` (so a parameter added to :class:`CRNNClassifier` is covered without
    changing this function) minus :data:`RUNTIME_PARAMS`, overlaid with ``resolved_params()`` (the
    variant's defaults for filters, lr, epochs, ...), plus :data:`NETWORK_VERSION`.
    """
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in RUNTIME_PARAMS}
    params.update(estimator.resolved_params())
    return crnn_model_identity(params, NETWORK_VERSION)
