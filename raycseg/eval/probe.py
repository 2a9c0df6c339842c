"""The linear probe: MaskContrast's linear protocol (docs/methods/maskcontrast.md §6.1).

A 1×1 conv (weights N(0, 0.01), bias 0) reads frozen dense features: the
backbone's, or what `feature_fn` gives (a MaskContrast checkpoint's 256-d
decoder features). Everything upstream stays in eval mode, so BatchNorm
statistics and dropout are frozen. Per epoch, one shuffled pass over the
training split (augmented by `raycseg.data.transforms.ProbeTrainTransform`):
the conv's logits are bilinearly upsampled to the label size and trained with
cross-entropy (255 ignored) by SGD with momentum and weight decay; the learning
rate drops ×0.1 after each epoch in `lr_decay_epochs`. Each epoch is scored on
the validation split at the labels' own resolution (argmax at the input size,
then nearest to each mask's size: `raycseg.eval.scoring`) and, as in the
official code, the best epoch is the result (`select_best`; otherwise the last).

Validation features are computed once and kept on the device while they fit in
`cache_bytes`; past that they are recomputed every epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from raycseg.config import LinearProbeSection
from raycseg.errors import DataError
from raycseg.eval.batches import ProbeEpochs
from raycseg.eval.features import Batch, FeatureFn, frozen, iter_features, require_reiterable
from raycseg.eval.metrics import IGNORE_INDEX, check_labels
from raycseg.eval.scoring import SplitScore, upsampled_argmax

DEFAULT_CACHE_BYTES = 4 * 2**30
LR_DECAY = 0.1


def run_linear_probe(
    backbone: nn.Module,
    train: ProbeEpochs,
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    settings: LinearProbeSection,
    device: str | torch.device,
    seed: int = 0,
    feature_fn: FeatureFn | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    keep_samples: int = 0,
) -> dict:
    """Train a 1×1 conv on frozen features and score it on the validation split.

    Args:
        backbone: the frozen module (moved to `device`; its train flag is restored).
        train: the training epochs (`raycseg.eval.batches.probe_training_epochs`).
        val_batches: evaluation batches to score on (re-iterable).
        num_classes: C.
        settings: epochs, batch size, SGD settings, decay epochs, best-epoch selection.
        device: where features and the probe live.
        seed: seeds the probe's initial weights.
        feature_fn: maps normalised images to the features to probe (default: `backbone`).
        cache_bytes: keep the validation features when they fit in this many bytes.
        keep_samples: also return the kept epoch's predictions of this many images.

    Returns:
        ``{"miou", "per_class_iou", "pixels_scored", "epoch", "miou_per_epoch"}``:
        the scores of the kept epoch (1-based), and every scored epoch's mIoU; plus
        ``"samples"`` (`raycseg.eval.scoring.EvalSample`s) with `keep_samples`.
    """
    device = torch.device(device)
    require_reiterable(val_batches, "val_batches")
    extract = backbone if feature_fn is None else feature_fn
    with frozen(backbone, device):
        val = _ValidationFeatures(extract, val_batches, device, cache_bytes)
        classifier = _new_classifier(val.channels, num_classes, seed, device)
        optimizer = torch.optim.SGD(
            classifier.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        history: list[tuple[int, dict]] = []
        for epoch in range(settings.epochs):
            _set_lr(optimizer, settings.lr * LR_DECAY ** _decays_before(epoch, settings))
            _train_epoch(classifier, optimizer, extract, train.batches(epoch), num_classes, device)
            if settings.select_best or epoch + 1 == settings.epochs:
                history.append((epoch + 1, val.score(classifier, num_classes, keep_samples)))
    epoch, kept = (
        max(history, key=lambda item: item[1]["miou"]) if settings.select_best else history[-1]
    )
    return {**kept, "epoch": epoch, "miou_per_epoch": [score["miou"] for _, score in history]}


def _decays_before(epoch: int, settings: LinearProbeSection) -> int:
    """How many decay epochs lie before `epoch` (0-based: the official `epoch > 25`)."""
    return sum(epoch > decay for decay in settings.lr_decay_epochs)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _new_classifier(channels: int, num_classes: int, seed: int, device: torch.device) -> nn.Conv2d:
    """A 1×1 conv with weights N(0, 0.01) drawn from `seed` and zero bias."""
    classifier = nn.Conv2d(channels, num_classes, kernel_size=1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=generator) * 0.01)
        classifier.bias.zero_()
    return classifier.to(device)


def _train_epoch(
    classifier: nn.Conv2d,
    optimizer: torch.optim.Optimizer,
    extract: FeatureFn,
    batches: Iterable[Batch],
    num_classes: int,
    device: torch.device,
) -> None:
    steps = 0
    for features, labels in iter_features(extract, batches, device):
        check_labels(labels, num_classes)
        loss = _probe_loss(classifier, features, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    if steps == 0:
        raise DataError("the linear probe's training split gave no batch; pass labelled images")


def _probe_loss(classifier: nn.Conv2d, features: torch.Tensor, labels: torch.Tensor):
    """Mean CE over labelled pixels of logits upsampled to the label size (0 if none)."""
    logits = upsample_bilinear(classifier(features), labels.shape[-2:])
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return losses / (labels != IGNORE_INDEX).sum().clamp_min(1)


class _ValidationFeatures:
    """The validation split's features: cached on the device when they fit, else recomputed."""

    def __init__(self, extract: FeatureFn, batches, device: torch.device, cache_bytes: int):
        self.extract, self.batches, self.device = extract, batches, device
        self.cache: list[tuple[torch.Tensor, Batch]] | None = []
        self.channels, used = 0, 0
        for batch in batches:
            features = self._features(batch)
            self.channels = features.shape[1]
            used += features.numel() * features.element_size()
            if used > cache_bytes:
                self.cache = None  # too big: recompute at every scoring
                break
            self.cache.append((features, batch))
        if not self.channels:
            raise DataError("the validation split is empty; pass labelled images to score on")

    def _features(self, batch: Batch) -> torch.Tensor:
        ((features, _),) = iter_features(self.extract, [batch], self.device)
        return features

    def _pairs(self):
        if self.cache is not None:
            return self.cache
        return ((self._features(batch), batch) for batch in self.batches)

    @torch.no_grad()
    def score(self, classifier: nn.Conv2d, num_classes: int, keep_samples: int) -> dict:
        """The classifier's scores at the labels' own resolution (and kept samples)."""
        score = SplitScore(num_classes, self.device, keep_samples)
        for features, batch in self._pairs():
            input_size = batch["image"].shape[-2:]
            predictions = upsampled_argmax(classifier(features), input_size, align_corners=False)
            score.add_batch(predictions, batch)
        return score.result() | ({"samples": score.samples} if keep_samples else {})


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
