"""Colour jitter, grayscale and Gaussian blur of uint8 [3, H, W] images, as cheap as they go.

Brightness, contrast, saturation, a YIQ hue rotation and grayscale are each affine in
RGB, so a view's whole colour augmentation is one 3x3 matrix and an offset, composed
in float64 in the drawn order and applied once (`color_affine`, `apply_affine`). The
random draws (probability, factors, order) are torchvision's `ColorJitter`'s; what
differs from applying the ops one by one on uint8 is that nothing is clamped or
rounded between them: the result is clamped to [0, 255] and rounded once. On images
that never leave [0, 255] part-way the two agree to within torchvision's per-op
truncation (under one level per op); where an op saturates a pixel that a later op
brings back (brightness 1.4 then contrast 0.6, say), torchvision's pixel stays at
the clipped value and this one does not. `tests/data/test_photometric.py` holds the
comparison; docs/methods/cacl.md gives the measured difference.

The Gaussian blur is separable (a row pass and a column pass of shifted slices,
reflect padding) and its kernel ends at ceil(3 sigma) px, or at the view's kernel
size (`blur_kernel_size`, about 10 % of the side) when that is smaller: past 3 sigma
the weights hold 0.27 % of the mass, under one grey level on any image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# torchvision's grayscale (ITU-R 601-2 luma) weights, used by contrast, saturation and grayscale
LUMA = np.array([0.2989, 0.587, 0.114])
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def hue_matrix(turns: float) -> np.ndarray:
    """The RGB 3x3 map that rotates the YIQ chroma plane by `turns` (luma unchanged)."""
    angle = 2.0 * math.pi * turns
    rotation = np.array(
        [[1.0, 0.0, 0.0],
         [0.0, math.cos(angle), -math.sin(angle)],
         [0.0, math.sin(angle), math.cos(angle)]]
    )  # fmt: skip
    return YIQ_TO_RGB @ rotation @ RGB_TO_YIQ


@dataclass(frozen=True)
class JitterDraw:
    """One draw of `ColorJitter`: a factor per op (None: op off) and the order of the ops."""

    factors: tuple[float | None, float | None, float | None, float | None]
    order: tuple[int, ...]


def _factor(strength: float, rng: np.random.Generator) -> float | None:
    if strength <= 0:
        return None
    return float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))


@dataclass(frozen=True)
class ColorJitter:
    """Colour jitter applied with probability `p`, the four ops in random order.

    Factors are uniform in [max(0, 1 - x), 1 + x] for brightness, contrast and
    saturation; the hue rotation (`hue_matrix`) is uniform in [-hue, hue] turns, or in
    [-0.5, 0.5] (any rotation) with `hue_full_range`. Applied as one affine map (see
    the module docstring).
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p: float = 0.8
    hue_full_range: bool = False

    def draw(self, rng: np.random.Generator) -> JitterDraw | None:
        """Draw whether to jitter, the factors and the order (None: no jitter)."""
        if rng.random() >= self.p:
            return None
        hue = 0.5 if self.hue_full_range else self.hue
        factors = (
            _factor(self.brightness, rng),
            _factor(self.contrast, rng),
            _factor(self.saturation, rng),
            float(rng.uniform(-hue, hue)) if hue > 0 else None,
        )
        return JitterDraw(factors, tuple(int(i) for i in rng.permutation(4)))

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Jitter a uint8 [3, H, W] image."""
        draw = self.draw(rng)
        if draw is None:
            return image
        pixels = image.reshape(3, -1).float()
        matrix, offset = color_affine(draw, False, pixels.mean(dim=1).double().numpy())
        return to_uint8(apply_affine(pixels, matrix, offset)).view(image.shape)


def color_affine(
    draw: JitterDraw | None, grayscale: bool, mean_rgb: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The jitter `draw`, then grayscale if asked, as one map: rgb -> matrix @ rgb + offset.

    Args:
        draw: The jitter's draw, or None for no jitter.
        grayscale: Replace the result by its luma on all three channels.
        mean_rgb: The image's mean colour [3]: contrast blends towards the mean luma of
            the image it receives, which is this mean carried through the ops before it
            (needed only when the draw has a contrast factor).

    Returns:
        float64 matrix [3, 3] and offset [3].
    """
    matrix, offset = np.eye(3), np.zeros(3)
    for index in draw.order if draw is not None else ():
        value = draw.factors[index]
        if value is None:
            continue
        step_offset = np.zeros(3)
        if index == BRIGHTNESS:
            step = value * np.eye(3)
        elif index == CONTRAST:
            mean_luma = LUMA @ (matrix @ mean_rgb + offset)
            step, step_offset = value * np.eye(3), np.full(3, (1.0 - value) * mean_luma)
        elif index == SATURATION:
            step = value * np.eye(3) + (1.0 - value) * np.outer(np.ones(3), LUMA)
        else:
            step = hue_matrix(value)
        matrix, offset = step @ matrix, step @ offset + step_offset
    if grayscale:
        gray = np.outer(np.ones(3), LUMA)
        matrix, offset = gray @ matrix, gray @ offset
    return matrix, offset


