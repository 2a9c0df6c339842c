"""Pieces every method's loader needs: which shards to train on, and how many samples."""

from __future__ import annotations

from ..config import StageData
from ..data.shards import count_samples, list_shard_urls, read_manifest
from ..errors import DataError


def training_split(root: str) -> str:
    """`train` when the shard set has that split, else `all`."""
    splits = read_manifest(root).get("splits", {})
    for split in ("train", "all"):
        if split in splits:
            return split
    raise DataError(f"{root} has no train or all split; rebuild it with `cseg shards build`")


def training_urls(data: StageData, world_size: int) -> tuple[list[str], int]:
    """The training shard URLs and the samples each rank sees per epoch."""
    split = training_split(data.train)
    urls = list_shard_urls(data.train, split)
    total = data.samples_per_epoch or count_samples(data.train, split)
    per_rank = total // max(world_size, 1)
    if per_rank < 1:
        raise DataError(
            f"{data.train} has {total} samples, fewer than the {world_size} workers; add data"
        )
    return urls, per_rank
