"""A weight-free saliency detector and MaskContrast's mask post-processing.

Detector: Boolean Map Saliency (BMS), J. Zhang and S. Sclaroff, "Saliency
Detection: A Boolean Map Approach", ICCV 2013. An image is thresholded at
many levels of each CIE Lab channel; in every boolean map (and its
complement) the regions that touch the image border are removed, so only
*surrounded* regions remain. Each such attention map is divided by its L2
norm (small surrounded regions weigh more), the maps are averaged, blurred
and scaled to [0, 1]. No learned weights are involved.

Post-processing (MaskContrast, see docs/methods/maskcontrast.md §1):
binarise at 0.5; delete foreground regions smaller than 1 % of the image and
fill enclosed holes smaller than 1 % (OpenCV's contour tree, filled, does
the same); an image whose remaining foreground is below
1 % of the image gets no mask (`None`).

All steps are vectorised over thresholds: the boolean maps of one channel
are labelled in a single `scipy.ndimage.label` call on a [levels, H, W]
volume whose structure connects pixels within a level only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

MIN_REGION_FRACTION = 0.01
_WORK_SIZE = 200  # long side (px) the detector works at
_THRESHOLD_STEP = 8  # grey levels between boolean-map thresholds
_STRUCTURE_2D_IN_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_2D_IN_3D[1] = ndimage.generate_binary_structure(2, 1)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB uint8 [H, W, 3] to CIE L*a*b* (D65), float [H, W, 3]."""
    linear = rgb.astype(np.float64) / 255.0
    linear = np.where(linear <= 0.04045, linear / 12.92, ((linear + 0.055) / 1.055) ** 2.4)
    to_xyz = np.array(
        [[0.4124564, 0.3575761, 0.1804375],
         [0.2126729, 0.7151522, 0.0721750],
         [0.0193339, 0.1191920, 0.9503041]]
    )  # fmt: skip
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([lightness, a, b], axis=-1)


def _surrounded_regions(maps: np.ndarray) -> np.ndarray:
    """Keep the regions of each boolean map [L, H, W] that do not touch the border."""
    labels, _ = ndimage.label(maps, structure=_STRUCTURE_2D_IN_3D)
    border = np.concatenate(
        [labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]], axis=1
    )
    touching = np.unique(border)
    return (labels > 0) & ~np.isin(labels, touching)


def _channel_attention(channel: np.ndarray) -> tuple[np.ndarray, int]:
    """Sum of the L2-normalised attention maps of one channel, and how many maps."""
    low, high = channel.min(), channel.max()
    scaled = (channel - low) * (255.0 / max(high - low, 1e-6))
    thresholds = np.arange(_THRESHOLD_STEP // 2, 256, _THRESHOLD_STEP, dtype=np.float64)
    above = scaled[None] > thresholds[:, None, None]
    maps = np.concatenate([above, ~above], axis=0)
    attention = _surrounded_regions(maps).astype(np.float64)
    norms = np.sqrt(attention.sum(axis=(1, 2), keepdims=True))
    return (attention / np.maximum(norms, 1.0)).sum(axis=0), len(maps)


def boolean_map_saliency(rgb: np.ndarray) -> np.ndarray:
    """Compute a BMS saliency map.

    Args:
        rgb: uint8 image [H, W, 3].

    Returns:
        float32 map [H, W] in [0, 1] (all zeros when nothing is surrounded).
    """
    height, width = rgb.shape[:2]
    scale = _WORK_SIZE / max(height, width)
    small_size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small = np.asarray(Image.fromarray(rgb).resize(small_size, Image.Resampling.BILINEAR))
    lab = rgb_to_lab(small)
    total = np.zeros(lab.shape[:2])
    count = 0
    for channel in range(3):  # three channels, each vectorised over all thresholds
        attention, num_maps = _channel_attention(lab[..., channel])
        total += attention
        count += num_maps
    mean = ndimage.gaussian_filter(total / count, sigma=0.02 * _WORK_SIZE)
    if mean.max() > 0:
        mean = mean / mean.max()
    full = Image.fromarray(mean.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(full, dtype=np.float32), 0.0, 1.0)


def postprocess_saliency(
    saliency: np.ndarray,
    *,
    threshold: float = 0.5,
    min_region_fraction: float = MIN_REGION_FRACTION,
) -> np.ndarray | None:
    """Binarise a saliency map and clean it as MaskContrast does.

    Args:
        saliency: float map [H, W] in [0, 1], or an already binary mask.
        threshold: Pixels at or above it are foreground.
        min_region_fraction: Foreground regions smaller than this share of
            the image are deleted and holes smaller than it are filled; if the
            remaining foreground is smaller, the image gets no mask.

    Returns:
        bool mask [H, W], or None when the image has no usable object.
    """
    mask = np.asarray(saliency) >= threshold
    min_pixels = min_region_fraction * mask.size
    mask = mask & ~_small_components(mask, min_pixels, include_border=True)
    mask = mask | _small_components(~mask, min_pixels, include_border=False)
    if mask.sum() < min_pixels:
        return None
    return mask


def _small_components(binary: np.ndarray, min_pixels: float, *, include_border: bool) -> np.ndarray:
    """Pixels of the 4-connected components of `binary` smaller than `min_pixels`.

    With include_border=False, components touching the image border never
    count (a hole is a background region enclosed by foreground).
    """
    labels, count = ndimage.label(binary)
    if count == 0:
        return np.zeros_like(binary)
    small = np.bincount(labels.ravel(), minlength=count + 1) < min_pixels
    small[0] = False
    if not include_border:
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        small[np.unique(border)] = False
    return small[labels]


def compute_saliency_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Detect the salient object of an image: BMS, then MaskContrast post-processing.

    Returns:
        bool mask [H, W], or None when the image has no salient object.
    """
    return postprocess_saliency(boolean_map_saliency(rgb))
