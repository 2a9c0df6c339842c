"""Fixtures for the data-plane tests: tiny shard sets, written or generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from raycseg.data.images import encode_jpeg, encode_mask_png
from raycseg.data.shards import build_shards
from raycseg.data.storage import SCHEMA_VERSION, ShardWriter, write_manifest
from raycseg.data.synthetic import build_synthetic


def write_raw_shard_set(
    root: Path,
    kind: str,
    shards: list[list[tuple[str, dict[str, bytes]]]],
    *,
    split: str = "all",
    classes: list[str] | None = None,
    ignore_index: int | None = None,
) -> list[str]:
    """Write samples as given (no validation) into one shard per inner list, plus a manifest.

    Returns:
        The shard paths, in order.
    """
    records = []
    for index, samples in enumerate(shards):
        writer = ShardWriter(root / split, f"{kind}{index}", max_count=10**6, max_bytes=1 << 40)
        for key, files in samples:
            writer.write(key, files)
        records += writer.close()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "layout": None,
        "source": "written by the tests",
        "classes": classes or [],
        "mask_classes": None,
        "ignore_index": ignore_index,
        "splits": {
            split: {
                "count": sum(r["count"] for r in records),
                "bytes": sum(r["bytes"] for r in records),
                "shards": records,
            }
        },
        "stats": {},
        "skipped": [],
        "dropped": [],
    }
    write_manifest(root, manifest)
    return [str(root / r["name"]) for r in records]


@pytest.fixture(scope="session")
def raw_shard_set():
    """`write_raw_shard_set(root, kind, shards, ...)`: write unvalidated shards plus a manifest."""
    return write_raw_shard_set


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A small synthetic dataset: 6 training clips, 3 validation clips, 32 px, 6 frames."""
    out = tmp_path_factory.mktemp("synthetic") / "data"
    return build_synthetic(
        out, seed=3, num_clips=6, val_clips=3, image_size=32, frames=6, num_procs=1
    )


@pytest.fixture(scope="session")
def real_video_shards(real_data, tmp_path_factory) -> Path:
    """The real clips (a flat folder) built into video shards, two samples per shard."""
    out = tmp_path_factory.mktemp("real") / "videos"
    build_shards("video", real_data / "videos", out, max_count=2, num_procs=2)
    return out


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
