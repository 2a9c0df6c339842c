"""Precision rule shared by the loss modules: compute in float32 or wider."""

from __future__ import annotations

import torch


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` as float32 if it is narrower (bf16/fp16/ints), else unchanged (float64 stays)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
