"""The training loop of :class:`~specfusion.models.finetune.FineTuneClassifier` (its module docstring says what
it does): the frozen prefix (cached or not), the optimiser and schedule, the epochs, validation."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from specfusion.models.augment import Augmentation, mixup_loss


@dataclasses.dataclass
class _Fit:
    """What the steps of one fit share."""

    start: int  # the first block trained on (the frozen blocks before it are cached), or 0
    maps: Any  # training inputs (start 0) or the frozen prefix's output maps
    val_maps: Any
    optimiser: Any
    scheduler: Any
    scaler: Any
    augment: Augmentation
    rng: np.random.Generator
    generator: Any
    crop: float


def train(model, X, targets, val, params: dict) -> None:
    """Train ``model.network_`` (built, pretrained, on its device) on inputs ``X``; fills ``model.history_``."""
    import torch

    freeze = params["freeze"]
    for block in model.network_.blocks[:freeze]:
        block.requires_grad_(False)
    started = time.perf_counter()
    fit = _setup(model, X, val, params)
    cache_s = time.perf_counter() - started
    loss_fn = torch.nn.CrossEntropyLoss()
    with model_bar(model, params["epochs"]) as bar:
        for epoch in range(1, params["epochs"] + 1):
            began = time.perf_counter()
            loss = _epoch(model, fit, targets, params, loss_fn)
            record = {"epoch": epoch, "loss": loss, "lr": fit.optimiser.param_groups[0]["lr"],
                      "train_s": time.perf_counter() - began}  # fmt: skip
            if epoch == 1 and fit.start:
                record["cache_s"] = cache_s
            if val is not None and (epoch % int(model.validation_every) == 0 or epoch == params["epochs"]):
                record.update(_validate(model, fit, val[1], loss_fn))
            record["epoch_s"] = time.perf_counter() - began
            model.history_.append(record)
            _show(model, record, bar, params["epochs"])


def _setup(model, X, val, params: dict) -> _Fit:
    """The frozen prefix's cached maps (or the inputs), the optimiser, schedule and augmentation of one fit."""
    import torch

    freeze = params["freeze"]
    start = freeze if (freeze and params["cache_frozen"]) else 0
    maps = _prefix(model, X, start)
    val_maps = None if val is None else _prefix(model, val[0], start)
    head = list(model.network_.head.parameters())
    backbone = [p for block in model.network_.blocks[freeze:] for p in block.parameters()]
    groups = [{"params": head, "lr": params["lr"]}]
    if backbone:
        groups.append({"params": backbone, "lr": params["lr"] * params["backbone_lr_scale"]})
    optimiser = torch.optim.AdamW(groups, weight_decay=params["weight_decay"])
    per_epoch = _batches(len(X), params["batch_size"])
    total = params["epochs"] * per_epoch
    warmup = int(round(params["warmup_epochs"] * per_epoch))
    from specfusion.models.finetune.estimator import warmup_cosine

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: warmup_cosine(t, warmup=warmup, total=total))
    device = maps.device
    from specfusion.models.crnn.variants import _amp_dtype

    scaler = torch.amp.GradScaler(
        device.type, enabled=params["mixed_precision"] and _amp_dtype(device) == torch.float16
    )
    return _Fit(start=start, maps=maps, val_maps=val_maps, optimiser=optimiser, scheduler=scheduler, scaler=scaler,
                augment=_scaled(model.augmentation(), X.shape, maps.shape), rng=np.random.default_rng([params["seed"], 1]),
                generator=torch.Generator(device="cpu").manual_seed(params["seed"]), crop=params["crop"])  # fmt: skip


def _batches(n: int, batch_size: int) -> int:
    """Updates per epoch (a last batch of one item is left out when there are others: batch norms need two)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def _prefix(model, X, start: int):
    """The frozen blocks' output maps of standardised ``X`` (evaluation mode, batch by batch); ``X`` when ``start`` is 0."""
    import torch

    if not start:
        return X
    model.network_.eval()
    chunks = []
    with torch.inference_mode(), model._autocast(X.device):
        for first in range(0, len(X), model.eval_batch_size):
            x = model._standardise(X[first : first + model.eval_batch_size])
            chunks.append(model.network_.run_blocks(x, 0, start).float())
    return torch.cat(chunks).clone()  # a normal tensor (inference tensors cannot enter autograd)


