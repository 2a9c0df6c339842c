"""Hand-built evaluation data whose answer is known (imported by the tests here).

Images are grids of `block`×`block` cells. Each cell has a class, and every
pixel of a cell has that class's colour (a corner of the RGB cube), so the
colour alone decides the class. Some cells are labelled 255 (ignore) but keep
a class colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PALETTE = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=torch.uint8)


def color_blocks(
    num_images: int, *, grid: int = 4, block: int = 4, num_classes: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, grid·block, grid·block] and long labels [N, same, same]."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(num_classes, (num_images, grid, grid), generator=generator)
    pixels = cells.repeat_interleave(block, 1).repeat_interleave(block, 2)
    images = PALETTE[pixels].permute(0, 3, 1, 2).contiguous()
    ignored = torch.rand(num_images, grid, grid, generator=generator) < 0.1
    ignored = ignored.repeat_interleave(block, 1).repeat_interleave(block, 2)
    labels = torch.where(ignored, torch.full_like(pixels, 255), pixels)
    return images, labels


def as_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> list[dict]:
    return [
        {"image": images[i : i + batch_size], "label": labels[i : i + batch_size]}
        for i in range(0, images.shape[0], batch_size)
    ]


class PoolingBackbone(nn.Module):
    """Average-pools the normalised image by `stride`: features = mean colour per cell."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.stride) if self.stride > 1 else images
