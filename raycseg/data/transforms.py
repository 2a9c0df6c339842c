"""Augmentations on uint8 tensors, with explicit random generators.

Every transform takes a `numpy.random.Generator`, so a loader worker's
stream is deterministic from its seed (torch's global RNG is never used).
Images are uint8 [3, H, W] (any strides: a channels-last view of a decoded
[H, W, 3] frame works as is), masks/labels uint8 [H, W]; outputs stay uint8:
normalisation happens later, on the device. Colour jitter, grayscale and blur
live in `raycseg.data.photometric` (re-exported here).

* `PairViewTransform`: one view of a frame or image for CACL pairs:
  RandomResizedCrop (area `crop_scale`, aspect 3/4..4/3), horizontal flip,
  colour jitter with probability (optionally full-range hue rotation),
  random grayscale, Gaussian blur with probability (`RandomGaussianBlur`).
* `SegmentationTrainTransform`: random scale (bilinear image, nearest
  label), padding to the crop (image reflected, label 255), random crop, flip,
  colour jitter on the image only.
* `ProbeTrainTransform`: the linear probe's training augmentation (flip,
  rotation and zoom, fixed resize). `resize_image` and `reflect_pad_bottom_right`
  make the evaluation inputs (labels are never resized for scoring).
* `MaskContrastViews`: two views of an image and its saliency mask whose
  salient area lies strictly between `min_mask_area` and `max_mask_area`;
  a crop is re-drawn up to `tries` times, then the image is refused
  (`None`) so the loader moves on to another image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from ..media.labels import IGNORE_INDEX
from .photometric import (
    ColorJitter,
    RandomGaussianBlur,
    apply_affine,
    blur_float,
    blur_kernel_size,
    blur_radius,
    color_affine,
    gaussian_blur,
    rotate_hue,
    to_uint8,
)

__all__ = [
    "ColorJitter",
    "MaskContrastViews",
    "PairViewTransform",
    "ProbeTrainTransform",
    "RandomGaussianBlur",
    "SegmentationTrainTransform",
    "blur_kernel_size",
    "crop_resize",
    "crop_resize_mask",
    "gaussian_blur",
    "random_grayscale",
    "random_resized_crop_box",
    "reflect_pad_bottom_right",
    "resize_image",
    "rotate_hue",
]

Box = tuple[int, int, int, int]  # top, left, height, width


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """Draw a crop box of area `scale` x image and aspect `ratio` (as torchvision does).

    After 10 failed draws the box is the largest centred crop within `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def crop_resize(image: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Crop a uint8 [C, H, W] image to `box` and resize it (bilinear, antialiased)."""
    return TF.resized_crop(image, *box, size=list(size), antialias=True)


def crop_resize_mask(mask: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    """Crop a uint8 [H, W] mask to `box` and resize it with nearest neighbour."""
    resized = TF.resized_crop(
        mask[None], *box, size=list(size), interpolation=InterpolationMode.NEAREST_EXACT
    )
    return resized[0]


def random_grayscale(image: torch.Tensor, p: float, rng: np.random.Generator) -> torch.Tensor:
    """With probability p, replace a uint8 [3, H, W] image by its luminance (3 channels)."""
    if p > 0 and rng.random() < p:
        return TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


class PairViewTransform:
    """One augmented view of a frame or image (see the module docstring).

    The random draws, in order: crop box, flip, jitter (`ColorJitter.draw`), grayscale,
    blur (`RandomGaussianBlur.draw`). The crop is resized first (bilinear, antialiased),
    so every colour and blur operation works on the view's pixels only; jitter and
    grayscale are one affine map (`raycseg.data.photometric`), clamped but not rounded
    before the blur, and the view is rounded to uint8 once. The flip is applied last:
    colour maps act per pixel and the blur (symmetric kernel, reflect padding) commutes
    with it, so the view is the same as flipping first.

    `blur_p` is the probability of the Gaussian blur (cacl.md §1: 0.5); 0 gives
    exactly the views of the transform without blur (same random stream).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        crop_scale: tuple[float, float] = (0.3, 1.0),
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        hue_full_range: bool = False,
        grayscale_p: float = 0.2,
        jitter_p: float = 0.8,
        flip_p: float = 0.5,
        blur_p: float = 0.5,
    ):
        self.size = _pair(image_size)
        self.crop_scale = tuple(crop_scale)
        self.jitter = ColorJitter(*color_jitter, p=jitter_p, hue_full_range=hue_full_range)
        self.grayscale_p, self.flip_p = grayscale_p, flip_p
        self.blur = RandomGaussianBlur(p=blur_p)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Augment a uint8 [3, H, W] image into a uint8 [3, *image_size] view."""
        box = random_resized_crop_box(image.shape[-2], image.shape[-1], self.crop_scale, rng)
        view = crop_resize(image, box, self.size)
        flip = rng.random() < self.flip_p
        jitter = self.jitter.draw(rng)
        grayscale = self.grayscale_p > 0 and rng.random() < self.grayscale_p
        sigma = self.blur.draw(rng)
        radius = blur_radius(sigma, min(self.size)) if sigma is not None else 0
        if jitter is not None or grayscale or radius:
            pixels = view.reshape(3, -1).float()
            if jitter is not None or grayscale:
                needs_mean = jitter is not None and jitter.factors[1] is not None
                mean = pixels.mean(dim=1).double().numpy() if needs_mean else None
                pixels = apply_affine(pixels, *color_affine(jitter, grayscale, mean))
            if radius:
                pixels = blur_float(pixels.view(3, *self.size), sigma, radius)
            view = to_uint8(pixels).view(3, *self.size)
        return view.flip(-1) if flip else view


class SegmentationTrainTransform:
    """Joint image + label augmentation for segmentation training."""

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        scale_range: tuple[float, float] = (0.5, 1.5),
        color_jitter: ColorJitter | None = None,
        flip_p: float = 0.5,
    ):
        self.crop = _pair(crop_size)
        self.scale_range = tuple(scale_range)
        self.jitter = color_jitter if color_jitter is not None else ColorJitter()
        self.flip_p = flip_p

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment uint8 image [3, H, W] and label [H, W]; both come out at `crop_size`."""
        scale = rng.uniform(*self.scale_range)
        height, width = image.shape[-2:]
        new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image = TF.resize(image, new_size, antialias=True)
        label = TF.resize(label[None], new_size, interpolation=InterpolationMode.NEAREST_EXACT)[0]
        pad_h, pad_w = max(0, self.crop[0] - new_size[0]), max(0, self.crop[1] - new_size[1])
        if pad_h or pad_w:  # numpy's reflect also covers pads wider than the image
            padding = ((0, 0), (0, pad_h), (0, pad_w))
            image = torch.from_numpy(np.pad(image.numpy(), padding, mode="reflect"))
            label = torch.nn.functional.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(rng.integers(0, label.shape[0] - self.crop[0] + 1))
        left = int(rng.integers(0, label.shape[1] - self.crop[1] + 1))
        image = image[:, top : top + self.crop[0], left : left + self.crop[1]]
        label = label[top : top + self.crop[0], left : left + self.crop[1]]
        if rng.random() < self.flip_p:
            image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
        return self.jitter(image, rng), label


def resize_image(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 [3, H, W] image to exactly `size`, not keeping its aspect ratio.

    Bicubic, as the MaskContrast evaluation's fixed resize.
    """
    return TF.resize(
        image, list(_pair(size)), interpolation=InterpolationMode.BICUBIC, antialias=True
    )


def reflect_pad_bottom_right(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Reflect-pad a uint8 [C, H, W] image at its bottom and right to `size` (>= H, W).

    Pixels keep their coordinates, so a prediction cropped to (H, W) lines up with
    the original mask (ReCo's evaluation pads to 513 x 513 this way).
    """
    pad_h, pad_w = size[0] - image.shape[-2], size[1] - image.shape[-1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"cannot pad {tuple(image.shape[-2:])} down to {tuple(size)}")
    if not (pad_h or pad_w):
        return image
    padding = ((0, 0), (0, pad_h), (0, pad_w))  # numpy's reflect also covers wide pads
    return torch.from_numpy(np.pad(image.numpy(), padding, mode="reflect"))


class ProbeTrainTransform:
    """The linear probe's training augmentation (MaskContrast's linear protocol).

    Horizontal flip (p 0.5), then one rotation by U(-rotation, rotation) degrees and
    zoom by U(scale_range) about the image centre (bilinear image, nearest label;
    pixels that come from outside the image are black with label 255), then a fixed
    resize of both to `size` (bicubic image, nearest label). `augment=False` keeps
    only the fixed resize. The official code rotates the image bicubically and
    labels the outside pixels 0 (background); torchvision rotates tensors
    bilinearly, and an outside pixel has no class.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        *,
        augment: bool = True,
        scale_range: tuple[float, float] = (0.75, 1.25),
        rotation: float = 5.0,
        flip_p: float = 0.5,
    ):
        self.size = _pair(size)
        self.augment, self.scale_range = augment, tuple(scale_range)
        self.rotation, self.flip_p = rotation, flip_p

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 image [3, H, W] and label [H, W] -> both at `size`."""
        if self.augment:
            if rng.random() < self.flip_p:
                image, label = TF.horizontal_flip(image), TF.horizontal_flip(label)
            angle = float(rng.uniform(-self.rotation, self.rotation))
            scale = float(rng.uniform(*self.scale_range))
            geometry = {"angle": angle, "translate": [0, 0], "scale": scale, "shear": [0.0]}
            image = TF.affine(image, **geometry, interpolation=InterpolationMode.BILINEAR, fill=0)
            label = TF.affine(
                label[None], **geometry, interpolation=InterpolationMode.NEAREST,
                fill=IGNORE_INDEX,
            )[0]  # fmt: skip
        label = TF.resize(label[None], list(self.size), InterpolationMode.NEAREST)[0]
        return resize_image(image, self.size), label


class MaskContrastViews:
    """Query and key views of an image and its saliency mask (see the module docstring)."""

    def __init__(
        self,
        image_size: int | tuple[int, int],
        crop_scale: tuple[float, float] = (0.2, 1.0),
        min_mask_area: float = 0.01,
        max_mask_area: float = 0.99,
        color_jitter: ColorJitter | None = None,
        grayscale_p: float = 0.2,
        flip_p: float = 0.5,
        tries: int = 3,
    ):
        self.size = _pair(image_size)
        self.crop_scale = tuple(crop_scale)
        self.area_range = (min_mask_area, max_mask_area)
        self.jitter = color_jitter if color_jitter is not None else ColorJitter()
        self.grayscale_p, self.flip_p, self.tries = grayscale_p, flip_p, tries

    def _view(
        self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        height, width = mask.shape
        for _ in range(self.tries):
            box = random_resized_crop_box(height, width, self.crop_scale, rng)
            view_mask = crop_resize_mask(mask, box, self.size)
            area = view_mask.float().mean().item()
            if self.area_range[0] < area < self.area_range[1]:
                break
        else:
            return None
        view = crop_resize(image, box, self.size)
        view = random_grayscale(self.jitter(view, rng), self.grayscale_p, rng)
        if rng.random() < self.flip_p:
            view, view_mask = TF.horizontal_flip(view), TF.horizontal_flip(view_mask)
        return view, view_mask.bool()

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Return (query, query_mask, key, key_mask), or None to ask for another image.

        Args:
            image: uint8 [3, H, W].
            mask: uint8 or bool [H, W], non-zero = salient.
            rng: The stream's random generator.
        """
        mask = (mask > 0).to(torch.uint8)
        query = self._view(image, mask, rng)
        key = self._view(image, mask, rng) if query is not None else None
        if key is None:
            return None
        return query[0], query[1], key[0], key[1]
