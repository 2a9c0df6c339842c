"""MaskContrast losses: pixel-to-prototype contrast over saliency masks, saliency BCE.

Paper: Van Gansbeke et al., "Unsupervised Semantic Segmentation by Contrasting
Object Mask Proposals", ICCV 2021 (https://arxiv.org/abs/2102.06191).
Spec: docs/methods/maskcontrast.md §4.

Symbols (defined once):
    B      images in this process's batch (each seen as a query and a key view).
    D      embedding channels.
    H, W   spatial size at which the loss is computed (may differ between views).
    K      memory-bank (queue) entries: prototypes of earlier steps, from all ranks.
    A      anchors: salient query pixels of the images that are kept.

maskcontrast_loss(q [B, D, H, W] float, q_mask [B, H, W] bool,
                  k [B, D, H', W'] float, k_mask [B, H', W'] bool,
                  queue [K, D] float, temperature) -> (loss 0-dim, prototypes [B, D])
    * An image is kept iff both its query mask and its key mask are non-empty.
      A dropped image gives no anchors and no prototype column; its row of
      ``prototypes`` is zero.
    * prototypes_b = normalise(sum over k_mask_b of normalise(k_p)), no gradient.
    * Anchor p (a salient query pixel of kept image b): z_p = normalise(q_p);
      logits = [z_p . prototypes of kept images, z_p . normalise(queue)] / T;
      target = b's column. Queue rows that are all zero (e.g. a dropped image's
      prototype enqueued by the method) are ignored.
    * E-Net weights: f_b = (anchors of b) / A over this process's batch,
      w_b = 1 / ln(1.02 + f_b); loss = sum_p w_b(p) CE_p / sum_p w_b(p).
    * Gradient into q only (k, queue and prototypes are stop-gradient).
    * No kept image: the loss is ``q.sum() * 0`` (connected, never NaN).
    * In-batch prototypes are this process's; only the queue is global (the method
      all-gathers ``prototypes`` to update it).

saliency_bce_loss(logits [B, H, W] float, mask [B, H, W] bool) -> 0-dim
    Class-balanced BCE-with-logits: foreground terms weighted by #bg / #all,
    background terms by #fg / #all (counted over the whole batch), sum / (B·H·W).
    Gradient into logits.

Both losses compute in float32 with autocast off (float64 inputs stay float64).

Resolution. The official code upsamples the 28x28 embeddings bilinearly to
224x224 and uses every salient pixel as an anchor (tens of thousands per image,
neighbouring anchors being interpolations of the same few cells). The feature-
resolution option instead keeps the embeddings at their own grid and downsamples
the masks with :func:`downsample_mask` (a cell is salient when at least half of
its area is): 64x fewer anchors at 224 -> 28. The differences: anchors are
whole cells, not interpolated pixels, so cells on an object boundary are either
in or out instead of partly counted; the E-Net shares f_b and the prototypes are
computed from cells, each cell weighted once rather than by how many upsampled
pixels it covers; small objects under half a cell can vanish, which drops the
image (as an empty mask does). The full-resolution path here is memory-lean: it
computes the logits in chunks of rows, each chunk's gradient rows being formed at
once, so no [B·H·W, B + K] logits tensor is ever kept.

No host sync. Every query pixel is a row of fixed shape [B·H·W, D] (weight 0 off
the anchors); dropped images and all-zero queue rows stay as columns whose logit is
pushed to -1e9 (probability 0). Nothing is gathered by a boolean mask, so no step
waits on the device to learn how many anchors there are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from raycseg.losses._precision import at_least_float32, full_precision

__all__ = ["downsample_mask", "maskcontrast_loss", "saliency_bce_loss"]

ENET_CONSTANT = 1.02
_ANCHOR_CHUNK = 16384  # rows per logits chunk
# The logit bias of a column that is not a candidate: exp() of it is 0, yet it stays finite,
# so rows that are not anchors (weight 0) keep finite terms even when it is their target.
EXCLUDED_LOGIT = -1e9


def downsample_mask(
    mask: torch.Tensor, size: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Downsample a saliency mask to a feature grid by area: a cell is salient if its salient share >= threshold.

    Args:
        mask: bool [B, H, W].
        size: (h, w) of the feature grid.
        threshold: minimum salient share of a cell's area.

    Returns:
        bool [B, h, w].
    """
    share = F.interpolate(mask[:, None].float(), size=tuple(size), mode="area")[:, 0]
    return share >= threshold


@torch.no_grad()
def _key_prototypes(k: torch.Tensor, k_mask: torch.Tensor) -> torch.Tensor:
    """normalise(sum over the key mask of k_p / |k_p|): float [B, D], zero rows for empty masks.

    The per-pixel normalisation is folded into the weights of one batched product,
    so no normalised copy of ``k`` is made.
    """
    k_flat = at_least_float32(k).flatten(2)  # [B, D, H'W']
    weights = k_mask.flatten(1).to(k_flat.dtype) / torch.linalg.vector_norm(
        k_flat, dim=1
    ).clamp_min(1e-12)
    summed = torch.bmm(k_flat, weights.unsqueeze(-1)).squeeze(-1)
    return F.normalize(summed, dim=1)


