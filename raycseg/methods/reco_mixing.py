"""ReCo's augmentation of the unlabelled batch, on the device (docs/methods/reco.md §3, step 3).

Image, pseudo-label and confidence move together. Symbols: B images of H × W;
images are float [B, 3, H, W] in [0, 1] (before ImageNet normalisation),
labels long [B, H, W] with `IGNORE_INDEX` (255) for pixels without a label,
confidence float [B, H, W] in [0, 1]. Every step draws one set of random
numbers for the whole batch; there is no loop over images or pixels.

Order, as in the spec: random rescale + pad + crop (`random_rescale_crop`),
mixing of image b with image (b + 1) mod B (`mix_batch`: ClassMix, CutMix or
CutOut), then colour jitter, Gaussian blur and a horizontal flip
(`photometric_and_flip`). Pixels that leave the image or are cut out get label
255 and confidence 0.

Deliberate differences from the official PIL round trip: confidence is not
quantised to 8 bits, the hue shift is a rotation of the YIQ chroma plane
(one batched matmul) rather than an HSV round trip, and padding labels never
count as a ClassMix class.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.photometric import RGB_TO_YIQ, YIQ_TO_RGB

IGNORE_INDEX = 255
MIX_MODES = ("classmix", "cutmix", "cutout")
JITTER_P = 0.8
BLUR_P = 0.5
BLUR_SIGMA = (0.15, 1.15)
FLIP_P = 0.5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
_RGB_TO_YIQ = torch.from_numpy(RGB_TO_YIQ).float()
_YIQ_TO_RGB = torch.from_numpy(YIQ_TO_RGB).float()


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=like.device, generator=generator)


def _uniform(low: float, high: float, count: int, like, generator) -> torch.Tensor:
    return low + (high - low) * _rand(count, like, generator)


def augment_unlabelled(
    images: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    *,
    mix: str = "classmix",
    scale_range: tuple[float, float] = (1.0, 1.0),
    color_jitter: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole §3.3 chain: rescale-crop, mix, photometric + flip.

    Args:
        images: float [B, 3, H, W] in [0, 1].
        labels: long [B, H, W] pseudo-labels (255 = none).
        confidence: float [B, H, W] teacher confidence.
        mix: `classmix`, `cutmix` or `cutout`.
        scale_range: random rescale factors (1, 1 turns the rescale off).
        color_jitter: brightness, contrast, saturation, hue strengths.
        generator: optional torch.Generator on the images' device.

    Returns:
        (images, labels, confidence) with the same shapes and dtypes.
    """
    if tuple(scale_range) != (1.0, 1.0):
        images, labels, confidence = random_rescale_crop(
            images, labels, confidence, scale_range, generator=generator
        )
    images, labels, confidence = mix_batch(images, labels, confidence, mix, generator=generator)
    return photometric_and_flip(images, labels, confidence, color_jitter, generator=generator)


