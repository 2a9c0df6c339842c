"""Weights: torchvision ImageNet weights by name, MoCo/DenseCL checkpoints, export.

No test touches the network: torch.hub's download function is replaced by one
that fails the test, writes a file, or raises the error an offline machine gets.
"""

from __future__ import annotations

import copy
import urllib.error

import pytest
import torch
import torchvision
import yaml
from torch import nn
from torch_hub_cache import URL_FILES, cache_torchvision_weights, use_torch_home

from raycseg.config import load_recipe
from raycseg.errors import CsegError, RecipeError
from raycseg.models import build_backbone, export_torchvision_state_dict, load_backbone_weights


def forbid_downloads(monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError(f"tried to download {args[0]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)


def assert_backbone_holds(backbone, state, prefix=""):
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[prefix + key]), key


# ----------------------------------------------------------------------------- torchvision:


def test_torchvision_name_reads_the_cached_file_and_downloads_nothing(tmp_path, monkeypatch):
    reference = cache_torchvision_weights(tmp_path, monkeypatch, "resnet18")
    forbid_downloads(monkeypatch)
    backbone = build_backbone("resnet18", output_stride=8, init_from="torchvision:resnet18")
    assert_backbone_holds(backbone, reference)
    [report] = backbone.weights_reports
    assert report.mapped == len(backbone.state_dict())
    assert report.ignored == ["fc.weight", "fc.bias"]
    assert report.lines() == [
        "init_from torchvision:resnet18: loaded 120 backbone tensors (keys as saved)",
        "init_from torchvision:resnet18: ignored 2 entries (e.g. fc.weight, fc.bias)",
    ]


def test_absent_weights_download_through_torchvision_with_its_hash_check(
    tmp_path, monkeypatch, capsys
):
    checkpoints = use_torch_home(tmp_path, monkeypatch)
    torch.manual_seed(3)
    served = torchvision.models.resnet18(weights=None).state_dict()
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        print(f"fetching {url}")  # stdout stays for results: this must land on stderr
        torch.save(served, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    backbone = build_backbone("resnet18", init_from="torchvision:resnet18")
    assert calls == [("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd")]
    assert (checkpoints / URL_FILES["resnet18"]).is_file()
    assert_backbone_holds(backbone, served)
    captured = capsys.readouterr()
    assert captured.out == "" and "fetching" in captured.err


def test_offline_without_the_file_says_which_file_to_place_where(tmp_path, monkeypatch):
    checkpoints = use_torch_home(tmp_path, monkeypatch)

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CsegError) as caught:
        build_backbone("resnet50", init_from="torchvision:resnet50")
    assert str(caught.value) == (
        f"torchvision:resnet50 needs ImageNet weights: place resnet50-0676ba61.pth in "
        f"{checkpoints} (download https://download.pytorch.org/models/resnet50-0676ba61.pth "
        "on a connected machine)"
    )
    assert not (checkpoints / URL_FILES["resnet50"]).exists()


def test_a_corrupt_cached_file_is_named_with_the_fix(tmp_path, monkeypatch):
    checkpoints = use_torch_home(tmp_path, monkeypatch)
    checkpoints.mkdir(parents=True)
    (checkpoints / URL_FILES["resnet18"]).write_bytes(b"not a torch file")
    forbid_downloads(monkeypatch)
    with pytest.raises(CsegError, match=r"cannot read .*resnet18-f37072fd.pth .*delete it"):
        build_backbone("resnet18", init_from="torchvision:resnet18")


def test_unknown_weights_name_lists_the_valid_names(tmp_path, monkeypatch):
    use_torch_home(tmp_path, monkeypatch)
    forbid_downloads(monkeypatch)
    names = "torchvision:resnet18, torchvision:resnet50, torchvision:resnet101"
    with pytest.raises(
        CsegError, match=f"unknown weights torchvision:resnet34x; use one of {names}"
    ):
        build_backbone("resnet50", init_from="torchvision:resnet34x")


def resnet50_recipe(tmp_path):
    """A one-stage recipe whose inputs exist, in a working directory of its own."""
    (tmp_path / "data" / "video").mkdir(parents=True)
    raw = {
        "name": "weights",
        "data": {"root": str(tmp_path / "data")},
        "model": {"backbone": "resnet50", "output_stride": 16},
        "stages": [{"method": "cacl", "steps": 1, "data": {"train": "video"}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_recipes_keep_weights_names_as_names_and_reject_unknown_or_mismatched_ones(
    tmp_path, monkeypatch
):
    path = resnet50_recipe(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative path would resolve here
    names = ["model.init_from=torchvision:resnet50", "stages.cacl.init_from=torchvision:resnet50"]
    recipe = load_recipe(path, names, check_files=True)  # a name is no file: nothing is missing
    assert recipe.model.init_from == "torchvision:resnet50"
    assert recipe.stages[0].init_from == "torchvision:resnet50"
    with pytest.raises(RecipeError) as unknown:
        load_recipe(path, ["stages.cacl.init_from=torchvision:resnet34x"], check_files=False)
    assert str(unknown.value) == (
        "stages.cacl.init_from: unknown weights torchvision:resnet34x; use one of "
        "torchvision:resnet18, torchvision:resnet50, torchvision:resnet101"
    )
    with pytest.raises(RecipeError, match="model.init_from: torchvision:resnet101 holds resnet101"):
        load_recipe(path, ["model.init_from=torchvision:resnet101"], check_files=False)


# ----------------------------------------------------------------------------- MoCo, DenseCL


class TwoEncoders(nn.Module):
    """A MoCo-shaped model: query and key ResNet-18 with MLP heads, plus a queue."""

    def __init__(self, query: str, key: str):
        super().__init__()
        encoder = torchvision.models.resnet18(weights=None)
        encoder.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
        self.query_name, self.key_name = query, key
        self.add_module(query, encoder)
        self.add_module(key, copy.deepcopy(encoder))
        with torch.no_grad():  # the key encoder differs, so loading it by mistake shows
            for parameter in getattr(self, key).parameters():
                parameter.add_(1.0)
        self.predictor = nn.Linear(128, 128)
        self.register_buffer("queue", torch.randn(128, 64))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def save_moco_checkpoint(path, model: nn.Module, *, ddp: bool, nested: str):
    """Save the way MoCo's main_moco.py does: epoch, arch, state_dict, optimizer."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()  # momentum buffers in the optimizer state
    state = model.state_dict()
    if ddp:
        state = {f"module.{key}": value for key, value in state.items()}
    torch.save(
        {"epoch": 200, "arch": "resnet18", nested: state, "optimizer": optimizer.state_dict()}, path
    )
    return state


@pytest.mark.parametrize(
    ("query", "key", "ddp", "nested", "rule"),
    [
        ("encoder_q", "encoder_k", True, "state_dict", "'state_dict' entry, prefix 'module.encoder_q.' removed"),
        ("base_encoder", "momentum_encoder", True, "state_dict", "'state_dict' entry, prefix 'module.base_encoder.' removed"),
        ("encoder_q", "encoder_k", False, "model", "'model' entry, prefix 'encoder_q.' removed"),
        ("backbone", "encoder_k", False, "state_dict", "'state_dict' entry, prefix 'backbone.' removed"),
    ],
)  # fmt: skip
def test_self_supervised_checkpoints_load_the_query_encoder(
    tmp_path, query, key, ddp, nested, rule
):
    torch.manual_seed(5)
    model = TwoEncoders(query, key)
    path = tmp_path / "checkpoint_0199.pth.tar"
    saved = save_moco_checkpoint(path, model, ddp=ddp, nested=nested)
    backbone = build_backbone("resnet18", output_stride=16)
    report = load_backbone_weights(backbone, path)
    prefix = ("module." if ddp else "") + f"{query}."
    assert_backbone_holds(backbone, saved, prefix)
    assert report.rule == rule
    assert report.mapped == len(backbone.state_dict())
    assert len(report.ignored) == len(saved) - report.mapped
    ignored_line = report.lines()[1]
    wrapper = "module." if ddp else ""
    for example in (f"{wrapper}queue", f"{wrapper}{key}.conv1.weight", f"{prefix}fc.0.weight"):
        assert example in ignored_line, ignored_line


def test_after_mapping_a_missing_or_misshapen_key_is_still_one_line_naming_the_fix(tmp_path):
    torch.manual_seed(6)
    model = TwoEncoders("encoder_q", "encoder_k")
    path = tmp_path / "moco_r18.pth"
    saved = save_moco_checkpoint(path, model, ddp=True, nested="state_dict")
    with pytest.raises(
        CsegError, match="do not fit backbone resnet50.*set the backbone name"
    ) as caught:
        build_backbone("resnet50", init_from=path)
    assert "\n" not in str(caught.value)
    del saved["module.encoder_q.layer4.1.bn2.running_var"]
    torch.save({"epoch": 1, "state_dict": saved}, path)
    with pytest.raises(CsegError, match=r"1 missing \(e.g. layer4.1.bn2.running_var\)"):
        build_backbone("resnet18", init_from=path)


# ----------------------------------------------------------------------------- export


def test_a_dilated_resnet50_exports_as_a_plain_torchvision_state_dict():
    torch.manual_seed(7)
    backbone = build_backbone("resnet50", output_stride=8)
    with torch.no_grad():
        backbone.layer4[2].bn3.running_mean.add_(2.0)
    exported = export_torchvision_state_dict(backbone)
    resnet = torchvision.models.resnet50()
    result = resnet.load_state_dict(exported, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"]
    assert result.unexpected_keys == []
    assert torch.equal(resnet.layer4[2].bn3.running_mean, backbone.layer4[2].bn3.running_mean)


def test_the_tiny_backbone_is_not_exported():
    with pytest.raises(CsegError, match="tiny backbone is not a torchvision ResNet"):
        export_torchvision_state_dict(build_backbone("tiny", width=16))
