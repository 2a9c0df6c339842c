"""Training methods: each builds its modules from its stage section.

A method is an `nn.Module` whose `forward(batch)` returns
`{"loss": 0-dim tensor, "terms": {name: 0-dim tensor}}` (so DDP sees the
forward) and exposes `.backbone`. It may define `after_step(step)` for work
after the optimizer step (EMA updates, queues) and
`validation_metrics(stage, recipe, device)` for its periodic validation.
Each method module also defines `build_<method>_loader`, its training stream.
"""

from __future__ import annotations

import importlib

from torch import nn

from ..config import DataSection, ModelSection, StageBase

_METHODS = {
    "cacl": ("CACL", "build_cacl_loader"),
    "maskcontrast": ("MaskContrast", "build_maskcontrast_loader"),
    "reco": ("ReCo", "build_reco_loader"),
}


def _method_module(stage: StageBase):
    return importlib.import_module(f"{__name__}.{stage.method}")


def build_method(stage: StageBase, model: ModelSection) -> nn.Module:
    """The method module for `stage` (dispatch on `stage.method`)."""
    class_name, _ = _METHODS[stage.method]
    return getattr(_method_module(stage), class_name)(stage, model)


def build_stage_loader(
    stage: StageBase, data: DataSection, *, seed: int, rank: int, world_size: int, start_batch: int
):
    """The stage's training DataLoader, split by rank then by loader worker."""
    _, loader_name = _METHODS[stage.method]
    build = getattr(_method_module(stage), loader_name)
    return build(stage, data, seed=seed, rank=rank, world_size=world_size, start_batch=start_batch)
