"""The weights a training run starts from: the worker's init_from and the random-init baseline."""

from __future__ import annotations

import torch
import yaml
from torch_hub_cache import cache_torchvision_weights

from raycseg.config import load_recipe
from raycseg.models import build_backbone
from raycseg.train import worker
from raycseg.train.evaluation import build_initial_backbone


def forbid_remote_copies(monkeypatch):
    def local_copy(location):
        raise AssertionError(f"{location} went through storage.local_copy")

    monkeypatch.setattr(worker.storage, "local_copy", local_copy)


def test_worker_loads_torchvision_weights_by_name_and_logs_what_it_loaded(
    tmp_path, monkeypatch, capsys
):
    reference = cache_torchvision_weights(tmp_path, monkeypatch, "resnet18")
    forbid_remote_copies(monkeypatch)
    backbone = build_backbone("resnet18", output_stride=16)
    worker.load_init_weights(backbone, "torchvision:resnet18")
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
    worker._log_loaded_weights(backbone, "maskcontrast")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "stage maskcontrast: init_from torchvision:resnet18: loaded 120 backbone tensors "
        "(keys as saved)",
        "stage maskcontrast: init_from torchvision:resnet18: ignored 2 entries "
        "(e.g. fc.weight, fc.bias)",
    ]


def test_worker_reads_checkpoint_files_through_a_local_copy(tmp_path, monkeypatch):
    source = build_backbone("tiny", width=16)
    torch.save({"format": "raycseg", "backbone": source.state_dict()}, tmp_path / "state.pt")
    copied = []
    real_local_copy = worker.storage.local_copy

    def local_copy(location):
        copied.append(str(location))
        return real_local_copy(location)

    monkeypatch.setattr(worker.storage, "local_copy", local_copy)
    backbone = build_backbone("tiny", width=16)
    worker.load_init_weights(backbone, str(tmp_path))
    assert copied == [str(tmp_path)]
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)
    assert backbone.weights_reports[0].rule == "raycseg checkpoint"


def test_random_init_baseline_starts_from_the_named_imagenet_weights(tmp_path, monkeypatch):
    name = "resnet18"
    reference = cache_torchvision_weights(tmp_path, monkeypatch, name)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "baseline",
                "data": {"root": str(tmp_path / "data")},
                "model": {"backbone": name, "output_stride": 8, "init_from": f"torchvision:{name}"},
                "stages": [{"method": "cacl", "steps": 1, "data": {"train": "video"}}],
            }
        )
    )
    recipe = load_recipe(path, check_files=False)
    backbone = build_initial_backbone(recipe)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key
