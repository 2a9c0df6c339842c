"""Frozen-feature extraction shared by the evaluation protocols.

Batches are dicts ``{"image": uint8 [B, 3, H, W], "label": long [B, H', W']}``
(255 = ignore; evaluation batches keep each mask at its own size, see
`raycseg.eval.scoring`). A *feature function* maps ImageNet-normalised images
[B, 3, H, W] to dense features [B, C, h, w]; by default it is the backbone
itself, and a protocol may probe something else (MaskContrast's decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from raycseg.models.backbones import normalize_images

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
Batch = Mapping[str, torch.Tensor]


@contextmanager
def frozen(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move `module` to `device` in eval mode (BN statistics and dropout fixed).

    The module's train/eval flag is restored on exit; it stays on `device`.
    """
    was_training = module.training
    module.to(device).eval()
    try:
        yield module
    finally:
        module.train(was_training)


def require_reiterable(batches: Iterable[Batch], name: str) -> None:
    """Raise TypeError if `batches` is a one-shot iterator (protocols read it more than once)."""
    if iter(batches) is batches:
        raise TypeError(
            f"{name} is a one-shot iterator; pass a list of batches or a re-iterable loader"
        )


def iter_features(
    feature_fn: FeatureFn, batches: Iterable[Batch], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (features float32 [B, C, h, w], labels long [B, H, W]) on `device`, without grad."""
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        with torch.no_grad():
            features = feature_fn(normalize_images(images)).float()
        yield features, labels
