"""Clustering evaluations: the project's pixel k-means and MaskContrast's prototype k-means.

Both protocols are described in docs/methods/README.md#evaluation-protocols;
MaskContrast's in docs/methods/maskcontrast.md §6.2.

Both are unsupervised: the labels never influence the clusters. Cluster ids are
brought to each mask's own resolution (nearest: `raycseg.eval.scoring`), matched
one-to-one to classes with the Hungarian algorithm on the whole split, then
scored as in `raycseg.eval.metrics`. k-means and PCA whitening run in torch on
the data's device (the GPU when the evaluation runs there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from raycseg.eval.features import Batch, frozen, iter_features
from raycseg.eval.metrics import ProtocolSkipped, iou_matrix
from raycseg.eval.scoring import SplitScore, predictions_on_labels
from raycseg.models.backbones import normalize_images

KMEANS_SEED = 0
KMEANS_RESTARTS = 5
KMEANS_ITERS = 30
MASKCONTRAST_SEEDS = (1234, 1235, 1236, 1237, 1238)
MASKCONTRAST_KMEANS_ITERS = 100
SALIENCY_LOGIT_THRESHOLD = 0.5
NORM_CHUNK_ROWS = 65536  # squared norms in chunks: no second [N, D] tensor


@dataclass
class KMeansResult:
    """Centroids float [k, D], assignments long [N] and inertia (sum of squared distances)."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    inertia: float


