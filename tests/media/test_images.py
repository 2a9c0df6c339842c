"""PIL decoding of images, class masks and saliency masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raycseg.media.images import (
    decode_image,
    decode_mask,
    encode_jpeg,
    encode_mask_png,
    peek_image,
    read_saliency_mask,
    voc_palette,
)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.real_data
def test_voc_palette_masks_are_read_as_indices_not_colours(real_data):
    data = (real_data / "voc" / "SegmentationClass" / "2011_000003.png").read_bytes()
    mask = decode_mask(data)
    assert mask.dtype == np.uint8 and mask.ndim == 2
    assert set(np.unique(mask)) == {0, 5, 15, 255}  # SOURCES.md: background, bottle, person, void
    assert Image.open(io.BytesIO(data)).mode == "P"


@pytest.mark.real_data
def test_real_images_decode_to_rgb(real_data):
    rgb = decode_image((real_data / "images" / "chelsea.png").read_bytes())
    assert rgb.shape == (300, 451, 3) and rgb.dtype == np.uint8


@pytest.mark.real_data
def test_garbage_png_is_rejected_with_a_reason(real_data):
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image((real_data / "broken" / "garbage.png").read_bytes())
    with pytest.raises(ValueError, match="empty"):
        decode_image(b"")


@pytest.mark.real_data
def test_graded_pascal_s_mask_is_binarised_at_half_scale(real_data):
    data = (real_data / "saliency" / "masks" / "pascal-s_19.png").read_bytes()
    raw = np.asarray(Image.open(io.BytesIO(data)))
    assert set(np.unique(raw)) == {0, 85, 113, 142, 199, 227, 255}  # graded, as SOURCES.md says
    mask = read_saliency_mask(data)
    np.testing.assert_array_equal(mask, raw >= 128)
    assert mask.any() and not mask.all()


@pytest.mark.real_data
def test_binary_and_rgb_saliency_masks(real_data):
    ecssd = read_saliency_mask((real_data / "saliency" / "masks" / "ecssd_0001.png").read_bytes())
    assert ecssd.shape == (400, 267) and 0.0 < ecssd.mean() < 1.0
    soc = real_data / "saliency" / "masks" / "soc_aerial-1867541__340_background_only.png"
    assert Image.open(soc).mode == "RGB"
    empty = read_saliency_mask(soc.read_bytes())
    assert empty.shape == (340, 605) and not empty.any()


def test_rgb_saliency_mask_uses_luminance():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = 255  # white: salient
    rgb[2:, :, 0] = 100  # dark red: luminance 30, not salient
    mask = read_saliency_mask(png_bytes(Image.fromarray(rgb)))
    assert mask[:2].all() and not mask[2:].any()


def test_rgb_class_mask_is_refused():
    with pytest.raises(ValueError, match="mode RGB"):
        decode_mask(png_bytes(Image.fromarray(np.zeros((3, 3, 3), dtype=np.uint8))))


def test_mask_png_round_trips_with_and_without_palette():
    mask = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    plain = encode_mask_png(mask)
    paletted = encode_mask_png(mask, palette=voc_palette())
    np.testing.assert_array_equal(decode_mask(plain), mask)
    np.testing.assert_array_equal(decode_mask(paletted), mask)
    assert peek_image(paletted) == ("PNG", "P") and peek_image(plain) == ("PNG", "L")


def test_voc_palette_matches_the_standard_colours():
    palette = voc_palette()
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # void border


def test_jpeg_encoding_is_close_to_the_input():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3)), 8, 0), 8, 1).astype(np.uint8)
    decoded = decode_image(encode_jpeg(smooth))
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 4