class _AnchorCrossEntropy(torch.autograd.Function):
    """Per-anchor CE of normalise(anchors) [A, D] against fixed scaled candidates [C, D] (= candidates / T).

    CE_p depends on anchor p only, so its gradient is computed in the forward pass,
    chunk by chunk: with z = a / |a| and g = (softmax - onehot) @ candidates,
    dCE_p/da_p = (g - z (z . g)) / |a|. No [A, C] logits tensor outlives its chunk,
    nothing is recomputed, and backward only scales the stored [A, D] rows.
    """

    @staticmethod
    def forward(
        ctx,
        anchors: torch.Tensor,
        candidates: torch.Tensor,
        column_bias: torch.Tensor,
        targets: torch.Tensor,
    ) -> torch.Tensor:
        cross_entropy = anchors.new_empty(anchors.shape[0])
        gradient = torch.empty_like(anchors) if ctx.needs_input_grad[0] else None
        for start in range(0, anchors.shape[0], _ANCHOR_CHUNK):
            rows = slice(start, start + _ANCHOR_CHUNK)
            inverse_norm = (
                torch.linalg.vector_norm(anchors[rows], dim=1, keepdim=True)
                .clamp_min_(1e-12)
                .reciprocal_()
            )
            unit = anchors[rows] * inverse_norm
            logits = torch.addmm(column_bias, unit, candidates.T)  # [n, C]
            log_normaliser = torch.logsumexp(logits, dim=1, keepdim=True)
            target_logits = logits.gather(1, targets[rows, None])
            cross_entropy[rows] = (log_normaliser - target_logits).squeeze(1)
            if gradient is not None:
                probabilities = logits.sub_(log_normaliser).exp_()
                probabilities.scatter_add_(
                    1, targets[rows, None], torch.full_like(target_logits, -1.0)
                )
                unit_gradient = probabilities @ candidates
                radial = (unit_gradient * unit).sum(1, keepdim=True)
                gradient[rows] = unit_gradient.sub_(unit * radial).mul_(inverse_norm)
        ctx.save_for_backward(gradient)
        return cross_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cross_entropy: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (gradient,) = ctx.saved_tensors
        return gradient * grad_cross_entropy.unsqueeze(1), None, None, None


@full_precision
def maskcontrast_loss(
    q: torch.Tensor,
    q_mask: torch.Tensor,
    k: torch.Tensor,
    k_mask: torch.Tensor,
    queue: torch.Tensor,
    temperature: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contrast salient query pixels against per-image key prototypes and a queue.

    Args:
        q: float [B, D, H, W], query-view embeddings (gets gradient).
        q_mask: bool [B, H, W], query-view saliency.
        k: float [B, D, H', W'], key-view embeddings (no gradient).
        k_mask: bool [B, H', W'], key-view saliency.
        queue: float [K, D], memory bank (no gradient); K may be 0.
        temperature: T.

    Returns:
        ``(loss, prototypes)``: the 0-dim E-Net-weighted mean CE over the anchors,
        and the detached float [B, D] prototypes (zero rows for dropped images).
    """
    if q.dim() != 4 or q_mask.shape != (q.shape[0], *q.shape[2:]):
        raise ValueError(
            f"q must be [B, D, H, W] and q_mask [B, H, W]; got {tuple(q.shape)}, {tuple(q_mask.shape)}"
        )
    if k.dim() != 4 or k_mask.shape != (k.shape[0], *k.shape[2:]) or k.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"k must be [B, D, H', W'] and k_mask [B, H', W']; got {tuple(k.shape)}, {tuple(k_mask.shape)}"
        )
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be [K, D] with D = {q.shape[1]}; got {tuple(queue.shape)}")
    q_mask, k_mask = q_mask.bool(), k_mask.bool()
    kept = q_mask.flatten(1).any(1) & k_mask.flatten(1).any(1)  # [B]
    prototypes = _key_prototypes(k, k_mask) * kept.unsqueeze(1)
    # Every query pixel is a row (fixed shapes, no host sync); rows that are not anchors
    # weigh 0. Rows are taken from q's own layout, so its gradient comes back in it.
    batch, dim = q.shape[:2]
    anchor_mask = (q_mask & kept[:, None, None]).flatten(1)  # [B, HW]
    rows = at_least_float32(q.flatten(2).transpose(1, 2).reshape(-1, dim))  # [B·HW, D]
    with torch.no_grad():
        bank = F.normalize(queue.detach().to(rows.dtype), dim=1)
        candidates = torch.cat([prototypes.to(rows.dtype), bank]) / temperature  # [B + K, D]
        # Dropped images' prototypes and all-zero queue rows are not candidates.
        is_candidate = torch.cat([kept, bank.abs().sum(1) > 0])
        column_bias = torch.where(is_candidate, 0.0, EXCLUDED_LOGIT).to(rows.dtype)
        targets = torch.arange(batch, device=q.device).repeat_interleave(
            anchor_mask.shape[1], output_size=anchor_mask.numel()
        )
        anchors_per_image = anchor_mask.sum(1).to(rows.dtype)
        share = anchors_per_image / anchors_per_image.sum().clamp_min(1)
        enet = 1.0 / torch.log(ENET_CONSTANT + share)  # [B]
        weight = (enet[:, None] * anchor_mask).reshape(-1)  # [B·HW], 0 off the anchors
    cross_entropy = _AnchorCrossEntropy.apply(rows, candidates, column_bias, targets)
    return (weight * cross_entropy).sum() / weight.sum().clamp_min(1e-12), prototypes


@full_precision
def saliency_bce_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy for the saliency head.

    Args:
        logits: float [B, H, W] saliency logits.
        mask: bool [B, H, W] target saliency.

    Returns:
        0-dim tensor: [#bg/#all · sum_fg BCE + #fg/#all · sum_bg BCE] / (B·H·W).
    """
    if logits.shape != mask.shape:
        raise ValueError(
            f"logits and mask must have the same [B, H, W] shape; got {tuple(logits.shape)}, {tuple(mask.shape)}"
        )
    logits = at_least_float32(logits)
    target = mask.to(logits.dtype)
    foreground_share = target.mean()
    weight = torch.where(mask.bool(), 1.0 - foreground_share, foreground_share)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weight * per_pixel).sum() / math.prod(mask.shape)
