"""Backbones, dense heads, DeepLab models and EMA helpers."""

from raycseg.models.backbones import (
    BACKBONE_NAMES,
    Backbone,
    build_backbone,
    normalize_images,
)
from raycseg.models.deeplab import (
    ASPP,
    DecoderFeatures,
    DeepLabV2,
    DeepLabV3Plus,
    MaskContrastHead,
    scale_aspp_rates,
)
from raycseg.models.ema import build_ema_copy, reco_ema_decay, update_ema
from raycseg.models.heads import DenseHead
from raycseg.models.weights import (
    WeightsReport,
    export_torchvision_state_dict,
    load_backbone_weights,
)

__all__ = [
    "ASPP",
    "BACKBONE_NAMES",
    "Backbone",
    "DecoderFeatures",
    "DeepLabV2",
    "DeepLabV3Plus",
    "DenseHead",
    "MaskContrastHead",
    "WeightsReport",
    "build_backbone",
    "build_ema_copy",
    "export_torchvision_state_dict",
    "load_backbone_weights",
    "normalize_images",
    "reco_ema_decay",
    "scale_aspp_rates",
    "update_ema",
]
