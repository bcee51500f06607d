"""The CRNN's variants (the paper's values and our choices), the network builder and torch runtime helpers.

See :mod:`specfusion.models.crnn` for the architecture and docs/crnn.md for the choices.
"""

from __future__ import annotations

import contextlib

import numpy as np

from specfusion.errors import ConfigError

#: The four-block network of the esc50 and dcase2017 variants (they differ in their epochs only).
_FOUR_BLOCKS: dict = {
    "kernels": (3, 3, 3, 3),
    "filters": (64, 128, 256, 256),
    "pools": ((2, 2), (2, 2), (4, 2), (8, 1)),
    "lr": 0.001,
    "clip_db": -80.0,
    "readout": "mean",
    "standardize": "band",
}
#: Per-variant defaults: the paper's values and our choices where it is silent.
VARIANTS: dict[str, dict] = {
    "dcase2018": {
        "kernels": (5, 4, 3),
        "filters": (32, 64, 128),
        "pools": ((2, 1), (2, 1), (32, 2)),
        "lr": 0.01,
        "epochs": 30,
        "clip_db": -60.0,
        "readout": "last",
        "standardize": True,
    },
    "dcase2017": {**_FOUR_BLOCKS, "epochs": 50},
    "esc50": {**_FOUR_BLOCKS, "epochs": 100},
}
READOUTS = ("last", "mean", "max")  # also specfusion.features.nets.crnn.READOUTS
#: The CRNN's augmentation preset (``specfusion crnn --augment``; docs/crnn.md#augmentation):
#: time shift up to 8 frames, SpecAugment 2 frequency masks <= 16 bands and 2 time masks <= 4 frames, mixup 0.2.
AUGMENTED = {"time_shift": 8, "freq_masks": 2, "freq_width": 16, "time_masks": 2, "time_width": 4, "mixup": 0.2}


def variant_defaults(variant: str) -> dict:
    """The defaults of a variant (a copy); ConfigError for an unknown one."""
    try:
        return dict(VARIANTS[variant])
    except KeyError:
        raise ConfigError(f"unknown CRNN variant {variant!r}; choose one of: {', '.join(VARIANTS)}") from None


def build_network(n_classes: int, **options):
    """The CRNN (:class:`~specfusion.features.nets.crnn.CRNN`): (batch, 1, n_mels, frames) to (batch, n_classes) logits.

    ``options`` are the network's parameters (``kernels``, ``filters``, ``pools``, ``n_mels``, ``gru_units`` ...;
    see :class:`~specfusion.features.nets.crnn.CRNN`). The network is in channels-last memory format.
    ``keras_init=False`` keeps PyTorch's default initialisation (faster; for loading saved weights).
    """
    import torch

    from specfusion.features.nets.crnn import CRNN

    return CRNN(n_classes, **options).to(memory_format=torch.channels_last)


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


class TorchDeviceMixin:
    """Device and autocast of an estimator with ``device`` and ``mixed_precision`` parameters (the CRNN's and
    fine-tuning's)."""

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
        import contextlib

        import torch

        if not self._mixed_precision():
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=_amp_dtype(device))


def validation_scores(logits, y_val, *, classes, metric: str, loss_fn) -> dict:
    """``val_loss`` (over the items whose label is one of ``classes``) and ``val_<metric>`` of validation logits:
    the learning-curve record of the CRNN's and fine-tuning's epochs."""
    import torch

    from specfusion.evaluation.metrics import score

    known = np.array([v in set(classes) for v in y_val])
    out = {}
    if known.any():
        lookup = {c: i for i, c in enumerate(classes)}
        codes = torch.as_tensor([lookup[v] for v in y_val[known]], device=logits.device)
        out["val_loss"] = float(loss_fn(logits[torch.as_tensor(known, device=logits.device)], codes))
    predicted = classes[logits.argmax(dim=1).cpu().numpy()]
    out[f"val_{metric}"] = score(metric, y_val, predicted, classes=list(classes))
    return out
