"""Labelled evaluation batches from segmentation shards (deterministic, exactly once)."""

from __future__ import annotations

from ..data.pipeline import build_segmentation_loader
from ..data.shards import list_shard_urls, read_manifest
from ..errors import CsegError


def segmentation_batches(
    root: str, split: str, *, image_size: int, batch_size: int = 32, limit: int | None = None
):
    """Deterministic, exactly-once batches of one split of a segmentation shard set."""
    urls = list_shard_urls(root, split)
    loader = build_segmentation_loader(
        urls,
        batch_size=batch_size,
        crop_size=image_size,
        scale_range=(1.0, 1.0),
        train=False,
        seed=0,
        rank=0,
        world_size=1,
        num_workers=0,
    )
    return _Limited(loader, limit) if limit else loader


class _Limited:
    """Re-iterable: at most `limit` images of a loader (whole batches)."""

    def __init__(self, loader, limit: int):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        seen = 0
        for batch in self.loader:
            if seen >= self.limit:
                return
            seen += batch["image"].shape[0]
            yield batch


def num_classes_of(root: str) -> int:
    """The number of classes a segmentation shard set declares in its manifest."""
    classes = read_manifest(root).get("classes") or []
    if not classes:
        raise CsegError(
            f"{root}/manifest.json lists no classes; pass a recipe with eval.num_classes"
        )
    return len(classes)
