"""`export_backbone`: a run's (or a checkpoint's) backbone as a torchvision ResNet state dict."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
import yaml

from raycseg.config import load_recipe
from raycseg.errors import CsegError
from raycseg.models import build_backbone
from raycseg.train.checkpoint import save_state
from raycseg.train.export import export_backbone


def recipe_dict(tmp_path, backbone="resnet18", output_stride=8, width=64):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "recipe.yaml"
    model = {"backbone": backbone, "output_stride": output_stride, "width": width}
    path.write_text(
        yaml.safe_dump(
            {
                "name": "export",
                "data": {"root": str(tmp_path / "data")},
                "model": model,
                "stages": [
                    {"method": "cacl", "steps": 1, "data": {"train": "video"}},
                    {"name": "second", "method": "cacl", "steps": 1, "data": {"train": "video"}},
                ],
            }
        )
    )
    return load_recipe(path, check_files=False).model_dump(mode="json")


def write_run(tmp_path, **model) -> tuple:
    """A run directory with two finished stages; their backbones differ."""
    run_dir = tmp_path / "run"
    recipe = recipe_dict(tmp_path, **model)
    name, stride, width = (recipe["model"][k] for k in ("backbone", "output_stride", "width"))
    backbones = {}
    for seed, stage in enumerate(("cacl", "second")):
        torch.manual_seed(seed)
        backbones[stage] = build_backbone(name, output_stride=stride, width=width)
        save_state(
            run_dir / stage / "checkpoint_000001",
            {"backbone": backbones[stage].state_dict(), "recipe": recipe, "stage": stage},
        )
    stages = {
        "cacl": {"checkpoint": str(run_dir / "cacl" / "checkpoint_000001" / "state.pt")},
        "second": {"checkpoint": "second/checkpoint_000001/state.pt"},  # relative to the run
    }
    (run_dir / "stages.json").write_text(json.dumps(stages))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(recipe))
    return run_dir, backbones


def assert_torchvision_resnet18_holds(path, backbone):
    resnet = torchvision.models.resnet18()
    result = resnet.load_state_dict(torch.load(path, weights_only=True), strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"]
    assert result.unexpected_keys == []
    for key, value in backbone.state_dict().items():
        assert torch.equal(resnet.state_dict()[key], value), key


def test_a_run_exports_its_last_finished_stage_or_the_named_one(tmp_path):
    run_dir, backbones = write_run(tmp_path)
    exported = export_backbone(run_dir, tmp_path / "out" / "last.pth")
    assert (exported.stage, exported.backbone) == ("second", "resnet18")
    assert_torchvision_resnet18_holds(tmp_path / "out" / "last.pth", backbones["second"])
    export_backbone(run_dir, tmp_path / "first.pth", stage="cacl")
    assert_torchvision_resnet18_holds(tmp_path / "first.pth", backbones["cacl"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["last.pth"]  # no .partial


def test_a_checkpoint_exports_directly(tmp_path):
    run_dir, backbones = write_run(tmp_path)
    export_backbone(run_dir / "cacl" / "checkpoint_000001", tmp_path / "cacl.pth")
    assert_torchvision_resnet18_holds(tmp_path / "cacl.pth", backbones["cacl"])
    with pytest.raises(CsegError, match="is a checkpoint, not a run directory"):
        export_backbone(run_dir / "cacl" / "checkpoint_000001", tmp_path / "x.pth", stage="cacl")


def test_bad_requests_name_the_fix_and_write_nothing(tmp_path):
    run_dir, _ = write_run(tmp_path)
    with pytest.raises(CsegError, match="has no stage 'reco'; its stages are cacl, second"):
        export_backbone(run_dir, tmp_path / "x.pth", stage="reco")
    (tmp_path / "taken.pth").write_bytes(b"keep")
    with pytest.raises(CsegError, match="exists; pass --force"):
        export_backbone(run_dir, tmp_path / "taken.pth")
    assert (tmp_path / "taken.pth").read_bytes() == b"keep"
    export_backbone(run_dir, tmp_path / "taken.pth", force=True)
    assert (tmp_path / "taken.pth").read_bytes() != b"keep"
    tiny_run, _ = write_run(tmp_path / "tiny", backbone="tiny", output_stride=4, width=16)
    with pytest.raises(CsegError, match="tiny backbone is not a torchvision ResNet"):
        export_backbone(tiny_run, tmp_path / "tiny.pth")
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "tiny.pth").exists()
