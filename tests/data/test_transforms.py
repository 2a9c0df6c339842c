"""Augmentations: pairs, joint segmentation transforms, MaskContrast views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from raycseg.data.transforms import (
    ColorJitter,
    MaskContrastViews,
    PairViewTransform,
    ProbeTrainTransform,
    RandomGaussianBlur,
    SegmentationTrainTransform,
    blur_kernel_size,
    gaussian_blur,
    random_resized_crop_box,
    reflect_pad_bottom_right,
    resize_image,
    rotate_hue,
)


def random_image(height=48, width=64, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def test_crop_boxes_respect_the_scale_and_the_image():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, height, width = random_resized_crop_box(60, 80, (0.3, 0.6), rng)
        assert 0 <= top and top + height <= 60 and 0 <= left and left + width <= 80
        assert 0.25 <= height * width / (60 * 80) <= 0.65  # rounding at these sizes


def test_pair_views_are_uint8_of_the_asked_size_and_deterministic():
    transform = PairViewTransform(32, crop_scale=(0.3, 1.0), hue_full_range=True)
    image = random_image()
    first = transform(image, np.random.default_rng(5))
    again = transform(image, np.random.default_rng(5))
    other = transform(image, np.random.default_rng(6))
    assert first.shape == (3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_grayscale_with_probability_one_gives_equal_channels():
    transform = PairViewTransform(16, grayscale_p=1.0, jitter_p=0.0)
    view = transform(random_image(), np.random.default_rng(0))
    assert torch.equal(view[0], view[1]) and torch.equal(view[1], view[2])


def test_hue_rotation_keeps_grey_and_full_turn_is_identity():
    grey = torch.full((3, 4, 4), 77, dtype=torch.uint8)
    assert torch.equal(rotate_hue(grey, 0.3), grey)
    image = random_image(8, 8)
    assert (rotate_hue(image, 1.0).int() - image.int()).abs().max() <= 1
    red = torch.tensor([200, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert rotate_hue(red, 0.5).flatten()[0] < 50  # opposite hue: red is gone


def test_jitter_probability_zero_is_identity():
    image = random_image()
    assert torch.equal(ColorJitter(p=0.0)(image, np.random.default_rng(0)), image)


def test_segmentation_crop_pads_labels_with_ignore_and_reflects_images():
    transform = SegmentationTrainTransform(64, scale_range=(0.5, 0.5), flip_p=0.0,
                                           color_jitter=ColorJitter(p=0.0))  # fmt: skip
    rows = torch.arange(40, dtype=torch.uint8) * 5  # a vertical ramp: reflection is visible
    image = rows[None, :, None].expand(3, 40, 60).contiguous()
    label = torch.full((40, 60), 3, dtype=torch.uint8)
    out_image, out_label = transform(image, label, np.random.default_rng(0))
    assert out_image.shape == (3, 64, 64) and out_label.shape == (64, 64)
    assert (out_label[:20, :30] == 3).all()
    assert (out_label[20:] == 255).all() and (out_label[:, 30:] == 255).all()
    column = out_image[0, :, 0].long()  # the 20-row ramp, then reflected again and again
    period = torch.cat([torch.arange(20), torch.arange(18, 0, -1)])
    expected = period.repeat(2)[:64]
    assert torch.allclose(column, (expected * 10).long(), atol=6)
    assert (out_image[:, :, 30:] == out_image[:, :, :1]).all()  # right pad: same rows, no zeros


def test_segmentation_transform_moves_image_and_label_together():
    transform = SegmentationTrainTransform(
        24, scale_range=(0.8, 1.4), color_jitter=ColorJitter(p=0.0)
    )
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    label = torch.zeros(40, 40, dtype=torch.uint8)
    image[:, :, 20:] = 255
    label[:, 20:] = 1
    for seed in range(20):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        bright = out_image[0] > 127
        valid = out_label != 255
        agree = (bright == (out_label == 1)) & valid
        assert agree.sum() >= 0.95 * valid.sum()


def test_probe_augmentation_rotates_zooms_and_resizes_image_and_label_together():
    image = torch.zeros(3, 30, 50, dtype=torch.uint8)
    label = torch.zeros(30, 50, dtype=torch.uint8)
    image[:, :, 25:] = 255
    label[:, 25:] = 1
    transform = ProbeTrainTransform(24, rotation=5.0, scale_range=(0.75, 1.25))
    borders = 0
    for seed in range(12):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 24, 24) and out_label.shape == (24, 24)
        assert set(out_label.unique().tolist()) <= {0, 1, 255}
        valid = out_label != 255
        agree = ((out_image[0] > 127) == (out_label == 1)) & valid
        assert agree.sum() >= 0.9 * valid.sum()
        borders += int((~valid).any())  # zoomed out: pixels from outside the image are ignored
        again = transform(image, label, np.random.default_rng(seed))
        assert torch.equal(again[0], out_image) and torch.equal(again[1], out_label)
    assert borders > 0
    plain_image, plain_label = ProbeTrainTransform(24, augment=False)(
        image, label, np.random.default_rng(0)
    )
    assert torch.equal(plain_image, resize_image(image, 24))
    assert torch.equal(
        plain_label, TF.resize(label[None], [24, 24], TF.InterpolationMode.NEAREST)[0]
    )


def test_reflect_padding_keeps_every_pixel_where_it_was():
    image = random_image(5, 7)
    padded = reflect_pad_bottom_right(image, (9, 12))
    assert padded.shape == (3, 9, 12)
    assert torch.equal(padded[:, :5, :7], image)
    assert torch.equal(padded[:, 5, :7], image[:, 3, :])  # reflected about the last row
    with pytest.raises(ValueError, match="cannot pad"):
        reflect_pad_bottom_right(image, (4, 7))


def test_maskcontrast_views_satisfy_the_area_constraint():
    views = MaskContrastViews(32, crop_scale=(0.2, 1.0), min_mask_area=0.1, max_mask_area=0.9)
    image = random_image(64, 64)
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[16:48, 16:48] = 1
    accepted = 0
    for seed in range(40):
        result = views(image, mask, np.random.default_rng(seed))
        if result is None:
            continue
        accepted += 1
        query, query_mask, key, key_mask = result
        assert query.shape == key.shape == (3, 32, 32) and query.dtype == torch.uint8
        assert query_mask.dtype == torch.bool
        for view_mask in (query_mask, key_mask):
            assert 0.1 < view_mask.float().mean().item() < 0.9
    assert accepted >= 20


@pytest.mark.parametrize("fill", [0, 1])
def test_maskcontrast_refuses_empty_and_full_masks(fill):
    views = MaskContrastViews(16)
    mask = torch.full((32, 32), fill, dtype=torch.uint8)
    assert views(random_image(32, 32), mask, np.random.default_rng(0)) is None


def test_blur_kernel_is_about_a_tenth_of_the_view_and_odd():
    assert [blur_kernel_size(side) for side in (224, 64, 32, 9)] == [23, 7, 3, 1]


def test_gaussian_blur_matches_torchvision_and_keeps_flat_images():
    image = random_image(40, 40)
    reference = TF.gaussian_blur(image, [5, 5], [1.3, 1.3])
    assert (gaussian_blur(image, 1.3, 5).int() - reference.int()).abs().max() <= 1
    flat = torch.full((3, 12, 12), 90, dtype=torch.uint8)
    assert torch.equal(gaussian_blur(flat, 2.0, 7), flat)


def test_blur_happens_with_its_probability_and_is_deterministic():
    blur = RandomGaussianBlur(p=0.3, sigma=(1.0, 2.0))  # sigma >= 1: every blur shows
    image = random_image(32, 32)
    rng = np.random.default_rng(0)
    outputs = [blur(image, rng) for _ in range(1000)]
    blurred = sum(not torch.equal(out, image) for out in outputs)
    assert 240 <= blurred <= 360  # 300 ± 4 binomial standard deviations
    rng_again = np.random.default_rng(0)
    again = [blur(image, rng_again) for _ in range(50)]
    assert all(torch.equal(a, b) for a, b in zip(again, outputs[:50], strict=True))
    assert RandomGaussianBlur().p == 0.5 and RandomGaussianBlur().sigma == (0.1, 2.0)


def test_pair_views_take_channels_last_frames_as_they_are():
    frame = random_image(40, 52).permute(1, 2, 0).contiguous()  # a decoded [H, W, 3] frame
    strided = frame.permute(2, 0, 1)  # [3, H, W], channels-last strides, no copy
    transform = PairViewTransform(24)
    for seed in range(10):
        fast = transform(strided, np.random.default_rng(seed))
        assert torch.equal(fast, transform(strided.contiguous(), np.random.default_rng(seed)))
        assert fast.is_contiguous() and fast.shape == (3, 24, 24)
