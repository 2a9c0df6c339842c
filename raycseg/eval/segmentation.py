"""The `segmentation` protocol: mIoU of a trained segmenter's own predictions (ReCo).

Batches are ``{"image": uint8 [B, 3, H, W], "label": long [B, H, W]}`` (255 =
ignore). The segmenter maps ImageNet-normalised images [B, 3, H, W] to class
logits [B, C, h, w]; they are upsampled bilinearly (align_corners, as ReCo
trains) to the label size, and their argmax is scored on one confusion matrix
over the whole split (`raycseg.eval.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from raycseg.errors import DataError
from raycseg.eval.features import Batch
from raycseg.eval.metrics import confusion_matrix, miou_from_confusion
from raycseg.models.backbones import normalize_images

SegmentFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def run_segmentation_protocol(
    segment_fn: SegmentFn,
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    device: str | torch.device,
) -> dict:
    """Score a segmenter (already on `device`, in eval mode) on labelled batches.

    Returns:
        ``{"miou", "per_class_iou"}``.

    Raises:
        DataError: the segmenter predicts another number of classes than the data has.
    """
    device = torch.device(device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for batch in val_batches:
        labels = batch["label"].to(device)
        logits = segment_fn(normalize_images(batch["image"].to(device)))
        if logits.shape[1] != num_classes:
            raise DataError(
                f"the segmenter predicts {logits.shape[1]} classes and the data has "
                f"{num_classes}; evaluate it on data with the classes it was trained on"
            )
        logits = F.interpolate(
            logits.float(), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=True
        )
        confusion += confusion_matrix(logits.argmax(dim=1), labels, num_classes)
    miou, ious = miou_from_confusion(confusion)
    return {"miou": miou, "per_class_iou": ious}
