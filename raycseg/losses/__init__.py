"""Loss families, one per module: CACL, MaskContrast, ReCo.

Every loss returns a 0-dim tensor (the mean over all its anchors), L2-normalises
its own inputs and does no communication; methods gather across workers first
(``raycseg.distributed``). When nothing qualifies (no anchors, one class, empty
masks) a loss returns a zero still connected to the graph, so ``backward()`` works.
"""

from raycseg.losses.cacl import (
    CACLLoss,
    cycle_attention_loss,
    draw_pixel_negatives,
    global_contrast_loss,
    pixel_rematch_loss,
)
from raycseg.losses.maskcontrast import downsample_mask, maskcontrast_loss, saliency_bce_loss
from raycseg.losses.reco import RecoSamples, draw_reco_samples, reco_loss

__all__ = [
    "CACLLoss",
    "RecoSamples",
    "cycle_attention_loss",
    "downsample_mask",
    "draw_pixel_negatives",
    "draw_reco_samples",
    "global_contrast_loss",
    "maskcontrast_loss",
    "pixel_rematch_loss",
    "reco_loss",
    "saliency_bce_loss",
]
