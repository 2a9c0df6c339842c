"""A tiny VOC-layout tree and its segmentation shards, for tests that need labelled shards fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raycseg.media.images import encode_jpeg, encode_mask_png
from raycseg.shards.build import build_shards


def voc_shards(root: Path, *, train: int = 4, val: int = 2, size: int = 16) -> Path:
    """Shards (`root/shards`) of a VOC tree with `train` and `val` ids (no val.txt if val=0).

    Each image is a flat colour with one square of class (index % 4) + 1 on background 0.
    """
    tree = root / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tree / folder).mkdir(parents=True)
    ids = {"train": [f"tr{i}" for i in range(train)], "val": [f"va{i}" for i in range(val)]}
    for index, image_id in enumerate(ids["train"] + ids["val"]):
        mask = np.zeros((size, size), np.uint8)
        mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = index % 4 + 1
        (tree / "JPEGImages" / f"{image_id}.jpg").write_bytes(
            encode_jpeg(np.full((size, size, 3), 40 * index % 256, np.uint8))
        )
        (tree / "SegmentationClass" / f"{image_id}.png").write_bytes(encode_mask_png(mask))
    for split, split_ids in ids.items():
        if split_ids:
            (tree / "ImageSets/Segmentation" / f"{split}.txt").write_text(
                "\n".join(split_ids) + "\n"
            )
    build_shards("segmentation", tree, root / "shards", layout="voc", num_procs=1)
    return root / "shards"
