"""Frozen-feature linear probe (../shared/docs/quickstart-study.md, cacl.md §5).

The backbone stays frozen in eval mode. Its features over the training split
are extracted once and cached on the device (up to `cache_bytes`; past that
they are recomputed from the batches at every step), standardised per channel
with the training split's mean and std, and read by a 1×1 conv. The conv's
logits are bilinearly upsampled to the label size and trained with
cross-entropy (255 ignored) by Adam on random minibatches. The score is one
confusion matrix over the whole validation split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raycseg.errors import DataError
from raycseg.eval.features import Batch, FeatureFn, frozen, iter_features, require_reiterable
from raycseg.eval.metrics import (
    IGNORE_INDEX,
    check_labels,
    confusion_matrix,
    miou_from_confusion,
)

DEFAULT_CACHE_BYTES = 4 * 2**30
_STD_FLOOR = 1e-6


@dataclass
class _TrainingFeatures:
    """Per-channel statistics of the training features, and the cache if it fit."""

    mean: torch.Tensor  # [1, C, 1, 1]
    std: torch.Tensor  # [1, C, 1, 1]
    features: torch.Tensor | None  # standardised [N, C, h, w], or None when not cached
    labels: torch.Tensor | None  # uint8 [N, H, W]


def run_linear_probe(
    backbone: nn.Module,
    train_batches: Iterable[Batch],
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    steps: int,
    lr: float,
    device: str | torch.device,
    seed: int = 0,
    batch_size: int = 128,
    feature_fn: FeatureFn | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> dict:
    """Train a 1×1 conv on frozen features and score it on the validation split.

    Args:
        backbone: the frozen module (moved to `device`; its train flag is restored).
        train_batches: labelled batches to fit the probe on (re-iterable).
        val_batches: labelled batches to score on.
        num_classes: C.
        steps: Adam steps.
        lr: Adam learning rate.
        device: where features and the probe live.
        seed: seeds the probe's init and minibatch order.
        batch_size: images per step when the features are cached (otherwise the
            loader's batch size).
        feature_fn: maps normalised images to the features to probe (default: `backbone`).
        cache_bytes: cache the training features when they fit in this many bytes.

    Returns:
        ``{"miou": float, "per_class_iou": [float | None] * C}``.
    """
    device = torch.device(device)
    require_reiterable(train_batches, "train_batches")
    extract = backbone if feature_fn is None else feature_fn
    with frozen(backbone, device):
        train = _collect_training_features(extract, train_batches, num_classes, device, cache_bytes)
        classifier = _new_classifier(train.mean.shape[1], num_classes, seed, device)
        if train.features is not None:
            _fit_cached(classifier, train, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
        else:
            _fit_streaming(classifier, train, extract, train_batches, device, steps=steps, lr=lr)
        confusion = _score(classifier, train, extract, val_batches, num_classes, device)
    miou, ious = miou_from_confusion(confusion)
    return {"miou": miou, "per_class_iou": ious}


def _collect_training_features(
    extract: FeatureFn,
    batches: Iterable[Batch],
    num_classes: int,
    device: torch.device,
    cache_bytes: int,
) -> _TrainingFeatures:
    """One pass: per-channel sums for the statistics, and a cache while it fits."""
    total = total_sq = None
    count, cached_bytes = 0, 0
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = []
    for features, labels in iter_features(extract, batches, device):
        check_labels(labels, num_classes)
        pixels = features.double().transpose(0, 1).reshape(features.shape[1], -1)
        total = pixels.sum(1) if total is None else total + pixels.sum(1)
        total_sq = (pixels**2).sum(1) if total_sq is None else total_sq + (pixels**2).sum(1)
        count += pixels.shape[1]
        if cache is not None:
            cached_bytes += features.numel() * features.element_size() + labels.numel()
            if cached_bytes <= cache_bytes:
                cache.append((features, labels.to(torch.uint8)))
            else:
                cache = None  # too big: the fit recomputes features batch by batch
    if count == 0:
        raise DataError("the linear probe's training split is empty; pass labelled batches")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt().clamp_min(_STD_FLOOR)
    mean = mean.float().view(1, -1, 1, 1)
    std = std.float().view(1, -1, 1, 1)
    if cache is None:
        return _TrainingFeatures(mean, std, None, None)
    shapes = {(tuple(f.shape[1:]), tuple(label.shape[1:])) for f, label in cache}
    if len(shapes) > 1:
        raise DataError(
            "training images for the linear probe differ in size; resize them to one size "
            "in the evaluation loader"
        )
    features = torch.cat([f for f, _ in cache]).sub_(mean).div_(std)
    return _TrainingFeatures(mean, std, features, torch.cat([label for _, label in cache]))


def _new_classifier(channels: int, num_classes: int, seed: int, device: torch.device) -> nn.Conv2d:
    """A 1×1 conv with weights N(0, 0.01) drawn from `seed` and zero bias."""
    classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.01)
        classifier.bias.zero_()
    return classifier.to(device)


def bilinear_matrix(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """[size_out, size_in] weights of 1-d linear resizing (align_corners=False, as F.interpolate)."""
    one_hot = torch.eye(size_in, device=device)[None]  # one input position per channel
    return F.interpolate(one_hot, size=size_out, mode="linear", align_corners=False)[0].T


def upsample_bilinear(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize [B, K, h, w] → [B, K, H, W] as two matrix products.

    Equal to ``F.interpolate(..., mode="bilinear", align_corners=False)`` (it is
    separable), and several times faster to differentiate on CPU.
    """
    height, width = logits.shape[-2:]
    rows = bilinear_matrix(height, size[0], logits.device)
    cols = bilinear_matrix(width, size[1], logits.device)
    return rows @ logits @ cols.T


def _probe_loss(classifier: nn.Conv2d, features: torch.Tensor, labels: torch.Tensor):
    """Mean CE over labelled pixels of logits upsampled to the label size (0 if none)."""
    logits = upsample_bilinear(classifier(features), labels.shape[-2:])
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return losses / (labels != IGNORE_INDEX).sum().clamp_min(1)


def _fit_cached(
    classifier: nn.Conv2d,
    train: _TrainingFeatures,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> None:
    """Adam on minibatches drawn epoch by epoch from a seeded permutation of the cache."""
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    count = train.features.shape[0]
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < min(batch_size, count):
            order = torch.randperm(count, generator=generator)
        index, order = order[:batch_size], order[batch_size:]
        index = index.to(train.features.device)
        loss = _probe_loss(classifier, train.features[index], train.labels[index].long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _fit_streaming(
    classifier: nn.Conv2d,
    train: _TrainingFeatures,
    extract: FeatureFn,
    batches: Iterable[Batch],
    device: torch.device,
    *,
    steps: int,
    lr: float,
) -> None:
    """Adam on the loader's batches, recomputing the features at every step."""
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    stream = iter_features(extract, _cycle_batches(batches), device)
    for _ in range(steps):
        features, labels = next(stream)
        loss = _probe_loss(classifier, (features - train.mean) / train.std, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _cycle_batches(batches: Iterable[Batch]):
    """Iterate a re-iterable source again and again (without caching it, unlike itertools.cycle)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


@torch.no_grad()
def _score(
    classifier: nn.Conv2d,
    train: _TrainingFeatures,
    extract: FeatureFn,
    batches: Iterable[Batch],
    num_classes: int,
    device: torch.device,
) -> torch.Tensor:
    """One confusion matrix over every validation batch."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for features, labels in iter_features(extract, batches, device):
        logits = upsample_bilinear(
            classifier((features - train.mean) / train.std), labels.shape[-2:]
        )
        confusion += confusion_matrix(logits.argmax(1), labels, num_classes)
    return confusion
