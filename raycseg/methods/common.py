"""Pieces the methods share.

Which shards to train on, how many samples, the FIFO queue write, the backbone
k-means validation, and a method rebuilt from a checkpoint for the protocols that
read its heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelSection, Recipe, StageBase, StageData
from ..errors import CsegError, DataError
from ..eval.batches import evaluation_batches, num_classes_of
from ..eval.cluster import run_kmeans_protocol
from ..eval.metrics import ProtocolSkipped
from ..shards.manifest import count_samples, list_shard_urls, read_manifest


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


@torch.no_grad()
def enqueue(queue: torch.Tensor, pointer: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `rows` [n, D] into the FIFO `queue` [K, D] at `pointer` (long 0-dim); advance it.

    The pointer stays on the device and moves by n mod K there, so a step never
    waits to read it (n <= K; the caller keeps the rows it wants).
    """
    size = queue.shape[0]
    index = (pointer + torch.arange(rows.shape[0], device=queue.device)) % size
    queue[index] = rows.to(queue.dtype)
    pointer.copy_((pointer + rows.shape[0]) % size)


def backbone_kmeans_miou(backbone: nn.Module, data: StageData, device: torch.device) -> float:
    """k-means mIoU of the backbone's features on the `val` split of `data.val`.

    Every stage's `val_miou` (ReCo's is its segmentation mIoU instead): each image
    resized to `data.image_size` squared, scored at each mask's own size.
    """
    batches = evaluation_batches(data.val, "val", input_policy="resize", input_size=data.image_size)
    scores = run_kmeans_protocol(backbone, batches, num_classes_of(data.val), device=device)
    return scores["miou"]


def checkpoint_stage(state: dict, method: str) -> StageBase:
    """The stage of `method` a loaded checkpoint trained.

    The checkpoint's own stage (its "stage" key), else the recipe's last stage of `method`.

    Raises:
        ProtocolSkipped: that stage is of another method, or there is none.
    """
    recipe = Recipe.model_validate(state["recipe"])
    stages = {stage.name: stage for stage in recipe.stages}
    stage_name = state.get("stage")
    stage = stages.get(stage_name) if stage_name else None
    if stage is None:
        stage = next((s for s in reversed(recipe.stages) if s.method == method), None)
    if stage is None or stage.method != method:
        raise ProtocolSkipped(
            f"this checkpoint is of stage {stage_name or recipe.stages[-1].name!r}, not of a "
            f"{method} stage; evaluate a {method} stage's checkpoint"
        )
    return stage


def method_from_checkpoint(
    state: dict, build: Callable[[StageBase, ModelSection], nn.Module], method: str, needs: str
) -> nn.Module:
    """The trained `method` module of a loaded checkpoint, on the CPU.

    The weights come from the checkpoint: `model.init_from` is not read (it may be gone).

    Args:
        state: a loaded checkpoint (`raycseg.train.checkpoint.load_state`) with keys
            "model" (the method's state dict), "recipe" and optionally "stage".
        build: the method's class (called as build(stage, model)).
        method: the stage method whose heads a protocol reads (`checkpoint_stage`).
        needs: what the protocol needs, for the message, e.g. "maskcontrast-kmeans needs
            the embedding and saliency heads".

    Raises:
        ProtocolSkipped: the checkpoint's stage is of another method, or there is none.
        CsegError: its weights do not fit the architecture its recipe describes.
    """
    try:
        stage = checkpoint_stage(state, method)
    except ProtocolSkipped as reason:
        raise ProtocolSkipped(f"{needs} of a {method} stage: {reason}") from None
    recipe = Recipe.model_validate(state["recipe"])
    module = build(stage, recipe.model.model_copy(update={"init_from": None}))
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CsegError(
            f"the checkpoint's model does not fit stage {stage.name!r} of its recipe ({first}); "
            "evaluate the checkpoint with the recipe that trained it"
        ) from error
    return module
