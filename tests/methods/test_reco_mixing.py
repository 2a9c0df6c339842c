"""ReCo's unlabelled-batch augmentation: image, pseudo-label and confidence move together."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from raycseg.methods.reco_mixing import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    augment_unlabelled,
    class_mix_masks,
    color_jitter_batch,
    gaussian_blur_batch,
    mix_batch,
    photometric,
    photometric_and_flip,
    random_rescale_crop,
)


def tagged_batch(batch=4, size=16, num_classes=5, seed=0):
    """Blocky labels; image channel 1 and the confidence both name the source image."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (batch, size // 4, size // 4), generator=generator)
    labels = coarse.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    labels[:, 0, 0] = IGNORE_INDEX
    images = torch.zeros(batch, 3, size, size)
    images[:, 0] = (labels % 10).float() / 10
    images[:, 1] = torch.arange(batch).view(-1, 1, 1) / 10
    confidence = (torch.arange(batch).view(-1, 1, 1) / 10).expand(-1, size, size).clone()
    return images, labels, confidence


def test_classmix_keeps_half_of_each_images_classes_whole():
    _, labels, _ = tagged_batch(batch=6, size=32)
    keep = class_mix_masks(labels, torch.Generator().manual_seed(1))
    for b in range(labels.shape[0]):
        valid = labels[b] != IGNORE_INDEX
        classes = labels[b][valid].unique()
        kept = labels[b][keep[b]].unique()
        assert kept.numel() == classes.numel() // 2
        assert torch.equal(keep[b], torch.isin(labels[b], kept) & valid)


def test_classmix_moves_image_label_and_confidence_together():
    images, labels, confidence = tagged_batch(batch=4, size=16)
    mixed, mixed_labels, mixed_conf = mix_batch(
        images, labels, confidence, "classmix", generator=torch.Generator().manual_seed(0)
    )
    source = (mixed[:, 1] * 10).round().long()  # which image each pixel came from
    own = torch.arange(4).view(-1, 1, 1)
    assert ((source == own) | (source == (own + 1) % 4)).all()
    assert torch.allclose(mixed_conf, source.float() / 10)
    expected_labels = torch.gather(labels, 0, source)
    assert torch.equal(mixed_labels, expected_labels)
    assert (source == own).any() and (source != own).any()


@pytest.mark.parametrize("mode", ["cutmix", "cutout"])
def test_cut_boxes_cover_half_the_image(mode):
    images, labels, confidence = tagged_batch(batch=8, size=16)
    labels[:] = 1
    mixed, mixed_labels, mixed_conf = mix_batch(
        images, labels, confidence, mode, generator=torch.Generator().manual_seed(3)
    )
    own = (mixed[:, 1] * 10).round().long() == torch.arange(8).view(-1, 1, 1)
    if mode == "cutmix":
        box = ~own
        assert torch.equal(mixed_labels, labels)
    else:
        box = mixed_labels == IGNORE_INDEX
        fill = torch.tensor(IMAGENET_MEAN).view(3, 1)
        assert torch.allclose(mixed.permute(1, 0, 2, 3)[:, box], fill.expand(-1, int(box.sum())))
        assert (mixed_conf[box] == 0).all() and torch.equal(
            mixed[~box[:, None].expand_as(mixed)], images[~box[:, None].expand_as(images)]
        )
    for b in range(8):
        rows, cols = box[b].nonzero().unbind(1)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert box[b].sum() == height * width  # a rectangle
        assert abs(int(height * width) - 128) <= 8 and width > 8


def test_rescale_crop_carries_label_and_confidence_together():
    size = 8
    labels = torch.arange(size * size).view(1, size, size).repeat(4, 1, 1)
    confidence = labels.float() / 100
    images = torch.rand(4, 3, size, size)
    generator = torch.Generator().manual_seed(0)
    _, zoomed, zoomed_conf = random_rescale_crop(
        images, labels, confidence, (2.0, 2.0), generator=generator
    )
    assert (zoomed != IGNORE_INDEX).all() and torch.allclose(zoomed_conf, zoomed.float() / 100)
    for b in range(4):  # each image shows a 4x4 window of the source (5x5 with a sub-pixel shift)
        rows, cols = zoomed[b].unique() // size, zoomed[b].unique() % size
        assert rows.max() - rows.min() <= 4 and cols.max() - cols.min() <= 4
        assert zoomed[b].unique().numel() >= 16
    _, shrunk, shrunk_conf = random_rescale_crop(
        images, labels, confidence, (0.5, 0.5), generator=generator
    )
    assert (shrunk[:, :4, :4] != IGNORE_INDEX).all() and (shrunk[:, 4:, :] == IGNORE_INDEX).all()
    assert (shrunk_conf[:, 4:, :] == 0).all() and (shrunk_conf[:, :, 4:] == 0).all()
    assert torch.allclose(shrunk_conf[:, :4, :4], shrunk[:, :4, :4].float() / 100)


def test_flip_is_joint_and_photometric_stays_in_range():
    images, labels, confidence = tagged_batch(batch=8, size=16)
    confidence = labels.float() / 100
    out, out_labels, out_conf = photometric_and_flip(
        images,
        labels,
        confidence,
        (0.25, 0.25, 0.25, 0.25),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.allclose(out_conf, out_labels.float() / 100)
    flipped = ~(out_labels == labels).all(dim=(1, 2))
    assert flipped.any() and not flipped.all()
    assert out.min() >= 0 and out.max() <= 1


def test_jitter_with_zero_strength_and_blur_match_references():
    images = torch.rand(3, 3, 20, 20)
    assert torch.allclose(color_jitter_batch(images, (0.0, 0.0, 0.0, 0.0)), images, atol=1e-5)
    sigma = torch.tensor([0.2, 0.7, 1.1])
    blurred = gaussian_blur_batch(images, sigma)
    for b in range(3):
        expected = TF.gaussian_blur(images[b], kernel_size=9, sigma=float(sigma[b]))
        assert torch.allclose(blurred[b], expected, atol=1e-5)


def test_full_chain_shapes_and_ignore_pixels():
    images, labels, confidence = tagged_batch(batch=4, size=32)
    confidence[labels == IGNORE_INDEX] = 0.0
    out = augment_unlabelled(
        images, labels, confidence, mix="classmix", scale_range=(0.5, 1.5),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out[0].shape == images.shape and out[1].dtype == torch.long
    assert (out[2][out[1] == IGNORE_INDEX] == 0).all()
    assert ((out[1] == IGNORE_INDEX) | (out[1] < 5)).all()


def test_photometric_jitters_and_blurs_some_images_and_keeps_the_rest():
    images = torch.rand(64, 3, 12, 12)
    out = photometric(images, (0.25, 0.25, 0.25, 0.25), generator=torch.Generator().manual_seed(0))
    changed = ~torch.isclose(out, images, atol=1e-6).flatten(1).all(dim=1)
    # unchanged only when neither jitter (p 0.8) nor blur (p 0.5) drew: 10 % expected
    assert 0 < int((~changed).sum()) < 20 and out.min() >= 0 and out.max() <= 1
