"""Overclustering: k-means with K much larger than the class count, matched many-to-one.

As unsupervised segmentation work reports it (Leopart, K = 100-500):

* frozen backbone features, L2-normalised per pixel, of the train split are
  clustered with k-means (k-means++, one seeding per seed, a fixed round cap) for
  each K; K is clamped to the number of train feature pixels, and the result says so;
* each cluster is assigned to the class it overlaps most on the train split
  (cluster ids nearest-resized to each mask's own size; a cluster without a
  labelled pixel goes to class 0);
* val pixels take their nearest centroid's class, nearest-resized to each mask's
  own size and scored there (`raycseg.eval.scoring`);
* mean and standard deviation over the seeds.

Shapes: features [B, D, h, w] per batch; centroids [K, D]; counts [K, C].
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from raycseg.eval.cluster import (
    KMEANS_ITERS,
    feature_pixels,
    kmeans,
    per_batch,
    seed_summary,
    squared_distances,
)
from raycseg.eval.features import Batch, frozen
from raycseg.eval.metrics import IGNORE_INDEX, ProtocolSkipped
from raycseg.eval.scoring import SplitScore, predictions_on_labels

OVERCLUSTER_KS = (100, 300, 500)
OVERCLUSTER_SEEDS = (0, 1, 2, 3, 4)
ASSIGN_CHUNK = 65536  # pixels per nearest-centroid search


def _nearest(pixels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The nearest centroid (long [N]) of every pixel, in chunks."""
    out = []
    for chunk in pixels.split(ASSIGN_CHUNK):
        rows = chunk.to(centroids.device)
        out.append(squared_distances(rows, (rows * rows).sum(1), centroids).argmin(1))
    return torch.cat(out)


def run_overcluster_protocol(
    backbone: nn.Module,
    train_batches: Iterable[Batch],
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    device: str | torch.device,
    ks: Sequence[int] = OVERCLUSTER_KS,
    seeds: Sequence[int] = OVERCLUSTER_SEEDS,
    iters: int = KMEANS_ITERS,
) -> dict:
    """Overclustering mIoU for each K, mean ± std over `seeds`.

    Returns:
        ``{"per_k": {"100": {"k", "miou", "miou_std", "miou_per_seed", "per_class_iou"},
        ...}, "pixels_scored", "seeds", "notes"}``.

    Raises:
        ProtocolSkipped: no train pixel.
    """
    device = torch.device(device)
    with frozen(backbone, device):
        train, train_grids = feature_pixels(backbone, train_batches, device)
        val, val_grids = feature_pixels(backbone, val_batches, device)
    if train.shape[0] == 0:
        raise ProtocolSkipped("overcluster needs a train split with images")
    notes, per_k, pixels_scored = [], {}, 0
    for k in ks:
        used = min(k, train.shape[0])
        if used < k:
            notes.append(f"K={k} clamped to {used}: the train split has {used} feature pixels")
        runs = []
        for seed in seeds:
            result = kmeans(train.to(device), used, restarts=1, iters=iters, seed=seed)
            classes = _majority_classes(result.assignments, train_grids, train_batches, used,
                                        num_classes)  # fmt: skip
            score = SplitScore(num_classes, device)
            val_ids = classes[_nearest(val, result.centroids)]
            for batch, ids in zip(val_batches, per_batch(val_ids, val_grids), strict=True):
                score.add_batch(ids, batch)
            runs.append(score.result())
        summary = seed_summary(runs)
        pixels_scored = summary.pop("pixels_scored")
        per_k[str(k)] = {"k": used, **summary}
    return {"per_k": per_k, "pixels_scored": pixels_scored, "seeds": list(seeds), "notes": notes}


def _majority_classes(
    assignments: torch.Tensor, grids, batches: Iterable[Batch], k: int, num_classes: int
) -> torch.Tensor:
    """The class (long [K]) each cluster overlaps most on the train split (at the masks' size)."""
    counts = torch.zeros(k * num_classes, dtype=torch.long, device=assignments.device)
    for batch, ids in zip(batches, per_batch(assignments, grids), strict=True):
        on_labels = predictions_on_labels(ids, batch).to(assignments.device)
        labels = batch["label"].to(assignments.device).long()
        valid = (labels != IGNORE_INDEX) & (labels < num_classes)
        pairs = on_labels[valid] * num_classes + labels[valid]
        counts += torch.bincount(pairs, minlength=k * num_classes)
    return counts.view(k, num_classes).argmax(1)
