"""Colour jitter as one affine map and the truncated separable blur, against slow references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from raycseg.data.photometric import (
    LUMA,
    ColorJitter,
    RandomGaussianBlur,
    blur_float,
    blur_radius,
    color_affine,
    to_uint8,
)
from raycseg.data.transforms import (
    PairViewTransform,
    blur_kernel_size,
    crop_resize,
    random_resized_crop_box,
)

RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def smooth_image(height=40, width=56, low=0, high=255, seed=0) -> torch.Tensor:
    """A uint8 [3, H, W] image of smooth colour gradients with values in [low, high]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    planes = [
        np.sin(rng.uniform(1, 6) * ys + rng.uniform(1, 6) * xs + rng.uniform(0, 6)) for _ in "rgb"
    ]
    image = low + (high - low) * (np.stack(planes) + 1) / 2
    return torch.from_numpy(np.round(image).astype(np.uint8))


def slow_op(pixels: np.ndarray, index: int, value: float) -> np.ndarray:
    """One jitter op on float64 [3, N] pixels, written out on its own, no clamping."""
    luma = LUMA @ pixels
    if index == 0:  # brightness: blend with black
        return value * pixels
    if index == 1:  # contrast: blend with the image's mean luma
        return value * pixels + (1 - value) * luma.mean()
    if index == 2:  # saturation: blend with the pixel's luma
        return value * pixels + (1 - value) * luma[None]
    yiq = RGB_TO_YIQ @ pixels  # hue: rotate the I/Q plane
    angle = 2 * math.pi * value
    i, q = yiq[1].copy(), yiq[2].copy()
    yiq[1], yiq[2] = (
        math.cos(angle) * i - math.sin(angle) * q,
        math.sin(angle) * i + math.cos(angle) * q,
    )
    return np.linalg.solve(RGB_TO_YIQ, yiq)


def test_the_composed_map_is_the_ops_applied_one_by_one_in_the_drawn_order():
    pixels = smooth_image().reshape(3, -1).double().numpy()
    jitter = ColorJitter(hue_full_range=True, p=1.0)
    orders = set()
    for seed in range(40):
        draw = jitter.draw(np.random.default_rng(seed))
        orders.add(draw.order)
        grayscale = seed % 3 == 0
        matrix, offset = color_affine(draw, grayscale, pixels.mean(axis=1))
        expected = pixels
        for index in draw.order:
            expected = slow_op(expected, index, draw.factors[index])
        if grayscale:
            expected = np.repeat((LUMA @ expected)[None], 3, axis=0)
        assert np.abs(matrix @ pixels + offset[:, None] - expected).max() < 1e-9
    assert len(orders) > 10  # the order really is drawn


def test_draws_keep_torchvisions_ranges_probability_and_stream():
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    rng = np.random.default_rng(0)
    draws = [jitter.draw(rng) for _ in range(2000)]
    applied = [draw for draw in draws if draw is not None]
    assert 1520 <= len(applied) <= 1680  # 1600 ± 4 binomial standard deviations
    factors = np.array([draw.factors for draw in applied])
    assert (factors[:, :3] >= 0.6).all() and (factors[:, :3] <= 1.4).all()
    assert (np.abs(factors[:, 3]) <= 0.1).all() and factors[:, 3].std() > 0.05
    assert all(sorted(draw.order) == [0, 1, 2, 3] for draw in applied)
    reference = np.random.default_rng(0)  # p, 3 factors, hue, permutation: nothing else
    for draw in draws[:50]:
        if reference.random() >= 0.8:
            assert draw is None
            continue
        factors = [float(reference.uniform(0.6, 1.4)) for _ in range(3)]
        factors.append(float(reference.uniform(-0.1, 0.1)))
        assert draw.factors == tuple(factors) and draw.order == tuple(reference.permutation(4))
    assert ColorJitter(0.0, 0.4, 0.0, 0.0, p=1.0).draw(rng).factors[::2] == (None, None)


