"""Training-time augmentation of spectrogram mini-batches: random time shift, SpecAugment masking, mixup.

None of these is in the paper (it trains without augmentation); :class:`specfusion.models.crnn.CRNNClassifier`
offers them as options, off by default. Every function takes a batch ``x`` of shape
(batch, channels, bands, frames) and a :class:`numpy.random.Generator` that draws all the randomness,
so an augmented run is reproducible and the draws never touch torch's random stream (dropout and
shuffling are the same with and without augmentation).

* :func:`time_shift` -- rolls each item circularly by a random number of frames (Salamon & Bello 2017
  use time stretching; a roll keeps the length and is free).
* :func:`spec_augment` -- SpecAugment's frequency and time masking (Park et al., Interspeech 2019),
  without time warping: masks of a random width in [0, W] at random positions set to ``fill``.
* :func:`mixup` -- convex combinations of pairs of items (Zhang et al., ICLR 2018); the loss is the
  same combination of the two items' losses (:func:`mixup_loss`).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def time_shift(x, max_shift: int, rng: np.random.Generator):
    """Roll every item of ``x`` along the last axis by a random shift in [-max_shift, max_shift] frames."""
    import torch

    if max_shift <= 0:
        return x
    frames = x.shape[-1]
    shifts = torch.as_tensor(rng.integers(-max_shift, max_shift + 1, size=len(x)), device=x.device)
    index = (torch.arange(frames, device=x.device)[None, :] - shifts[:, None]) % frames  # (B, T)
    return torch.gather(x, -1, index[:, None, None, :].expand_as(x))


def _band_masks(n: int, size: int, count: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size) booleans: per row, ``count`` masks of a width drawn from [0, width] at a random start."""
    masked = np.zeros((n, size), dtype=bool)
    width = min(int(width), size)
    positions = np.arange(size)
    for _ in range(int(count)):
        widths = rng.integers(0, width + 1, size=n)
        starts = np.floor(rng.random(n) * (size - widths + 1)).astype(int)
        masked |= (positions[None, :] >= starts[:, None]) & (positions[None, :] < (starts + widths)[:, None])
    return masked


def spec_augment(
    x,
    rng: np.random.Generator,
    *,
    freq_masks: int = 0,
    freq_width: int = 0,
    time_masks: int = 0,
    time_width: int = 0,
    fill: float = 0.0,
):
    """SpecAugment frequency and time masking of a batch (bands on axis -2, frames on axis -1).

    Parameters
    ----------
    x : torch.Tensor, shape (batch, channels, bands, frames)
    rng : numpy.random.Generator
    freq_masks, time_masks : int
        Masks per item along each axis.
    freq_width, time_width : int
        Maximum mask width (bands / frames); each mask's width is uniform in [0, width].
    fill : float
        Value of masked cells (0: the mean of standardised inputs).
    """
    import torch

    n, bands, frames = len(x), x.shape[-2], x.shape[-1]
    out = x
    if freq_masks > 0 and freq_width > 0:
        m = torch.as_tensor(_band_masks(n, bands, freq_masks, freq_width, rng), device=x.device)
        out = out.masked_fill(m[:, None, :, None], fill)
    if time_masks > 0 and time_width > 0:
        m = torch.as_tensor(_band_masks(n, frames, time_masks, time_width, rng), device=x.device)
        out = out.masked_fill(m[:, None, None, :], fill)
    return out


def mixup(x, alpha: float, rng: np.random.Generator):
    """Mix every item with a random partner of the batch: ``lam * x + (1 - lam) * x[perm]``.

    Returns
    -------
    mixed : torch.Tensor
    perm : torch.Tensor of int64
        The partner of each item (targets of the second loss term).
    lam : float
        Drawn from Beta(alpha, alpha), one per batch.
    """
    import torch

    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(len(x)), device=x.device)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


def mixup_loss(loss_fn, logits, targets, perm, lam: float):
    """``lam * loss(logits, targets) + (1 - lam) * loss(logits, targets[perm])``."""
    return lam * loss_fn(logits, targets) + (1.0 - lam) * loss_fn(logits, targets[perm])


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The augmentation settings of one training run (all off by default).

    Parameters
    ----------
    time_shift : int
        Maximum circular shift in frames.
    freq_masks, freq_width, time_masks, time_width : int
        SpecAugment masking (see :func:`spec_augment`).
    mixup : float
        Beta(alpha, alpha) parameter of mixup; 0 disables it.
    """

    time_shift: int = 0
    freq_masks: int = 0
    freq_width: int = 0
    time_masks: int = 0
    time_width: int = 0
    mixup: float = 0.0

    @property
    def active(self) -> bool:
        """Whether any augmentation changes the batches."""
        masks = (self.freq_masks > 0 and self.freq_width > 0) or (self.time_masks > 0 and self.time_width > 0)
        return self.time_shift > 0 or masks or self.mixup > 0

    def __call__(self, x, rng: np.random.Generator):
        """Augment a standardised batch; returns ``(x, perm, lam)`` (``perm`` None without mixup)."""
        x = time_shift(x, self.time_shift, rng)
        x = spec_augment(
            x, rng, freq_masks=self.freq_masks, freq_width=self.freq_width, time_masks=self.time_masks,
            time_width=self.time_width,
        )  # fmt: skip
        if self.mixup > 0:
            return mixup(x, self.mixup, rng)
        return x, None, 1.0
