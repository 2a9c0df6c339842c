"""CACL losses: global contrast, pixel re-match contrast, two-frame cycle attention.

Paper: Pang et al., "Unsupervised Representation for Semantic Segmentation by
Implicit Cycle-Attention Contrastive Learning", AAAI 2022
(https://doi.org/10.1609/aaai.v36i2.20100). Spec: docs/methods/cacl.md §3, §7;
the cycle walk is CRW's (Jabri, Owens, Efros, "Space-Time Correspondence as a
Contrastive Random Walk", NeurIPS 2020) cut to two frames (cacl.md §3.3).

Symbols (defined once):
    B   videos in the batch; each gives two frames v and v+ (a positive pair).
    D   embedding channels of a head (global, pixel or cycle).
    E   channels of the global-head maps used for re-matching.
    N   nodes (pixels of the head map) per frame, N = h * w.
    K   pixel negatives per video.

Every function L2-normalises its own vector inputs along the channel dim,
computes in float32 with autocast off (float64 inputs stay float64), returns a
0-dim tensor that is the mean over all of its anchors (both directions), and
does no communication: a method gathers across workers first
(``raycseg.distributed``) and then calls these.

Inputs and gradients:
    global_contrast_loss(g [B, D], g_pos [B, D])
        Symmetric InfoNCE (NT-Xent layout): anchor g_b, positive g_pos_b, the
        2B-2 negatives are both frames of every other video. Gradient into g, g_pos.
    pixel_rematch_loss(p [B, D, N], p_pos [B, D, N], u [B, E, N], u_pos [B, E, N],
                       negatives [B, K, D] or None)
        sigma(i) = argmax_j cos(u_i, u_pos_j) (no gradient, ties go to the lowest
        j). Anchor p_i, positive p_pos_sigma(i), negatives[b] (pixels of videos
        other than b; a MoCo queue, if any, is appended by the method). Both
        directions (v -> v+ and v+ -> v) use negatives[b]. Gradient into p and
        p_pos only: u, u_pos and negatives get none. With no negatives (K = 0 or
        None, e.g. B = 1), only the positive remains in each denominator, so the
        loss is log(1) = 0, still connected to the graph.
    cycle_attention_loss(c [B, D, N], c_pos [B, D, N])
        S = cos(c, c_pos) [B, N, N]; F = softmax_rows(S / tau), Bk = softmax_rows(S^T / tau),
        M = F Bk; loss = -mean_i log M_ii, averaged over both start frames.
        log M_ii = logsumexp_j(log F_ij + log Bk_ji), where log Bk_ji is the
        column-wise log-softmax of S at (i, j): no N x N x N product and no M.
        Starting from v+ uses the same matrix (rows and columns swap roles), so
        the other direction is a logsumexp over the other dim. Gradient into c, c_pos.

Cost: the pixel loss forms its [B, N, K] negative logits in chunks of nodes and
its gradient rows in the same pass (``_LogNormaliser``), so its memory is
O(B·N·D + chunk); the cycle loss holds a few [B, N, N] tensors and never M.

Edge dropout (cycle loss): each transition matrix draws its own Bernoulli(p)
mask of dropped edges, i.e. the paper's pseudocode variant (one independent mask
per transition), not CRW's code variant that re-uses the forward drops on the
way back. The two start frames share the two transition matrices. Dropped edges
get a logit of -1e20 before the softmax; they are drawn from torch's global RNG.
With dropout a start node can lose every return path (M_ii = 0); as in CRW,
the loss then uses log(M_ii + 1e-20), so such a node adds a bounded constant
(46.05) instead of an infinite one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from raycseg.losses._precision import at_least_float32, full_precision

__all__ = [
    "CACLLoss",
    "cycle_attention_loss",
    "draw_pixel_negatives",
    "global_contrast_loss",
    "pixel_rematch_loss",
]

_LOGITS_CHUNK_ELEMENTS = 2**22  # pixel-loss logits per chunk (16 MiB in float32)
_DROPPED_EDGE_LOGIT = -1e20
_RETURN_PROBABILITY_FLOOR = 1e-20


@full_precision
def global_contrast_loss(
    g: torch.Tensor, g_pos: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Symmetric InfoNCE over pooled global-head vectors, in-batch negatives.

    Args:
        g: float [B, D], pooled global vector of frame v of each video.
        g_pos: float [B, D], pooled global vector of frame v+ of the same videos.
        temperature: tau_G.

    Returns:
        0-dim tensor: mean over the 2B anchors of -log softmax at the positive,
        among 2B - 1 candidates (the positive and both frames of the other videos).
    """
    if g.shape != g_pos.shape or g.dim() != 2:
        raise ValueError(
            f"g and g_pos must both be [B, D]; got {tuple(g.shape)}, {tuple(g_pos.shape)}"
        )
    batch = g.shape[0]
    z = F.normalize(at_least_float32(torch.cat([g, g_pos])), dim=1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    index = torch.arange(batch, device=z.device)
    targets = torch.cat([index + batch, index])
    return F.cross_entropy(logits, targets)


class _LogNormaliser(torch.autograd.Function):
    """log(exp(positive) + sum_k exp(scaled . negatives_k)) per anchor, with fixed negatives.

    Inputs: scaled [B, N, D] (anchors / tau), positive [B, N] (logits), negatives
    [B, K, D] (no gradient). Its gradients, d/dpositive = exp(positive - out) and
    d/dscaled = sum_k exp(logit_k - out) negatives_k, are formed in the forward
    pass over chunks of nodes, so no [B, N, K] logits tensor outlives its chunk.
    """

    @staticmethod
    def forward(
        ctx, scaled: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        batch, nodes, _ = scaled.shape
        out = torch.empty_like(positive)
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_scaled = torch.empty_like(scaled) if wants_grad else None
        chunk = max(1, _LOGITS_CHUNK_ELEMENTS // (batch * negatives.shape[1]))
        for start in range(0, nodes, chunk):
            rows = slice(start, start + chunk)
            logits = torch.bmm(scaled[:, rows], negatives.transpose(1, 2))  # [B, n, K]
            out[:, rows] = torch.logaddexp(positive[:, rows], torch.logsumexp(logits, dim=-1))
            if grad_scaled is not None:
                weights = logits.sub_(out[:, rows, None]).exp_()
                torch.bmm(weights, negatives, out=grad_scaled[:, rows])
        grad_positive = torch.exp(positive - out) if wants_grad else None
        ctx.save_for_backward(grad_scaled, grad_positive)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_scaled, grad_positive = ctx.saved_tensors
        return grad_scaled * grad_out.unsqueeze(-1), grad_positive * grad_out, None


def _rematch_direction(
    anchors: torch.Tensor,
    partners: torch.Tensor,
    match: torch.Tensor,
    negatives: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Per-anchor InfoNCE for one direction: float [B, N].

    anchors and partners are unit [B, N, D], match [B, N] indexes partners, negatives
    unit [B, K, D] (fixed) or None.
    """
    scaled = anchors / temperature
    positives = torch.gather(partners, 1, match.unsqueeze(-1).expand_as(partners))
    positive_logits = (scaled * positives).sum(-1)  # [B, N]
    if negatives is None:
        return positive_logits - positive_logits  # only the positive: -log 1 = 0
    return _LogNormaliser.apply(scaled, positive_logits, negatives) - positive_logits


@full_precision
def pixel_rematch_loss(
    p: torch.Tensor,
    p_pos: torch.Tensor,
    u: torch.Tensor,
    u_pos: torch.Tensor,
    negatives: torch.Tensor | None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """Pixel InfoNCE with positives re-matched by global-head affinity.

    Args:
        p: float [B, D, N], pixel-head map of frame v.
        p_pos: float [B, D, N], pixel-head map of frame v+.
        u: float [B, E, N], global-head map of frame v (matching only, no gradient).
        u_pos: float [B, E, N], global-head map of frame v+ (matching only).
        negatives: float [B, K, D] pixel vectors from videos other than b (no
            gradient), or None for no negatives.
        temperature: tau_P.

    Returns:
        0-dim tensor: mean over the 2·B·N anchors (both directions).
    """
    if p.shape != p_pos.shape or p.dim() != 3:
        raise ValueError(
            f"p and p_pos must both be [B, D, N]; got {tuple(p.shape)}, {tuple(p_pos.shape)}"
        )
    if u.shape[0] != p.shape[0] or u.shape[2] != p.shape[2] or u.shape != u_pos.shape:
        raise ValueError(
            f"u and u_pos must be [B, E, N] matching p; got {tuple(u.shape)}, {tuple(u_pos.shape)}"
        )
    if negatives is not None and (
        negatives.dim() != 3 or negatives.shape[0] != p.shape[0] or negatives.shape[2] != p.shape[1]
    ):
        raise ValueError(f"negatives must be [B, K, D]; got {tuple(negatives.shape)}")
    with torch.no_grad():
        u_n = F.normalize(at_least_float32(u), dim=1)
        u_pos_n = F.normalize(at_least_float32(u_pos), dim=1)
        affinity = torch.bmm(u_n.transpose(1, 2), u_pos_n)  # [B, N, N]
        forward_match = affinity.argmax(dim=2)  # first maximum: ties go to the lowest index
        backward_match = affinity.argmax(dim=1)
        del affinity
    anchors = F.normalize(at_least_float32(p), dim=1).transpose(1, 2)  # [B, N, D]
    partners = F.normalize(at_least_float32(p_pos), dim=1).transpose(1, 2)
    if negatives is not None:
        has_negatives = negatives.shape[1] > 0
        negatives = (
            F.normalize(negatives.detach().to(anchors.dtype), dim=2) if has_negatives else None
        )
    forward = _rematch_direction(anchors, partners, forward_match, negatives, temperature)
    backward = _rematch_direction(partners, anchors, backward_match, negatives, temperature)
    return 0.5 * (forward.mean() + backward.mean())


@full_precision
def cycle_attention_loss(
    c: torch.Tensor, c_pos: torch.Tensor, temperature: float = 0.07, edge_dropout: float = 0.0
) -> torch.Tensor:
    """Two-frame cycle-consistency loss: every node should walk v -> v+ -> v back to itself.

    Args:
        c: float [B, D, N], cycle-head map of frame v.
        c_pos: float [B, D, N], cycle-head map of frame v+.
        temperature: tau_C.
        edge_dropout: probability of dropping each edge of each transition matrix.

    Returns:
        0-dim tensor: -mean log M_ii over the 2·B·N start nodes (both start frames).
    """
    if c.shape != c_pos.shape or c.dim() != 3:
        raise ValueError(
            f"c and c_pos must both be [B, D, N]; got {tuple(c.shape)}, {tuple(c_pos.shape)}"
        )
    if not 0.0 <= edge_dropout < 1.0:
        raise ValueError(f"edge_dropout must be in [0, 1); got {edge_dropout}")
    c_n = F.normalize(at_least_float32(c), dim=1)
    c_pos_n = F.normalize(at_least_float32(c_pos), dim=1)
    scores = torch.bmm(c_n.transpose(1, 2), c_pos_n) / temperature  # [B, N, N], S_ij / tau
    forward_scores, backward_scores = scores, scores
    if edge_dropout > 0.0:
        forward_scores = scores.masked_fill(
            torch.rand_like(scores) < edge_dropout, _DROPPED_EDGE_LOGIT
        )
        backward_scores = scores.masked_fill(
            torch.rand_like(scores) < edge_dropout, _DROPPED_EDGE_LOGIT
        )
    # path[i, j] = log F_ij + log Bk_ji: go i -> j on v+, come back j -> i.
    path = torch.log_softmax(forward_scores, dim=2) + torch.log_softmax(backward_scores, dim=1)
    from_v = torch.logsumexp(path, dim=2)  # log M_ii, start on v
    from_v_pos = torch.logsumexp(path, dim=1)  # log M'_jj, start on v+
    if edge_dropout > 0.0:  # a node whose every return path was dropped: log(M_ii + 1e-20), as CRW
        floor = torch.tensor(_RETURN_PROBABILITY_FLOOR, dtype=path.dtype, device=path.device).log()
        from_v, from_v_pos = torch.logaddexp(from_v, floor), torch.logaddexp(from_v_pos, floor)
    return -0.5 * (from_v.mean() + from_v_pos.mean())


@torch.no_grad()
def draw_pixel_negatives(
    pixels: torch.Tensor,
    owners: torch.Tensor,
    num_negatives: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """Draw, for each local video, pixel vectors uniformly from the *other* videos.

    Args:
        pixels: float [B_all, D, N], pixel-head maps of the whole (gathered) batch.
        owners: long [B], index into B_all of each local video.
        num_negatives: K, drawn uniformly with replacement.
        generator: torch.Generator on ``pixels``' device, for reproducible draws.

    Returns:
        Detached float [B, K, D] (not normalised; the loss normalises), or None
        when B_all = 1 (no other video exists).
    """
    total_videos, _, nodes = pixels.shape
    if total_videos < 2:
        return None
    draws = torch.randint(
        0,
        (total_videos - 1) * nodes,
        (owners.shape[0], num_negatives),
        generator=generator,
        device=pixels.device,
    )
    video, node = draws // nodes, draws % nodes
    video = video + (video >= owners.unsqueeze(1)).long()  # skip the anchor's own video
    return pixels.detach()[video, :, node]


class CACLLoss(nn.Module):
    """Weighted sum of the three CACL terms; a term with weight 0 is skipped.

    Args:
        lambda_global: weight of :func:`global_contrast_loss`.
        lambda_pixel: weight of :func:`pixel_rematch_loss`.
        lambda_cycle: weight of :func:`cycle_attention_loss`.
        temperature_global: tau_G.
        temperature_pixel: tau_P.
        temperature_cycle: tau_C.
        edge_dropout: edge dropout of the cycle loss (apply only in training).
    """

    def __init__(
        self,
        lambda_global: float = 1.0,
        lambda_pixel: float = 1.0,
        lambda_cycle: float = 1.0,
        temperature_global: float = 0.2,
        temperature_pixel: float = 0.2,
        temperature_cycle: float = 0.07,
        edge_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.lambda_global = lambda_global
        self.lambda_pixel = lambda_pixel
        self.lambda_cycle = lambda_cycle
        self.temperature_global = temperature_global
        self.temperature_pixel = temperature_pixel
        self.temperature_cycle = temperature_cycle
        self.edge_dropout = edge_dropout

    def forward(
        self,
        g: torch.Tensor,
        g_pos: torch.Tensor,
        p: torch.Tensor,
        p_pos: torch.Tensor,
        u: torch.Tensor,
        u_pos: torch.Tensor,
        c: torch.Tensor,
        c_pos: torch.Tensor,
        negatives: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the weighted total and the unweighted terms.

        Args: as the three loss functions (g, g_pos [B, D]; p, p_pos [B, D, N];
            u, u_pos [B, E, N]; c, c_pos [B, D, N]; negatives [B, K, D] or None).

        Returns:
            ``(total, {"global": L_G, "pixel": L_P, "cycle": L_C})``: 0-dim tensors;
            a skipped term is a plain 0. ``total`` is graph-connected even if all
            weights are 0.
        """
        zero = g.new_zeros((), dtype=torch.float32)
        terms = {"global": zero, "pixel": zero, "cycle": zero}
        total = g.sum() * 0.0
        if self.lambda_global:
            terms["global"] = global_contrast_loss(g, g_pos, self.temperature_global)
            total = total + self.lambda_global * terms["global"]
        if self.lambda_pixel:
            terms["pixel"] = pixel_rematch_loss(
                p, p_pos, u, u_pos, negatives, self.temperature_pixel
            )
            total = total + self.lambda_pixel * terms["pixel"]
        if self.lambda_cycle:
            dropout = self.edge_dropout if self.training else 0.0
            terms["cycle"] = cycle_attention_loss(c, c_pos, self.temperature_cycle, dropout)
            total = total + self.lambda_cycle * terms["cycle"]
        return total, terms
