"""`cseg export`: a run's backbone as a plain torchvision ResNet state dict.

The file loads into ``torchvision.models.resnet50()`` (or 18, 101) with
``load_state_dict(sd, strict=False)``, leaving only ``fc.weight`` and ``fc.bias``
missing, so other code bases can start from a raycseg run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Recipe
from ..errors import CsegError
from ..models import build_backbone, export_torchvision_state_dict
from ..models.weights import load_backbone_state
from ..run_directory import is_run_directory, read_stages, run_checkpoint
from .checkpoint import load_state


@dataclass
class ExportedBackbone:
    """What `export_backbone` wrote.

    Attributes:
        path: the written state dict file.
        backbone: the backbone's name (``resnet50`` ...).
        stage: the stage whose checkpoint it came from (None if the checkpoint does not say).
        tensors: how many tensors the file holds.
    """

    path: Path
    backbone: str
    stage: str | None
    tensors: int


def export_backbone(
    target: str | Path, out: str | Path, *, stage: str | None = None, force: bool = False
) -> ExportedBackbone:
    """Write the backbone of a run (or of a checkpoint) as a torchvision ResNet state dict.

    Args:
        target: a run directory, or a checkpoint (``state.pt`` or its folder).
        out: the file to write (via a temporary name, then a rename).
        stage: the run's stage to export; default its last finished stage.
        force: overwrite `out` if it exists.

    Raises:
        CsegError: `out` exists (without `force`), no such run, stage or checkpoint, or the
            backbone is not a torchvision ResNet (``tiny``).
    """
    target = Path(target).expanduser().resolve()
    out = Path(out).expanduser().resolve()
    if out.is_dir() or (out.exists() and not force):
        raise CsegError(f"{out} exists; pass --force to overwrite it, or give another file name")
    checkpoint = _checkpoint_to_export(target, stage)
    state = load_state(checkpoint)
    model = _recipe_of(state, checkpoint).model
    backbone = build_backbone(model.backbone, output_stride=model.output_stride, width=model.width)
    load_backbone_state(backbone, state, str(checkpoint))
    weights = export_torchvision_state_dict(backbone)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(weights, partial)
    os.replace(partial, out)
    return ExportedBackbone(out, model.backbone, state.get("stage"), len(weights))


def _checkpoint_to_export(target: Path, stage: str | None) -> str:
    """The checkpoint of a run's stage (default: the last finished one), or `target` itself."""
    if not is_run_directory(target):
        if not target.exists():
            raise CsegError(f"{target} does not exist; pass a run directory or a checkpoint")
        if stage is not None:
            raise CsegError(
                f"{target} is a checkpoint, not a run directory; drop the stage, or pass the run"
            )
        return str(target)
    finished = list(read_stages(target))
    if stage is None and not finished:
        raise CsegError(
            f"{target} has no finished stage yet; finish it with `cseg pretrain --resume`"
        )
    _, checkpoint = run_checkpoint(target, stage or finished[-1])  # found under `target`
    return checkpoint


def _recipe_of(state: dict[str, Any], checkpoint: str) -> Recipe:
    if "recipe" not in state:
        raise CsegError(
            f"{checkpoint} is not a raycseg checkpoint (no recipe inside); pass its run directory"
        )
    return Recipe.model_validate(state["recipe"])
