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

Cost: sampling is batched over all classes and queries (grouped draws by
index arithmetic, inverse-CDF class draws). The negatives' logits are formed by
gathering N_k bank rows for a few queries at a time into one reused cache-sized
buffer (never a [S·N_q, N_k, D] tensor; the only Python loop runs over these
fixed-size memory chunks), and their backward is one ``embedding_bag`` (the sum
of the gradient-weighted negative vectors of each query). Memory stays
O(S·N_q·N_k + B·h·w·D).
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


def _pixel_major(rep: torch.Tensor) -> torch.Tensor:
    """Reshape rep [B, D, h, w] to pixel rows [B·h·w, D] (one contiguous copy, gradient kept)."""
    return rep.permute(0, 2, 3, 1).reshape(-1, rep.shape[1])


def _draw_from_groups(
    members: torch.Tensor,
    member_group: torch.Tensor,
    num_groups: int,
    wanted_groups: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """For each entry of ``wanted_groups``, one member of that group, uniformly with replacement.

    Args:
        members: long [M] items.
        member_group: long [M], the group of each item, in [0, num_groups).
        num_groups: number of groups.
        wanted_groups: long tensor of group ids (each group must be non-empty).
        generator: random source.

    Returns:
        long tensor shaped like ``wanted_groups``.
    """
    order = torch.argsort(member_group, stable=True)
    sorted_members = members[order]
    group_size = torch.bincount(member_group, minlength=num_groups)
    group_start = torch.cumsum(group_size, 0) - group_size
    uniform = torch.rand(wanted_groups.shape, generator=generator, device=members.device)
    size = group_size[wanted_groups]
    offset = torch.minimum((uniform * size).long(), size - 1)
    return sorted_members[group_start[wanted_groups] + offset]


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

    Args: as :func:`reco_loss`.

    Returns:
        The draws, or None when at most one class is present.
    """
    return _draw_samples(
        at_least_float32(_pixel_major(rep.detach())), label, mask, prob, strong_threshold, temperature,
        num_queries, num_negatives, generator,
    )  # fmt: skip


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
) -> RecoSamples | None:
    """:func:`draw_reco_samples` on detached float pixel rows [B·h·w, D]."""
    num_classes, device = prob.shape[1], pixels.device
    label_flat = label.reshape(-1)
    valid = mask.reshape(-1).bool() & (label_flat >= 0) & (label_flat < num_classes)
    valid_pixels = valid.nonzero().squeeze(1)
    valid_labels = label_flat[valid_pixels]
    pixels_per_class = torch.bincount(valid_labels, minlength=num_classes)
    classes = (pixels_per_class > 0).nonzero().squeeze(1)
    num_slots = classes.numel()
    if num_slots <= 1:
        return None
    slot_of_class = torch.full((num_classes,), -1, dtype=torch.long, device=device)
    slot_of_class[classes] = torch.arange(num_slots, device=device)
    valid_slots = slot_of_class[valid_labels]
    prototypes = torch.zeros(num_slots, pixels.shape[1], dtype=pixels.dtype, device=device)
    prototypes.index_add_(0, valid_slots, pixels[valid_pixels])
    prototypes /= pixels_per_class[classes].unsqueeze(1)

    grid = label.shape[1] * label.shape[2]
    label_prob = prob.detach().flatten(2)[valid_pixels // grid, valid_labels, valid_pixels % grid]
    hard = label_prob < strong_threshold
    query_slots = (torch.bincount(valid_slots[hard], minlength=num_slots) > 0).nonzero().squeeze(1)
    wanted = query_slots.unsqueeze(1).expand(-1, num_queries)
    query_index = _draw_from_groups(
        valid_pixels[hard], valid_slots[hard], num_slots, wanted, generator
    )

    unit = F.normalize(prototypes, dim=1)
    relation = (unit[query_slots] @ unit.T) / temperature  # [S_q, S]
    relation[torch.arange(query_slots.numel(), device=device), query_slots] = float("-inf")
    negative_slots = _draw_categorical(
        torch.softmax(relation, 1), num_queries * num_negatives, generator
    )
    negative_index = _draw_from_groups(
        valid_pixels, valid_slots, num_slots, negative_slots, generator
    )
    negative_index = negative_index.view(-1, num_queries, num_negatives)
    return RecoSamples(classes, prototypes, query_slots, query_index, negative_index)


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
    samples = _draw_samples(
        pixels.detach(), label, mask, prob, strong_threshold, temperature, num_queries,
        num_negatives, generator,
    )  # fmt: skip
    if samples is None or samples.query_slots.numel() == 0:
        return rep.sum() * 0.0
    anchors = F.normalize(pixels[samples.query_index.reshape(-1)], dim=1)  # [S_q·N_q, D]
    positives = F.normalize(samples.prototypes[samples.query_slots], dim=1)
    positive_logits = (anchors.view(*samples.query_index.shape, -1) * positives.unsqueeze(1)).sum(
        -1
    )
    positive_logits = positive_logits.reshape(-1, 1) / temperature
    with torch.no_grad():
        bank = F.normalize(pixels.detach(), dim=1)
    negative_index = samples.negative_index.reshape(-1, num_negatives)
    negative_logits = _GatheredDot.apply(anchors, bank, negative_index) / temperature
    logits = torch.cat([positive_logits, negative_logits], dim=1)
    cross_entropy = torch.logsumexp(logits, dim=1) - positive_logits.squeeze(1)
    return cross_entropy.sum() / (num_queries * samples.classes.numel())
