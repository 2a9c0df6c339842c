"""ReCo: regional contrast with active hard-query and class-relation negative sampling.

Paper: Liu, Zhi, Johns, Davison, "Bootstrapping Semantic Segmentation with
Regional Contrast", ICLR 2022 (https://arxiv.org/abs/2104.04465). Semantics
follow the official code as written down in docs/methods/reco.md §2.

Symbols (defined once):
    B, h, w  batch and the representation grid; a pixel is a flat index into B·h·w.
    D        representation channels.
    C        classes (``prob.shape[1]``); label values outside [0, C) are invalid.
    S        present classes: classes with at least one valid pixel in the batch.
    N_q      queries drawn per present class (``num_queries``).
    N_k      negatives drawn per query (``num_negatives``).
    tau      temperature (InfoNCE and the class-relation softmax).

reco_loss(rep [B, D, h, w] float, label [B, h, w] long, mask [B, h, w] bool,
          prob [B, C, h, w] float) -> 0-dim tensor (float32, autocast off; float64 stays)
    * Valid pixel: mask true and label in [0, C). Invalid pixels are never
      queries, negatives or part of a prototype.
    * mu_c: mean of the raw D-vectors of all valid pixels of class c (batch level,
      no gradient).
    * Hard queries of c: valid pixels of c with prob[label] < strong_threshold;
      N_q are drawn uniformly with replacement.
    * Negative classes: for query class c, pi(c') = softmax over c' != c in S of
      cos(mu_c, mu_c') / tau; each query draws N_k classes from pi and, for each,
      one valid pixel of that class uniformly with replacement (no gradient).
    * Logits = [cos(a, mu_c), cos(a, n_1), ..., cos(a, n_N_k)] / tau; CE to index 0.
    * loss = (sum over classes with hard queries of the mean CE of its queries) / S.
      A present class without hard queries adds 0 but still counts in S.
    * S <= 1, or no hard query at all: ``rep.sum() * 0`` (graph-connected).
    * Gradient flows into rep at the drawn query pixels only; ``prob`` is used
      without gradient.

Class sets and prototypes are per call (per rank); the loss does no communication.

No host sync: every shape is fixed by C, N_q and N_k, never by the data. Queries
and negatives are drawn for all C classes, and the rows of classes that are absent
or have no hard pixel are multiplied out of the loss (the official code reads the
class counts back, about 87k device-to-host syncs a step).

Cost: sampling is batched over all classes and queries (grouped draws by
index arithmetic, inverse-CDF class draws). The negatives' logits are formed by
gathering N_k bank rows for a few queries at a time into one reused cache-sized
buffer (never a [C·N_q, N_k, D] tensor; the only Python loop runs over these
fixed-size memory chunks), and their backward is one ``embedding_bag`` (the sum
of the gradient-weighted negative vectors of each query). Memory stays
O(C·N_q·N_k + B·h·w·D).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from raycseg.losses._precision import at_least_float32, full_precision

__all__ = ["RecoSamples", "draw_reco_samples", "reco_loss"]

_GATHER_CHUNK_ELEMENTS = (
    2**19
)  # floats gathered per chunk in the negatives forward (2 MiB, cache-sized)


class RecoSamples(NamedTuple):
    """What one ReCo step drew (all long tensors are flat pixel indices into B·h·w).

    Attributes:
        classes: long [S], the present class ids, ascending.
        prototypes: float [S, D] (float32 or wider), raw class means mu_c (detached).
        query_slots: long [S_q], positions in ``classes`` of the classes with hard queries.
        query_index: long [S_q, N_q], the drawn query pixels.
        negative_index: long [S_q, N_q, N_k], the drawn negative pixels of each query.
    """

    classes: torch.Tensor
    prototypes: torch.Tensor
    query_slots: torch.Tensor
    query_index: torch.Tensor
    negative_index: torch.Tensor


class _Draws(NamedTuple):
    """The draws for every class id, present or not (fixed shapes: no host sync).

    Attributes:
        present: bool [C], the class has a valid pixel.
        prototypes: float [C, D], mu_c (zero rows for absent classes).
        queried: bool [C], the class's queries count: it has a hard pixel and S >= 2.
        query_index: long [C, N_q]; rows of classes not queried hold any pixel.
        negative_index: long [C, N_q, N_k]; likewise.
    """

    present: torch.Tensor
    prototypes: torch.Tensor
    queried: torch.Tensor
    query_index: torch.Tensor
    negative_index: torch.Tensor


def _pixel_major(rep: torch.Tensor) -> torch.Tensor:
    """Reshape rep [B, D, h, w] to pixel rows [B·h·w, D] (one contiguous copy, gradient kept)."""
    return rep.permute(0, 2, 3, 1).reshape(-1, rep.shape[1])


def _group_sizes(group_of_pixel: torch.Tensor, num_groups: int) -> torch.Tensor:
    """How many pixels each group has: long [num_groups] (a scatter: bincount syncs on a GPU)."""
    sizes = torch.zeros(num_groups, dtype=torch.long, device=group_of_pixel.device)
    return sizes.scatter_add_(0, group_of_pixel, torch.ones_like(group_of_pixel))


def _draw_from_groups(
    group_of_pixel: torch.Tensor,
    num_groups: int,
    wanted_groups: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """For each entry of ``wanted_groups``, one pixel of that group, uniformly with replacement.

    Args:
        group_of_pixel: long [P], each pixel's group in [0, num_groups).
        num_groups: number of groups.
        wanted_groups: long tensor of group ids. An empty group gives some pixel.
        generator: random source.

    Returns:
        long tensor shaped like ``wanted_groups``: pixel indices in [0, P).
    """
    pixels_by_group = torch.argsort(group_of_pixel, stable=True)
    size = _group_sizes(group_of_pixel, num_groups)
    group_start = torch.cumsum(size, 0) - size
    uniform = torch.rand(wanted_groups.shape, generator=generator, device=size.device)
    wanted_size = size[wanted_groups]
    offset = torch.minimum((uniform * wanted_size).long(), (wanted_size - 1).clamp_min(0))
    position = (group_start[wanted_groups] + offset).clamp_max(group_of_pixel.numel() - 1)
    return pixels_by_group[position]


def _draw_categorical(
    probabilities: torch.Tensor, count: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``count`` i.i.d. draws from each row of ``probabilities`` [R, S] by inverse CDF: long [R, count].

    Categories of probability 0 are never drawn: their CDF step is empty, and the
    CDF is rescaled so that its last value is exactly 1.
    """
    cdf = torch.cumsum(probabilities, dim=1)
    cdf = cdf / cdf[:, -1:]
    uniform = torch.rand(
        (probabilities.shape[0], count), generator=generator, device=probabilities.device
    )
    return torch.searchsorted(cdf, uniform, right=True).clamp_max_(probabilities.shape[1] - 1)


