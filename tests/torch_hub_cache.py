"""`cache_torchvision_weights`: stand-in ImageNet weights in a temporary torch hub cache.

Test helper (tests/ is on sys.path). The file is a real torchvision ResNet state
dict (random weights) saved under the name torchvision's weights url gives it, in
TORCH_HOME/hub/checkpoints, so loading `torchvision:<name>` runs torchvision's own
cache lookup and `torch.load` on it; torch.hub checks the hash only on download.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

URL_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}


def use_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TORCH_HOME at an empty folder; return the hub's checkpoints folder in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


def cache_torchvision_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> dict[str, torch.Tensor]:
    """Place a seeded torchvision `name` state dict in a temporary cache; return it."""
    checkpoints = use_torch_home(tmp_path, monkeypatch)
    checkpoints.mkdir(parents=True)
    torch.manual_seed(11)
    state = getattr(torchvision.models, name)(weights=None).state_dict()
    torch.save(state, checkpoints / URL_FILES[name])
    return state