def _scaled(augment: Augmentation, input_shape, map_shape) -> Augmentation:
    """The augmentation with widths in input frames and bands scaled to maps of ``map_shape`` (unchanged for inputs)."""
    time_scale = map_shape[-1] / input_shape[-1]
    band_scale = map_shape[-2] / input_shape[-2]

    def scale(width: int, factor: float) -> int:
        return 0 if width <= 0 else max(1, int(round(width * factor)))

    return dataclasses.replace(augment, time_shift=scale(augment.time_shift, time_scale),
                               time_width=scale(augment.time_width, time_scale),
                               freq_width=scale(augment.freq_width, band_scale))  # fmt: skip


def _crop(x, fraction: float, rng: np.random.Generator):
    """A random window of ``fraction`` of the frames per item (one length for the batch)."""
    import torch

    frames = x.shape[-1]
    length = max(1, int(round(fraction * frames)))
    if length >= frames:
        return x
    starts = torch.as_tensor(rng.integers(0, frames - length + 1, size=len(x)), device=x.device)
    index = starts[:, None] + torch.arange(length, device=x.device)[None, :]
    return torch.gather(x, -1, index[:, None, None, :].expand(*x.shape[:-1], length))


def _epoch(model, fit: _Fit, targets, params: dict, loss_fn) -> float:
    """One pass in a seeded random order: the mean training loss."""
    import torch

    model._train_mode(params["freeze"])
    n, size = len(fit.maps), params["batch_size"]
    order = torch.randperm(n, generator=fit.generator).to(fit.maps.device)
    total, count = 0.0, 0
    for first in range(0, _batches(n, size) * size, size):
        index = order[first : first + size]
        x = fit.maps[index] if fit.start else model._standardise(fit.maps[index])
        x = _crop(x, fit.crop, fit.rng)
        with model._autocast(x.device):
            x, perm, lam = fit.augment(x, fit.rng) if fit.augment.active else (x, None, 1.0)
            logits = model.network_(x, fit.start)
            loss = (
                loss_fn(logits, targets[index])
                if perm is None
                else mixup_loss(loss_fn, logits, targets[index], perm, lam)
            )
        fit.optimiser.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimiser)
        fit.scaler.update()
        fit.scheduler.step()
        total += float(loss.detach()) * len(index)
        count += len(index)
    return total / max(1, count)


def _validate(model, fit: _Fit, y_val, loss_fn) -> dict:
    """Validation loss and metric of the current weights (on the cached maps when the prefix is cached)."""
    from specfusion.models.crnn.variants import validation_scores

    logits = model.logits(fit.val_maps, start=fit.start)
    model._train_mode(0)  # logits() left evaluation mode; the next epoch sets its own
    return validation_scores(logits, y_val, classes=model.classes_, metric=model.metric, loss_fn=loss_fn)


class model_bar:  # noqa: N801 -- used as a context manager like a function
    """A tqdm bar counting epochs when the model's ``progress`` is on, else None."""

    def __init__(self, model, epochs: int):
        self.model, self.epochs, self.bar = model, epochs, None

    def __enter__(self):
        if self.model.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.epochs, desc=f"fine-tune {self.model.network}", unit="epoch", leave=False)
        return self.bar

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _show(model, record: dict, bar, epochs: int) -> None:
    """An epoch's loss and validation score on the bar, or logged (INFO)."""
    import logging

    shown = {"loss": f"{record['loss']:.3f}"}
    if f"val_{model.metric}" in record:
        shown[f"val_{model.metric}"] = f"{100 * record[f'val_{model.metric}']:.1f}%"
    if bar is not None:
        bar.set_postfix(shown)
        bar.update(1)
    else:
        logging.getLogger("specfusion.models.finetune").info(
            "fine-tune epoch %d/%d %s (%.1f s)", record["epoch"], epochs, " ".join(f"{k} {v}" for k, v in shown.items()),
            record["epoch_s"],
        )  # fmt: skip