def torchvision_jitter(image: torch.Tensor, draw) -> torch.Tensor:
    """The ops one by one on uint8 as torchvision applies them (clamped after each)."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for index in draw.order:
        value = draw.factors[index]
        if index < 3:
            image = ops[index](image, value)
        else:  # the YIQ rotation, rounded
            matrix = torch.from_numpy(np.linalg.solve(RGB_TO_YIQ, np.eye(3)))
            angle = 2 * math.pi * value
            rotation = torch.tensor([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)],
                                     [0, math.sin(angle), math.cos(angle)]], dtype=torch.float64)  # fmt: skip
            full = matrix @ rotation @ torch.from_numpy(RGB_TO_YIQ)
            rotated = torch.einsum("ij,jhw->ihw", full, image.double())
            image = rotated.round().clamp(0, 255).to(torch.uint8)
    return image


def test_jitter_agrees_with_torchvisions_op_by_op_jitter_when_nothing_saturates():
    image = smooth_image(low=70, high=150)  # 150 x 1.4 x 1.2 stays under 255
    jitter = ColorJitter(p=1.0)
    gaps = []
    for seed in range(40):
        fast = jitter(image, np.random.default_rng(seed))
        slow = torchvision_jitter(image, jitter.draw(np.random.default_rng(seed)))
        gap = fast.int() - slow.int()
        # torchvision truncates after each op (up to 1 level each, 4 ops; a saturation
        # factor over 1 amplifies earlier errors) and floors the luma before the contrast
        # mean: within 4 levels, and darker on average
        assert gap.abs().max() <= 4
        gaps.append(gap.float().mean())
    assert 1.0 <= float(np.mean(gaps)) <= 2.0  # about half a level per truncating op


def test_jitter_probability_zero_is_identity_and_gray_stays_gray():
    image = smooth_image()
    assert torch.equal(ColorJitter(p=0.0)(image, np.random.default_rng(0)), image)
    grey = torch.full((3, 5, 5), 128, dtype=torch.uint8)
    out = ColorJitter(brightness=0.0, contrast=0.4, saturation=0.4, hue=0.5, p=1.0)(
        grey, np.random.default_rng(1)
    )
    assert torch.equal(out, grey)  # flat grey: contrast, saturation and hue leave it


def test_to_uint8_rounds_half_up_within_range():
    values = torch.tensor([0.0, 0.49, 0.5, 1.5, 254.5, 254.49, 255.0])
    assert to_uint8(values).tolist() == [0, 0, 1, 2, 255, 254, 255]


@pytest.mark.parametrize("sigma", [0.1, 0.4, 0.8, 1.3, 2.0])
def test_blur_cut_at_three_sigma_matches_the_full_kernel(sigma):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=generator)
    radius = blur_radius(sigma, 224)
    assert radius == min(math.ceil(3 * sigma), 11)
    fast = to_uint8(blur_float(image.float(), sigma, radius))
    exact = TF.gaussian_blur(image, [23, 23], [sigma, sigma])  # torchvision, 23 px kernel
    assert (fast.int() - exact.int()).abs().max() <= 1


def test_blur_is_capped_by_the_views_kernel_and_flat_images_stay_flat():
    assert [blur_radius(2.0, side) for side in (224, 64, 32, 16)] == [6, 3, 1, 0]
    flat = torch.full((3, 12, 12), 90, dtype=torch.uint8)
    assert torch.equal(to_uint8(blur_float(flat.float(), 2.0, 3)), flat)
    image = smooth_image(32, 32)
    small = image[:, :16, :16]  # a 16 px view: a 1 px kernel, no blur
    assert torch.equal(RandomGaussianBlur(p=1.0)(small, np.random.default_rng(0)), small)


def slow_view(
    image: torch.Tensor, rng: np.random.Generator, size: int, blur_p: float
) -> torch.Tensor:
    """PairViewTransform(size, blur_p=blur_p) step by step, in the old order: crop, flip,
    each jitter op on float64 in the drawn order, grayscale, clamp, then torchvision's blur
    with the view's full 10 % kernel, rounded once."""
    box = random_resized_crop_box(image.shape[-2], image.shape[-1], (0.3, 1.0), rng)
    view = crop_resize(image, box, (size, size))
    if rng.random() < 0.5:
        view = TF.horizontal_flip(view)
    pixels = view.reshape(3, -1).double().numpy()
    if rng.random() < 0.8:
        factors = [float(rng.uniform(0.6, 1.4)) for _ in range(3)]
        factors.append(float(rng.uniform(-0.1, 0.1)))
        for index in rng.permutation(4):
            pixels = slow_op(pixels, index, factors[index])
    if rng.random() < 0.2:
        pixels = np.repeat((LUMA @ pixels)[None], 3, axis=0)
    out = torch.from_numpy(np.clip(pixels, 0, 255)).view(3, size, size)
    if blur_p > 0 and rng.random() < blur_p:
        sigma = float(rng.uniform(0.1, 2.0))
        kernel = blur_kernel_size(size)
        out = TF.gaussian_blur(out[None], [kernel, kernel], [sigma, sigma])[0]
    return (out + 0.5).floor().to(torch.uint8)


@pytest.mark.parametrize("blur_p", [0.0, 0.5])
def test_pair_views_are_the_slow_step_by_step_views(blur_p):
    image = smooth_image(60, 80)
    transform = PairViewTransform(48, blur_p=blur_p)
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    exact = 0
    for _ in range(30):  # same draws in the same order; blur_p 0 spends none on the blur
        fast, slow = transform(image, rng), slow_view(image, reference, 48, blur_p)
        difference = (fast.int() - slow.int()).abs()
        assert difference.max() <= 1  # float32 vs float64 at a rounding boundary
        exact += int(difference.eq(0).float().mean() > 0.99)
    assert exact >= 27
    assert PairViewTransform(32).blur.p == 0.5  # the spec's default
