"""Image and mask decoding and encoding with Pillow.

Conventions used across `raycseg.data`:

* images are `uint8` arrays `[H, W, 3]` in RGB order;
* masks are `uint8` arrays `[H, W]` of class ids. A palette (mode `P`) PNG is
  read as its indices, never through its colours;
* saliency masks are boolean `[H, W]` (True = salient foreground).

Every decoder raises `ValueError` with a short reason on bad input, so callers
can skip and report the input instead of crashing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow modes whose pixel values are class ids (P: palette indices).
_ID_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L")


def _open(data: bytes, what: str) -> Image.Image:
    if not data:
        raise ValueError(f"empty {what} (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot decode {what}: {error}") from error
    return image


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes (any format Pillow reads) to RGB.

    Args:
        data: The encoded image.

    Returns:
        uint8 array [H, W, 3].

    Raises:
        ValueError: The bytes are empty, truncated or not an image.
    """
    image = _open(data, "image")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def decode_mask(data: bytes) -> np.ndarray:
    """Decode a class-id mask: palette PNGs as indices, grayscale as values.

    Args:
        data: The encoded mask (PNG in practice).

    Returns:
        uint8 array [H, W] of class ids.

    Raises:
        ValueError: The bytes do not decode, the mask has colour channels, or
            a 16-bit mask holds values above 255.
    """
    image = _open(data, "mask")
    if image.mode not in _ID_MODES:
        raise ValueError(
            f"mask has mode {image.mode}; expected a palette or grayscale PNG of class ids"
        )
    values = np.array(image)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"mask values {values.min()}..{values.max()} do not fit 0..255")
        values = values.astype(np.uint8)
    return values


def read_saliency_mask(data: bytes, threshold: float = 0.5) -> np.ndarray:
    """Read a saliency mask and binarise it.

    Graded masks (0..255) are binarised at `threshold` of full scale; RGB(A)
    masks are converted to luminance first; palette masks count every
    non-zero index as foreground.

    Args:
        data: The encoded mask.
        threshold: Fraction of full scale at or above which a pixel is salient.

    Returns:
        bool array [H, W].
    """
    image = _open(data, "saliency mask")
    if image.mode == "P":
        return np.asarray(image) > 0
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("L")
    values = np.asarray(image).astype(np.float64)
    full_scale = 255.0 if image.mode in ("L", "RGB", "RGBA") else max(values.max(), 1.0)
    if image.mode in ("I;16", "I;16B", "I;16L"):
        full_scale = 65535.0
    return values >= threshold * full_scale


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 array [H, W, 3] as JPEG (4:4:4 chroma, fixed quality)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality, subsampling=0
    )
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """Encode a uint8 class-id mask [H, W] losslessly as PNG.

    Args:
        mask: Class ids.
        palette: Optional [N, 3] uint8 colour table; with it the PNG is a
            palette (mode `P`) image, as in PASCAL VOC, else grayscale.
    """
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    if palette is not None:
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: len(palette)] = palette
        image.putpalette(table.reshape(-1).tolist())  # L -> P, indices unchanged
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def voc_palette(num_colours: int = 256) -> np.ndarray:
    """Return the PASCAL VOC colour map ([num_colours, 3] uint8; bit-interleaved ids)."""
    ids = np.arange(num_colours)
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(
                np.uint8
            )
    return palette


def peek_image(data: bytes) -> tuple[str | None, str | None]:
    """Return Pillow's (format, mode), e.g. ("PNG", "P"), from the header only; Nones if unknown."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.mode
    except (UnidentifiedImageError, OSError):
        return None, None
