"""Fine-tuning a pretrained network as a scikit-learn-style classifier: :class:`FineTuneClassifier`.

What it trains and how (our choices; the paper names fine-tuning as future work), docs/finetune.md:

* the pretrained network's blocks (:mod:`specfusion.models.finetune.networks`) and a new head (global average
  pooling, dropout, one linear layer), on the whole clip (the networks are fully convolutional);
* ``freeze``: the first so many blocks stay fixed: no gradient, always in evaluation mode, so their batch
  norms use and keep their pretrained statistics (YAMNet's export has its batch norms folded into the
  convolutions: it has none). The blocks after them train, their batch norms in training mode (statistics
  updated with the network's own momentum);
* ``cache_frozen``: the frozen blocks' output of every training and validation clip is computed once per fit
  (in memory) and the trainable blocks train on it; then time shift, SpecAugment masks, random time crops and
  mixup apply to those feature maps (widths given in input frames and bands are scaled to the maps), not to
  the input: input-level augmentation cannot pass a cached frozen prefix. Without the cache they apply to
  the (standardised) input;
* AdamW; the head learns at ``lr``, the trainable pretrained blocks at ``lr * backbone_lr_scale``; a linear
  warm-up over ``warmup_epochs`` then a cosine decay to zero, per update;
* cross-entropy (mixup: the mixed targets' losses), mini-batches of ``batch_size`` in a seeded random order.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions, validate_parameter_constraints

from specfusion.errors import ConfigError, StoreError
from specfusion.evaluation.metrics import METRICS
from specfusion.identity import crnn_model_identity, plain
from specfusion.models.augment import Augmentation
from specfusion.models.crnn.checkpoints import first_non_finite, read_checkpoint, write_checkpoint
from specfusion.models.crnn.variants import TorchDeviceMixin, torch_threads
from specfusion.models.finetune.networks import NETWORKS, build, meta_network, weights_identity

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "specfusion-finetune"
CHECKPOINT_VERSION = 1
#: Version of the fine-tuning code: bump it when the same parameters would train another model. Part of every
#: checkpoint's identity.
FINETUNE_VERSION = 1
#: Parameters that change where and how fast a model trains, never what it learns.
RUNTIME_PARAMS = frozenset({"device", "progress", "eval_batch_size", "num_threads"})
#: Per network: (blocks it has, blocks frozen by default, input standardisation by default).
NETWORK_DEFAULTS = {
    "yamnet": {"blocks": 14, "freeze": 12, "standardize": "none"},
    "efficientnet_lite0": {"blocks": 18, "freeze": 12, "standardize": "global"},
    "efficientnet_lite1": {"blocks": 20, "freeze": 14, "standardize": "global"},
    "efficientnet_lite2": {"blocks": 23, "freeze": 16, "standardize": "global"},
}


class FineTuneClassifier(TorchDeviceMixin, ClassifierMixin, BaseEstimator):
    """A pretrained network fine-tuned on spectrogram-like inputs (see the module docstring).

    Parameters
    ----------
    network : {"yamnet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    freeze : int, optional
        Leading blocks kept fixed (0: the whole network trains; the number of blocks: only the head).
        Default: the network's (:data:`NETWORK_DEFAULTS`: YAMNet 12 of 14).
    depth : int, optional
        Keep only the first so many blocks (the head pools the last kept block's output); None: all. A
        pretrained network's middle layers often transfer better than its last ones (YAMNet's 9th block,
        docs/results.md).
    cache_frozen : bool
        Compute the frozen blocks' output once per fit and train on it (see the module docstring).
    epochs : int
    batch_size : int
    lr : float
        The head's peak learning rate.
    backbone_lr_scale : float
        The trainable pretrained blocks learn at ``lr * backbone_lr_scale`` (0: they stay as they are).
    weight_decay : float
        AdamW's decoupled weight decay.
    warmup_epochs : float
        Linear warm-up of the learning rate, then cosine decay to 0 at the last update.
    dropout : float
        Before the head.
    standardize : {"none", "global", "band"}, optional
        Input standardisation with the training inputs' statistics; default the network's ("none" for
        YAMNet, which was trained on its raw log-Mel values; "global" for the image networks).
    crop : float
        Training on random crops of this fraction of the clip's frames (1: the whole clip).
    time_shift, freq_masks, freq_width, time_masks, time_width : int
        Augmentation (:mod:`specfusion.models.augment`): shift in frames, SpecAugment masks and widths (in input
        frames and bands; scaled to cached feature maps).
    mixup : float
        Beta(mixup, mixup) mixing of item pairs; 0 disables.
    metric : {"accuracy", "macro_f1"}
    classes : sequence, optional
    seed : int
    device : str, optional
        Torch device; default CUDA when torch sees one, else the CPU.
    progress : bool
    eval_batch_size : int
    num_threads : int, optional
    mixed_precision : bool, optional
        Autocast (bfloat16, or float16 with loss scaling); None: on for CUDA, off on the CPU.
    validation_every : int

    Attributes
    ----------
    classes_ : ndarray
    network_ : FineTuneNet
    history_ : list of dict
        Per epoch: ``epoch``, ``loss``, ``lr`` (the head's), ``train_s``, ``epoch_s`` and with validation
        data ``val_loss`` and ``val_<metric>``; the first record also ``cache_s`` (the frozen prefix).
    input_mean_, input_std_ : float or ndarray
    n_mels_ : int
        Bands of the inputs (their second-to-last axis).
    in_channels_ : int
    """

    _parameter_constraints: dict = {
        "network": [StrOptions(set(NETWORKS))],
        "freeze": [Interval(Integral, 0, None, closed="left"), None],
        "depth": [Interval(Integral, 1, None, closed="left"), None],
        "cache_frozen": ["boolean"],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "warmup_epochs": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "standardize": [StrOptions({"none", "global", "band"}), None],
        "crop": [Interval(Real, 0, 1, closed="right")],
        "time_shift": [Interval(Integral, 0, None, closed="left")],
        "freq_masks": [Interval(Integral, 0, None, closed="left")],
        "freq_width": [Interval(Integral, 0, None, closed="left")],
        "time_masks": [Interval(Integral, 0, None, closed="left")],
        "time_width": [Interval(Integral, 0, None, closed="left")],
        "mixup": [Interval(Real, 0, None, closed="left")],
        "metric": [StrOptions(set(METRICS))],
        "classes": ["array-like", None],
        "seed": [Interval(Integral, 0, 2**32 - 1, closed="both")],
        "device": [str, None],
        "progress": ["boolean"],
        "eval_batch_size": [Interval(Integral, 1, None, closed="left")],
        "num_threads": [Interval(Integral, 1, None, closed="left"), None],
        "mixed_precision": ["boolean", None],
        "validation_every": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self, *, network: str = "yamnet", freeze: int | None = None, depth: int | None = None,
        cache_frozen: bool = True, epochs: int = 30,
        batch_size: int = 32, lr: float = 1e-3, backbone_lr_scale: float = 0.1, weight_decay: float = 1e-2,
        warmup_epochs: float = 2.0, dropout: float = 0.2, standardize: str | None = None, crop: float = 1.0,
        time_shift: int = 0, freq_masks: int = 0, freq_width: int = 0, time_masks: int = 0, time_width: int = 0,
        mixup: float = 0.2, metric: str = "accuracy", classes: Sequence | None = None, seed: int = 0,
        device: str | None = None, progress: bool = False, eval_batch_size: int = 32, num_threads: int | None = None,
        mixed_precision: bool | None = None, validation_every: int = 1,
    ):  # fmt: skip
        """Store every hyper-parameter unchanged (scikit-learn's rule; checked in ``fit``)."""
        self.network, self.freeze, self.depth, self.cache_frozen, self.epochs = (
            network,
            freeze,
            depth,
            cache_frozen,
            epochs,
        )
        self.batch_size, self.lr, self.backbone_lr_scale = batch_size, lr, backbone_lr_scale
        self.weight_decay, self.warmup_epochs, self.dropout = weight_decay, warmup_epochs, dropout
        self.standardize, self.crop, self.time_shift = standardize, crop, time_shift
        self.freq_masks, self.freq_width, self.time_masks, self.time_width = (
            freq_masks,
            freq_width,
            time_masks,
            time_width,
        )
        self.mixup, self.metric, self.classes, self.seed = mixup, metric, classes, seed
        self.device, self.progress, self.eval_batch_size, self.num_threads = (
            device,
            progress,
            eval_batch_size,
            num_threads,
        )
        self.mixed_precision, self.validation_every = mixed_precision, validation_every

    # -- parameters ------------------------------------------------------------------------------------
    def check_params(self) -> None:
        """Every parameter against :attr:`_parameter_constraints` (ParameterError naming the first invalid one)."""
        for name, value in self.get_params(deep=False).items():
            check_parameter(name, value)

    def resolved_params(self) -> dict:
        """Every parameter that changes the model, the network's defaults filled in (JSON-ready).

        Raises
        ------
        ConfigError
            An invalid parameter, or ``freeze`` above the network's number of blocks.
        """
        self.check_params()
        defaults = NETWORK_DEFAULTS[self.network]
        depth = defaults["blocks"] if self.depth is None else int(self.depth)
        if depth > defaults["blocks"]:
            raise ConfigError(f"depth must be at most {defaults['blocks']} (the blocks of {self.network}), got "
                              f"{depth}", parameters={"depth": None})  # fmt: skip
        freeze = min(defaults["freeze"], depth) if self.freeze is None else int(self.freeze)
        if freeze > depth:
            raise ConfigError(f"freeze must be at most {depth} (the blocks kept of {self.network}), got {freeze}",
                              parameters={"freeze": None})  # fmt: skip
        # the whole network is the same model with or without ``depth``: recorded only when it cuts blocks off
        truncated = {"depth": depth} if depth < defaults["blocks"] else {}
        return {
            "network": self.network, "freeze": freeze, **truncated, "cache_frozen": bool(self.cache_frozen),
            "epochs": int(self.epochs), "batch_size": int(self.batch_size), "lr": float(self.lr),
            "backbone_lr_scale": float(self.backbone_lr_scale), "weight_decay": float(self.weight_decay),
            "warmup_epochs": float(self.warmup_epochs), "dropout": float(self.dropout),
            "standardize": self.standardize or defaults["standardize"], "crop": float(self.crop),
            "time_shift": int(self.time_shift), "freq_masks": int(self.freq_masks), "freq_width": int(self.freq_width),
            "time_masks": int(self.time_masks), "time_width": int(self.time_width), "mixup": float(self.mixup),
            "seed": int(self.seed), "mixed_precision": self._mixed_precision(),
        }  # fmt: skip

    def model_identity(self) -> dict:
        """What a checkpoint is reused by: :func:`model_identity`."""
        return model_identity(self)

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise ConfigError("this FineTuneClassifier is not fitted yet; call fit() or load() first")

    @staticmethod
    def _as_tensor(X, device):
        """Inputs as a float32 tensor (n, channels, bands, frames) on ``device``; (n, bands, frames) gets one channel."""
        import torch

        X = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X,
                            dtype=torch.float32)  # fmt: skip
        if X.ndim == 3:
            X = X.unsqueeze(1)
        if X.ndim != 4:
            raise ConfigError(f"inputs must have shape (items, bands, frames) or (items, channels, bands, frames), "
                              f"got {tuple(X.shape)}")  # fmt: skip
        return X.to(device)

    def _set_input_statistics(self, X, mode: str) -> None:
        import torch

        if mode == "band":
            std, mean = torch.std_mean(X.float(), dim=(0, 1, 3))
            std = torch.where(std > 0, std, torch.ones_like(std))
            self.input_mean_ = mean.cpu().numpy().astype(np.float64)
            self.input_std_ = std.cpu().numpy().astype(np.float64)
        elif mode == "global":
            self.input_mean_, self.input_std_ = float(X.mean()), float(X.std()) or 1.0
        else:
            self.input_mean_, self.input_std_ = 0.0, 1.0

    def _standardise(self, X):
        import torch

        mean, std = self.input_mean_, self.input_std_
        if not isinstance(mean, float):
            mean, std = (torch.as_tensor(v, dtype=torch.float32, device=X.device).reshape(-1, 1) for v in (mean, std))
        return (X - mean) / std

    def _build(self, *, pretrained: bool):
        p = self.resolved_params()
        return build(p["network"], len(self.classes_), in_channels=self.in_channels_, dropout=p["dropout"],
                     pretrained=pretrained, depth=p.get("depth"))  # fmt: skip

    def _train_mode(self, freeze: int) -> None:
        """Training mode for the blocks after ``freeze`` and the head; the frozen blocks stay in evaluation mode."""
        self.network_.train()
        for block in self.network_.blocks[:freeze]:
            block.eval()

    # -- estimator API -------------------------------------------------------------------------------------
    def fit(self, X, y, *, validation: tuple | None = None) -> FineTuneClassifier:
        """Fine-tune for the configured epochs.

        Parameters
        ----------
        X : array-like, shape (n, bands, frames) or (n, channels, bands, frames)
            The network's inputs (:mod:`specfusion.models.finetune.inputs`).
        y : array-like, shape (n,)
        validation : (X_val, y_val), optional
            Scored every ``validation_every`` epochs for :attr:`history_` only; never changes training.

        Returns
        -------
        self
        """
        self.check_params()
        with torch_threads(self.num_threads):
            return self._fit(X, y, validation)

    def _fit(self, X, y, validation) -> FineTuneClassifier:
        import torch

        from specfusion.models.finetune.training import train

        params = self.resolved_params()
        device = self._device()
        codes = self._encode(y)
        X = self._as_tensor(X, device)
        if len(X) != len(codes) or len(X) == 0:
            raise ConfigError(f"{len(X)} inputs for {len(codes)} labels (at least one of each)")
        self.n_mels_, self.in_channels_ = int(X.shape[2]), int(X.shape[1])
        self._set_input_statistics(X, params["standardize"])
        torch.manual_seed(params["seed"])
        self.network_ = self._build(pretrained=True).to(device)
        self.history_ = []
        val = (
            None
            if validation is None
            else (self._as_tensor(validation[0], device), np.asarray(validation[1], dtype=object))
        )
        train(self, X, torch.as_tensor(codes, device=device), val, params)
        self.network_.requires_grad_(True).eval()  # the frozen blocks as a loaded model has them
        return self

    def _encode(self, y) -> np.ndarray:
        from specfusion.models.svm import encode_labels

        self.classes_, codes = encode_labels(y, self.classes)
        return codes

    def augmentation(self) -> Augmentation:
        """The :class:`~specfusion.models.augment.Augmentation` of these parameters (in input frames and bands)."""
        return Augmentation(time_shift=int(self.time_shift), freq_masks=int(self.freq_masks),
                            freq_width=int(self.freq_width), time_masks=int(self.time_masks),
                            time_width=int(self.time_width), mixup=float(self.mixup))  # fmt: skip

    def logits(self, X, *, start: int = 0, standardised: bool = False):
        """Logits of inputs ``X`` (or, with ``start``, of block ``start``'s input maps), in evaluation mode."""
        import torch

        self._check_fitted()
        device = next(self.network_.parameters()).device
        X = X if isinstance(X, torch.Tensor) and start else self._as_tensor(X, device)
        self.network_.eval()
        chunks = []
        with torch.inference_mode(), self._autocast(device):
            for first in range(0, len(X), self.eval_batch_size):
                x = X[first : first + self.eval_batch_size].to(device)
                x = x if (start or standardised) else self._standardise(x)
                chunks.append(self.network_(x, start).float())
        return torch.cat(chunks) if chunks else torch.zeros((0, len(self.classes_)), device=device)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in :attr:`classes_` order."""
        import torch

        with torch_threads(self.num_threads):
            if len(X) and np.shape(X)[-2] != self.n_mels_:
                raise ConfigError(f"the model was trained on {self.n_mels_} bands, got {np.shape(X)[-2]}")
            return torch.softmax(self.logits(X), dim=1).cpu().numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """Predicted classes."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- checkpoints ---------------------------------------------------------------------------------------
    def checkpoint(self, *, extra: dict | None = None) -> dict:
        """The fitted model as tensors and plain values (``torch.load(weights_only=True)`` reads it).

        Raises
        ------
        ConfigError
            A weight is NaN or infinite (training diverged).
        """
        from specfusion.models.crnn.checkpoints import statistic_to_plain

        self._check_fitted()
        state = {k: v.detach().cpu() for k, v in self.network_.state_dict().items()}
        diverged = first_non_finite(state)
        if diverged is not None:
            raise ConfigError(f"the fine-tuned weight {diverged!r} is NaN or infinite: training diverged; train with "
                              "a lower lr", parameters={"lr": None})  # fmt: skip
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "params": self.resolved_params(),
            "metric": self.metric, "classes": [c.item() if isinstance(c, np.generic) else str(c) for c in self.classes_],
            "n_mels": self.n_mels_, "in_channels": self.in_channels_,
            "input_mean": statistic_to_plain(self.input_mean_), "input_std": statistic_to_plain(self.input_std_),
            "history": [dict(r) for r in self.history_], "state_dict": state, "extra": plain(extra or {}),
        }  # fmt: skip

    def save(self, path, *, extra: dict | None = None) -> Path:
        """Save the fitted model whole (StoreError when it cannot be written; a previous file stays)."""
        return write_checkpoint(self.checkpoint(extra=extra), path)

    @classmethod
    def load(cls, path, *, device: str | None = None, num_threads: int | None = None) -> FineTuneClassifier:
        """Load a model saved by :meth:`save`; every recorded value is checked before the network is built.

        Raises
        ------
        StoreError
            Not a fine-tuning checkpoint, or invalid recorded parameters, statistics or weights.
        """
        from specfusion.models.crnn.checkpoints import statistic_from_plain

        path = Path(path)
        data = read_checkpoint(path, fmt=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, what="fine-tuning")
        model = recorded_estimator(data, path, device=device, num_threads=num_threads)
        model.classes_ = _class_array(data["classes"])
        model.n_mels_, model.in_channels_ = int(data["n_mels"]), int(data.get("in_channels", 1))
        model.input_mean_ = statistic_from_plain(data["input_mean"])
        model.input_std_ = statistic_from_plain(data["input_std"])
        model.history_ = list(data["history"])
        model.checkpoint_extra_ = dict(data["extra"])
        model.network_ = model.network_from_state(data["state_dict"], path)
        return model

    def network_from_state(self, state: dict, where):
        """The network of this (loaded) model with ``state``'s weights, checked against its architecture first."""
        check_state(state, self.network, len(self.classes_), self.in_channels_, where,
                    depth=self.resolved_params().get("depth"))  # fmt: skip
        network = self._build(pretrained=False)
        network.load_state_dict(state)
        return network.to(self._device()).eval()


def _class_array(classes: list) -> np.ndarray:
    from specfusion.models.svm import encode_labels

    return encode_labels(classes, classes)[0]


def recorded_estimator(data: dict, path, *, device, num_threads) -> FineTuneClassifier:
    """The unfitted estimator of a checkpoint's recorded parameters (StoreError when they are invalid)."""
    params = {k: v for k, v in data["params"].items() if k != "mixed_precision"}
    try:
        model = FineTuneClassifier(**params, mixed_precision=data["params"].get("mixed_precision"),
                                   metric=data["metric"], classes=data["classes"], device=device,
                                   num_threads=num_threads)  # fmt: skip
        model.resolved_params()
    except (ConfigError, TypeError) as err:
        raise StoreError(f"{path}: the checkpoint records invalid parameters ({err})") from None
    return model


def check_state(state: dict, network: str, n_classes: int, in_channels: int, where, *, depth=None) -> None:
    """StoreError unless ``state`` holds exactly the network's tensors (names, shapes), all finite."""
    import torch

    expected = {
        k: tuple(v.shape)
        for k, v in meta_network(network, n_classes, in_channels=in_channels, depth=depth).state_dict().items()
    }
    if set(state) != set(expected):
        odd = sorted(set(state) ^ set(expected))[0]
        raise StoreError(f"{where}: the weights do not match the recorded network (tensor {odd!r})")
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            raise StoreError(f"{where}: weight {name!r} does not have the recorded network's shape {shape}")
    diverged = first_non_finite(state)
    if diverged is not None:
        raise StoreError(f"{where}: weight {diverged!r} holds NaN or infinite values (a damaged checkpoint)")


def check_parameter(name: str, value) -> None:
    """ParameterError unless ``value`` meets :class:`FineTuneClassifier`'s constraint of parameter ``name``."""
    from specfusion.models.svm import ParameterError

    try:
        validate_parameter_constraints({name: FineTuneClassifier._parameter_constraints[name]}, {name: value},
                                       caller_name=FineTuneClassifier.__name__)  # fmt: skip
    except InvalidParameterError as err:
        raise ParameterError(str(err), parameters={name: None}) from None


def model_identity(estimator: FineTuneClassifier) -> dict:
    """Every parameter that changes the fine-tuned model (effective defaults), the code version and the
    pretrained weights' SHA-256 (:func:`~specfusion.models.finetune.networks.weights_identity`)."""
    # ``depth`` enters through the resolved parameters only, which record it where it cuts blocks off
    params = {k: v for k, v in estimator.get_params(deep=False).items() if k not in RUNTIME_PARAMS | {"depth"}}
    params.update(estimator.resolved_params())
    params["pretrained"] = weights_identity(estimator.network)
    identity = crnn_model_identity(params, FINETUNE_VERSION)
    return {"kind": "finetune", **identity}


def warmup_cosine(step: int, *, warmup: int, total: int) -> float:
    """The learning-rate factor of update ``step``: linear warm-up over ``warmup`` updates, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def elapsed(started: float) -> float:
    return time.perf_counter() - started
