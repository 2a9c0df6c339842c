"""Confusion matrix and mIoU on hand-built cases."""

from __future__ import annotations

import pytest
import torch

from raycseg.errors import DataError
from raycseg.eval import confusion_matrix, miou_from_confusion
from raycseg.eval.metrics import iou_matrix


def test_confusion_matrix_equals_a_pixel_loop_and_skips_ignored_pixels():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(3, (2, 5, 6), generator=generator)
    target[0, 0, :] = 255
    pred = torch.randint(3, (2, 5, 6), generator=generator)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != 255:
            expected[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, 3), expected)
    assert int(expected.sum()) == 2 * 5 * 6 - 6


def test_miou_of_a_known_matrix_with_a_null_class():
    confusion = torch.tensor(
        [[3, 1, 0, 0], [0, 0, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]], dtype=torch.long
    )
    miou, ious = miou_from_confusion(confusion)
    # class 0: 3 / (3+1+1); class 1: 0 / (0+1+0); class 2: 2 / (2+0+1); class 3: absent
    assert ious == pytest.approx([0.6, 0.0, 2 / 3, None])
    assert ious[3] is None
    assert miou == pytest.approx((0.6 + 0.0 + 2 / 3) / 3)


def test_perfect_prediction_scores_one_and_ignore_does_not_count():
    target = torch.tensor([[0, 1, 255], [2, 2, 255]])
    pred = torch.tensor([[0, 1, 0], [2, 2, 1]])
    miou, ious = miou_from_confusion(confusion_matrix(pred, target, 4))
    assert miou == 1.0 and ious == [1.0, 1.0, 1.0, None]


def test_bad_labels_and_predictions_are_reported():
    with pytest.raises(DataError, match="label value 7 is outside"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="predictions must lie"):
        confusion_matrix(torch.tensor([0, 3, 1]), torch.tensor([0, 1, 1]), 3)
    with pytest.raises(DataError, match="no labelled pixels"):
        miou_from_confusion(torch.zeros(3, 3, dtype=torch.long))


def test_iou_matrix_pairs_each_class_with_each_prediction():
    confusion = torch.tensor([[4, 1], [2, 3]])
    iou = iou_matrix(confusion)
    # class 0 vs id 0: 4 / (5 + 6 - 4); class 0 vs id 1: 1 / (5 + 4 - 1)
    assert iou[0, 0] == pytest.approx(4 / 7) and iou[0, 1] == pytest.approx(1 / 8)
    assert iou[1, 0] == pytest.approx(2 / 9) and iou[1, 1] == pytest.approx(3 / 6)
