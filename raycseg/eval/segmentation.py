"""The `segmentation` protocol: mIoU of a trained segmenter's own predictions (ReCo).

As the official ReCo evaluation: every image at full resolution (the `pad` input
policy: reflect-padded at the bottom/right, 513 × 513 on VOC), class logits
[B, C, h, w] upsampled bilinearly (align_corners, as ReCo trains) to the input
size, argmax, cropped to each mask's own size (`raycseg.eval.scoring`), and one
confusion matrix over the whole split (`raycseg.eval.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from raycseg.errors import DataError
from raycseg.eval.features import Batch
from raycseg.eval.scoring import SplitScore, upsampled_argmax
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
    """Score a segmenter (already on `device`, in eval mode) on evaluation batches.

    Returns:
        ``{"miou", "per_class_iou", "pixels_scored"}``.

    Raises:
        DataError: the segmenter predicts another number of classes than the data has.
    """
    score = SplitScore(num_classes, device)
    for batch in val_batches:
        images = batch["image"].to(score.confusion.device)
        logits = segment_fn(normalize_images(images))
        if logits.shape[1] != num_classes:
            raise DataError(
                f"the segmenter predicts {logits.shape[1]} classes and the data has "
                f"{num_classes}; evaluate it on data with the classes it was trained on"
            )
        score.add_batch(upsampled_argmax(logits, images.shape[-2:], align_corners=True), batch)
    return score.result()
