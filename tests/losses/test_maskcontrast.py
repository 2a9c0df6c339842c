"""MaskContrast losses: loop reference, closed form, empty masks, SGD descent, two-rank queue."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks

from raycseg.distributed import all_gather_no_grad
from raycseg.losses import maskcontrast
from raycseg.losses.maskcontrast import downsample_mask, maskcontrast_loss, saliency_bce_loss


def make_inputs(batch=3, dim=4, size=5, queue=6, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, dim, size, size, generator=gen, dtype=dtype).requires_grad_()
    k = torch.randn(batch, dim, size, size, generator=gen, dtype=dtype)
    q_mask = torch.rand(batch, size, size, generator=gen) < 0.4
    k_mask = torch.rand(batch, size, size, generator=gen) < 0.4
    q_mask[:, 0, 0] = k_mask[:, 0, 0] = True  # every image has at least one salient pixel
    bank = torch.randn(queue, dim, generator=gen, dtype=dtype)
    return q, q_mask, k, k_mask, bank


def reference_loss(q, q_mask, k, k_mask, bank, tau):
    """Plain loops over images and pixels, written from the spec."""
    batch, _, height, width = q.shape
    kept = [bool(q_mask[b].any() and k_mask[b].any()) for b in range(batch)]
    prototypes = []
    for b in range(batch):
        total = torch.zeros(q.shape[1], dtype=q.dtype)
        for y in range(k.shape[2]):
            for x in range(k.shape[3]):
                if k_mask[b, y, x]:
                    total = total + k[b, :, y, x] / k[b, :, y, x].norm()
        prototypes.append(total / total.norm() if kept[b] else torch.zeros_like(total))
    columns = [prototypes[b] for b in range(batch) if kept[b]] + [row / row.norm() for row in bank]
    anchors_of = {
        b: [(y, x) for y in range(height) for x in range(width) if q_mask[b, y, x]]
        for b in range(batch)
        if kept[b]
    }
    total_anchors = sum(len(v) for v in anchors_of.values())
    weighted, weights = 0.0, 0.0
    for column, b in enumerate(b for b in range(batch) if kept[b]):
        weight = 1.0 / math.log(1.02 + len(anchors_of[b]) / total_anchors)
        for y, x in anchors_of[b]:
            z = q[b, :, y, x] / q[b, :, y, x].norm()
            logits = torch.stack([z @ col for col in columns]) / tau
            weighted = weighted + weight * (torch.logsumexp(logits, 0) - logits[column])
            weights += weight
    return weighted / weights, torch.stack(prototypes)


# ------------------------------------------------------------ equal to the loops


def test_matches_loop_reference_loss_grads_and_prototypes():
    q, q_mask, k, k_mask, bank = make_inputs()
    loss, prototypes = maskcontrast_loss(q, q_mask, k, k_mask, bank, temperature=0.3)
    ref_loss, ref_prototypes = reference_loss(q, q_mask, k, k_mask, bank, 0.3)
    assert loss.dim() == 0 and not prototypes.requires_grad
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(prototypes, ref_prototypes)
    (ours,) = torch.autograd.grad(loss, q)
    (theirs,) = torch.autograd.grad(ref_loss, q)
    torch.testing.assert_close(ours, theirs)
    assert torch.all(
        ours[~q_mask.unsqueeze(1).expand_as(ours)] == 0
    )  # background pixels are never anchors


def test_chunked_anchors_give_the_same_loss_and_grads(monkeypatch):
    q, q_mask, k, k_mask, bank = make_inputs(batch=4, size=8, seed=1)
    loss = maskcontrast_loss(q, q_mask, k, k_mask, bank)[0]
    (whole,) = torch.autograd.grad(loss, q)
    monkeypatch.setattr(maskcontrast, "_ANCHOR_CHUNK", 7)  # many logits chunks
    chunked_loss = maskcontrast_loss(q, q_mask, k, k_mask, bank)[0]
    (chunked,) = torch.autograd.grad(chunked_loss, q)
    torch.testing.assert_close(chunked_loss, loss)
    torch.testing.assert_close(chunked, whole)


def test_saliency_bce_matches_loop_reference():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_()
    mask = torch.rand(2, 3, 4, generator=gen) < 0.3
    foreground = mask.sum().item()
    pixels = mask.numel()
    total = 0.0
    for b, y, x in ((b, y, x) for b in range(2) for y in range(3) for x in range(4)):
        probability = torch.sigmoid(logits[b, y, x])
        if mask[b, y, x]:
            total = total - (pixels - foreground) / pixels * torch.log(probability)
        else:
            total = total - foreground / pixels * torch.log(1 - probability)
    ours = saliency_bce_loss(logits, mask)
    torch.testing.assert_close(ours, total / pixels)
    torch.testing.assert_close(
        torch.autograd.grad(ours, logits)[0], torch.autograd.grad(total / pixels, logits)[0]
    )


# ----------------------------------------------------------------- closed forms


def test_all_equal_prototypes_and_queue_give_log_of_candidate_count():
    batch, queue = 5, 7
    direction = torch.tensor([1.0, 2.0, -1.0])
    q = direction[None, :, None, None].expand(batch, 3, 6, 6).clone().requires_grad_()
    k = 3 * direction[None, :, None, None].expand(batch, 3, 6, 6).clone()
    masks = torch.rand(batch, 6, 6, generator=torch.Generator().manual_seed(3)) < 0.5
    masks[:, 2, 2] = True
    bank = direction.expand(queue, 3).clone()
    loss, _ = maskcontrast_loss(q, masks, k, masks, bank)
    torch.testing.assert_close(loss, torch.tensor(math.log(batch + queue)))


def test_saliency_bce_closed_form_at_zero_logits():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, :2] = True  # foreground share f = 10 / 40
    share = 0.25
    expected = 2 * share * (1 - share) * math.log(2)  # (w_fg n_fg + w_bg n_bg) log 2 / n
    torch.testing.assert_close(
        saliency_bce_loss(torch.zeros(2, 4, 5), mask), torch.tensor(expected)
    )


def test_downsample_mask_keeps_cells_at_least_half_salient():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # top-left cell fully salient
    mask[0, 0, 2:] = True  # top-right cell half salient
    mask[0, 2, 0] = True  # bottom-left cell a quarter salient
    expected = torch.tensor([[[True, True], [False, False]]])
    assert torch.equal(downsample_mask(mask, (2, 2)), expected)
    assert torch.equal(
        downsample_mask(mask, (2, 2), threshold=0.25), torch.tensor([[[True, True], [True, False]]])
    )


# ------------------------------------------------------------------ empty masks


def test_images_with_an_empty_mask_are_dropped_everywhere():
    q, q_mask, k, k_mask, bank = make_inputs(batch=4, seed=4)
    q_mask[1] = False  # no anchors
    k_mask[2] = False  # no prototype
    loss, prototypes = maskcontrast_loss(q, q_mask, k, k_mask, bank)
    assert torch.isfinite(loss)
    assert torch.all(prototypes[1] == 0) and torch.all(prototypes[2] == 0)
    keep = [0, 3]
    kept_loss, kept_prototypes = maskcontrast_loss(
        q[keep], q_mask[keep], k[keep], k_mask[keep], bank
    )
    torch.testing.assert_close(loss, kept_loss)
    torch.testing.assert_close(prototypes[keep], kept_prototypes)
    loss.backward()
    assert torch.all(q.grad[1:3] == 0) and torch.isfinite(q.grad).all()


def test_no_kept_image_gives_a_connected_zero():
    q, q_mask, k, k_mask, bank = make_inputs(batch=2, seed=5)
    loss, prototypes = maskcontrast_loss(q, torch.zeros_like(q_mask), k, k_mask, bank)
    assert loss.item() == 0.0 and torch.all(prototypes == 0)
    loss.backward()
    assert torch.all(q.grad == 0)
    assert (
        saliency_bce_loss(
            torch.zeros(1, 2, 2, requires_grad=True), torch.ones(1, 2, 2, dtype=torch.bool)
        ).item()
        == 0.0
    )


def test_zero_queue_rows_are_ignored():
    q, q_mask, k, k_mask, bank = make_inputs(seed=6)
    padded = torch.cat([bank, torch.zeros(3, bank.shape[1], dtype=bank.dtype)])
    torch.testing.assert_close(
        maskcontrast_loss(q, q_mask, k, k_mask, padded)[0],
        maskcontrast_loss(q, q_mask, k, k_mask, bank)[0],
    )
    empty_queue = bank[:0]
    assert torch.isfinite(maskcontrast_loss(q, q_mask, k, k_mask, empty_queue)[0])


# ------------------------------------------------------------------ SGD descent


@pytest.mark.parametrize("feature_resolution", [False, True])
def test_loss_falls_over_a_few_sgd_steps(feature_resolution):
    q, q_mask, k, k_mask, bank = make_inputs(
        batch=4, dim=8, size=16, queue=8, seed=7, dtype=torch.float32
    )
    q = q.detach().requires_grad_()
    if feature_resolution:  # embeddings at their own grid, masks downsampled
        q = F.avg_pool2d(q.detach(), 2).requires_grad_()
        k = F.avg_pool2d(k, 2)
        q_mask, k_mask = (
            downsample_mask(q_mask, (8, 8), 0.25),
            downsample_mask(k_mask, (8, 8), 0.25),
        )
    logits = torch.zeros(q_mask.shape, requires_grad=True)
    optimizer = torch.optim.SGD([q, logits], lr=500.0)  # per-pixel gradients are O(1 / #anchors)
    history = []
    for _ in range(8):
        optimizer.zero_grad()
        contrast, _ = maskcontrast_loss(q, q_mask, k, k_mask, bank)
        loss = contrast + saliency_bce_loss(logits, q_mask)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.9 * history[0]


# ---------------------------------------------------------- two gloo processes

PER_RANK, QUEUE = 2, 8


def shared_inputs(world: int = 2):
    q, q_mask, k, k_mask, bank = make_inputs(batch=PER_RANK * world, queue=QUEUE, seed=8)
    k_mask[PER_RANK + 1] = False  # one image of rank 1 is dropped: its prototype row is zero
    return q.detach(), q_mask, k, k_mask, bank


def enqueue(bank: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """FIFO: newest prototypes first, as the method keeps it (sizes are multiples of the global batch)."""
    return torch.cat([prototypes, bank])[: bank.shape[0]]


def queue_worker(rank: int, world: int) -> dict:
    q, q_mask, k, k_mask, bank = shared_inputs(world)
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    local_q = q[rows].clone().requires_grad_()
    loss, prototypes = maskcontrast_loss(local_q, q_mask[rows], k[rows], k_mask[rows], bank)
    loss.backward()
    gathered = all_gather_no_grad(prototypes)  # the global queue update
    next_loss, _ = maskcontrast_loss(
        local_q.detach(), q_mask[rows], k[rows], k_mask[rows], enqueue(bank, gathered)
    )
    return {
        "loss": loss.detach(),
        "grad": local_q.grad,
        "gathered": gathered,
        "next_loss": next_loss,
    }


@pytest.mark.integration
def test_two_ranks_keep_in_batch_prototypes_local_and_the_queue_global(tmp_path):
    ranks = run_gloo_ranks(queue_worker, tmp_path)
    q, q_mask, k, k_mask, bank = shared_inputs(len(ranks))
    _, every_prototype = maskcontrast_loss(q, q_mask, k, k_mask, bank)
    next_bank = enqueue(bank, every_prototype)
    for rank, saved in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local_q = q[rows].clone().requires_grad_()
        loss, _ = maskcontrast_loss(
            local_q, q_mask[rows], k[rows], k_mask[rows], bank
        )  # local prototypes only
        loss.backward()
        torch.testing.assert_close(saved["loss"], loss.detach())
        torch.testing.assert_close(saved["grad"], local_q.grad)
        torch.testing.assert_close(
            saved["gathered"], every_prototype
        )  # same queue update on every rank
        expected_next = maskcontrast_loss(q[rows], q_mask[rows], k[rows], k_mask[rows], next_bank)[
            0
        ]
        torch.testing.assert_close(saved["next_loss"], expected_next)
    assert torch.all(ranks[0]["gathered"][PER_RANK + 1] == 0)
    whole_batch_loss = maskcontrast_loss(q, q_mask, k, k_mask, bank)[0]
    assert not torch.isclose(
        sum(r["loss"] for r in ranks) / 2, whole_batch_loss
    )  # in-batch columns are local
