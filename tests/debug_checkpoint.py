"""A cacl/debug checkpoint with random weights, for tests that evaluate without training."""

from __future__ import annotations

from pathlib import Path

import torch

from raycseg.config import load_recipe
from raycseg.methods import build_method
from raycseg.train.checkpoint import save_state


def save_debug_checkpoint(folder: Path, overrides: list[str] | None = None) -> Path:
    """`folder` holding a cacl/debug checkpoint whose weights are the recipe's initial ones
    (seed 0), with `overrides` applied to the recipe it records."""
    recipe = load_recipe("cacl/debug", overrides or [], check_files=False)
    torch.manual_seed(0)
    method = build_method(recipe.stages[0], recipe.model)
    save_state(folder, {"backbone": method.backbone.state_dict(), "model": method.state_dict(),
                        "recipe": recipe.model_dump(mode="json"), "stage": "cacl"})  # fmt: skip
    return folder