def squared_distances(
    x: torch.Tensor, x_squared_norms: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """‖x_n − c_j‖² for every pair: x [N, D] (‖x_n‖² given, [N]) × [k, D] → [N, k].

    The norms are computed once per k-means call: recomputing them here would
    allocate another [N, D] tensor every round (12 GB at VOC scale with ResNet-50).
    """
    cross = x @ centroids.T
    return (x_squared_norms[:, None] - 2 * cross + (centroids * centroids).sum(1)).clamp_min(0)


def _kmeans_plus_plus(
    x: torch.Tensor, x_squared_norms: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability ∝ squared distance."""
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centroids = [x[first]]
    closest = squared_distances(x, x_squared_norms, centroids[0])[:, 0]
    for _ in range(1, k):
        weights = closest if float(closest.sum()) > 0 else torch.ones_like(closest)
        chosen = torch.multinomial(weights, 1, generator=generator)
        centroids.append(x[chosen])
        closest = torch.minimum(closest, squared_distances(x, x_squared_norms, centroids[-1])[:, 0])
    return torch.cat(centroids)


def _lloyd(
    x: torch.Tensor, x_squared_norms: torch.Tensor, centroids: torch.Tensor, iters: int
) -> KMeansResult:
    """At most `iters` assign/update rounds (stopping at a fixed point); empty clusters keep their centre."""
    k = centroids.shape[0]
    assignments = squared_distances(x, x_squared_norms, centroids).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        counts = torch.bincount(assignments, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        updated = squared_distances(x, x_squared_norms, centroids).argmin(1)
        if torch.equal(updated, assignments):
            break
        assignments = updated
    distances = squared_distances(x, x_squared_norms, centroids)
    inertia = float(distances.gather(1, assignments[:, None]).sum())
    return KMeansResult(centroids, assignments, inertia)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    restarts: int = KMEANS_RESTARTS,
    iters: int = KMEANS_ITERS,
    seed: int = KMEANS_SEED,
) -> KMeansResult:
    """k-means++ with restarts; the restart with the lowest inertia wins.

    Args:
        x: float [N, D] points (on any device; everything runs there).
        k: clusters, 1 ≤ k ≤ N.
        restarts: independent seedings.
        iters: Lloyd rounds per restart (a fixed cap, so results are reproducible).
        seed: seeds one generator on x's device shared by the restarts in order.

    Returns:
        The best `KMeansResult`.
    """
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= N points, got k={k}, N={x.shape[0]}")
    x = x.float()
    norms = torch.cat([(rows * rows).sum(1) for rows in x.split(NORM_CHUNK_ROWS)])
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = None
    for _ in range(restarts):
        result = _lloyd(x, norms, _kmeans_plus_plus(x, norms, k, generator), iters)
        if best is None or result.inertia < best.inertia:
            best = result
    return best


def hungarian_match(scores: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One-to-one cluster → class mapping maximising the total score.

    Args:
        scores: square [C, C], rows = ground-truth classes, columns = cluster ids
            (pixel counts of the confusion matrix, or IoUs).

    Returns:
        long [C]: ``mapping[cluster] = class``.
    """
    scores = torch.as_tensor(scores).detach().cpu().double().numpy()
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"Hungarian matching needs a square matrix, got {scores.shape}")
    classes, clusters = linear_sum_assignment(scores, maximize=True)
    mapping = torch.empty(scores.shape[1], dtype=torch.long)
    mapping[torch.as_tensor(clusters)] = torch.as_tensor(classes, dtype=torch.long)
    return mapping


def run_kmeans_protocol(
    backbone: nn.Module,
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    device: str | torch.device,
    seeds: Sequence[int] = (KMEANS_SEED,),
    restarts: int = KMEANS_RESTARTS,
    iters: int = KMEANS_ITERS,
    keep_samples: int = 0,
) -> dict:
    """Pixel k-means on frozen features: the project's own protocol, pinned so that runs compare.

    Features are L2-normalised per pixel (not mean-centred) and clustered at the
    feature grid: K = num_classes; k-means++ with `restarts` restarts, each seed of
    `seeds` in turn, and at most `iters` rounds on every pixel. Cluster ids are
    nearest-resized to each mask's own size; Hungarian matching on the split's
    confusion matrix (pixel counts at that size).

    Returns:
        ``{"miou", "per_class_iou", "pixels_scored", "seed"}`` for one seed; for several,
        ``"seeds"``, the mean ``"miou"``, ``"miou_std"``, ``"miou_per_seed"`` and the
        per-class means. Plus ``"samples"`` (the first `keep_samples` images' matched
        clusters of the first seed, `raycseg.eval.scoring.EvalSample`s).

    Raises:
        ProtocolSkipped: fewer pixels than classes.
    """
    device = torch.device(device)
    with frozen(backbone, device):
        pixels, grids = feature_pixels(backbone, val_batches, device)
    if pixels.shape[0] < num_classes:
        raise ProtocolSkipped(
            f"k-means with K={num_classes} needs at least {num_classes} feature pixels"
        )
    points = pixels.to(device)
    runs = []
    for seed in seeds:
        result = kmeans(points, num_classes, restarts=restarts, iters=iters, seed=seed)
        score = SplitScore(num_classes, device, keep_samples if not runs else 0)
        for batch, ids in zip(val_batches, per_batch(result.assignments, grids), strict=True):
            score.add_batch(ids, batch)  # the batches again: their labels
        score.rename_predictions(hungarian_match(score.confusion))
        runs.append((score.result(), score.samples))
    samples = {"samples": runs[0][1]} if keep_samples else {}
    if len(runs) == 1:
        return {**runs[0][0], "seed": seeds[0], **samples}
    return {**seed_summary([run for run, _ in runs]), "seeds": list(seeds), **samples}


def feature_pixels(
    backbone: nn.Module, batches: Iterable[Batch], device: torch.device
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """L2-normalised feature pixels [N, D] of every batch, and each batch's grid (B, h, w).

    Gathered in host memory: the device then holds one copy of the split's pixels.
    """
    pixels, grids = [], []
    for raw, _ in iter_features(backbone, batches, device):
        features = F.normalize(raw, dim=1)
        pixels.append(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).cpu())
        grids.append((features.shape[0], *features.shape[-2:]))
    return (torch.cat(pixels) if pixels else torch.empty(0, 0)), grids


def per_batch(ids: torch.Tensor, grids: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Per-pixel ids [N] cut back into each batch's grid [B, h, w]."""
    chunks = ids.split([b * h * w for b, h, w in grids])
    return [chunk.view(grid) for chunk, grid in zip(chunks, grids, strict=True)]


def seed_summary(runs: Sequence[dict]) -> dict:
    """Mean and std of `miou` over runs of several seeds, and the per-class means."""
    mious = torch.tensor([run["miou"] for run in runs], dtype=torch.float64)
    classes = zip(*(run["per_class_iou"] for run in runs), strict=True)
    return {
        "miou": float(mious.mean()),
        "miou_std": float(mious.std(unbiased=False)),
        "miou_per_seed": mious.tolist(),
        "per_class_iou": [_mean_of_present(values) for values in classes],
        "pixels_scored": runs[0]["pixels_scored"],
    }


EmbedFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _SalientPrototypes:
    """Per image: a prototype and its salient mask on its label's grid; per batch: labels."""

    prototypes: torch.Tensor  # float [N, D]
    masks: list[torch.Tensor]  # bool [B, H, W] on each mask's own grid
    labels: list[torch.Tensor]  # long [B, H, W], the original masks (255-padded)


@torch.no_grad()
def _collect_salient_prototypes(
    embed_fn: EmbedFn, batches: Iterable[Batch], device: torch.device, threshold: float
) -> _SalientPrototypes:
    """Prototype = normalise(Σ_p e_p·g_p·[g_p > threshold]) at the input size (§6.2 steps 1–2).

    An image without a salient pixel has a zero prototype, as in the official code.
    """
    prototypes, masks, all_labels = [], [], []
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        embeddings, saliency = embed_fn(normalize_images(images))
        size = images.shape[-2:]
        embeddings = F.interpolate(embeddings.float(), size, mode="bilinear", align_corners=False)
        saliency = F.interpolate(
            saliency[:, None].float(), size, mode="bilinear", align_corners=False
        )[:, 0]
        salient = saliency > threshold
        weighted_sum = torch.einsum("bdhw,bhw->bd", embeddings, saliency * salient)
        prototypes.append(F.normalize(weighted_sum, dim=1))
        masks.append(predictions_on_labels(salient.long(), batch).bool().cpu())
        all_labels.append(batch["label"].long().cpu())
    if not prototypes:
        raise ProtocolSkipped("maskcontrast-kmeans got no validation images")
    return _SalientPrototypes(torch.cat(prototypes), masks, all_labels)


def pca_whiten(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, list[str]]:
    """Project centred points onto their top principal axes, each scaled to unit variance.

    Like scikit-learn's ``PCA(n_components=dim, whiten=True)``, except that the
    component count is clamped to N − 1 (the rank of N centred points) and to
    D, and components with zero variance are dropped; each clamp is reported.

    Args:
        x: float [N, D].
        dim: requested components.

    Returns:
        (whitened float32 [N, m], notes): m ≤ dim, and one note per clamp.
    """
    count, features = x.shape
    centred = x.double() - x.double().mean(0)
    components = min(dim, count - 1, features)
    notes = []
    if components < dim:
        notes.append(
            f"PCA clamped to {components} components (asked {dim}): {count} images span at "
            f"most {count - 1} directions once centred, in {features}-d"
        )
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    variance = singular[:components] ** 2 / max(count - 1, 1)
    keep = int((variance > variance.max().clamp_min(1e-300) * 1e-12).sum()) if components else 0
    if keep < components:
        notes.append(f"PCA dropped {components - keep} zero-variance components")
    whitened = centred @ vh[:keep].T / variance[:keep].sqrt()
    return whitened.float(), notes


def run_maskcontrast_kmeans(
    embed_fn: EmbedFn,
    val_batches: Iterable[Batch],
    num_classes: int,
    *,
    device: str | torch.device,
    seeds: Sequence[int] = MASKCONTRAST_SEEDS,
    pca_dim: int = 32,
    saliency_threshold: float = SALIENCY_LOGIT_THRESHOLD,
) -> dict:
    """MaskContrast's official clustering protocol (docs/methods/maskcontrast.md §6.2).

    One prototype per image from the raw embeddings weighted by the saliency
    logit where it exceeds `saliency_threshold` (zero without a salient pixel);
    PCA whitening to `pca_dim` and k-means with K − 1 clusters, both on every
    image's prototype, as the official code; salient pixels take cluster + 1,
    the rest background 0, nearest-resized to each mask's own size; Hungarian
    matching on the split's IoU matrix (background takes part); mIoU averaged
    over `seeds`.

    Args:
        embed_fn: normalised images [B, 3, H, W] → (embeddings [B, D, h, w],
            saliency logits [B, h, w]), e.g. a frozen `MaskContrastHead` in eval mode.
        val_batches: evaluation batches; class 0 must be the background.
        num_classes: K, background included.
        device: where everything runs.
        seeds: one k-means seed per run.
        pca_dim: whitened dimensions (clamped to the data, see `pca_whiten`).
        saliency_threshold: logit threshold for salient pixels.

    Returns:
        ``{"miou", "miou_std", "per_class_iou", "pixels_scored", "seeds",
        "miou_per_seed", "notes"}``; the per-class IoUs are averaged over the seeds
        where they are not null.

    Raises:
        ProtocolSkipped: fewer than K − 1 images, no salient pixel, or all prototypes equal.
    """
    device = torch.device(device)
    data = _collect_salient_prototypes(embed_fn, val_batches, device, saliency_threshold)
    clusters, images = num_classes - 1, data.prototypes.shape[0]
    if clusters < 1 or images < clusters:
        raise ProtocolSkipped(
            f"maskcontrast-kmeans needs at least K-1 = {clusters} images, found {images}"
        )
    if not any(bool(masks.any()) for masks in data.masks):
        raise ProtocolSkipped(
            f"maskcontrast-kmeans: no image has a salient pixel (saliency logit > "
            f"{saliency_threshold}); train the saliency head longer"
        )
    whitened, notes = pca_whiten(data.prototypes, pca_dim)
    if whitened.shape[1] == 0:
        raise ProtocolSkipped("maskcontrast-kmeans: every image prototype is the same")
    runs = [_score_prototype_clusters(data, whitened, num_classes, seed) for seed in seeds]
    return {**seed_summary(runs), "seeds": list(seeds), "notes": notes}


def _score_prototype_clusters(
    data: _SalientPrototypes, whitened: torch.Tensor, num_classes: int, seed: int
) -> dict:
    """Cluster the prototypes with one seed, paint salient pixels, match by IoU, score."""
    result = kmeans(
        whitened,
        num_classes - 1,
        restarts=KMEANS_RESTARTS,
        iters=MASKCONTRAST_KMEANS_ITERS,
        seed=seed,
    )
    image_ids = (result.assignments + 1).cpu()
    score = SplitScore(num_classes, "cpu")
    start = 0
    for masks, labels in zip(data.masks, data.labels, strict=True):
        ids = image_ids[start : start + masks.shape[0]]
        start += masks.shape[0]
        score.add(masks.long() * ids[:, None, None], labels)
    score.rename_predictions(hungarian_match(iou_matrix(score.confusion)))
    return score.result()


def _mean_of_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None (None when all are)."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None
