"""Pieces the methods share: which shards to train on, how many samples, which stage a
checkpoint's heads belong to."""

from __future__ import annotations

from ..config import Recipe, StageBase, StageData
from ..data.shards import count_samples, list_shard_urls, read_manifest
from ..errors import DataError
from ..eval.metrics import ProtocolSkipped


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


def checkpoint_stage(recipe: Recipe, stage_name: str | None, method: str, needs: str) -> StageBase:
    """The checkpoint's stage (by name), else the recipe's last stage of `method`.

    Args:
        recipe, stage_name: the checkpoint's recipe and the stage it saved ("stage" key).
        method: the stage method whose heads a protocol reads.
        needs: what the protocol needs, for the message, e.g. "maskcontrast-kmeans needs
            the embedding and saliency heads".

    Raises:
        ProtocolSkipped: the named stage is of another method, or there is none.
    """
    stages = {stage.name: stage for stage in recipe.stages}
    chosen = stages.get(stage_name) if stage_name else None
    if chosen is None:
        chosen = next((s for s in reversed(recipe.stages) if s.method == method), None)
    if chosen is None or chosen.method != method:
        raise ProtocolSkipped(
            f"{needs} of a {method} stage, and this checkpoint is of stage "
            f"{stage_name or recipe.stages[-1].name!r}; evaluate a {method} stage's checkpoint"
        )
    return chosen