def random_rescale_crop(images, labels, confidence, scale_range, *, generator=None):
    """Rescale each image by s ~ U(scale_range), then pad (s < 1) or crop (s > 1) back to H × W.

    A zoomed-in image (s ≥ 1) shows a uniformly placed H × W window; a shrunk one
    sits in the top-left corner with reflected image padding, label 255 and
    confidence 0 around it (the official pad-right/bottom then crop). One
    `affine_grid` for the batch: bilinear for images, nearest for labels and
    confidence.
    """
    batch = images.shape[0]
    scale = _uniform(*scale_range, batch, images, generator)
    shift = (1.0 - 1.0 / scale).clamp_min(0.0)
    offsets = (2.0 * _rand((batch, 2), images, generator) - 1.0) * shift[:, None]
    corner = (1.0 / scale - 1.0)[:, None].expand(-1, 2)
    offsets = torch.where((scale < 1.0)[:, None], corner, offsets)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    theta[:, :, 2] = offsets
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    inside = (grid.abs() <= 1.0).all(dim=-1)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    both = torch.stack([labels.float(), confidence], dim=1)
    both = F.grid_sample(both, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    labels = torch.where(inside, both[:, 0].round().long(), IGNORE_INDEX)
    confidence = torch.where(inside, both[:, 1], 0.0)
    return images, labels, confidence


def class_mix_masks(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """ClassMix masks: per image, the pixels of ⌊n/2⌋ of its n classes drawn at random.

    Args:
        labels: long [B, H, W] (255 = no class).
        generator: random source (default: torch's global one).

    Returns:
        bool [B, H, W], True where image b keeps its own pixels.
    """
    batch = labels.shape[0]
    num_ids = IGNORE_INDEX  # class ids are below 255: a fixed width, so no host sync
    valid = (labels >= 0) & (labels < num_ids)
    safe = torch.where(valid, labels, 0).flatten(1)
    counts = torch.zeros(batch, num_ids, dtype=torch.long, device=labels.device)
    present = counts.scatter_add_(1, safe, valid.flatten(1).long()) > 0
    keys = torch.where(present, _rand((batch, num_ids), labels, generator), 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # random order of the present classes first
    chosen = rank < (present.sum(dim=1, keepdim=True) // 2)
    return torch.gather(chosen, 1, safe).view_as(labels) & valid


def cut_boxes(
    batch: int, height: int, width: int, like: torch.Tensor, generator=None
) -> torch.Tensor:
    """One box per image of area H·W/2: width ~ U{W/2+1, …, W−1}, height = round(area/width).

    Returns:
        bool [B, H, W], True inside the box.
    """
    low = width // 2 + 1
    box_w = (low + (_rand(batch, like, generator) * max(width - low, 1)).floor()).clamp(max=width)
    box_h = (height * width / 2 / box_w).round().clamp(max=height)
    x0 = (_rand(batch, like, generator) * (width - box_w + 1)).floor()
    y0 = (_rand(batch, like, generator) * (height - box_h + 1)).floor()
    rows = torch.arange(height, device=like.device).view(1, -1, 1)
    cols = torch.arange(width, device=like.device).view(1, 1, -1)
    inside_rows = (rows >= y0.view(-1, 1, 1)) & (rows < (y0 + box_h).view(-1, 1, 1))
    inside_cols = (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + box_w).view(-1, 1, 1))
    return inside_rows & inside_cols


def mix_batch(images, labels, confidence, mode: str, *, generator=None):
    """ClassMix / CutMix (image b with image b+1 mod B) or CutOut, jointly on all three.

    Returns:
        (images, labels, confidence) mixed; shapes unchanged.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix {mode!r}; use one of {', '.join(MIX_MODES)}")
    batch, _, height, width = images.shape
    if mode == "cutout":
        box = cut_boxes(batch, height, width, images, generator)
        fill = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        return (
            torch.where(box[:, None], fill, images),
            torch.where(box, IGNORE_INDEX, labels),
            torch.where(box, 0.0, confidence),
        )
    if mode == "classmix":
        keep = class_mix_masks(labels, generator)
    else:
        keep = ~cut_boxes(batch, height, width, images, generator)
    partner = torch.roll(torch.arange(batch, device=images.device), -1)
    return (
        torch.where(keep[:, None], images, images[partner]),
        torch.where(keep, labels, labels[partner]),
        torch.where(keep, confidence, confidence[partner]),
    )


def photometric(images, color_jitter, *, generator=None) -> torch.Tensor:
    """Colour jitter (p 0.8) then Gaussian blur (p 0.5) of float images [B, 3, H, W] in [0, 1].

    Both streams get it on the device: the labelled batch as it arrives (spec §5),
    the unlabelled one after mixing (spec §3c).
    """
    batch = images.shape[0]
    jittered = color_jitter_batch(images, color_jitter, generator=generator)
    images = torch.where(
        (_rand(batch, images, generator) < JITTER_P).view(-1, 1, 1, 1), jittered, images
    )
    blurred = gaussian_blur_batch(images, _uniform(*BLUR_SIGMA, batch, images, generator))
    return torch.where(
        (_rand(batch, images, generator) < BLUR_P).view(-1, 1, 1, 1), blurred, images
    )


def photometric_and_flip(images, labels, confidence, color_jitter, *, generator=None):
    """`photometric` on images, then a joint flip (p 0.5) of images, labels and confidence."""
    batch = images.shape[0]
    images = photometric(images, color_jitter, generator=generator)
    flip = _rand(batch, images, generator) < FLIP_P
    return (
        torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images),
        torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels),
        torch.where(flip.view(-1, 1, 1), confidence.flip(-1), confidence),
    )


def color_jitter_batch(images, strengths, *, generator=None) -> torch.Tensor:
    """Brightness, contrast, saturation (factors U[1−s, 1+s]) and hue (U[−h, h] turns), per image."""
    brightness, contrast, saturation, hue = strengths
    batch = images.shape[0]

    def factors(strength: float) -> torch.Tensor:
        return _uniform(1 - strength, 1 + strength, batch, images, generator).view(-1, 1, 1, 1)

    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    images = (images * factors(brightness)).clamp(0, 1)
    mean = (images * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    images = torch.lerp(mean, images, factors(contrast)).clamp(0, 1)
    gray = (images * weights).sum(1, keepdim=True)
    images = torch.lerp(gray, images, factors(saturation)).clamp(0, 1)
    angle = 2 * math.pi * _uniform(-hue, hue, batch, images, generator)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(batch, 3, 3, device=images.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    transform = _YIQ_TO_RGB.to(images.device) @ rotation @ _RGB_TO_YIQ.to(images.device)
    return torch.einsum("bij,bjhw->bihw", transform, images).clamp(0, 1)


def gaussian_blur_batch(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (grouped convolutions, reflect padding).

    Images must be larger than the kernel radius (4 pixels) in both directions.
    """
    batch, channels, height, width = images.shape
    radius = math.ceil(3 * BLUR_SIGMA[1])
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)
