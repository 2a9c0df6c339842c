"""Fixtures for the shard tests: a VOC tree with saliency masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raycseg.media.images import encode_jpeg, encode_mask_png


def write_voc_saliency_tree(root: Path, train: list[str], val: list[str]) -> tuple[Path, Path]:
    """A VOC-shaped tree (8 px JPEGImages, ImageSets/Segmentation/{train,val}.txt) and a
    saliency mask folder that covers every id, train and val alike.

    Returns:
        (root/voc/JPEGImages, root/masks).
    """
    images, masks = root / "voc" / "JPEGImages", root / "masks"
    lists = root / "voc" / "ImageSets" / "Segmentation"
    for folder in (images, masks, lists):
        folder.mkdir(parents=True)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    for stem in train + val:
        (images / f"{stem}.jpg").write_bytes(encode_jpeg(np.full((8, 8, 3), 90, np.uint8)))
        (masks / f"{stem}.png").write_bytes(encode_mask_png(mask))
    (lists / "train.txt").write_text("\n".join(train) + "\n")
    (lists / "val.txt").write_text("\n".join(val) + "\n")
    return images, masks


@pytest.fixture(scope="session")
def voc_saliency_tree():
    """`write_voc_saliency_tree(root, train, val)`: images in a VOC tree plus masks for all ids."""
    return write_voc_saliency_tree
