"""The networks fine-tuning starts from, cut into blocks, with a new classification head.

:class:`FineTuneNet` holds a pretrained network's feature part as ``blocks`` (an ``nn.ModuleList``; the first
``freeze`` of them stay fixed) and a new head: global average pooling over frequency and time, dropout and
one linear layer. Inputs are (batch, channels, bands, frames), time last, as every input of specfusion's
fold protocol; a network that reads time first (YAMNet: (batch, 1, frames, 64)) has the two axes swapped
inside :meth:`FineTuneNet.run_blocks`, so that the feature maps it returns (and fine-tuning caches) are
time last too, and the augmentation of :mod:`specfusion.models.augment` applies to them unchanged.

=====================  ==========================================================  ======================
network                blocks                                                      pretrained on
=====================  ==========================================================  ======================
``yamnet``             14: the stem and the 13 depthwise-separable blocks          AudioSet (YAMNet)
                       (:class:`specfusion.features.nets.yamnet.YAMNet`.layers);
                       1024-d features
``efficientnet_lite0`` the stem, the 16 MBConv blocks and the 1x1 head              ImageNet
/1/2                   convolution (18; 20 for lite1, 23 for lite2); 1280-d
=====================  ==========================================================  ======================

EfficientNet-Lite reads three colour channels: for a one-channel input (a Mel-spectrogram) the stem's kernel
is summed over its input channels, which gives exactly what the network computes on the spectrogram repeated
as three identical channels, at a third of the stem's cost.
"""

from __future__ import annotations

from specfusion.errors import ConfigError

#: The networks :class:`~specfusion.models.finetune.FineTuneClassifier` fine-tunes.
NETWORKS = ("yamnet", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def check_network(name: str) -> None:
    """ConfigError naming the choices for an unknown network."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown network {name!r} to fine-tune; choose one of {', '.join(NETWORKS)}")


def build(name: str, n_classes: int, *, in_channels: int, dropout: float, pretrained: bool = True,
          depth: int | None = None):  # fmt: skip
    """The :class:`FineTuneNet` of network ``name`` for ``n_classes`` classes and ``in_channels`` input channels.

    ``pretrained=False`` builds the architecture only (random weights; for loading a fine-tuned model's
    state dict); the new head is initialised from torch's global random state. ``depth`` keeps only the
    first so many blocks (None: all); the head then reads the last kept block's channels.
    """
    check_network(name)
    if name == "yamnet":
        blocks, swap = _yamnet_blocks(pretrained, in_channels), True
    else:
        blocks, swap = _efficientnet_blocks(name, pretrained, in_channels), False
    blocks = blocks[:depth]
    from specfusion.features.nets.finetune import FineTuneNet

    return FineTuneNet(blocks, _channels_out(blocks, in_channels), n_classes, dropout=dropout, swap_axes=swap)


def _channels_out(blocks: list, in_channels: int) -> int:
    """Channels of the last block's output: its last convolution's (every block of these networks ends in one)."""
    from torch import nn

    convs = [m for block in blocks for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels) if convs else in_channels


def meta_network(name: str, n_classes: int, *, in_channels: int, depth: int | None = None):
    """The network's architecture on torch's ``meta`` device (shapes only; nothing is allocated or loaded)."""
    import torch

    with torch.device("meta"):
        return build(name, n_classes, in_channels=in_channels, dropout=0.0, pretrained=False, depth=depth)


def weights_identity(name: str) -> dict:
    """The pretrained weights a network starts from: the name and SHA-256 of the file they are read from."""
    check_network(name)
    if name == "yamnet":
        from specfusion.features.nets import yamnet

        return {"network": name, "sha256": _yamnet_sha256(yamnet)}
    from specfusion.features.extractors.image_cnns import image_cnn

    return {"network": name, "sha256": image_cnn(name).weights.sha256}


def _yamnet_sha256(module) -> str:
    """The pinned SHA-256 of YAMNet's weights file (:data:`specfusion.features.nets.yamnet.YAMNET_WEIGHTS`)."""
    return module.YAMNET_WEIGHTS.sha256


def _yamnet_blocks(pretrained: bool, in_channels: int) -> list:
    from specfusion.features.nets.yamnet import YAMNet, load_yamnet

    if in_channels != 1:
        raise ConfigError(f"YAMNet reads one channel (a log-Mel spectrogram), got {in_channels}")
    net = load_yamnet() if pretrained else YAMNet()
    return list(net.layers)


def _efficientnet_blocks(name: str, pretrained: bool, in_channels: int) -> list:
    from specfusion.features.nets.efficientnet_lite import efficientnet_lite

    if in_channels not in (1, 3):
        raise ConfigError(f"EfficientNet-Lite reads one channel (summed stem) or three, got {in_channels}")
    if pretrained:
        from specfusion.features.extractors.image_cnns import build_network

        net, _ = build_network(name, weights="pretrained")
    else:
        net = efficientnet_lite(name)
    from specfusion.features.nets.finetune import ConvBNReLU6

    stem = ConvBNReLU6(net._conv_stem, net._bn0, in_channels)
    head = ConvBNReLU6(net._conv_head, net._bn1, net._conv_head.in_channels)
    return [stem, *net._blocks, head]