@torch.no_grad()
def draw_reco_samples(
    rep: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    prob: torch.Tensor,
    *,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    generator: torch.Generator | None = None,
) -> RecoSamples | None:
    """Draw ReCo's hard queries and class-relation negatives (no gradient).

    The draws `reco_loss` makes with the same generator, kept for the present
    classes only (this compaction reads the class counts: not for training steps).

    Args: as :func:`reco_loss`.

    Returns:
        The draws, or None when at most one class is present.
    """
    draws = _draw_samples(
        at_least_float32(_pixel_major(rep.detach())), label, mask, prob, strong_threshold, temperature,
        num_queries, num_negatives, generator,
    )  # fmt: skip
    classes = draws.present.nonzero().squeeze(1)
    if classes.numel() <= 1:
        return None
    slot_of_class = torch.cumsum(draws.present.long(), 0) - 1
    queried = draws.queried.nonzero().squeeze(1)
    return RecoSamples(
        classes,
        draws.prototypes[classes],
        slot_of_class[queried],
        draws.query_index[queried],
        draws.negative_index[queried],
    )


@torch.no_grad()
def _draw_samples(
    pixels: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    prob: torch.Tensor,
    strong_threshold: float,
    temperature: float,
    num_queries: int,
    num_negatives: int,
    generator: torch.Generator | None,
) -> _Draws:
    """The draws of :func:`reco_loss` for all C classes, on detached float pixel rows [B·h·w, D].

    Group C collects the pixels that belong to no class (invalid ones; for the
    queries, easy ones too).
    """
    num_classes = prob.shape[1]
    label_flat = label.reshape(-1)
    valid = mask.reshape(-1).bool() & (label_flat >= 0) & (label_flat < num_classes)
    safe_label = torch.where(valid, label_flat, 0)
    class_of_pixel = torch.where(valid, label_flat, num_classes)  # [P], C = no class
    pixels_per_class = _group_sizes(class_of_pixel, num_classes + 1)[:num_classes]
    present = pixels_per_class > 0
    sums = torch.zeros(num_classes + 1, pixels.shape[1], dtype=pixels.dtype, device=pixels.device)
    sums.index_add_(0, class_of_pixel, pixels)
    prototypes = sums[:num_classes] / pixels_per_class.clamp_min(1).unsqueeze(1).to(pixels.dtype)

    label_prob = prob.detach().flatten(2).gather(1, safe_label.view(label.shape[0], 1, -1))
    hard = valid & (label_prob.reshape(-1) < strong_threshold)
    hard_class_of_pixel = torch.where(hard, label_flat, num_classes)
    has_hard = _group_sizes(hard_class_of_pixel, num_classes + 1)[:num_classes] > 0
    queried = has_hard & (present.sum() > 1)
    all_classes = torch.arange(num_classes, device=pixels.device)
    query_index = _draw_from_groups(
        hard_class_of_pixel, num_classes + 1, all_classes.unsqueeze(1).expand(-1, num_queries),
        generator,
    )  # fmt: skip

    unit = F.normalize(prototypes, dim=1)
    relation = (unit @ unit.T) / temperature  # [C, C]
    other_present = present.unsqueeze(0) & ~torch.eye(
        num_classes, dtype=torch.bool, device=pixels.device
    )
    relation = relation.masked_fill(~other_present, float("-inf"))
    # A row with no other present class is never queried: give it any distribution.
    relation = torch.where(other_present.any(1, keepdim=True), relation, 0.0)
    negative_classes = _draw_categorical(
        torch.softmax(relation, 1), num_queries * num_negatives, generator
    )
    negative_index = _draw_from_groups(class_of_pixel, num_classes + 1, negative_classes, generator)
    negative_index = negative_index.view(num_classes, num_queries, num_negatives)
    return _Draws(present, prototypes, queried, query_index, negative_index)


