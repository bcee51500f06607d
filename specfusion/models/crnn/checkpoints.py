"""CRNN checkpoints on disk (``fold<k>.pt``): written whole, checked on load before a network is built.

A checkpoint (:meth:`~specfusion.models.crnn.CRNNClassifier.checkpoint`) is a dict of plain values and
tensors. :func:`write_checkpoint` saves it like every other output of specfusion: to a temporary sibling that
replaces the file only once complete (:func:`specfusion.files.written_whole`), so a failed write (a full disk)
leaves the previous checkpoint as it was and no temporary file, and says so in one line (:class:`StoreError`).

:func:`read_checkpoint` reads it with ``torch.load(weights_only=True)`` (tensors and plain values; no code is
unpickled) and checks the recorded fields; :meth:`~specfusion.models.crnn.CRNNClassifier.load` then checks
the recorded parameters as ``fit`` does, the input statistics (:func:`check_statistics`) and the weights
(:func:`check_network`: the names and shapes of the network the parameters describe, built on torch's
``meta`` device, which allocates nothing, and finite values) before it builds the network. The order is the
model-file loader's (:mod:`specfusion.pipeline.model_checks`): nothing recorded in the file sizes an
allocation before it is checked against the weights the file holds.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from specfusion.errors import ConfigError, StoreError
from specfusion.files import is_no_space, write_error_text, written_whole
from specfusion.models.crnn.variants import build_network

CHECKPOINT_FORMAT = "specfusion-crnn"
CHECKPOINT_VERSION = 1
#: Most Mel bands a checkpoint may record: one frame of the model-file loader's largest spectrogram
#: (``MAX_SPECTROGRAM_VALUES`` in :mod:`specfusion.pipeline.model_checks`).
MAX_N_MELS = 1 << 24
#: The network parameters among the recorded ones (those :func:`~specfusion.models.crnn.build_network` takes).
ARCHITECTURE = ("kernels", "filters", "pools", "gru_units", "gru_layers", "dropout", "readout", "bn_momentum")


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
def write_checkpoint(data: dict, path) -> Path:
    """Write a checkpoint (:meth:`CRNNClassifier.checkpoint`) to ``path`` whole (:func:`~specfusion.files.written_whole`).

    Raises
    ------
    StoreError
        The file could not be written (a full disk ...); the previous file at ``path`` is unchanged and no
        temporary file is left.
    """
    import torch

    path = Path(path)
    try:
        # through a file object: torch then reports the system's error (ENOSPC) instead of its own
        with written_whole(path) as tmp, open(tmp, "wb") as handle:
            torch.save(data, handle)
    except (OSError, RuntimeError) as err:
        raise write_error(path, "the CRNN checkpoint", err) from None
    return path


def write_error(path: Path, what: str, err: BaseException) -> StoreError:
    """The one-line :class:`StoreError` of a failed whole-file write of ``what`` to ``path``.

    A full disk says so; torch's zip writer reports a write that stopped part-way as a ``RuntimeError``
    (``inline_container.cc ... unexpected pos``), which is named as what it most often is.
    """
    if isinstance(err, RuntimeError) and not is_no_space(err):
        text = " ".join(str(err).split())
        reason = f"the write stopped part-way, most often because the disk is full: {text[:160]}"
    else:
        reason = write_error_text(err)
    return StoreError(f"{path}: {what} could not be written ({reason}); the previous file is unchanged: free some "
                      "space and run again")  # fmt: skip


def statistic_to_plain(value):
    """An input statistic as a checkpoint stores it: a float, or a list of floats (per band)."""
    return float(value) if np.ndim(value) == 0 else [float(v) for v in value]


def statistic_from_plain(value):
    """An input statistic read back from a checkpoint: a float, or a float64 array (per band)."""
    return float(value) if isinstance(value, (int, float)) else np.asarray(value, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------
def read_checkpoint(path: Path, *, fmt: str = CHECKPOINT_FORMAT, version: int = CHECKPOINT_VERSION,
                    what: str = "CRNN") -> dict:  # fmt: skip
    """The dict a checkpoint file holds, its fields of the kinds :meth:`CRNNClassifier.checkpoint` writes.

    ``metric``, ``history`` and ``extra`` get their defaults where absent. ``fmt``, ``version`` and ``what``
    name another estimator's checkpoints with the same fields (fine-tuning's, ``specfusion-finetune``).

    Raises
    ------
    StoreError
        The file is missing, unreadable, not a CRNN checkpoint, of a later version, or a field is missing or
        of another kind.
    """
    import torch

    if not path.is_file():
        raise StoreError(f"{path}: {what} checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        from specfusion.features.weights import describe_load_error

        raise StoreError(
            f"{path}: not a readable {what} checkpoint ({describe_load_error(err)}); delete it to retrain"
        ) from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise StoreError(f"{path}: not a specfusion {what} checkpoint")
    found = data.get("version")
    if not _integer(found) or not 1 <= found <= version:
        raise StoreError(f"{path}: {what} checkpoint version {found!r}; this specfusion reads versions 1 to "
                         f"{version}")  # fmt: skip
    data = {"metric": "accuracy", "history": [], "extra": {}, **data}
    _check_fields(data, path)
    return data


def _check_fields(data: dict, path: Path) -> None:
    """Each recorded field is of its kind; the classes distinct; ``n_mels`` a positive integer at most :data:`MAX_N_MELS`."""
    kinds = {"params": dict, "state_dict": dict, "classes": list, "history": list, "extra": dict, "metric": str}
    for key, kind in kinds.items():
        if not isinstance(data.get(key), kind):
            raise StoreError(
                f"{path}: the checkpoint's {key!r} must be a {kind.__name__}, got {str(data.get(key))[:60]}"
            )
    classes = data["classes"]
    named = all(isinstance(c, str) for c in classes) or all(_integer(c) for c in classes)
    if not classes or not named or len(set(classes)) != len(classes):
        raise StoreError(f"{path}: the checkpoint's classes must be distinct names (or integer labels), "
                         f"got {str(classes)[:80]}")  # fmt: skip
    n_mels = data.get("n_mels")
    if not _integer(n_mels) or not 1 <= n_mels <= MAX_N_MELS:
        raise StoreError(f"{path}: the checkpoint's n_mels must be an integer from 1 to {MAX_N_MELS} (MAX_N_MELS), "
                         f"got {n_mels!r}")  # fmt: skip
    if not all(isinstance(record, dict) for record in data["history"]):
        raise StoreError(f"{path}: the checkpoint's history must be a list of per-epoch tables")


def check_statistics(data: dict, standardize, path: Path) -> None:
    """The input standardisation: two finite numbers or, with ``standardize="band"``, two lists of one per Mel band.

    Raises
    ------
    StoreError
        A statistic of another kind or length, not finite, or a deviation that is not positive.
    """
    per_band = standardize == "band"
    for name in ("input_mean", "input_std"):
        value = data.get(name)
        values = value if isinstance(value, list) else [value]
        valid = isinstance(value, list) == per_band and (not per_band or len(values) == data["n_mels"])
        valid = valid and all(_finite(v) for v in values) and (name == "input_mean" or min(values) > 0)
        if not valid:
            what = f"one per Mel band ({data['n_mels']})" if per_band else "one number"
            raise StoreError(f"{path}: the checkpoint's {name} must be finite numbers, {what}"
                             f"{', positive' if name == 'input_std' else ''}; got {str(value)[:60]}")  # fmt: skip


def check_network(state: dict, n_classes: int, n_mels: int, params: dict, path: Path) -> None:
    """The stored weights are the network's that ``params`` describe (names, shapes, kinds), and finite.

    The block count and the GRU layers are first bounded by the number of stored tensors, as the model-file
    loader does; the expected shapes then come from :func:`network_shapes` (nothing is allocated).

    Raises
    ------
    StoreError
        A tensor missing, extra, of another shape or kind, or holding NaN or infinite values.
    """
    import torch

    if max(len(params["filters"]), params["gru_layers"]) > len(state):
        raise StoreError(f"{path}: the recorded network ({len(params['filters'])} blocks, {params['gru_layers']} GRU "
                         f"layers) is larger than its {len(state)} stored tensors")  # fmt: skip
    expected = network_shapes(n_classes, n_mels, params, path)
    if set(state) != set(expected):
        odd = sorted(set(state) ^ set(expected), key=str)[0]
        raise StoreError(f"{path}: the weights do not match the recorded network parameters (tensor {odd!r})")
    for name, (shape, floating) in expected.items():
        tensor = state[name]
        fits = isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided and tuple(tensor.shape) == shape
        if not fits or tensor.dtype.is_floating_point != floating:
            found = (
                f"{tuple(tensor.shape)} {tensor.dtype}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            )
            raise StoreError(f"{path}: weight {name!r} is {found}; the recorded network parameters imply shape "
                             f"{shape} of {'floats' if floating else 'integers'}")  # fmt: skip
    diverged = first_non_finite(state)
    if diverged is not None:
        raise StoreError(f"{path}: weight {diverged!r} holds NaN or infinite values (a damaged checkpoint)")


def first_non_finite(state: dict) -> str | None:
    """The name of the first floating-point tensor of a state dict that holds NaN or infinity; None when all are finite."""
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def network_shapes(n_classes: int, n_mels: int, params: dict, path: Path) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, whether floating) of the state dict of the network ``params`` describe (:func:`meta_shapes`).

    Raises
    ------
    StoreError
        The recorded parameters do not build a network.
    """
    try:
        return meta_shapes(n_classes, n_mels, params)
    except (ConfigError, ValueError, TypeError, RuntimeError) as err:
        raise StoreError(f"{path}: the recorded parameters do not build a network ({err})") from None


def meta_shapes(n_classes: int, n_mels: int, params: dict) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, whether floating) of the state dict of the CRNN that ``params``' :data:`ARCHITECTURE` describes.

    Built on torch's ``meta`` device: no parameter is allocated, whatever sizes ``params`` record. The
    checkpoint loader and the model-file loader both validate recorded weights against it.
    """
    import torch

    architecture = {key: params[key] for key in ARCHITECTURE}
    with torch.device("meta"):
        network = build_network(n_classes, n_mels=n_mels, keras_init=False, **architecture)
    return {name: (tuple(t.shape), t.dtype.is_floating_point) for name, t in network.state_dict().items()}


def _integer(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
