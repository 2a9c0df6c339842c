"""Backbones, dense heads, DeepLab models and EMA helpers."""

from raycseg.models.backbones import (
    BACKBONE_NAMES,
    Backbone,
    build_backbone,
    load_backbone_weights,
    normalize_images,
)
from raycseg.models.deeplab import (
    ASPP,
    DeepLabV2,
    DeepLabV3Plus,
    MaskContrastHead,
    scale_aspp_rates,
)
from raycseg.models.ema import build_ema_copy, reco_ema_decay, update_ema
from raycseg.models.heads import DenseHead

__all__ = [
    "ASPP",
    "BACKBONE_NAMES",
    "Backbone",
    "DeepLabV2",
    "DeepLabV3Plus",
    "DenseHead",
    "MaskContrastHead",
    "build_backbone",
    "build_ema_copy",
    "load_backbone_weights",
    "normalize_images",
    "reco_ema_decay",
    "scale_aspp_rates",
    "update_ema",
]
