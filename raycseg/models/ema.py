"""Exponential moving averages of parameters: momentum encoders and mean teachers.

Both users average **parameters only**; buffers (BatchNorm running statistics)
are left alone and evolve from the copy's own train-mode forwards:

- MaskContrast's key encoder (docs/methods/maskcontrast.md §4):
  θ_k ← 0.999·θ_k + 0.001·θ_q, before the key forward.
- ReCo's teacher (docs/methods/reco.md §3, step 6): θ_t ← d·θ_t + (1 − d)·θ_s
  after each optimizer step, with d = `reco_ema_decay(step)`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def build_ema_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` (unwrapped from DDP) whose parameters need no gradient."""
    if isinstance(module, DistributedDataParallel):
        module = module.module
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin


@torch.no_grad()
def update_ema(target: nn.Module, source: nn.Module, decay: float) -> None:
    """In place, θ_target ← decay·θ_target + (1 − decay)·θ_source for every parameter.

    Args:
        target: the averaged copy (momentum encoder / teacher).
        source: the trained module (a DDP wrapper is unwrapped).
        decay: in [0, 1]; 0 copies the source, 1 leaves the target unchanged.

    Raises:
        ValueError: `decay` out of range, or the two modules' parameters differ in name.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
    if isinstance(source, DistributedDataParallel):
        source = source.module
    target_params = dict(target.named_parameters())
    source_params = dict(source.named_parameters())
    if target_params.keys() != source_params.keys():
        raise ValueError(
            "EMA target and source have different parameters; build the target with build_ema_copy"
        )
    names = list(target_params)
    targets = [target_params[name] for name in names]
    sources = [source_params[name].detach().to(targets[i].dtype) for i, name in enumerate(names)]
    torch._foreach_lerp_(targets, sources, 1.0 - decay)


def reco_ema_decay(step: int, max_decay: float = 0.99) -> float:
    """ReCo's teacher decay: min(1 − 1/(step + 1), max_decay).

    0 at step 0 (the teacher becomes a copy), 0.5 at step 1, `max_decay` from
    step 1/(1 − max_decay) − 1 on (99 for 0.99).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0 - 1.0 / (step + 1), max_decay)
