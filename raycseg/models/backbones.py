"""ResNet backbones for dense features, and the image normalisation they expect.

Names (`build_backbone`):

- ``resnet18``, ``resnet50``, ``resnet101``: torchvision ResNets built with
  ``weights=None`` (no download) and without the pooling/fc head. Output stride
  32, 16 or 8: the last one or two stages trade their stride for dilation
  (torchvision's ``replace_stride_with_dilation`` for the Bottleneck nets; for
  ResNet-18, whose ``BasicBlock`` torchvision refuses to dilate, the same
  rewrite is done here).
- ``tiny``: the quickstart backbone (why: docs/methods/cacl.md §6):
  ResNet-18 stem + layer1 + layer2 with ``BasicBlock`` at base width ``width``
  and no max-pool, so output stride 4 and 2·width channels (64×64 → 16×16).

Module names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1`` ...),
so a torchvision state dict loads as is.

Weights (`init_from`: torchvision's ImageNet weights by name, torchvision, MoCo,
DenseCL or raycseg files) are read in `raycseg.models.weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock

from raycseg.errors import CsegError
from raycseg.models.weights import RESNET_STAGES, WeightsReport, load_backbone_weights

BACKBONE_NAMES = ("tiny", "resnet18", "resnet50", "resnet101")
RESNET_OUTPUT_STRIDES = (8, 16, 32)
TINY_OUTPUT_STRIDE = 4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Turn images into the float32 ImageNet-normalised input the backbones expect.

    Args:
        images: uint8 [B, 3, H, W] in [0, 255] (what the data loaders yield), or a
            floating tensor of the same shape already scaled to [0, 1].

    Returns:
        float32 [B, 3, H, W] on the input's device, (x − mean) / std per channel.
    """
    if images.dtype == torch.uint8:
        scaled = images.to(torch.float32) / 255.0
    elif images.is_floating_point():
        scaled = images.to(torch.float32)
    else:
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (scaled - mean) / std


class Backbone(nn.Module):
    """A ResNet trunk that returns dense features.

    Attributes:
        name: the name given to `build_backbone`.
        out_channels: channels of the final features.
        low_level_channels: channels of the layer1 features (the DeepLabv3+ decoder input).
        output_stride: input size / final feature size.
        low_level_stride: input size / layer1 feature size (4, or 2 for ``tiny``).
        width: base width (64 for the torchvision ResNets).
        weights_reports: what each `load_backbone_weights` call loaded and ignored, in order.
    """

    def __init__(
        self,
        *,
        name: str,
        stem: nn.Module,
        stages: dict[str, nn.Module],
        use_maxpool: bool,
        out_channels: int,
        low_level_channels: int,
        output_stride: int,
        width: int,
    ):
        super().__init__()
        self.name = name
        self.out_channels = out_channels
        self.low_level_channels = low_level_channels
        self.output_stride = output_stride
        self.low_level_stride = 4 if use_maxpool else 2
        self.width = width
        self.weights_reports: list[WeightsReport] = []
        self.conv1, self.bn1, self.relu = stem.conv1, stem.bn1, stem.relu
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if use_maxpool else nn.Identity()
        self.stage_names = tuple(stages)
        for stage_name, stage in stages.items():
            self.add_module(stage_name, stage)

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture with `build_backbone`."""
        return {"name": self.name, "output_stride": self.output_stride, "width": self.width}

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk on normalised images [B, 3, H, W].

        Returns:
            ``{"low": layer1 features [B, low_level_channels, H/low_level_stride, ...],
            "out": final features [B, out_channels, H/output_stride, ...]}``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        x = low
        for stage_name in self.stage_names[1:]:
            x = getattr(self, stage_name)(x)
        return {"low": low, "out": x}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final features [B, out_channels, h, w] of normalised images [B, 3, H, W]."""
        return self.forward_features(x)["out"]


