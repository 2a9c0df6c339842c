"""CACL: two frames of one video through one backbone and three dense heads.

Spec: docs/methods/cacl.md. Per step, with B videos per worker and W workers:

    view_a, view_b  uint8 [B, 3, H, W]   two frames of each video (or two views of one image)
    backbone        -> [2B, C, h, w]
    global head u   -> pooled g [B, D], gathered to [W·B, D] with gradient (negatives = other videos)
    pixel head p    -> [B, D, N]; negatives: K pixels of *other* videos of the global batch
                       (gathered without gradient), plus an optional FIFO queue
    cycle head c    -> [B, D, N]; the walk stays within each video pair

The loss functions do no communication; this module gathers before calling them.
The views come from `build_pair_loader` with the spec's augmentations (cacl.md §1),
Gaussian blur included with probability ``data.blur_p`` (default 0.5; only this
stage reads that field).

BatchNorm across workers (`batch_norm`, default ``global``). Both views of every
clip go through one backbone call, so with per-worker BatchNorm (``local``, plain
DDP) an anchor and its positive are always normalised with the same statistics,
while the negatives gathered from other workers were normalised with other ones:
features can encode "same worker" and the global and pixel losses get a
shortcut that has nothing to do with content (the leak that made SimCLR use
global BN and MoCo shuffle-BN). ``global`` converts the backbone's and heads'
BatchNorm layers when there is more than one worker
(`raycseg.models.global_batchnorm`: torch's SyncBatchNorm on NCCL, our
`GlobalBatchNorm2d` on gloo), so every view of the step is normalised with the
statistics of all W·2B views and no group of candidates is marked out. With one
worker (or no process group) the layers stay `nn.BatchNorm2d`: the batch is
already global. Shuffle-BN is not offered: MoCo's shuffle works because its
negatives come from a queue; with CACL's in-batch negatives, any split of the two
views of a clip into different BN groups marks the positive as the one in the
*other* group, so it would only narrow the leak, not remove it. The cost is two
small collectives per BatchNorm layer and step (statistics forward, gradient
sums backward; 13 layers with the tiny backbone, 56 with ResNet-50) plus some
unfused maths on CPU: on two gloo ranks a step took 1.7× as long as with
``local`` at the debug recipe's shapes and 1.2× at the quickstart's
(docs/benchmarks.md).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import CACLStage, ModelSection, values_of
from ..data.loaders import StreamShare, build_pair_loader
from ..distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size
from ..losses.cacl import CACLLoss, draw_pixel_negatives
from ..models import DenseHead, build_backbone, normalize_images
from ..models.global_batchnorm import convert_to_global_batchnorm
from .common import backbone_kmeans_miou, enqueue, training_urls
from .interface import StepOutput

CACL_TERMS = ("global", "pixel", "cycle")


class CACL(nn.Module):
    """Backbone + global, pixel and cycle heads, trained with `CACLLoss`."""

    def __init__(self, stage: CACLStage, model: ModelSection):
        super().__init__()
        self.stage = stage
        self.backbone = build_backbone(
            model.backbone,
            output_stride=model.output_stride,
            width=model.width,
            init_from=model.init_from,
        )
        channels = self.backbone.out_channels
        # Only heads that feed a loss exist, so DDP sees every parameter get a gradient.
        # The global head always exists: its maps also re-match pixels for the pixel loss.
        # A weight may follow a schedule (`StepSchedule`): a head exists if its weight is
        # ever above 0, and DDP looks for unused parameters if a weight is ever 0.
        weights = {name: values_of(getattr(stage, f"lambda_{name}")) for name in CACL_TERMS}
        self.global_head = DenseHead(channels, stage.head_dim)
        self.pixel_head = DenseHead(channels, stage.head_dim) if max(weights["pixel"]) else None
        self.cycle_head = DenseHead(channels, stage.head_dim) if max(weights["cycle"]) else None
        # With lambda_global = 0 the global head only serves the gradient-free re-matching.
        self.find_unused_parameters = min(weights["global"]) == 0 or any(
            0 == min(weights[name]) < max(weights[name]) for name in ("pixel", "cycle")
        )
        self.criterion = CACLLoss(
            temperature_global=stage.temperature_global,
            temperature_pixel=stage.temperature_pixel,
            temperature_cycle=stage.temperature_cycle,
            edge_dropout=stage.cycle_edge_dropout,
        )
        self.num_pixel_negatives = stage.num_pixel_negatives if self.pixel_head is not None else 0
        self.queue_size = stage.queue_size if self.num_pixel_negatives else 0
        self.register_buffer(
            "queue", nn.functional.normalize(torch.randn(self.queue_size, stage.head_dim), dim=1)
        )
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))
        if stage.batch_norm == "global" and get_world_size() > 1:
            convert_to_global_batchnorm(self)  # backbone and heads: one BN batch of W·2B views

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One training step's loss on a batch {"view_a", "view_b"} of `training_loader`."""
        views = normalize_images(torch.cat([batch["view_a"], batch["view_b"]]))
        features = self.backbone(views)
        u_a, u_b = _flatten(self.global_head(features)).chunk(2)
        c_a = c_b = p_a = p_b = negatives = None
        if self.cycle_head is not None:
            c_a, c_b = _flatten(self.cycle_head(features)).chunk(2)
        if self.pixel_head is not None:
            p_a, p_b = _flatten(self.pixel_head(features)).chunk(2)
            negatives = self._pixel_negatives(p_a, p_b)
        # Training batches are full on every rank (the streams drop the remainder), so the
        # gathers need no size exchange, which would read sizes back to the host.
        g_a = all_gather_with_grad(u_a.mean(dim=2), equal_shapes=True)
        g_b = all_gather_with_grad(u_b.mean(dim=2), equal_shapes=True)
        for name in CACL_TERMS:  # this step's weights (`stage` is the stage at this step)
            setattr(self.criterion, f"lambda_{name}", getattr(self.stage, f"lambda_{name}"))
        total, terms = self.criterion(g_a, g_b, p_a, p_b, u_a, u_b, c_a, c_b, negatives)
        return {"loss": total, "terms": terms}

    def after_step(self, step: int) -> None:
        """Nothing: the queue is filled in `forward`."""

    def training_loader(self, share: StreamShare):
        """Pairs of frames (video mode) or of views (image mode), split by rank."""
        return build_cacl_loader(self.stage, share)

    def validation_metrics(self, device: torch.device) -> dict[str, float]:
        """k-means mIoU of the backbone on the stage's val shards."""
        return {"val_miou": backbone_kmeans_miou(self.backbone, self.stage.data, device)}

    def is_better(self, metrics: dict[str, float]) -> bool:
        """CACL keeps no best checkpoint: its stage ends with its last one."""
        return False

    @torch.no_grad()
    def _pixel_negatives(self, p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor | None:
        """K pixel vectors per video from the *other* videos of the global batch, plus the queue.

        Both frames of every video are drawn from (the gather has no gradient).
        Returns [B, K + queue_size, D], or None when there is no other video and no queue.
        """
        local = p_a.shape[0]
        pool = all_gather_no_grad(torch.cat([p_a, p_b], dim=2), equal_shapes=True)  # [W·B, D, 2N]
        owners = get_rank() * local + torch.arange(local, device=pool.device)
        parts = []
        if self.num_pixel_negatives:
            drawn = draw_pixel_negatives(pool, owners, self.num_pixel_negatives)
            parts += [] if drawn is None else [drawn]
        if self.queue_size:
            parts.append(self.queue.clone().unsqueeze(0).expand(local, -1, -1))
            self._enqueue(pool)
        return torch.cat(parts, dim=1) if parts else None

    def _enqueue(self, pool: torch.Tensor) -> None:
        """Push one random pixel of each video of the global batch into the FIFO queue."""
        videos, _, pixels = pool.shape
        picked = pool[
            torch.arange(videos, device=pool.device),
            :,
            torch.randint(0, pixels, (videos,), device=pool.device),
        ]
        picked = nn.functional.normalize(picked[: self.queue_size], dim=1)
        enqueue(self.queue, self.queue_pointer, picked)


def _flatten(maps: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B, D, h·w]."""
    return maps.flatten(2)


def build_cacl_loader(stage: CACLStage, share: StreamShare):
    """The stage's training stream: pairs of frames (video mode) or of views (image mode)."""
    urls, samples_per_rank = training_urls(stage.data, share.world_size)
    return build_pair_loader(
        urls, stage.data, share, mode=stage.mode, samples_per_rank=samples_per_rank
    )
