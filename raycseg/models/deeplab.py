"""DeepLab segmentation models on a `Backbone`, for ReCo and MaskContrast.

DeepLabv3+ and DeepLabv2 are ReCo's; the DeepLabv3 embedding/saliency model is
MaskContrast's.

Every model takes ImageNet-normalised images (`normalize_images`) and exposes
its trunk as ``.backbone`` so the trainer can save the backbone state dict.

ASPP rates are constructor arguments with the specs' defaults. The defaults
assume ~21–33 pixel feature maps (321–513 crops at stride 16, 224 at stride 8);
on the 16×16 maps of the tiny backbone at 64×64 most taps of an 18-rate conv
land in the zero padding. `scale_aspp_rates` rescales a set of rates to another
feature-map size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raycseg.models.backbones import Backbone

RECO_ASPP_RATES = (6, 12, 18)
DEEPLABV2_RATES = (6, 12, 18, 24)
MASKCONTRAST_ASPP_RATES = (12, 24, 36)
ASPP_CHANNELS = 256
LOW_LEVEL_PROJECTION = 48


def scale_aspp_rates(
    rates: Sequence[int], feature_size: int, reference_feature_size: int
) -> tuple[int, ...]:
    """Rescale ASPP rates in proportion to the feature-map size (each rate at least 1).

    Example: ReCo's 6/12/18 on 21×21 maps (321 crop, stride 16) become 5/9/14 on
    the tiny backbone's 16×16 maps, and 2/3/5 on 6×6 maps.
    """
    ratio = feature_size / reference_feature_size
    return tuple(max(1, round(rate * ratio)) for rate in rates)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Module):
    """Global average pool → 1×1 conv-BN-ReLU → bilinear upsample back to the map size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.project = _conv_bn_relu(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] → [B, out_channels, h, w]."""
        pooled = self.project(self.pool(x))
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """DeepLabv3 atrous spatial pyramid pooling.

    Branches: one 1×1, one dilated 3×3 per rate, and image pooling, each
    conv-BN-ReLU to `out_channels`; concatenated, projected by 1×1 conv-BN-ReLU,
    then dropout. Shapes: [B, C, h, w] → [B, out_channels, h, w].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = ASPP_CHANNELS,
        rates: Sequence[int] = RECO_ASPP_RATES,
        dropout: float = 0.0,
    ):
        super().__init__()
        branches = [_conv_bn_relu(in_channels, out_channels, 1)]
        branches += [_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in rates]
        branches.append(ImagePooling(in_channels, out_channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-rate context features of `x`."""
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _conv_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 conv (no bias) → BN → ReLU → 1×1 conv with bias (ReCo's classifier/representation head)."""
    return nn.Sequential(
        *_conv_bn_relu(in_channels, ASPP_CHANNELS, 3), nn.Conv2d(ASPP_CHANNELS, out_channels, 1)
    )


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with classifier and representation heads (docs/methods/reco.md §1).

    ASPP (no dropout) on the final features; the decoder projects the layer1
    ("low") features 1×1 → 48 (BN, ReLU), upsamples the ASPP output
    (bilinear, align_corners=True) to their size and concatenates (256 + 48).
    Both heads read that tensor.

    Shapes (h4 × w4 = the layer1 grid: stride 4, or 2 for the tiny backbone):
        forward: normalised images float [B, 3, H, W] →
        (logits [B, num_classes, h4, w4], rep [B, rep_dim, h4, w4]).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        rep_dim: int = 256,
        aspp_rates: Sequence[int] = RECO_ASPP_RATES,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.rep_dim = rep_dim
        self.aspp = ASPP(backbone.out_channels, ASPP_CHANNELS, aspp_rates, dropout=0.0)
        self.low_level = _conv_bn_relu(backbone.low_level_channels, LOW_LEVEL_PROJECTION, 1)
        decoder_channels = ASPP_CHANNELS + LOW_LEVEL_PROJECTION
        self.classifier = _conv_head(decoder_channels, num_classes)
        self.representation = _conv_head(decoder_channels, rep_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and representations at the layer1 resolution."""
        features = self.backbone.forward_features(images)
        low = self.low_level(features["low"])
        context = F.interpolate(
            self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=True
        )
        decoded = torch.cat([context, low], dim=1)
        return self.classifier(decoded), self.representation(decoded)


class DeepLabV2(nn.Module):
    """DeepLabv2 with a representation head (docs/methods/reco.md §1).

    Classifier: the sum of one dilated 3×3 conv C_out → num_classes per rate
    (weights N(0, 0.01), bias). Representation: a single 1×1 conv → rep_dim.
    Both read the final features; the spec builds the backbone at output stride 8.

    Shapes: forward: normalised images [B, 3, H, W] →
        (logits [B, num_classes, h, w], rep [B, rep_dim, h, w]) at the backbone's stride.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        rep_dim: int = 256,
        rates: Sequence[int] = DEEPLABV2_RATES,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.rep_dim = rep_dim
        self.classifier = nn.ModuleList(
            nn.Conv2d(backbone.out_channels, num_classes, 3, padding=rate, dilation=rate)
            for rate in rates
        )
        for conv in self.classifier:
            nn.init.normal_(conv.weight, 0.0, 0.01)
        self.representation = nn.Conv2d(backbone.out_channels, rep_dim, 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and representations at the backbone's output stride."""
        features = self.backbone(images)
        logits = torch.stack([conv(features) for conv in self.classifier]).sum(dim=0)
        return logits, self.representation(features)


class MaskContrastHead(nn.Module):
    """MaskContrast's model: backbone + DeepLabv3 head + embedding and saliency heads.

    docs/methods/maskcontrast.md §3: ASPP (rates 12/24/36 + image
    pooling, dropout 0.5) → 3×3 conv-BN-ReLU → 256-d decoder feature; a 1×1 conv
    256 → D with bias gives the embeddings, a 1×1 conv 256 → 1 without bias the
    saliency logits. Upsampling to the input size is left to the caller.

    Shapes (h × w = the backbone's output grid):
        forward: normalised images [B, 3, H, W] →
        (embeddings [B, D, h, w], saliency_logits [B, h, w]);
        decoder_features: [B, 3, H, W] → [B, 256, h, w] (what the linear probe reads).
    """

    def __init__(
        self,
        backbone: Backbone,
        embedding_dim: int = 32,
        aspp_rates: Sequence[int] = MASKCONTRAST_ASPP_RATES,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = embedding_dim
        self.decoder = nn.Sequential(
            ASPP(backbone.out_channels, ASPP_CHANNELS, aspp_rates, dropout=dropout),
            *_conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS, 3),
        )
        self.embedding = nn.Conv2d(ASPP_CHANNELS, embedding_dim, 1, bias=True)
        self.saliency = nn.Conv2d(ASPP_CHANNELS, 1, 1, bias=False)

    def decoder_features(self, images: torch.Tensor) -> torch.Tensor:
        """The 256-d decoder features [B, 256, h, w] of normalised images."""
        return self.decoder(self.backbone(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel embeddings [B, D, h, w] and saliency logits [B, h, w]."""
        decoded = self.decoder_features(images)
        return self.embedding(decoded), self.saliency(decoded).squeeze(1)


class DecoderFeatures(nn.Module):
    """A `MaskContrastHead`'s 256-d decoder features as a module's output.

    The linear probe reads these for a MaskContrast checkpoint, as the official
    protocol does; freezing this module freezes the whole head and its backbone.
    Shapes: normalised images [B, 3, H, W] → [B, 256, h, w].
    """

    def __init__(self, head: MaskContrastHead):
        super().__init__()
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder features of `images`."""
        return self.head.decoder_features(images)
