"""Per-step schedule arrays (DINO style): index `schedule[step]` in the loop."""

from __future__ import annotations

import numpy as np

from ..config import OptimSection


def build_lr_schedule(optim: OptimSection, total_steps: int) -> np.ndarray:
    """Learning rate for every step: linear warm-up, then cosine, poly or constant.

    Args:
        optim: the stage's optimiser section (lr, min_lr, schedule, warmup_steps, poly_power).
        total_steps: the stage's number of optimizer steps.

    Returns:
        float64 array of length `total_steps`.
    """
    warmup = min(optim.warmup_steps, total_steps)
    ramp = optim.lr * (np.arange(warmup) + 1) / max(warmup, 1)
    remaining = total_steps - warmup
    progress = np.arange(remaining) / max(remaining, 1)
    if optim.schedule == "cosine":
        decay = optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + np.cos(np.pi * progress))
    elif optim.schedule == "poly":
        decay = optim.min_lr + (optim.lr - optim.min_lr) * (1 - progress) ** optim.poly_power
    else:
        decay = np.full(remaining, optim.lr)
    return np.concatenate([ramp, decay])
