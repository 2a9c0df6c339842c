"""Confusion matrices and mIoU.

One confusion matrix is accumulated over the whole split, then turned into
per-class IoU. Rows are ground-truth classes, columns predictions. Pixels
labelled `ignore_index` (255) are left out. Scores are fractions in [0, 1]; a
class with TP + FP + FN = 0 has IoU ``None`` and does not enter the mean.
"""

from __future__ import annotations

import torch

from raycseg.errors import DataError

IGNORE_INDEX = 255


class ProtocolSkipped(Exception):
    """An evaluation protocol cannot run on the given data; the message says why."""


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise DataError unless every label is a class id in [0, num_classes) or `ignore_index`."""
    labels = labels.long()
    out_of_range = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(out_of_range.any()):
        bad = int(labels[out_of_range][0])
        raise DataError(
            f"label value {bad} is outside [0, {num_classes}) and is not {ignore_index}; "
            f"set num_classes to the dataset's class count or map the value to {ignore_index}"
        )


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Count (target, prediction) pairs with one bincount.

    Args:
        pred: integer tensor of predicted ids in [0, num_classes), any shape.
        target: integer tensor of the same shape; `ignore_index` marks unlabelled pixels.
        num_classes: C.
        ignore_index: label value to skip.

    Returns:
        int64 [C, C] on target's device; entry [t, p] counts pixels of class t predicted p.

    Raises:
        DataError: a target value is neither a class id nor `ignore_index`.
        ValueError: shapes differ, or a prediction of a labelled pixel is out of range.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    check_labels(target, num_classes, ignore_index)
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    labelled = target != ignore_index
    target, pred = target[labelled], pred[labelled]
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predictions must lie in [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_iou(confusion: torch.Tensor) -> list[float | None]:
    """IoU_c = TP / (TP + FP + FN) per class, ``None`` where TP + FP + FN = 0."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - true_positive
    return [
        None if float(u) == 0 else float(tp / u)
        for tp, u in zip(true_positive.cpu(), union.cpu(), strict=True)
    ]


def miou_from_confusion(confusion: torch.Tensor) -> tuple[float, list[float | None]]:
    """Mean IoU over the classes that occur (in the labels or the predictions).

    Args:
        confusion: [C, C] counts, rows = ground truth, columns = prediction.

    Returns:
        (miou, per_class_iou): the mean of the non-null entries, and the C entries.

    Raises:
        DataError: the matrix is empty (no labelled pixel was scored).
    """
    ious = per_class_iou(confusion)
    present = [iou for iou in ious if iou is not None]
    if not present:
        raise DataError(
            "no labelled pixels to score; check that the evaluation split has masks "
            f"with values other than {IGNORE_INDEX}"
        )
    return sum(present) / len(present), ious


def remap_confusion(confusion: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Confusion matrix after renaming each predicted id (column) p to class ``mapping[p]``."""
    remapped = torch.zeros_like(confusion)
    return remapped.index_add_(1, mapping.to(confusion.device), confusion)


def iou_matrix(confusion: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU between every ground-truth class t and predicted id p.

    IoU[t, p] = n_tp / (|t| + |p| − n_tp), with |t| the row sum and |p| the
    column sum; 0 where both are empty. float64 [C, C].
    """
    confusion = confusion.double()
    union = confusion.sum(dim=1, keepdim=True) + confusion.sum(dim=0, keepdim=True) - confusion
    return torch.where(union > 0, confusion / union.clamp_min(1), torch.zeros_like(confusion))
