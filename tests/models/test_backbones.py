"""Backbones: shapes and strides per name, dilation correctness, weights in both formats."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision

from raycseg.errors import CsegError
from raycseg.models import build_backbone, load_backbone_weights, normalize_images

# name, output_stride, width, (low channels, low stride), (out channels, output stride)
SHAPES = [
    ("tiny", None, 32, (32, 2), (64, 4)),
    ("tiny", 4, 16, (16, 2), (32, 4)),
    ("resnet18", 8, 64, (64, 4), (512, 8)),
    ("resnet18", 16, 64, (64, 4), (512, 16)),
    ("resnet18", 32, 64, (64, 4), (512, 32)),
    ("resnet50", 8, 64, (256, 4), (2048, 8)),
    ("resnet50", 16, 64, (256, 4), (2048, 16)),
    ("resnet101", 16, 64, (256, 4), (2048, 16)),
]


@pytest.mark.parametrize(("name", "stride", "width", "low", "out"), SHAPES)
def test_feature_shapes_follow_the_strides(name, stride, width, low, out):
    backbone = build_backbone(name, output_stride=stride, width=width).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, 64, 64))
    assert features["low"].shape == (2, low[0], 64 // low[1], 64 // low[1])
    assert features["out"].shape == (2, out[0], 64 // out[1], 64 // out[1])
    assert (backbone.low_level_channels, backbone.low_level_stride) == low
    assert (backbone.out_channels, backbone.output_stride) == out
    assert backbone.config == {"name": name, "output_stride": out[1], "width": width}


def test_tiny_at_64_pixels_gives_16x16_maps_of_twice_the_width():
    backbone = build_backbone("tiny", width=32).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert out.shape == (1, 64, 16, 16)


@pytest.mark.parametrize(
    ("name", "dilated_stride"), [("resnet18", 16), ("resnet18", 8), ("resnet50", 8)]
)
def test_dilated_network_sampled_on_the_coarse_grid_equals_the_strided_one(name, dilated_stride):
    torch.manual_seed(0)
    strided = build_backbone(name, output_stride=32).eval()
    dilated = build_backbone(name, output_stride=dilated_stride)
    dilated.load_state_dict(strided.state_dict())
    dilated.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        coarse = strided(images)
        fine = dilated(images)
    step = 32 // dilated_stride
    assert fine.shape[-1] == coarse.shape[-1] * step
    torch.testing.assert_close(fine[..., ::step, ::step], coarse, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "vgg16"}, "unknown backbone"),
        ({"name": "tiny", "output_stride": 16}, "output stride 4"),
        ({"name": "resnet50", "output_stride": 4}, "output stride 8, 16 or 32"),
        ({"name": "resnet18", "width": 32}, "tiny backbone only"),
    ],
)
def test_bad_architectures_raise_cseg_errors_naming_the_fix(kwargs, fragment):
    with pytest.raises(CsegError, match=fragment):
        build_backbone(**kwargs)


def test_normalize_images_uses_imagenet_statistics():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(2, 3, 1, 2)
    normalised = normalize_images(images)
    assert normalised.dtype == torch.float32 and normalised.shape == (2, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(normalised[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(normalised[0, :, 0, 1], (1 - mean) / std)
    torch.testing.assert_close(normalize_images(images.float() / 255), normalised)
    with pytest.raises(TypeError):
        normalize_images(images.long())


def test_torchvision_state_dict_loads_and_fc_is_ignored(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet18", output_stride=16, init_from=path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_tiny_at_width_64_takes_the_first_stages_of_torchvision_resnet18(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()}, path)
    backbone = build_backbone("tiny", width=64, init_from=path)
    assert torch.equal(backbone.layer2[1].conv2.weight, reference.layer2[1].conv2.weight)


def test_raycseg_checkpoint_round_trip_through_a_checkpoint_directory(tmp_path):
    torch.manual_seed(1)
    trained = build_backbone("tiny", width=16)
    with torch.no_grad():
        trained.bn1.running_mean.add_(3.0)
    (tmp_path / "ckpt").mkdir()
    state = {"format": "raycseg", "backbone": trained.state_dict(), "step": 7, "stage": "cacl"}
    torch.save(state, tmp_path / "ckpt" / "state.pt")
    torch.manual_seed(2)
    fresh = build_backbone("tiny", width=16)
    load_backbone_weights(fresh, tmp_path / "ckpt")
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_missing_file_raises_cseg_error_naming_the_fix(tmp_path):
    with pytest.raises(CsegError, match="no weights at .*torchvision ResNet state dict"):
        build_backbone("tiny", init_from=tmp_path / "absent.pt")


def test_weights_of_another_architecture_are_rejected(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CsegError, match="do not fit backbone resnet50.*set the backbone name"):
        build_backbone("resnet50", init_from=path)
    with pytest.raises(CsegError, match="other shapes"):
        build_backbone("tiny", width=32, init_from=path)


def test_files_that_are_not_tensor_weights_are_rejected(tmp_path):
    pickled = tmp_path / "namespace.pt"
    torch.save(argparse.Namespace(a=1), pickled)
    with pytest.raises(CsegError, match="tensor-only"):
        build_backbone("tiny", init_from=pickled)
    other_format = tmp_path / "other.pt"
    torch.save({"format": "lightning", "state_dict": {}}, other_format)
    with pytest.raises(CsegError, match="not a raycseg checkpoint"):
        build_backbone("tiny", init_from=other_format)
