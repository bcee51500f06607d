"""Common interface of the image networks in :mod:`specfusion.features.nets`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn


class ImageNetwork(nn.Module):
    """An ImageNet CNN that also yields the feature vector DEEP SPECTRUM uses.

    Subclasses keep torchvision's (or the checkpoint's) parameter names so that published
    checkpoints load strictly, implement :meth:`embed` and :meth:`reset_parameters`, and may
    translate legacy checkpoint layouts in :meth:`remap_state_dict`.

    Attributes
    ----------
    feature_dim : int
        Length of the vector returned by :meth:`embed`.
    """

    feature_dim: ClassVar[int] = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vectors of a batch of normalised images (n, 3, H, W) -> (n, feature_dim)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialise every parameter and buffer the way the reference implementation does.

        Uses torch's global RNG; must set every tensor (also batch-norm running statistics), because
        networks may be created on the ``meta`` device and materialised with ``to_empty`` first.
        """
        raise NotImplementedError

    @classmethod
    def remap_state_dict(cls, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Translate an older key layout of the published checkpoint; identity by default."""
        return dict(state_dict)