def build_backbone(
    name: str,
    *,
    output_stride: int | None = None,
    width: int = 64,
    init_from: str | Path | None = None,
) -> Backbone:
    """Build a backbone by name, randomly initialised or loaded from a weight file.

    Args:
        name: one of ``tiny``, ``resnet18``, ``resnet50``, ``resnet101``.
        output_stride: 8, 16 or 32 for the ResNets (None means 16); ``tiny`` is
            always 4 (None or 4).
        width: base width of ``tiny`` (the quickstart uses 32); the ResNets are 64.
        init_from: optional weights: ``torchvision:resnet50`` (ImageNet, via the torch hub
            cache), a weight file or a checkpoint directory (see `raycseg.models.weights`).

    Raises:
        CsegError: unknown name, unsupported stride/width, or unusable weights.
    """
    if name == "tiny":
        backbone = _build_tiny(output_stride, width)
    elif name in ("resnet18", "resnet50", "resnet101"):
        backbone = _build_resnet(name, 16 if output_stride is None else output_stride, width)
    else:
        raise CsegError(f"unknown backbone {name!r}; use one of {', '.join(BACKBONE_NAMES)}")
    if init_from is not None:
        load_backbone_weights(backbone, init_from)
    return backbone


def _build_tiny(output_stride: int | None, width: int) -> Backbone:
    if output_stride not in (None, TINY_OUTPUT_STRIDE):
        raise CsegError(
            f"the tiny backbone has output stride 4, not {output_stride}; "
            "drop output_stride or set it to 4"
        )
    if width < 1:
        raise CsegError(f"backbone width must be a positive integer, got {width}")
    stem = nn.Module()
    stem.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    stem.bn1 = nn.BatchNorm2d(width)
    stem.relu = nn.ReLU(inplace=True)
    stages = {
        "layer1": _basic_stage(width, width, stride=1),
        "layer2": _basic_stage(width, 2 * width, stride=2),
    }
    backbone = Backbone(
        name="tiny",
        stem=stem,
        stages=stages,
        use_maxpool=False,
        out_channels=2 * width,
        low_level_channels=width,
        output_stride=TINY_OUTPUT_STRIDE,
        width=width,
    )
    _init_like_torchvision(backbone)
    return backbone


def _basic_stage(in_channels: int, channels: int, *, stride: int) -> nn.Sequential:
    """Two torchvision BasicBlocks, the first one strided (with a 1×1 projection if needed)."""
    downsample = None
    if stride != 1 or in_channels != channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(channels),
        )
    return nn.Sequential(
        BasicBlock(in_channels, channels, stride=stride, downsample=downsample),
        BasicBlock(channels, channels),
    )


def _init_like_torchvision(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _build_resnet(name: str, output_stride: int, width: int) -> Backbone:
    if output_stride not in RESNET_OUTPUT_STRIDES:
        raise CsegError(f"{name} supports output stride 8, 16 or 32, not {output_stride}")
    if width != 64:
        raise CsegError(f"width applies to the tiny backbone only; drop width for {name}")
    dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}
    dilate = dilate[output_stride]
    if name == "resnet18":
        net = resnet.resnet18(weights=None)
        _dilate_basic_resnet(net, dilate)
        low_channels, out_channels = 64, 512
    else:
        factory = resnet.resnet50 if name == "resnet50" else resnet.resnet101
        net = factory(weights=None, replace_stride_with_dilation=dilate)
        low_channels, out_channels = 256, 2048
    return Backbone(
        name=name,
        stem=net,
        stages={stage: getattr(net, stage) for stage in RESNET_STAGES},
        use_maxpool=True,
        out_channels=out_channels,
        low_level_channels=low_channels,
        output_stride=output_stride,
        width=64,
    )


def _dilate_basic_resnet(net: resnet.ResNet, dilate: list[bool]) -> None:
    """Trade the stride of layer2..4 for dilation where `dilate` says so (BasicBlock nets).

    The strided 3×3 conv of a dilated stage keeps the dilation reached so far and
    loses its stride (so does its 1×1 projection); every later 3×3 conv in the
    stage uses the doubled dilation. Sampled every 2^k pixels, the output then
    equals the undilated network's (for even feature sizes, BN in eval mode).
    """
    dilation = 1
    for stage_name, replace in zip(RESNET_STAGES[1:], dilate, strict=True):
        if not replace:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(getattr(net, stage_name)):
            first = index == 0
            _set_conv(block.conv1, stride=1, dilation=previous if first else dilation)
            _set_conv(block.conv2, stride=1, dilation=dilation)
            if first and block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1


def _set_conv(conv: nn.Conv2d, *, stride: int, dilation: int) -> None:
    conv.stride = (stride, stride)
    conv.dilation = (dilation, dilation)
    conv.padding = (dilation, dilation)