class _GatheredDot(torch.autograd.Function):
    """out[j, k] = anchors[j] . bank[index[j, k]]; gradient into anchors only."""

    @staticmethod
    def forward(
        ctx, anchors: torch.Tensor, bank: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        rows, per_row = index.shape
        out = anchors.new_empty(rows, per_row)
        chunk = max(1, _GATHER_CHUNK_ELEMENTS // max(1, per_row * bank.shape[1]))
        buffer = bank.new_empty(chunk * per_row, bank.shape[1])
        for start in range(0, rows, chunk):  # chunks of queries bound the gathered memory
            stop = min(start + chunk, rows)
            keys = torch.index_select(
                bank, 0, index[start:stop].reshape(-1), out=buffer[: (stop - start) * per_row]
            )
            torch.linalg.vecdot(
                keys.view(stop - start, per_row, -1),
                anchors[start:stop, None, :],
                out=out[start:stop],
            )
        ctx.save_for_backward(bank, index)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        bank, index = ctx.saved_tensors
        grad_anchors = F.embedding_bag(
            index, bank, mode="sum", per_sample_weights=grad_out.contiguous()
        )
        return grad_anchors, None, None


@full_precision
def reco_loss(
    rep: torch.Tensor,
    label: torch.Tensor,
    mask: torch.Tensor,
    prob: torch.Tensor,
    *,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Regional contrastive loss over hard queries, with class-relation negatives.

    Args:
        rep: float [B, D, h, w] representations (gets gradient at query pixels).
        label: long [B, h, w] class ids; values outside [0, C) are invalid.
        mask: bool [B, h, w], pixels allowed to take part.
        prob: float [B, C, h, w] class probabilities (used without gradient).
        strong_threshold: a valid pixel is a hard query if prob of its label < this.
        temperature: tau.
        num_queries: N_q per present class.
        num_negatives: N_k per query.
        generator: torch.Generator on rep's device for reproducible draws.

    Returns:
        0-dim tensor, float32 or wider (see the module docstring).
    """
    if rep.dim() != 4 or label.shape != (rep.shape[0], *rep.shape[2:]) or mask.shape != label.shape:
        raise ValueError(
            f"rep must be [B, D, h, w], label and mask [B, h, w]; got {tuple(rep.shape)}, {tuple(label.shape)}, {tuple(mask.shape)}"
        )
    if prob.dim() != 4 or prob.shape[0] != rep.shape[0] or prob.shape[2:] != rep.shape[2:]:
        raise ValueError(f"prob must be [B, C, h, w] matching rep; got {tuple(prob.shape)}")
    pixels = at_least_float32(_pixel_major(rep))  # [B·h·w, D], gradient flows back to rep
    draws = _draw_samples(
        pixels.detach(), label, mask, prob, strong_threshold, temperature, num_queries,
        num_negatives, generator,
    )  # fmt: skip
    num_classes = prob.shape[1]
    anchors = F.normalize(pixels[draws.query_index.reshape(-1)], dim=1)  # [C·N_q, D]
    positives = F.normalize(draws.prototypes, dim=1)  # [C, D]
    positive_logits = (anchors.view(num_classes, num_queries, -1) * positives.unsqueeze(1)).sum(-1)
    positive_logits = positive_logits.reshape(-1, 1) / temperature
    with torch.no_grad():
        bank = F.normalize(pixels.detach(), dim=1)
    negative_index = draws.negative_index.reshape(-1, num_negatives)
    negative_logits = _GatheredDot.apply(anchors, bank, negative_index) / temperature
    logits = torch.cat([positive_logits, negative_logits], dim=1)
    cross_entropy = torch.logsumexp(logits, dim=1) - positive_logits.squeeze(1)
    counted = cross_entropy.view(num_classes, num_queries) * draws.queried.unsqueeze(1)
    return counted.sum() / (num_queries * draws.present.sum().clamp_min(1))
