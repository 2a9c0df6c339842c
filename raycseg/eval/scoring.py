"""Scoring at the labels' own resolution.

Labels are never resized for scoring. An evaluation batch is

    image         uint8 [B, 3, h_in, w_in]  what the model sees (its protocol's input policy)
    label         long  [B, H, W]           each image's *original* mask, padded with 255
                                            (ignore) to the largest mask of the batch
    label_size    long  [B, 2]  (optional)  each mask's own (H_b, W_b); default: (H, W)
    input_region  long  [B, 2]  (optional)  the extent (h, w) of the input, from its
                                            top-left corner, that shows the whole image;
                                            default: the whole input

`raycseg.data.loaders.build_segmentation_eval_loader` makes such batches with
one of two input policies: ``resize`` (every image resized to S × S, so the
region is the whole input) or ``pad`` (every image at its own size,
reflect-padded bottom/right, so the region is (H_b, W_b) and no pixel moves).

A prediction map [B, h, w] that covers the whole input, at any resolution h × w
(cluster ids at the feature grid, an argmax at the input size), is brought to
each mask's grid by `predictions_on_labels`: crop the region (scaled to h × w),
then resize it nearest to (H_b, W_b). `SplitScore` accumulates one confusion
matrix over a split and counts the pixels it scored.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata

import torch
import torch.nn.functional as F

from raycseg.eval.metrics import (
    IGNORE_INDEX,
    confusion_matrix,
    miou_from_confusion,
    remap_confusion,
)

PACKAGES = ("raycseg", "torch", "torchvision", "numpy", "scipy")


def label_sizes(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each mask's own (H_b, W_b) as long [B, 2] (CPU)."""
    if "label_size" in batch:
        return torch.as_tensor(batch["label_size"]).long().cpu()
    labels = batch["label"]
    return torch.tensor(labels.shape[-2:]).repeat(labels.shape[0], 1)


def input_regions(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The (h, w) extent of each input that shows the image, long [B, 2] (CPU)."""
    if "input_region" in batch:
        return torch.as_tensor(batch["input_region"]).long().cpu()
    images = batch["image"]
    return torch.tensor(images.shape[-2:]).repeat(images.shape[0], 1)


def predictions_on_labels(
    predictions: torch.Tensor, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Bring class ids that cover the input to each mask's own grid.

    Args:
        predictions: integer [B, h, w] covering the whole input (any resolution).
        batch: the evaluation batch they were predicted from (see the module docstring).

    Returns:
        long [B, H, W] on the predictions' device, aligned with ``batch["label"]``;
        entries outside a mask's own size are 0 (its label there is 255).
    """
    labels = batch["label"]
    out = torch.zeros(labels.shape, dtype=torch.long, device=predictions.device)
    height_in, width_in = batch["image"].shape[-2:]
    height, width = predictions.shape[-2:]
    for index, ((mask_h, mask_w), (region_h, region_w)) in enumerate(
        zip(label_sizes(batch).tolist(), input_regions(batch).tolist(), strict=True)
    ):
        rows = max(1, round(region_h * height / height_in))
        cols = max(1, round(region_w * width / width_in))
        region = predictions[index, :rows, :cols]
        if (rows, cols) != (mask_h, mask_w):
            region = F.interpolate(
                region[None, None].float(), size=(mask_h, mask_w), mode="nearest"
            )
            region = region[0, 0]
        out[index, :mask_h, :mask_w] = region.long()
    return out


def upsampled_argmax(
    logits: torch.Tensor, size: tuple[int, int], *, align_corners: bool
) -> torch.Tensor:
    """Class ids long [B, *size]: logits [B, C, h, w] resized bilinearly to `size`, then argmax."""
    upsampled = F.interpolate(
        logits.float(), size=tuple(size), mode="bilinear", align_corners=align_corners
    )
    return upsampled.argmax(dim=1)


@dataclass
class EvalSample:
    """One scored image for the report: all uint8 on the CPU, at its mask's own size.

    Attributes:
        key: the sample's key in the shards.
        image: [3, H, W], the model's input brought back to the mask's grid.
        label: [H, W], the mask (255 = ignore).
        prediction: [H, W], the predicted class of every pixel.
    """

    key: str
    image: torch.Tensor
    label: torch.Tensor
    prediction: torch.Tensor


class SplitScore:
    """One confusion matrix over a whole split, the pixels it scored, and a few samples.

    With `keep_samples` > 0 the first images scored are kept as `EvalSample`s (for the
    report's pictures); `rename_predictions` renames their predictions too.
    """

    def __init__(self, num_classes: int, device: torch.device | str, keep_samples: int = 0):
        self.num_classes = num_classes
        self.confusion = torch.zeros(
            num_classes, num_classes, dtype=torch.long, device=torch.device(device)
        )
        self.pixels_scored = 0
        self.keep_samples = keep_samples
        self.samples: list[EvalSample] = []

    def add(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Count predictions long [B, H, W] against labels [B, H, W] (255 ignored)."""
        labels = labels.to(self.confusion.device)
        self.confusion += confusion_matrix(predictions, labels, self.num_classes)
        self.pixels_scored += int((labels != IGNORE_INDEX).sum())

    def add_batch(self, predictions: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        """Count predictions that cover the input (`predictions_on_labels` does the mapping)."""
        on_labels = predictions_on_labels(predictions, batch)
        self.add(on_labels, batch["label"])
        if len(self.samples) < self.keep_samples:
            self._keep(on_labels, batch)

    def _keep(self, on_labels: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        images = batch["image"]
        keys = batch.get("key") or [f"image-{len(self.samples) + i}" for i in range(len(images))]
        sizes, regions = label_sizes(batch).tolist(), input_regions(batch).tolist()
        for index in range(min(len(images), self.keep_samples - len(self.samples))):
            (height, width), (region_h, region_w) = sizes[index], regions[index]
            image = images[index, :, :region_h, :region_w].float()
            image = F.interpolate(image[None], size=(height, width), mode="bilinear")[0]
            self.samples.append(EvalSample(
                key=str(keys[index]),
                image=image.round().clamp(0, 255).to(torch.uint8).cpu(),
                label=batch["label"][index, :height, :width].to(torch.uint8).cpu(),
                prediction=on_labels[index, :height, :width].to(torch.uint8).cpu(),
            ))  # fmt: skip

    def rename_predictions(self, mapping: torch.Tensor) -> None:
        """Read every predicted id p as class ``mapping[p]`` (clusters matched to classes)."""
        self.confusion = remap_confusion(self.confusion, mapping)
        for sample in self.samples:
            sample.prediction = mapping.cpu()[sample.prediction.long()].to(torch.uint8)

    def result(self) -> dict:
        """``{"miou", "per_class_iou", "pixels_scored"}``."""
        miou, ious = miou_from_confusion(self.confusion)
        return {"miou": miou, "per_class_iou": ious, "pixels_scored": self.pixels_scored}


def protocol_fingerprint(record: dict) -> str:
    """12 hex digits of sha256 over a `protocol` record (sorted JSON, without its fingerprint).

    Equal fingerprints mean the same protocol, settings and package versions.
    """
    settings = {key: value for key, value in record.items() if key != "fingerprint"}
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a score depends on (for the `protocol` record)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