def apply_affine(pixels: torch.Tensor, matrix: np.ndarray, offset: np.ndarray) -> torch.Tensor:
    """Float [3, N] pixels -> matrix @ pixels + offset, clamped to [0, 255] (float)."""
    weights = torch.from_numpy(matrix).float()
    bias = torch.from_numpy(offset).float()[:, None]
    return torch.addmm(bias, weights, pixels).clamp_(0.0, 255.0)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Round float pixels already in [0, 255] to uint8 (half up; in place)."""
    return pixels.add_(0.5).to(torch.uint8)


def rotate_hue(image: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate the hue of a uint8 [3, H, W] image by `turns` (0.5 = opposite colours).

    The rotation acts on the chroma plane of YIQ, so luma is unchanged; it is one 3x3
    linear map per image (torchvision's HSV hue shift gives similar colours but costs
    about ten times more on CPU).
    """
    pixels = image.reshape(3, -1).float()
    return to_uint8(apply_affine(pixels, hue_matrix(turns), np.zeros(3))).view(image.shape)


def blur_kernel_size(side: int) -> int:
    """The odd Gaussian kernel size for a view side: about 10 % of it (224 -> 23, 64 -> 7)."""
    size = int(0.1 * side)
    return size if size % 2 else size + 1


def blur_radius(sigma: float, side: int) -> int:
    """Kernel half-width for `sigma` on a view of `side`: ceil(3 sigma), at most the view's."""
    return min(math.ceil(3.0 * sigma), blur_kernel_size(side) // 2)


def blur_float(image: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Gaussian blur of a float [C, H, W] image: kernel 2 * radius + 1, reflect padding.

    A row pass over the padded image, then a column pass: sums of shifted slices,
    accumulated in place (no convolution call: torch's CPU depthwise convolutions
    cost several times more at these sizes).
    """
    if radius <= 0:
        return image
    offsets = np.arange(radius + 1)
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    weights = (weights / (2.0 * weights.sum() - weights[0])).tolist()
    height, width = image.shape[-2:]
    padded = torch.nn.functional.pad(image[None], (radius,) * 4, mode="reflect")[0]
    rows = padded[:, :, radius : radius + width] * weights[0]
    for shift in range(1, radius + 1):
        rows.add_(padded[:, :, radius - shift : radius - shift + width], alpha=weights[shift])
        rows.add_(padded[:, :, radius + shift : radius + shift + width], alpha=weights[shift])
    out = rows[:, radius : radius + height] * weights[0]
    for shift in range(1, radius + 1):
        out.add_(rows[:, radius - shift : radius - shift + height], alpha=weights[shift])
        out.add_(rows[:, radius + shift : radius + shift + height], alpha=weights[shift])
    return out


def gaussian_blur(image: torch.Tensor, sigma: float, kernel_size: int) -> torch.Tensor:
    """Blur a uint8 [3, H, W] image with a Gaussian of `sigma` px, `kernel_size` (odd) wide.

    Separable (one row pass, one column pass, reflect padding), so it costs 2k rather
    than k² multiply-adds per pixel; the result is rounded back to uint8.
    """
    if kernel_size // 2 == 0:
        return image
    return to_uint8(blur_float(image.float(), sigma, kernel_size // 2))


@dataclass(frozen=True)
class RandomGaussianBlur:
    """Gaussian blur with probability `p`, sigma uniform in `sigma` (pixels), as MoCo-v2.

    The kernel ends at `blur_radius` (ceil(3 sigma), at most `blur_kernel_size` of the
    view's shorter side). With p = 0 no random number is drawn, so the rest of the
    view's stream is unchanged.
    """

    p: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)

    def draw(self, rng: np.random.Generator) -> float | None:
        """Draw whether to blur and the sigma (None: no blur)."""
        if self.p <= 0 or rng.random() >= self.p:
            return None
        return float(rng.uniform(*self.sigma))

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Blur a uint8 [3, H, W] image, or return it as is."""
        sigma = self.draw(rng)
        if sigma is None:
            return image
        radius = blur_radius(sigma, min(image.shape[-2:]))
        return to_uint8(blur_float(image.float(), sigma, radius)) if radius else image
