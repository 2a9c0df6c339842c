"""The labelled data an evaluation reads: scoring batches, probe training epochs, the record.

Scoring batches keep each mask at its own resolution (`raycseg.eval.scoring`);
the model sees the input its protocol names. The linear probe trains on
augmented copies of the `train` split, one shuffled pass per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice

from ..data.loaders import StreamShare, build_segmentation_eval_loader, build_segmentation_loader
from ..data.transforms import ProbeTrainTransform
from ..errors import CsegError, DataError
from ..shards.manifest import count_samples, list_shard_urls, read_manifest

EVAL_BATCH_SIZE = 16


def require_split(root: str, split: str, *, key: str = "--data") -> str:
    """`split` when the shard set has it, else a DataError naming the splits it has and the fix.

    Nothing falls back to another split: scoring training data as validation would
    report a number that means something else.
    """
    splits = sorted(read_manifest(root).get("splits", {}))
    if split not in splits:
        raise DataError(
            f"{root} has no {split!r} split (it has {', '.join(splits) or 'none'}); choose one "
            f"with --split, or point {key} at segmentation shards with a {split} split "
            "(`cseg shards build` makes one from the dataset's split lists)"
        )
    return split


def evaluation_batches(
    root: str,
    split: str,
    *,
    input_policy: str,
    input_size: int | None,
    batch_size: int = EVAL_BATCH_SIZE,
    num_workers: int = 0,
):
    """Each image of one split once, original masks, the protocol's input (re-iterable)."""
    return build_segmentation_eval_loader(
        list_shard_urls(root, require_split(root, split)),
        input_policy=input_policy,
        input_size=input_size,
        batch_size=batch_size,
        num_workers=num_workers,
    )


@dataclass
class ProbeEpochs:
    """The linear probe's training data: `batches(epoch)` gives one shuffled, augmented pass."""

    batches: Callable[[int], Iterable[dict]]
    steps_per_epoch: int
    images: int


def probe_training_epochs(
    root: str,
    *,
    image_size: int,
    batch_size: int,
    augment: bool,
    seed: int = 0,
    num_workers: int = 0,
) -> ProbeEpochs:
    """Epochs of the `train` split for the linear probe (MaskContrast's augmentation).

    One endless stream, reshuffled and re-augmented every pass; each epoch takes
    ⌊images / batch_size⌋ full batches of it (as a loader with drop_last).
    """
    split = require_split(root, "train")
    images = count_samples(root, split)
    if images < batch_size:
        raise DataError(
            f"the linear probe's batch of {batch_size} is larger than the {images} training "
            f"images of {root}; lower eval.linear_probe.batch_size"
        )
    loader = build_segmentation_loader(
        list_shard_urls(root, split),
        StreamShare(num_workers=num_workers, seed=seed),
        batch_size=batch_size,
        crop_size=image_size,
        transform=ProbeTrainTransform(image_size, augment=augment),
        samples_per_rank=images,
    )
    stream = iter(loader)
    steps = images // batch_size
    return ProbeEpochs(lambda _epoch: islice(stream, steps), steps, images)


def data_record(root: str, split: str) -> dict:
    """eval.json's top-level `data`: the shards, split, number of images and class names."""
    manifest = read_manifest(root)
    return {
        "shards": str(root),
        "split": split,
        "images": count_samples(root, split),
        "classes": list(manifest.get("classes") or []),
    }


def num_classes_of(root: str) -> int:
    """The number of classes a segmentation shard set declares in its manifest."""
    classes = read_manifest(root).get("classes") or []
    if not classes:
        raise CsegError(
            f"{root}/manifest.json lists no classes; pass a recipe with eval.num_classes"
        )
    return len(classes)
