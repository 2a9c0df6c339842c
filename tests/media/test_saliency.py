"""Boolean map saliency and MaskContrast's mask post-processing."""

from __future__ import annotations

import numpy as np

from raycseg.media.saliency import (
    boolean_map_saliency,
    compute_saliency_mask,
    postprocess_saliency,
    rgb_to_lab,
)


def scene_with_square(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A red square on a textured grey-green background; returns (image, truth)."""
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), (90, 110, 90), dtype=np.float64)
    image += rng.normal(0, 6, image.shape)
    truth = np.zeros((size, size), dtype=bool)
    truth[30:62, 36:68] = True
    image[truth] = (220, 30, 40)
    return np.clip(image, 0, 255).astype(np.uint8), truth


def test_lab_of_reference_colours():
    lab = rgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8))[0]
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_bms_finds_a_surrounded_object():
    image, truth = scene_with_square()
    saliency = boolean_map_saliency(image)
    assert saliency.shape == truth.shape and saliency.dtype == np.float32
    assert 0.0 <= saliency.min() and saliency.max() <= 1.0
    assert saliency[truth].mean() > 3 * saliency[~truth].mean()
    mask = compute_saliency_mask(image)
    intersection, union = (mask & truth).sum(), (mask | truth).sum()
    assert intersection / union > 0.7


def test_uniform_image_has_no_salient_object():
    assert compute_saliency_mask(np.full((64, 64, 3), 128, dtype=np.uint8)) is None


def test_postprocessing_drops_small_regions_and_fills_small_holes():
    saliency = np.zeros((100, 100))
    saliency[10:60, 10:60] = 0.9  # the object (25 % of the image)
    saliency[30:35, 30:35] = 0.1  # a 25-pixel hole (< 1 %): filled
    saliency[80:88, 80:88] = 0.7  # a 64-pixel speck (< 1 %): dropped
    saliency[0:5, 90:100] = 0.2  # background touching the border stays background
    mask = postprocess_saliency(saliency)
    expected = np.zeros((100, 100), dtype=bool)
    expected[10:60, 10:60] = True
    np.testing.assert_array_equal(mask, expected)


def test_postprocessing_keeps_large_holes_and_binarises_at_half():
    saliency = np.zeros((100, 100))
    saliency[10:90, 10:90] = 0.5  # exactly 0.5 counts as foreground
    saliency[40:60, 40:60] = 0.49  # a 4 % hole stays
    mask = postprocess_saliency(saliency)
    assert mask[10:40, 10:90].all() and not mask[40:60, 40:60].any()


def test_images_with_under_one_percent_foreground_get_no_mask():
    saliency = np.zeros((100, 100))
    saliency[:9, :10] = 1.0  # 0.9 %
    assert postprocess_saliency(saliency) is None
    saliency[:11, :10] = 1.0  # 1.1 %
    assert postprocess_saliency(saliency).sum() == 110
