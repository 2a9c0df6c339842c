"""Dense projection heads: a per-pixel MLP made of 1×1 convolutions.

CACL (docs/methods/cacl.md §2) puts three of these on one backbone
(global, pixel and cycle heads). Outputs are not normalised here: every loss
L2-normalises its own inputs (``raycseg.losses``).
"""

from __future__ import annotations

import torch
from torch import nn


class DenseHead(nn.Module):
    """1×1 conv → BN → ReLU → 1×1 conv, applied at every pixel.

    Args:
        in_channels: channels C of the input map.
        out_dim: channels D of the output map.
        hidden: hidden channels (default: `in_channels`, as in the DenseCL/MoCo-v2
            projector made dense).

    Shapes:
        forward: float [B, C, h, w] → float [B, D, h, w].
    """

    def __init__(self, in_channels: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = in_channels if hidden is None else hidden
        self.in_channels = in_channels
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_dim, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project features [B, C, h, w] to [B, D, h, w]."""
        return self.net(features)
