"""Random initialisation schemes of the image networks (the paper's "None" rows).

Two schemes, both drawn from torch's global RNG (callers fork it, see
:func:`specfusion.features.extractors.image_cnns.build_network`):

* ``"keras"`` -- what Keras (TensorFlow 1.15, which DEEP SPECTRUM requires) gives a model built with
  ``weights=None``: every convolution and dense kernel Glorot-uniform, ``U(-a, a)`` with
  ``a = sqrt(6 / (fan_in + fan_out))``, where a convolution's fans are ``kh * kw * in_channels`` and
  ``kh * kw * out_channels`` (Keras' ``_compute_fans``; torch's :func:`torch.nn.init.xavier_uniform_`
  computes the same fans for a ``(out, in, kh, kw)`` weight); biases zero; batch norm gamma 1, beta 0,
  moving mean 0, moving variance 1. This holds for VGG16/19 and DenseNet121 (``keras_applications``)
  and for TF 1.15's ``tf.keras.applications.resnet50.ResNet50``, which is ``keras_applications``'
  ``resnet_common.ResNet50`` (no ``kernel_initializer``, so Glorot-uniform); the older standalone
  ``keras_applications/resnet50.py`` used ``he_normal`` convolutions, available here as
  ``"keras-he"`` for ResNet50's convolutions (a truncated normal with standard deviation
  ``sqrt(2 / fan_in)``, as TF 1.15's ``he_normal``), dense layers still Glorot-uniform.
* ``"torchvision"`` -- the network's own :meth:`~specfusion.features.nets.ImageNetwork.reset_parameters`
  (torchvision's scheme: Kaiming-normal convolutions, N(0, 0.01) or torch-default linear layers).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from specfusion.errors import ConfigError

#: Valid values of ``init``.
INIT_SCHEMES = ("keras", "keras-he", "torchvision")

#: Standard deviation of a standard normal truncated to [-2, 2] (TensorFlow's correction constant).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def reset_batchnorm_(module: nn.modules.batchnorm._BatchNorm) -> None:
    """Keras' batch-norm defaults: gamma 1, beta 0, moving mean 0, moving variance 1."""
    nn.init.ones_(module.weight)
    nn.init.zeros_(module.bias)
    module.running_mean.zero_()
    module.running_var.fill_(1.0)
    if module.num_batches_tracked is not None:
        module.num_batches_tracked.zero_()


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """TF 1.15's ``he_normal``: truncated normal at 2 sd, rescaled to standard deviation ``sqrt(2 / fan_in)``."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def keras_init_(net: nn.Module, *, conv: str = "glorot_uniform") -> nn.Module:
    """Initialise ``net`` in place as Keras does for ``weights=None`` (see the module docstring).

    Parameters
    ----------
    net : torch.nn.Module
        Any network of convolutions, linear layers and batch norms (other parameters are refused).
    conv : {"glorot_uniform", "he_normal"}
        Initialiser of the convolution kernels; dense kernels are always Glorot-uniform.

    Returns
    -------
    torch.nn.Module
        ``net``.
    """
    if conv not in ("glorot_uniform", "he_normal"):
        raise ConfigError(f"conv initialiser must be 'glorot_uniform' or 'he_normal', got {conv!r}")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if conv == "he_normal" and isinstance(m, nn.Conv2d):
                he_normal_(m.weight)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            reset_batchnorm_(m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise ConfigError(f"keras initialisation does not know the layer type {type(m).__name__}")
    return net


def initialise(net: nn.Module, scheme: str) -> nn.Module:
    """Initialise ``net`` in place with ``scheme`` (one of :data:`INIT_SCHEMES`); returns ``net``."""
    if scheme == "keras":
        return keras_init_(net)
    if scheme == "keras-he":
        return keras_init_(net, conv="he_normal")
    if scheme == "torchvision":
        net.reset_parameters()
        return net
    raise ConfigError(f"unknown initialisation {scheme!r}; choose one of {', '.join(INIT_SCHEMES)}")
