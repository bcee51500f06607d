"""Spectrogram images: what the image CNNs see (and what a person can look at).

A dB Mel-spectrogram is turned into an RGB image the way a plot of it looks:

1. oriented like ``imshow(..., origin="lower")``: low frequencies at the bottom, time left to right;
2. resized to the network's input size in data space with a separable (anti-aliased) bilinear filter --
   two small matrix products, no figure is drawn;
3. scaled linearly from ``[vmin, vmax]`` (default: the spectrogram's own minimum and maximum, as
   matplotlib's autoscaling does) to ``[0, 1]`` and coloured through the matplotlib colour map's own
   lookup table, exactly as :class:`matplotlib.colors.Colormap` indexes it (``floor(x * N)``, with
   values outside the range taking the end colours).

:func:`to_network_input` then scales the ``uint8`` image to ``[0, 1]`` and normalises each channel
with the network's mean and standard deviation (ImageNet statistics for torchvision's networks), in
RGB or BGR channel order (the presets are in :func:`specfusion.features.nets.preprocessing`).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from specfusion.errors import ConfigError

#: torchvision's ImageNet channel statistics, for RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Colour maps named in the documentation and error messages.
COMMON_COLORMAPS = ("viridis", "magma", "cividis", "hot", "gray", "plasma", "inferno", "jet")


@functools.lru_cache(maxsize=64)
def colormap_lut(name: str) -> np.ndarray:
    """Lookup table of matplotlib's colour map ``name`` as ``uint8`` RGB, shape (N, 3).

    Built with ``matplotlib.colormaps[name](np.arange(N), bytes=True)``, i.e. the very table matplotlib
    uses; any registered name works, including reversed ``*_r`` variants.

    Raises
    ------
    ConfigError
        ``name`` is not a registered colour map; the message lists some valid names.
    """
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except (KeyError, ValueError, TypeError):
        n = len(matplotlib.colormaps)
        raise ConfigError(
            f"unknown colour map {name!r}; use a matplotlib colour map such as {', '.join(COMMON_COLORMAPS)} "
            f"or any of their '_r' (reversed) variants ({n} names in matplotlib.colormaps)"
        ) from None
    lut = cmap(np.arange(cmap.N), bytes=True)[:, :3]
    lut = np.ascontiguousarray(lut, dtype=np.uint8)
    lut.setflags(write=False)
    return lut


@functools.lru_cache(maxsize=128)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear-interpolation matrix of shape (n_out, n_in) mapping pixel centres onto pixel centres.

    Upsampling gives plain bilinear interpolation (``align_corners=False`` convention, edges clamped);
    downsampling widens the triangle filter by the scale factor so that every input sample contributes
    (anti-aliasing, as PIL's bilinear filter does). Rows sum to 1.
    """
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # output pixel centres in input coordinates
    if scale > 1.0:  # downsampling: triangle filter widened by the scale factor
        distance = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / scale
        weights = np.maximum(0.0, 1.0 - distance)
    else:  # upsampling: the two nearest samples, clamped at the edges
        weights = np.zeros((n_out, n_in))
        pos = np.clip(centres, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        rows = np.arange(n_out)
        np.add.at(weights, (rows, lo), 1.0 - (pos - lo))
        np.add.at(weights, (rows, hi), pos - lo)
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = weights.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float array to ``size = (height, width)`` with :func:`resize_matrix` on both axes."""
    height, width = size
    rows = resize_matrix(array.shape[0], height)
    cols = resize_matrix(array.shape[1], width)
    return rows @ np.asarray(array, dtype=np.float32) @ cols.T


def render_rgb(
    mel_db: np.ndarray,
    *,
    colormap: str = "viridis",
    size: tuple[int, int] = (224, 224),
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Render a (dB) Mel-spectrogram as a colour-mapped RGB image, oriented like a plot.

    Parameters
    ----------
    mel_db : ndarray, shape (n_mels, n_frames)
        Spectrogram, row 0 = lowest Mel band. Must be finite.
    colormap : str
        Any matplotlib colour map name (``"viridis"``, ``"magma"``, ``"cividis"``, ``"hot"``,
        ``"gray"``, ``"viridis_r"`` ...).
    size : (int, int)
        Output ``(height, width)`` in pixels.
    vmin, vmax : float, optional
        Values mapped to the first and last colour; default the spectrogram's minimum and maximum.

    Returns
    -------
    ndarray, shape (height, width, 3), uint8
        Row 0 is the top of the image (highest frequencies), column 0 the start of the clip.

    Raises
    ------
    ConfigError
        Unknown colour map, a spectrogram that is not 2-D or not finite, or a non-positive size.

    Examples
    --------
    >>> import numpy as np
    >>> img = render_rgb(np.random.default_rng(0).uniform(-80, 0, (128, 32)), colormap="magma")
    >>> img.shape, img.dtype
    ((224, 224, 3), dtype('uint8'))
    """
    lut = colormap_lut(colormap)
    mel_db = np.asarray(mel_db, dtype=np.float32)
    if mel_db.ndim != 2 or min(mel_db.shape) < 1:
        raise ConfigError(f"expected a 2-D spectrogram (n_mels, n_frames), got shape {mel_db.shape}")
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    lo = float(mel_db.min()) if vmin is None else float(vmin)
    hi = float(mel_db.max()) if vmax is None else float(vmax)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ConfigError("the spectrogram contains non-finite values (NaN or inf)")
    # Flip so that row 0 is the highest band (origin="lower"), then resize in data space.
    image = resize(mel_db[::-1], (height, width))
    n = lut.shape[0]
    span = hi - lo
    if span > 0:
        index = (image - lo) * (n / span)
    else:  # constant image: matplotlib's Normalize maps everything to 0
        index = np.zeros_like(image)
    index = np.clip(index, 0, n - 1).astype(np.intp)  # floor for positive values, like matplotlib
    return lut[index]


def to_network_input(
    rgb: np.ndarray,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    channel_order: str = "RGB",
) -> np.ndarray:
    """Scale an RGB ``uint8`` image to [0, 1], normalise per channel and move channels first.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
        Image from :func:`render_rgb`.
    mean, std : tuple of float
        Per-channel statistics for values in [0, 1], in ``channel_order``.
    channel_order : {"RGB", "BGR"}
        Channel order of the output; "BGR" reverses the channels first (Keras' caffe mode and DEEP
        SPECTRUM's VGG preprocessing).

    Returns
    -------
    ndarray, shape (3, H, W), float32
        ``(rgb / 255 - mean) / std``, channels in ``channel_order``. DEEP SPECTRUM's VGG input (raw
        BGR pixel values) is ``mean=(0, 0, 0), std=(1/255,) * 3, channel_order="BGR"``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    if channel_order not in ("RGB", "BGR"):
        raise ConfigError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if channel_order == "BGR":
        rgb = rgb[:, :, ::-1]
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (255.0 * std_arr))[:, None, None]
    offset = (mean_arr / std_arr)[:, None, None]
    return (rgb.transpose(2, 0, 1).astype(np.float32) * scale - offset).astype(np.float32, copy=False)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write an RGB ``uint8`` image losslessly as PNG (through Pillow, matplotlib's image backend)."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConfigError(f"expected a uint8 RGB image of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    Image.fromarray(rgb).save(os.fspath(path), format="PNG")
